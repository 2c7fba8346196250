"""`mmsearch check`: verify an index directory against its own records, and repair what can be
rebuilt from them.

What is checked: manifest.json against the copy the catalog recorded at creation; SQLite's own
integrity check; every item has a stored vector of the right size; each collection's faiss file
of the current generation exists, matches the sha256 recorded at commit, loads, and holds
exactly the catalog's item ids; no stray files of other generations or interrupted writes.

What --repair does: rewrite the manifest from the catalog's copy, REINDEX a catalog whose
damage is confined to its indexes, rebuild faiss files from the stored vectors as a new
generation, and delete stray files, all under the writer lock. It never drops an item: an item
whose vector is gone is reported with the `mmsearch index` command that re-embeds it."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import IndexCorruptError, IndexNotFoundError, MmsearchError
from .files import file_sha256, write_atomic
from .index import FaissIndex
from .sqlite_errors import classify_sqlite_error
from .store import CATALOG, LOCK, MANIFEST, MANIFEST_META, IndexStore
from .types import COLLECTIONS, IMAGES

# SQLite's own companions of catalog.sqlite in WAL mode.
_KNOWN_FILES = frozenset({MANIFEST, CATALOG, CATALOG + "-wal", CATALOG + "-shm", LOCK})
# Items of a collection listed per problem before the rest are only counted.
_EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an index directory, and what fixes it."""

    kind: str  # manifest, sqlite, vector-missing, vector-size, faiss-missing, faiss-checksum,
    # faiss-unreadable, faiss-mismatch, stray-file
    where: str
    detail: str
    fix: str  # the command that repairs it
    repairable: bool  # by `mmsearch check --repair`


@dataclass
class CheckReport:
    """What `check_index` found (and, after `repair_index`, what it repaired)."""

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
        for collection in COLLECTIONS:
            report.counts[collection] = catalog.count(collection)
            _check_faiss(catalog, directory, collection, report, repair, verify_checksums)
        _check_stray_files(directory, report.generation, report, repair)
    except sqlite3.DatabaseError as err:
        report.problems.append(_sqlite_problem(directory, err))
    finally:
        catalog.close()
    return report


def _sqlite_problem(directory: Path, err: sqlite3.DatabaseError) -> Problem:
    """Damage as a problem to report; a full or failing disk or a lock held elsewhere is not
    damage the check could find or repair, so that is raised as what it is."""
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
    if not path.is_file():
        report.problems.append(
            Problem("faiss-missing", str(path), f"{count} {collection} but no index", repair, True)
        )
        return
    recorded = catalog.get_meta(f"sha256:{collection}")
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
    if not np.array_equal(found, expected):
        missing = np.setdiff1d(expected, found).size
        extra = np.setdiff1d(found, expected).size
        detail = (
            f"{found.size} vectors for {expected.size} items: {missing} items missing, "
            f"{extra} ids not in the catalog"
        )
        report.problems.append(Problem("faiss-mismatch", str(path), detail, repair, True))


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


def repair_index(directory: Path) -> CheckReport:
    """Repair what `check_index` reports as repairable, then check again.

    Raises:
        IndexBusyError: an index run holds the writer lock.
        IndexNotFoundError: `directory` holds no index.
    """
    directory = Path(directory)
    before = check_index(directory)
    kinds = {problem.kind for problem in before.problems if problem.repairable}
    repaired: list[str] = []
    if "sqlite" in kinds:
        repaired += _repair_sqlite(directory)
        before = check_index(directory)
        kinds = {problem.kind for problem in before.problems if problem.repairable}
        if "sqlite" in kinds:
            before.repaired = repaired
            return before
    if "manifest" in kinds:
        repaired.append(_rewrite_manifest(directory))
    if kinds - {"sqlite", "manifest"}:
        with IndexStore.open(directory) as store, store.writer_lock():
            if kinds & {"faiss-missing", "faiss-checksum", "faiss-unreadable", "faiss-mismatch"}:
                with store.catalog.transaction():
                    store.commit({}, force_rebuild=True)
                repaired.append(
                    f"rebuilt the faiss indexes from the stored vectors as generation "
                    f"{store.catalog.generation}"
                )
            store.cleanup()
            if "stray-file" in kinds:
                repaired.append("deleted stray files of other generations or interrupted writes")
    after = check_index(directory)
    after.repaired = repaired
    return after


def _repair_sqlite(directory: Path) -> list[str]:
    """REINDEX rebuilds every SQLite index from its table: it cures damage confined to them.
    Damaged table pages hold data that cannot be rebuilt from the index's own records."""
    try:
        db = sqlite3.connect(directory / CATALOG, isolation_level=None)
        try:
            db.execute("REINDEX")
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return []
    return ["rebuilt the catalog's SQLite indexes (REINDEX)"]


def _rewrite_manifest(directory: Path) -> str:
    catalog = Catalog(directory / CATALOG, readonly=True)
    try:
        recorded = catalog.get_meta(MANIFEST_META)
    finally:
        catalog.close()
    if recorded is None:
        raise IndexCorruptError(f"{directory / MANIFEST}: no recorded copy to restore it from")
    write_atomic(directory / MANIFEST, json.dumps(json.loads(recorded), indent=2).encode())
    return f"restored {directory / MANIFEST} from the catalog's copy"


__all__ = ["CheckReport", "Problem", "check_index", "repair_index", "stray_files"]
