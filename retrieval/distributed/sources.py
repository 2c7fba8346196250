"""What a scale-out index run reads: local folders, manifest files (one path or URL per line)
and WebDataset tar shards (`NNNN.tar` holding `KEY.jpg`, `KEY.txt`...), each turned into
`Record`s; and reading their bytes, locally or through fsspec for object-storage URLs
(`s3://`, `gs://`, `https://`...; needs the matching fsspec backend, e.g. s3fs, installed)."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import InputFileError
from ..files import canonical_root
from ..images import is_image_path, walk_images

# A manifest is any of these: one image path or URL per line (relative ones are relative to
# the manifest's folder); blank lines and lines starting with # are ignored.
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".manifest"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True, order=True)
class Record:
    """One image to index: a file or URL, or a member of a tar shard at `path`."""

    path: str
    member: str = ""

    @property
    def label(self) -> str:
        """The name stored in the catalog and shown in results: `PATH` or `SHARD.tar#MEMBER`."""
        return f"{self.path}#{self.member}" if self.member else self.path

    @property
    def is_local_file(self) -> bool:
        return not self.member and not is_url(self.path)


def is_url(path: str) -> bool:
    return "://" in path


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def list_records(inputs: Sequence[str | Path]) -> list[Record]:
    """Every image the inputs name, once each, in sorted order (so ids and shard numbers are
    the same on every run over the same inputs, which is what makes a run resumable).

    Raises:
        InputFileError: an input does not exist or is neither a folder, an image, a manifest
            nor a tar shard.
    """
    found: set[Record] = set()
    for item in inputs:
        found.update(_records_of(str(item)))
    return sorted(found)


def folder_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The inputs list_records walks as local folders (not tar shards, manifests or URLs): the
    only ones whose listing is complete, so an image missing from it was deleted."""
    return [Path(name) for name in map(str, inputs) if _kind(name) == "folder"]


def _kind(name: str) -> str:
    if _is_tar(name):
        return "tar"
    if Path(name).suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest"
    if is_url(name):
        return "url"
    return "folder" if Path(name).is_dir() else "file"


def _records_of(name: str) -> Iterator[Record]:
    kind = _kind(name)
    if kind == "tar":
        yield from _tar_records(name)
    elif kind == "manifest":
        yield from _manifest_records(name)
    elif kind == "url":
        yield Record(name)
    elif kind == "folder":
        yield from (Record(str(p)) for p in walk_images(Path(name)))  # named as files.py says
    else:
        path = Path(name)
        if not path.exists():
            raise InputFileError(f"{name} does not exist")
        if is_image_path(path):
            yield Record(str(canonical_root(path)))
        else:
            raise InputFileError(
                f"{name} is not a folder, an image, a manifest "
                f"({', '.join(sorted(MANIFEST_SUFFIXES))}"
                f": one path per line) or a WebDataset shard ({', '.join(TAR_SUFFIXES)})"
            )


def _manifest_records(name: str) -> Iterator[Record]:
    with open_binary(name) as handle:
        text = handle.read().decode("utf-8")
    base = "" if is_url(name) else str(Path(name).absolute().parent)
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _is_tar(entry) and not is_url(entry) and base:
            entry = str(Path(base, entry))
        if _is_tar(entry):
            yield from _tar_records(entry)
        elif is_url(entry):
            yield Record(entry)
        else:
            # A listing names files as a walk does: absolute, `..` and `.` folded, a link's
            # own name kept (files.py), so a manifest and a folder run agree on names.
            yield Record(os.path.abspath(os.path.join(base, entry)) if base else entry)


def _tar_records(name: str) -> Iterator[Record]:
    path = name if is_url(name) else str(canonical_root(name))
    try:
        with open_binary(path) as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
            members = [m.name for m in tar.getmembers() if m.isfile() and is_image_path(m.name)]
    except (OSError, tarfile.TarError) as err:
        raise InputFileError(f"cannot read WebDataset shard {name}: {err}") from err
    yield from (Record(path, member) for member in members)


def open_binary(path: str) -> BinaryIO:
    """Open a local file, or a URL through fsspec (imported only for URLs)."""
    if not is_url(path):
        try:
            return open(path, "rb")
        except OSError as err:
            raise InputFileError(f"cannot read {path}: {err}") from err
    import fsspec

    return fsspec.open(path, "rb").open()  # type: ignore[no-any-return]


def read_records(records: Sequence[Record]) -> list[bytes | str]:
    """The bytes of each record, or the reason it could not be read (a str); each tar shard is
    opened once per call however many of its members are asked for."""
    out: list[bytes | str] = [""] * len(records)
    by_tar: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        if record.member:
            by_tar.setdefault(record.path, []).append(position)
            continue
        try:
            with open_binary(record.path) as handle:
                out[position] = handle.read()
        except (OSError, InputFileError) as err:
            out[position] = str(err)
    for path, positions in by_tar.items():
        try:
            with open_binary(path) as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
                for position in positions:
                    out[position] = _read_member(tar, records[position].member)
        except (OSError, InputFileError, tarfile.TarError) as err:
            for position in positions:
                out[position] = f"cannot read {path}: {err}"
    return out


def _read_member(tar: tarfile.TarFile, member: str) -> bytes | str:
    try:
        handle = tar.extractfile(member)
    except KeyError:
        return f"no member {member}"
    return handle.read() if handle is not None else f"{member} is not a file"
