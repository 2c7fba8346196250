"""The folder tree of the sync model-based test (tests/syncmodel.py), and its oracle.

Every change the test makes to the real folders goes through `Tree`, which applies it on disk and
mirrors it in a plain dict (absolute bytes path -> node). The oracle walks that dict by the identity
rule of issue 19; it never calls the code under test:

1. a root is its real path (`..`, `.`, repeated or trailing slashes and symlinks fold);
2. a file's identity is `<real root>/<relative path as walked>`;
3. a symlink whose real target lies inside the root is not followed (the target is indexed once,
   under its own name); one whose target lies outside is followed and named through the link; a
   folder reached twice is walked once (the first link in walk order); broken links and links to
   FIFOs or devices are not indexed;
4. a sync owns exactly the image items under its real roots;
5. names that are not UTF-8 are skipped and affect nothing else;
6. hidden files and folders are skipped (a hidden root is walked);
7. an unreadable folder keeps its indexed items; an unreadable file keeps its item while its size
   and mtime are unchanged; a broken (non-image) file is not indexed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field, replace
from functools import cache
from io import BytesIO

import numpy as np
from PIL import Image

# The suffixes the model writes that name images (compared lower-cased, like the README says);
# the model also writes `.txt`, which is never indexed.
IMAGE_SUFFIXES = (b".jpg", b".png")
DEV_NULL = b"/dev/null"
# Each write gets its own whole-second mtime from this clock, so (size, mtime) always identifies
# the bytes, as the index's "unchanged" shortcut assumes.
CLOCK_START_NS = 1_600_000_000 * 10**9
MAX_LINK_HOPS = 40  # Linux's limit on symlinks followed while resolving one path


@cache
def image_bytes(number: int) -> bytes:
    """A small PNG of random pixels, distinct for each `number`."""
    pixels = np.random.default_rng(number).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def content_key(data: bytes) -> str:
    """The content key the index must store for these bytes (see retrieval.ingest.file_key)."""
    return "img:" + hashlib.sha256(data).hexdigest()


def is_image_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def is_under(path: str | bytes, root: str | bytes) -> bool:
    return path == root or path.startswith(root + ("/" if isinstance(root, str) else b"/"))  # type: ignore[operator]


@dataclass(frozen=True)
class File:
    data: bytes
    mtime_ns: int
    image: bool
    readable: bool = True

    @property
    def key(self) -> str:
        return content_key(self.data)


@dataclass(frozen=True)
class Dir:
    readable: bool = True


@dataclass(frozen=True)
class Link:
    target: bytes


@dataclass(frozen=True)
class Special:
    """A FIFO (or /dev/null): never read, never indexed."""


Node = File | Dir | Link | Special


@dataclass(frozen=True)
class Resolved:
    real: bytes | None  # None: broken, a loop, or a file used as a folder
    blocked: bool = False  # the way there crosses a folder the indexer cannot enter


@dataclass
class Walk:
    """What the oracle expects one root's walk to yield."""

    root: str
    found: dict[str, tuple[str, int]] = field(default_factory=dict)  # identity -> (key, mtime)
    unreadable_dirs: list[str] = field(default_factory=list)  # identities: items below kept
    unreadable_files: dict[str, int] = field(default_factory=dict)  # identity -> mtime now
    unsure: list[str] = field(default_factory=list)  # links the indexer cannot resolve
    # identity (\xNN for bytes that are not UTF-8) -> the skip reason the run must report
    # (None: any reason)
    reported: dict[str, str | None] = field(default_factory=dict)


class Tree:
    """The folders on disk and their mirror; paths are absolute bytes."""

    def __init__(self, base: bytes) -> None:
        self.base = base
        self.nodes: dict[bytes, Node] = {}
        self.clock = CLOCK_START_NS

    # Changes: each is made on disk first, then recorded.
    def mkdir(self, path: bytes) -> None:
        os.mkdir(path, 0o755)
        self.nodes[path] = Dir()

    def write(self, path: bytes, data: bytes, *, image: bool) -> None:
        with open(path, "wb") as handle:  # rewriting keeps the file's mode, readable or not
            handle.write(data)
        self.clock += 10**9
        os.utime(path, ns=(self.clock, self.clock))
        old = self.nodes.get(path)
        readable = old.readable if isinstance(old, File) else True
        self.nodes[path] = File(data, self.clock, image, readable)

    def copy(self, source: bytes, path: bytes) -> None:
        node = self.nodes[source]
        assert isinstance(node, File)
        self.write(path, node.data, image=node.image)

    def symlink(self, path: bytes, target: bytes) -> None:
        os.symlink(target, path)
        self.nodes[path] = Link(target)

    def mkfifo(self, path: bytes) -> None:
        os.mkfifo(path)
        self.nodes[path] = Special()

    def remove(self, path: bytes) -> None:
        if isinstance(self.nodes[path], Dir):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        for name in self.below(path):
            del self.nodes[name]

    def rename(self, source: bytes, target: bytes) -> None:
        os.rename(source, target)
        for name in self.below(source):
            self.nodes[target + name[len(source) :]] = self.nodes.pop(name)

    def set_readable(self, path: bytes, readable: bool) -> None:
        node = self.nodes[path]
        assert isinstance(node, File | Dir)
        os.chmod(path, (0o755 if isinstance(node, Dir) else 0o644) if readable else 0)
        self.nodes[path] = replace(node, readable=readable)

    # Queries on the mirror.
    def below(self, path: bytes) -> list[bytes]:
        """`path` and everything under it, parents first."""
        return sorted(name for name in self.nodes if is_under(name, path))

    def children(self, folder: bytes) -> list[tuple[bytes, bytes]]:
        """(name, path) of the entries of `folder`, sorted by name."""
        found = [
            (os.path.basename(name), name)
            for name in self.nodes
            if os.path.dirname(name) == folder and name != folder
        ]
        return sorted(found)

    def node_at(self, path: bytes) -> Node | None:
        if path in self.nodes:
            return self.nodes[path]
        if path == DEV_NULL:
            return Special()
        if path in (b"/dev", b"/") or is_under(self.base, path):
            return Dir()  # the real folders above the test's base folder
        return None

    def resolve(self, path: bytes) -> Resolved:
        """The real path of `path`, symlinks followed as the kernel does (`..` after a link is
        taken from the link's target)."""
        pending = [part for part in path.split(b"/") if part not in (b"", b".")]
        real = b""
        hops = 0
        blocked = False
        while pending:
            part = pending.pop(0)
            if part == b"..":
                real = real.rsplit(b"/", 1)[0]
                continue
            here = self.node_at(real or b"/")
            blocked = blocked or (isinstance(here, Dir) and not here.readable)
            candidate = real + b"/" + part
            node = self.node_at(candidate)
            if isinstance(node, Link):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return Resolved(None, blocked)
                if node.target.startswith(b"/"):
                    real = b""
                pending[:0] = [p for p in node.target.split(b"/") if p not in (b"", b".")]
                continue
            if node is None or (pending and not isinstance(node, Dir)):
                return Resolved(None, blocked)
            real = candidate
        return Resolved(real or b"/", blocked)

    # The oracle.
    def walk(self, root: bytes) -> Walk:
        """What a sync of the real folder `root` must find, by the identity rule."""
        walk = Walk(root.decode())
        node = self.node_at(root)
        if isinstance(node, File):  # named itself: taken whatever its name (hidden, .txt)
            self._take_file(node, walk.root, walk)
        else:
            self._walk_folder(root, walk.root, root, {root}, walk)
        return walk

    def _walk_folder(
        self, folder: bytes, identity: str, root: bytes, visited: set[bytes], walk: Walk
    ) -> None:
        node = self.node_at(folder)
        if isinstance(node, Dir) and not node.readable:
            walk.unreadable_dirs.append(identity)
            walk.reported[identity] = "unreadable"
            return
        for name, path in self.children(folder):
            if not name.startswith(b"."):
                self._walk_entry(name, path, identity, root, visited, walk)

    def _walk_entry(
        self, name: bytes, path: bytes, folder: str, root: bytes, visited: set[bytes], walk: Walk
    ) -> None:
        node = self.nodes[path]
        try:
            identity = folder + "/" + name.decode("utf-8")
        except UnicodeDecodeError:
            if isinstance(node, File) and is_image_name(name):
                walk.reported[folder + "/" + name.decode("utf-8", "backslashreplace")] = "bad-name"
            return
        if isinstance(node, Link):
            target = self.resolve(path)
            if target.blocked:
                walk.unsure.append(identity)
                return
            if target.real is not None and is_under(target.real, root):
                return  # inside the root: indexed under its own name
            path, node = target.real or b"", self.node_at(target.real) if target.real else None
        if isinstance(node, Dir):
            if path not in visited:
                visited.add(path)
                self._walk_folder(path, identity, root, visited, walk)
        elif not is_image_name(name):
            return
        elif not isinstance(node, File):  # a broken link, a FIFO or a device
            walk.reported[identity] = "not-a-file"
        else:
            self._take_file(node, identity, walk)

    def _take_file(self, node: File, identity: str, walk: Walk) -> None:
        if not node.readable:
            walk.unreadable_files[identity] = node.mtime_ns
        elif node.image:
            walk.found[identity] = (node.key, node.mtime_ns)
        else:
            walk.reported[identity] = None  # broken: any reason


@dataclass
class Expectation:
    """The image items an index must hold after a sync: `items` certainly (with these keys),
    `maybe` possibly (where the rule leaves a choice, e.g. nested roots disagreeing)."""

    items: dict[str, tuple[str, int]]
    maybe: dict[str, tuple[str, int]]


def expect_sync(previous: dict[str, tuple[str, int]], walks: list[Walk]) -> Expectation:
    """Apply one sync of `walks`' roots to the items of `previous` (identity -> (key, mtime))."""
    results = [_walk_result(previous, walk) for walk in walks]
    owned = [walk.root for walk in walks]
    items = {i: v for i, v in previous.items() if not any(is_under(i, r) for r in owned)}
    maybe: dict[str, tuple[str, int]] = {}
    names = {name for found, _ in results for name in found}
    names |= {i for i in previous for _, unsure in results for u in unsure if is_under(i, u)}
    for name in names:
        covering = [result for result, r in zip(results, owned, strict=True) if is_under(name, r)]
        values = [found.get(name) for found, _ in covering]
        if any(is_under(name, u) for _, unsure in covering for u in unsure):
            value = next((v for v in values if v), previous.get(name))
            if value is not None:
                maybe[name] = value
        elif all(v == values[0] for v in values) and values[0] is not None:
            items[name] = values[0]
        else:
            maybe[name] = next(v for v in values if v)
    return Expectation(items, maybe)


def _walk_result(
    previous: dict[str, tuple[str, int]], walk: Walk
) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """(identity -> (key, mtime) the sync keeps or adds, unsure prefixes) for one walk."""
    found = dict(walk.found)
    for name, value in previous.items():
        below_unreadable = any(is_under(name, folder) for folder in walk.unreadable_dirs)
        if below_unreadable or walk.unreadable_files.get(name) == value[1]:
            found[name] = value
    return found, walk.unsure
