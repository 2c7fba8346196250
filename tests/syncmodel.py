"""A Hypothesis state machine for `mmsearch index` re-runs (issue 19): random changes to a folder
tree, `index` with the root spelled at random, and after every run the index compared with the
oracle of tests/synctree.py. Used by tests/integration/test_sync_model.py (a few examples, in
CI) and by benchmarks/faults/sync_fuzz.py (many, plus kills, concurrent queries and unreadable
files)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import traceback
import unicodedata
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

from clirun import invoke
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from synctree import (
    Dir,
    Expectation,
    File,
    Link,
    Tree,
    Walk,
    expect_sync,
    image_bytes,
    is_under,
)


def _nfc(text: str) -> bytes:
    return unicodedata.normalize("NFC", text).encode()


def _nfd(text: str) -> bytes:
    return unicodedata.normalize("NFD", text).encode()


# `a\xff` is not UTF-8 and sits beside `a?`, its lossy spelling; é twice, composed and decomposed;
# `A` beside `a` for case renames; `.h` is hidden.
FILE_STEMS = (b"a", b"A", b"a?", b"a\xff", _nfc("é"), _nfd("é"), b".h", b"b c")
FILE_SUFFIXES = (b".jpg", b".png", b".JPG", b".txt")
DIR_NAMES = (b"d", b"D", b"sub", b".hid", b"x\xfe", _nfc("dé"), _nfd("dé"))
file_names = st.builds(bytes.__add__, st.sampled_from(FILE_STEMS), st.sampled_from(FILE_SUFFIXES))
dir_names = st.sampled_from(DIR_NAMES)
contents = st.integers(0, 7)  # a small pool, so copies and shared bytes happen
BROKEN = {"empty": b"", "text": b"not an image\n", "truncated": image_bytes(99)[:40]}
TEXT_LINES = ("red car", " blue sky ", "", "red car", "a cat", "   ", "é")
# How the root is spelled on the command line: (argument, working folder), both relative to the
# test's base folder, which holds root/, outside/, other/ and rootlink -> root.
SPELLINGS = {
    "absolute": ("{base}/root", ""),
    "trailing-slash": ("{base}/root/", ""),
    "double-slash": ("{base}//root//", ""),
    "dot": ("{base}/root/.", ""),
    "dot-dot": ("{base}/other/../root", ""),
    "relative": ("root", ""),
    "dot-relative": ("./root/", ""),
    "relative-up": ("../root", "other"),
    "symlink": ("{base}/rootlink", ""),
    "symlink-relative": ("../rootlink/", "other"),
}

# Those that name the root whatever the working folder, to give beside another spelling.
ABSOLUTE_SPELLINGS = sorted(n for n, (pattern, _) in SPELLINGS.items() if pattern[0] == "{")


class SyncMachine(RuleBasedStateMachine):
    """Random folder changes and index runs, each run compared with the oracle."""

    model: ClassVar[str] = ""  # the --model value, set by the test or benchmark
    ops: ClassVar[int] = 0  # rules run, all machines together (the benchmark's figures)
    runs: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        type(self).runs += 1
        self.base = os.fsencode(os.path.realpath(tempfile.mkdtemp(prefix="syncmodel-")))
        os.chmod(self.base, 0o755)
        self.root, self.outside = self.base + b"/root", self.base + b"/outside"
        self.index_dir = os.fsdecode(self.base + b"/index")
        self.texts = os.fsdecode(self.base + b"/texts.txt")
        Path(self.texts).write_text("red car\n")
        self.tree = Tree(self.base)
        for folder in (self.root, self.root + b"/d", self.outside, self.outside + b"/o2"):
            self.tree.mkdir(folder)
        self.tree.mkdir(self.base + b"/other")
        self.tree.symlink(self.base + b"/rootlink", b"root")
        self.tree.write(self.root + b"/a.jpg", image_bytes(0), image=True)
        self.tree.write(self.root + b"/d/b.png", image_bytes(1), image=True)
        self.tree.write(self.outside + b"/o.jpg", image_bytes(2), image=True)
        self.tree.write(self.outside + b"/o2/p.png", image_bytes(3), image=True)
        self.items: dict[str, tuple[str, int]] = {}  # the oracle: identity -> (key, mtime)
        self.text_items: set[str] = set()
        self.log: list[str] = []

    def teardown(self) -> None:
        for path in self.tree.below(self.base):
            if isinstance(self.tree.nodes.get(path), Dir | File):
                self.tree.set_readable(path, True)
        _remove_tree(self.base)

    # Helpers.
    def note(self, step: str) -> None:
        type(self).ops += 1
        self.log.append(step)

    def show(self, path: bytes) -> str:
        return repr(path.replace(self.base, b"", 1))

    def under(self, folder: bytes, kind: type | tuple[type, ...] = object) -> list[bytes]:
        return [p for p in self.tree.below(folder) if isinstance(self.tree.nodes[p], kind)]

    def pick(self, data: st.DataObject, paths: list[bytes]) -> bytes | None:
        return data.draw(st.sampled_from(paths)) if paths else None

    def free(self, folder: bytes, name: bytes) -> bytes | None:
        path = folder + b"/" + name
        return None if path in self.tree.nodes else path

    # Changes to the folders.
    @rule(data=st.data(), name=file_names, content=contents)
    def add_image(self, data: st.DataObject, name: bytes, content: int) -> None:
        path = self.free(self.pick(data, self.under(self.root, Dir)), name)
        if path:
            self.note(f"add image {self.show(path)} #{content}")
            self.tree.write(path, image_bytes(content), image=True)

    @rule(data=st.data(), name=file_names, kind=st.sampled_from([*BROKEN, "fifo"]))
    def add_broken(self, data: st.DataObject, name: bytes, kind: str) -> None:
        path = self.free(self.pick(data, self.under(self.root, Dir)), name)
        if path:
            self.note(f"add {kind} {self.show(path)}")
            if kind == "fifo":
                self.tree.mkfifo(path)
            else:
                self.tree.write(path, BROKEN[kind], image=False)

    @rule(data=st.data(), name=file_names, content=contents)
    def add_outside(self, data: st.DataObject, name: bytes, content: int) -> None:
        path = self.free(self.pick(data, self.under(self.outside, Dir)), name)
        if path:
            self.note(f"add image {self.show(path)} #{content}")
            self.tree.write(path, image_bytes(content), image=True)

    @rule(data=st.data(), content=st.one_of(contents, st.sampled_from(sorted(BROKEN))))
    def modify(self, data: st.DataObject, content: int | str) -> None:
        path = self.pick(data, self.under(self.root, File) + self.under(self.outside, File))
        if path:
            label = content if isinstance(content, str) else f"#{content}"
            self.note(f"modify {self.show(path)} -> {label}")
            if isinstance(content, str):
                self.tree.write(path, BROKEN[content], image=False)
            else:
                self.tree.write(path, image_bytes(content), image=True)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        outside = self.under(self.outside, (File, Link))
        path = self.pick(data, self.under(self.root)[1:] + outside)
        if path:
            self.note(f"delete {self.show(path)}")
            self.tree.remove(path)

    @rule(data=st.data(), file_name=file_names, dir_name=dir_names)
    def rename(self, data: st.DataObject, file_name: bytes, dir_name: bytes) -> None:
        source = self.pick(data, self.under(self.root)[1:])
        if source is None:
            return
        folders = [p for p in self.under(self.root, Dir) if not is_under(p, source)]
        name = dir_name if isinstance(self.tree.nodes[source], Dir) else file_name
        target = self.free(self.pick(data, folders), name)
        if target:
            self.note(f"rename {self.show(source)} -> {self.show(target)}")
            self.tree.rename(source, target)

    @rule(data=st.data(), name=file_names)
    def copy(self, data: st.DataObject, name: bytes) -> None:
        source = self.pick(data, self.under(self.root, File) + self.under(self.outside, File))
        target = self.free(self.pick(data, self.under(self.root, Dir)), name) if source else None
        if source and target:
            self.note(f"copy {self.show(source)} -> {self.show(target)}")
            self.tree.copy(source, target)

    @rule(data=st.data(), name=dir_names)
    def mkdir(self, data: st.DataObject, name: bytes) -> None:
        path = self.free(self.pick(data, self.under(self.root, Dir)), name)
        if path:
            self.note(f"mkdir {self.show(path)}")
            self.tree.mkdir(path)

    @rule(
        data=st.data(),
        file_name=file_names,
        dir_name=dir_names,
        kind=st.sampled_from(
            ["file", "dir", "outside-file", "outside-dir", "broken", "link", "device"]
        ),
        spelling=st.sampled_from(["absolute", "rootlink", "relative"]),
    )
    def symlink(
        self, data: st.DataObject, file_name: bytes, dir_name: bytes, kind: str, spelling: str
    ) -> None:
        targets = {
            "file": self.under(self.root, File),
            "dir": self.under(self.root, Dir),
            "outside-file": self.under(self.outside, File),
            "outside-dir": self.under(self.outside, Dir),
            "broken": [self.root + b"/missing.jpg", self.base + b"/nowhere"],
            "link": self.under(self.root, Link),
            "device": [b"/dev/null"],
        }[kind]
        target = self.pick(data, targets)
        name = dir_name if kind.endswith("dir") else file_name
        # In the root, or in an outside folder (a cycle, or a way back into the root).
        folders = self.under(self.root, Dir) + self.under(self.outside, Dir)
        path = self.free(self.pick(data, folders), name) if target else None
        if not (target and path):
            return
        if spelling == "rootlink" and is_under(target, self.root):
            target = self.base + b"/rootlink" + target[len(self.root) :]
        elif spelling == "relative" and target != b"/dev/null":
            target = os.path.relpath(target, os.path.dirname(path))
        self.note(f"symlink {self.show(path)} -> {target!r}")
        self.tree.symlink(path, target)

    @rule(lines=st.lists(st.sampled_from(TEXT_LINES), max_size=4))
    def edit_texts(self, lines: list[str]) -> None:
        self.note(f"texts = {lines!r}")
        Path(self.texts).write_text("".join(line + "\n" for line in lines))

    @rule()
    def empty_root(self) -> None:
        self.note("empty the root")
        for _, path in self.tree.children(self.root):
            self.tree.remove(path)

    @rule(count=st.integers(1, 3), first=contents)
    def refill_root(self, count: int, first: int) -> None:
        self.note(f"refill the root with #{first}..#{first + count - 1}")
        for number in range(first, first + count):
            if self.free(self.root, b"r%d.png" % number):
                self.tree.write(self.root + b"/r%d.png" % number, image_bytes(number), image=True)

    # Index runs, each compared with the oracle.
    @rule(spelling=st.sampled_from(sorted(SPELLINGS)), texts=st.booleans())
    def index_root(self, spelling: str, texts: bool) -> None:
        self.sync(spelling, [b""], texts)

    @rule(
        data=st.data(),
        spelling=st.sampled_from(sorted(SPELLINGS)),
        with_root=st.sampled_from(["alone", "before", "after"]),
    )
    def index_subfolder(self, data: st.DataObject, spelling: str, with_root: str) -> None:
        sub = self.pick(data, self.subfolders())
        if sub is None:
            return
        relative = sub[len(self.root) :]
        paths = {"alone": [relative], "before": [b"", relative], "after": [relative, b""]}
        self.sync(spelling, paths[with_root], texts=False)

    @rule(spelling=st.sampled_from(sorted(SPELLINGS)))
    def index_texts_only(self, spelling: str) -> None:
        self.sync(spelling, [], texts=True)

    @rule(data=st.data(), spelling=st.sampled_from(sorted(SPELLINGS)))
    def index_file(self, data: st.DataObject, spelling: str) -> None:
        """A file (or a link to one) named as the root: it alone is synced."""
        path = self.pick(data, self.files())
        if path:
            self.sync(spelling, [path[len(self.root) :]], texts=False)

    @rule(
        first=st.sampled_from(sorted(SPELLINGS)),
        second=st.sampled_from(ABSOLUTE_SPELLINGS),
    )
    def index_two_spellings(self, first: str, second: str) -> None:
        """The root named twice, spelled two ways: one root."""
        self.sync(first, [b""], texts=False, also=SPELLINGS[second][0])

    def subfolders(self) -> list[bytes]:
        """Folders (or links to folders) below the root that `index` can be given."""
        found = []
        for path in self.under(self.root, (Dir, Link))[1:]:
            target = self.tree.resolve(path)
            node = self.tree.node_at(target.real) if target.real else None
            if _is_utf8(path) and not target.blocked and isinstance(node, Dir) and node.readable:
                found.append(path)
        return found

    def files(self) -> list[bytes]:
        """Files (or links to files) below the root that `index` can be given."""
        found = []
        for path in self.under(self.root, (File, Link)):
            target = self.tree.resolve(path)
            node = self.tree.node_at(target.real) if target.real else None
            if _is_utf8(path) and not target.blocked and isinstance(node, File):
                found.append(path)
        return found

    def sync(self, spelling: str, relatives: list[bytes], texts: bool, also: str = "") -> None:
        """Run `index` on the root joined with each of `relatives` (and on `also`, another
        spelling of the root), then compare."""
        pattern, cwd = SPELLINGS[spelling]
        base = os.fsdecode(self.base)
        root_arg = pattern.format(base=base)
        args = [root_arg.rstrip("/") + os.fsdecode(r) if r else root_arg for r in relatives]
        args += [also.format(base=base)] if also else []
        folder = os.path.join(base, cwd)
        self.note(f"index {' '.join(args)} (cwd {cwd or '.'}){' --texts' if texts else ''}")
        self.check_mirror()
        reals = [self.tree.resolve(os.fsencode(os.path.join(folder, a))).real for a in args]
        assert all(reals), f"model bug: a root does not resolve: {args}"
        walks = [self.tree.walk(real) for real in dict.fromkeys(reals) if real]
        expected = expect_sync(self.items, walks)
        if texts:
            lines = Path(self.texts).read_text().splitlines()
            self.text_items = {line.strip() for line in lines if line.strip()}
        command = ["index", *args, "--model", self.model, "--index", self.index_dir, "--json"]
        code, output = self.run_index(
            [*command, *(["--texts", self.texts] if texts else [])], folder
        )
        self.expect(code == 0, f"index exited {code}:\n{output}")
        self.compare_reports(output, walks)
        self.compare(expected)

    def run_index(self, args: list[str], cwd: str) -> tuple[int, str]:
        """Run `mmsearch index ...` in `cwd`: (exit code, output). The benchmark overrides it."""
        return self.cli(cwd, [*args, "--workers", "0"])

    def cli(self, cwd: str, args: list[Any]) -> tuple[int, str]:
        """`mmsearch ARGS` in-process, as the indexing user."""
        with self.as_indexer():
            return run_in(cwd, args)

    def as_indexer(self) -> AbstractContextManager[object]:
        """Context in which the index is run and read: this user here; the benchmark drops
        to an unprivileged user, so that unreadable files are unreadable to the indexer."""
        return nullcontext()

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            steps = "\n".join(f"  {n}. {step}" for n, step in enumerate(self.log, 1))
            raise AssertionError(f"{message}\nsteps (paths below the base folder):\n{steps}")

    def compare_reports(self, output: str, walks: list[Walk]) -> None:
        """Bad names, broken files, special files and unreadable folders are reported."""
        reports = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        skipped = {(s["path"], s["reason"]) for r in reports for s in r.get("skipped", [])}
        paths = {path for path, _ in skipped}
        missing = [
            f"{path}: {reason or 'any reason'}"
            for walk in walks
            for path, reason in walk.reported.items()
            if (path, reason) not in skipped and not (reason is None and path in paths)
        ]
        self.expect(not missing, "not reported as skipped:\n" + "\n".join(sorted(missing)))

    def compare(self, expected: Expectation) -> None:
        """The catalog, the faiss files and queries against the oracle."""
        with self.as_indexer():
            rows = read_items(Path(self.index_dir))
        images = [row for row in rows if row["collection"] == "images"]
        paths = Counter(row["path"] for row in images)
        self.expect(len(paths) == len(images), f"duplicate items: {_repeated(paths)}")
        actual = {row["path"]: row["key"] for row in images}
        problems = [
            f"{name}: expected {key[:16]}, indexed {str(actual.get(name))[:16]}"
            for name, (key, _) in sorted(expected.items.items())
            if actual.get(name) != key
        ] + [
            f"{name}: indexed {key[:16]} but not expected"
            for name, key in sorted(actual.items())
            if name not in expected.items and expected.maybe.get(name, ("",))[0] != key
        ]
        self.expect(not problems, "the index differs from the oracle:\n" + "\n".join(problems))
        self.items = {n: v for n, v in (expected.items | expected.maybe).items() if n in actual}
        texts = Counter(row["text"] for row in rows if row["collection"] == "texts")
        self.expect(
            set(texts) == self.text_items, f"texts {sorted(texts)} != {sorted(self.text_items)}"
        )
        self.expect(len(texts) == sum(texts.values()), f"duplicate texts: {_repeated(texts)}")
        code, out = self.cli(self.index_dir, ["check", "--index", self.index_dir, "--json"])
        self.expect(code == 0, f"mmsearch check exited {code}: {out}")
        check = json.loads(out)
        counts = {"images": len(images), "texts": len(texts)}
        self.expect(check["counts"] == counts, f"check counts {check['counts']} != {counts}")
        for collection in ("images", "texts"):
            self.compare_query(rows, collection)

    def compare_query(self, rows: list[sqlite3.Row], collection: str) -> None:
        """`query --like` the first item: every other item once, no duplicates."""
        items = [row for row in rows if row["collection"] == collection]
        if not items:
            return
        field = "path" if collection == "images" else "text"
        args = ["query", "--like", items[0]["id"], "--target", collection, "--json"]
        code, out = self.cli(
            self.index_dir, [*args, "-k", len(items) + 5, "--index", self.index_dir]
        )
        self.expect(code == 0, f"query exited {code}: {out}")
        hits = Counter(hit[field] for hit in json.loads(out)["results"])
        self.expect(len(hits) == sum(hits.values()), f"duplicate hits: {_repeated(hits)}")
        others = {row[field] for row in items[1:]} - {items[0][field]}
        self.expect(set(hits) == others, f"query hits {sorted(hits)} != items {sorted(others)}")

    def check_mirror(self) -> None:
        """The mirror matches the disk (a wrong model would blame the indexer)."""
        on_disk = {self.base + b"/other", self.base + b"/rootlink"}
        for top in (self.root, self.outside):
            on_disk |= {top} | set(_list_tree(top))
        assert on_disk == set(self.tree.nodes), "model bug: the mirror differs from the disk"
        for path, node in self.tree.nodes.items():
            target = self.tree.resolve(path) if isinstance(node, Link) else None
            if target and target.real and not target.blocked:
                assert os.path.realpath(path) == target.real, f"model bug: resolve({path!r})"


def run_in(cwd: str, args: list[Any]) -> tuple[int, str]:
    """`mmsearch ARGS` in-process with `cwd` as the working folder: (exit code, stdout), or the
    output and traceback when it failed."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = invoke(*args)
    finally:
        os.chdir(previous)
    if result.exit_code == 0:
        return 0, result.stdout
    error = result.exception
    crashed = error is not None and not isinstance(error, SystemExit)
    trace = "".join(traceback.format_exception(error)) if crashed else ""
    return result.exit_code, result.output + trace


def read_items(index_dir: Path) -> list[sqlite3.Row]:
    """Every image item (no product's) and text item in the index's catalog."""
    path = index_dir / "catalog.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        query = "SELECT id, collection, path, text, key FROM items WHERE product_id IS NULL"
        return db.execute(query + " ORDER BY id").fetchall()
    finally:
        db.close()


def _list_tree(folder: bytes) -> list[bytes]:
    found = []
    for entry in os.scandir(folder):
        found.append(entry.path)
        if entry.is_dir(follow_symlinks=False):
            found += _list_tree(entry.path)
    return found


def _remove_tree(folder: bytes) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _repeated(counts: Counter[Any]) -> list[Any]:
    return sorted(str(name) for name, n in counts.items() if n > 1)


def _is_utf8(path: bytes) -> bool:
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
