"""`mmsearch check`: verify an index directory against its own records (what can be
rebuilt from them is repaired by ingest/repair.py).

What is checked: manifest.json against the copy the catalog recorded at creation; SQLite's own
integrity check; every item has a stored vector of the right size; each collection's faiss file
of the current generation exists, matches the sha256 recorded at commit, loads, and holds
exactly the catalog's item ids once the change log (storage/delta.py) is applied; no stray
files of other generations or interrupted writes.

Each folder image is stored once, under its identity (files.py): two items whose paths name one
file (a root indexed through a symlink or with `..` by versions before that rule), or a path
that is not in normal form, are problems too.

What `--repair` does is ingest/repair.py's (a writer, so it lives above storage)."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError, IndexNotFoundError, MmsearchError
from ..files import canonical_root, file_sha256, is_within_any
from ..index import FaissIndex
from ..sqlite_errors import classify_sqlite_error
from ..types import COLLECTIONS, IMAGES
from .blobs import BLOBS, URL_RECORDS, unused_blobs
from .catalog import Catalog
from .collections import read_state
from .compaction import COMPACT_DIR, COMPACT_LOCK
from .probes import RECORDED_FILE
from .store import CATALOG, LOCK, MANIFEST, MANIFEST_META, IndexStore
from .synonyms import FILE_NAME as SYNONYMS_FILE

# SQLite's own companions of catalog.sqlite in WAL mode.
# blobs/ and fetched/: image bytes that came as URLs or data: URLs, and what each URL gave.
# synonyms.txt (`index --synonyms`) and recorded_queries.npy (`serve --record-queries`).
_KNOWN_FILES = frozenset(
    {
        MANIFEST,
        CATALOG,
        CATALOG + "-wal",
        CATALOG + "-shm",
        LOCK,
        # a compaction's lock, and its work folder while it builds (a killed one's is removed
        # by the next writer: compaction.drop_abandoned)
        COMPACT_LOCK,
        COMPACT_DIR,
        BLOBS,
        URL_RECORDS,
        SYNONYMS_FILE,
        RECORDED_FILE,
    }
)
# Items of a collection listed per problem before the rest are only counted.
_EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an index directory, and what fixes it."""

    kind: str  # manifest, sqlite, vector-missing, vector-size, faiss-missing, faiss-checksum,
    # faiss-unreadable, faiss-mismatch, delta-mismatch, stray-file, duplicate, identity, orphans
    where: str
    detail: str
    fix: str  # the command that repairs it
    repairable: bool  # by `mmsearch check --repair`


@dataclass
class CheckReport:
    """What `check_index` found (and, after ingest.repair.repair_index, what it repaired)."""

    directory: str
    generation: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_index(directory: Path, *, verify_checksums: bool = True) -> CheckReport:
    """Verify `directory` against its own records; never writes.

    Raises:
        IndexNotFoundError: `directory` holds no index.
        DiskFullError, StorageIOError, IndexBusyError: SQLite could not read the catalog for a
            reason other than damage (retrieval/sqlite_errors.py).
    """
    directory = Path(directory)
    if not IndexStore.exists(directory):
        raise IndexNotFoundError(f"no index at {directory}: nothing to check")
    report = CheckReport(str(directory.absolute()))
    repair = f"mmsearch check --repair --index {directory}"
    try:
        catalog = Catalog(directory / CATALOG, readonly=True)
    except sqlite3.DatabaseError as err:
        report.problems.append(_sqlite_problem(directory, err))
        return report
    try:
        _check_sqlite(catalog, directory, report)
        if report.problems:  # the rest reads tables that cannot be trusted now
            return report
        manifest = _check_manifest(catalog, directory, report, repair)
        report.generation = catalog.generation
        dim = _dim(manifest)
        if dim is not None:
            _check_vectors(catalog, directory, dim, report)
        _check_identities(catalog, directory, report, repair)
        for collection in COLLECTIONS:
            report.counts[collection] = catalog.count(collection)
            _check_faiss(catalog, directory, collection, report, repair, verify_checksums)
        _check_stray_files(directory, report.generation, report, repair)
        # Not damage (check stays clean): images of replaced or deleted products, which
        # `--repair` deletes once they are older than UNUSED_BLOB_GRACE_S.
        unused = (
            unused_blobs(directory, catalog.blob_names()) if (directory / BLOBS).is_dir() else []
        )
        if unused:
            report.counts["unused_blobs"] = len(unused)
    except sqlite3.DatabaseError as err:
        report.problems.append(_sqlite_problem(directory, err))
    finally:
        catalog.close()
    return report


def _sqlite_problem(directory: Path, err: sqlite3.DatabaseError | str) -> Problem:
    """Damage (an error, or what PRAGMA integrity_check found) as a problem to report; a full
    or failing disk or a lock held elsewhere is not damage the check could find or repair, so
    that is raised as what it is."""
    if isinstance(err, sqlite3.DatabaseError):
        error = classify_sqlite_error(err, directory)
        if not isinstance(error, IndexCorruptError):
            raise error from err
    return Problem(
        "sqlite",
        str(directory / CATALOG),
        str(err),
        f"mmsearch check --repair --index {directory}; if that cannot fix it, move {directory} "
        f"aside and rebuild: mmsearch index FOLDERS --index {directory}",
        True,
    )


def _check_sqlite(catalog: Catalog, directory: Path, report: CheckReport) -> None:
    rows = catalog.db.execute("PRAGMA integrity_check").fetchall()
    messages = [row[0] for row in rows if row[0] != "ok"]
    if messages:
        report.problems.append(_sqlite_problem(directory, "; ".join(messages[:_EXAMPLES])))


def _check_manifest(
    catalog: Catalog, directory: Path, report: CheckReport, repair: str
) -> dict[str, Any] | None:
    recorded_raw = catalog.get_meta(MANIFEST_META)
    recorded = json.loads(recorded_raw) if recorded_raw else None
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        fixable = recorded is not None
        fix = repair if fixable else f"rebuild: mmsearch index FOLDERS --index NEW_DIR ({err})"
        report.problems.append(Problem("manifest", str(path), f"unreadable: {err}", fix, fixable))
        return recorded
    if recorded is not None and manifest != recorded:
        changed = sorted(
            key
            for key in set(manifest) | set(recorded)
            if not isinstance(manifest, dict) or manifest.get(key) != recorded.get(key)
        )
        detail = "differs from the copy recorded at creation in: " + ", ".join(changed)
        report.problems.append(Problem("manifest", str(path), detail, repair, True))
        return recorded
    return manifest if isinstance(manifest, dict) else None


def _dim(manifest: dict[str, Any] | None) -> int | None:
    try:
        return int(manifest["model"]["dim"]) if manifest else None
    except (KeyError, TypeError, ValueError):
        return None


def _reembed_command(collection: str, directory: Path) -> str:
    if collection == IMAGES:
        return f"mmsearch index FOLDERS --index {directory} (re-reads and re-embeds those files)"
    return f"mmsearch index --texts FILE --index {directory} (or --catalog FILE for products)"


def _check_vectors(catalog: Catalog, directory: Path, dim: int, report: CheckReport) -> None:
    for collection in COLLECTIONS:
        rows = catalog.db.execute(
            "SELECT id, COALESCE(path, text, product_id) FROM items WHERE collection=? AND "
            "key NOT IN (SELECT key FROM vectors) ORDER BY id",
            (collection,),
        ).fetchall()
        if rows:
            names = ", ".join(f"#{row[0]} {row[1]!r}" for row in rows[:_EXAMPLES])
            more = f" and {len(rows) - _EXAMPLES} more" if len(rows) > _EXAMPLES else ""
            report.problems.append(
                Problem(
                    "vector-missing",
                    str(directory / CATALOG),
                    f"{len(rows)} {collection} have no stored vector: {names}{more}",
                    _reembed_command(collection, directory),
                    False,
                )
            )
    bad = catalog.db.execute(
        "SELECT COUNT(*) FROM vectors WHERE length(vector) != ?", (dim * 2,)
    ).fetchone()[0]
    if bad:
        report.problems.append(
            Problem(
                "vector-size",
                str(directory / CATALOG),
                f"{bad} stored vectors are not {dim} float16 values",
                f"mmsearch index FOLDERS --index {directory} after deleting them: "
                f'sqlite3 {directory / CATALOG} "DELETE FROM vectors WHERE length(vector) != '
                f'{dim * 2}"',
                False,
            )
        )


def identity_of(path: str) -> str:
    """What files.py names the file at `path`: its real path while it exists (a spelling
    through a symlinked root or with `..` folds), else its normal form. Tar members and URLs
    (Ray inputs) are names, not files: kept as they are."""
    if "://" in path or "#" in path:
        return path
    return str(canonical_root(path)) if os.path.exists(path) else os.path.normpath(path)


Named = tuple[int, str]  # (item id, path)


def identity_groups(catalog: Catalog) -> tuple[list[list[Named]], list[Named]]:
    """(groups of folder images that name one file where some name is a stale spelling, oldest
    first; images whose path is not in normal form but names no other item's file).

    Two names of one file are both right when each lies under a root a sync recorded (a file
    reached through a link out of a root is an item of its own, files.py rule 3); a name under
    no recorded root is a spelling of a root that later syncs fold (a symlinked or `..` root
    indexed by versions before the rule). With no roots recorded, every such group counts."""
    roots = catalog.get_roots()
    by_identity: dict[str, list[tuple[int, str]]] = {}
    rows = catalog.db.execute(
        "SELECT id, path FROM items WHERE collection=? AND product_id IS NULL AND path IS NOT "
        "NULL ORDER BY id",
        (IMAGES,),
    )
    for item_id, path in rows:
        by_identity.setdefault(identity_of(path), []).append((item_id, path))
    groups = [
        group
        for group in by_identity.values()
        if len(group) > 1 and not all(is_within_any(path, roots) for _, path in group)
    ]
    odd = [
        group[0]
        for group in by_identity.values()
        if len(group) == 1
        and "://" not in group[0][1]
        and os.path.normpath(group[0][1]) != group[0][1]
    ]
    return groups, odd


def _check_identities(catalog: Catalog, directory: Path, report: CheckReport, repair: str) -> None:
    groups, odd = identity_groups(catalog)
    where = str(directory / CATALOG)
    if groups:
        names = "; ".join(" = ".join(repr(path) for _, path in group) for group in groups[:3])
        more = f" and {len(groups) - 3} more" if len(groups) > 3 else ""
        detail = f"{len(groups)} files are indexed under more than one name: {names}{more}"
        report.problems.append(Problem("duplicate", where, detail, repair, True))
    if odd:
        names = ", ".join(f"#{item_id} {path!r}" for item_id, path in odd[:_EXAMPLES])
        detail = f"{len(odd)} images are stored under a path not in normal form: {names}"
        report.problems.append(Problem("identity", where, detail, repair, True))
    orphans = sum(len(catalog.orphan_ids(collection)) for collection in COLLECTIONS)
    if orphans:
        detail = f"{orphans} vectors of merged duplicates are still in the faiss files"
        report.problems.append(Problem("orphans", where, detail, repair, True))


def _check_faiss(
    catalog: Catalog,
    directory: Path,
    collection: str,
    report: CheckReport,
    repair: str,
    verify_checksums: bool,
) -> None:
    count = report.counts[collection]
    path = directory / f"{collection}.{report.generation}.faiss"
    if count == 0:
        return
    base_max = catalog.base_max_id
    logged = {i for _, name, i, _ in catalog.read_delta() if name == collection}
    if not path.is_file():
        # A collection empty at this generation may have gained items through the log since.
        newer = catalog.db.execute(
            "SELECT id FROM items WHERE collection=? AND id<=?", (collection, base_max)
        ).fetchall()
        if newer or any(i <= base_max for i in logged):
            report.problems.append(
                Problem(
                    "faiss-missing", str(path), f"{count} {collection} but no index", repair, True
                )
            )
        else:
            _check_logged(catalog, directory, collection, logged, report, repair)
        return
    recorded = read_state(catalog, collection).sha256
    if verify_checksums and recorded and file_sha256(path) != recorded:
        report.problems.append(
            Problem("faiss-checksum", str(path), "sha256 differs from the commit's", repair, True)
        )
        return
    try:
        index = FaissIndex.load(path)
    except MmsearchError as err:
        report.problems.append(Problem("faiss-unreadable", str(path), str(err), repair, True))
        return
    expected = np.fromiter(
        (
            row[0]
            for row in catalog.db.execute(
                "SELECT id FROM items WHERE collection=? ORDER BY id", (collection,)
            )
        ),
        dtype=np.int64,
    )
    found = index.ids()
    # The change log (storage/delta.py) hides the logged ids the base holds (every logged id
    # up to base_max_id) and serves those still items from the catalog.
    hidden = np.asarray(sorted(i for i in logged if i <= base_max), dtype=np.int64)
    stale = np.setdiff1d(hidden, found)
    newer = found[found > base_max]
    if stale.size or newer.size:
        detail = (
            f"the change log hides {stale.size} ids the base file does not hold and the file "
            f"holds {newer.size} ids newer than its generation"
        )
        report.problems.append(Problem("delta-mismatch", str(path), detail, repair, True))
    found = np.setdiff1d(found, hidden)
    live = np.asarray(sorted(set(catalog.get_items(sorted(logged)))), dtype=np.int64)
    found = np.union1d(found, live)
    # Ids of merged duplicates stay in the file until the next commit ("orphans" above).
    found = np.setdiff1d(found, np.asarray(catalog.orphan_ids(collection), dtype=np.int64))
    if not np.array_equal(found, expected):
        missing = np.setdiff1d(expected, found).size
        extra = np.setdiff1d(found, expected).size
        detail = (
            f"{found.size} vectors for {expected.size} items: {missing} items missing, "
            f"{extra} ids not in the catalog"
        )
        report.problems.append(Problem("faiss-mismatch", str(path), detail, repair, True))


def _check_logged(
    catalog: Catalog,
    directory: Path,
    collection: str,
    logged: set[int],
    report: CheckReport,
    repair: str,
) -> None:
    """A collection with no base file: every item must have come through the change log."""
    ids = {
        row[0]
        for row in catalog.db.execute("SELECT id FROM items WHERE collection=?", (collection,))
    }
    unlogged = ids - logged
    if unlogged:
        detail = f"{len(unlogged)} {collection} are neither in a faiss file nor in the change log"
        report.problems.append(
            Problem("delta-mismatch", str(directory / CATALOG), detail, repair, True)
        )


def stray_files(directory: Path, generation: int) -> list[Path]:
    """Files in an index directory that no reader of `generation` opens."""
    current = {f"{collection}.{generation}.faiss" for collection in COLLECTIONS}
    return sorted(
        path
        for path in directory.iterdir()
        if path.name not in _KNOWN_FILES and path.name not in current
    )


def _check_stray_files(directory: Path, generation: int, report: CheckReport, repair: str) -> None:
    for path in stray_files(directory, generation):
        ours = path.name.endswith(".faiss") or (
            path.name.startswith(".") and path.name.endswith(".tmp")
        )
        fix = repair if ours else f"not written by mmsearch: move {path} out of the index directory"
        report.problems.append(Problem("stray-file", str(path), "not part of the index", fix, ours))


__all__ = [
    "CheckReport",
    "Problem",
    "check_index",
    "identity_groups",
    "identity_of",
    "stray_files",
]
