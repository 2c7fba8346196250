"""Embedding shards: the float16 vectors of a scale-out run, `shard_size` records per file, with
each record's position (its id within the run), content key, catalog label and, for records
that could not be embedded, the reason.

`<index>/embeddings/plan.json` pins the run (records, model, shard size); a shard file is written
(temp file + rename) only once all its records have come back, so a killed driver resumes by
re-running only the shards without a file, and a record that came back twice (a retried Ray
task) is kept once."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from .sources import Record

EMBEDDINGS_DIR = "embeddings"
# 4,096 records per shard: ~4 MiB of 512-d float16 vectors, so a killed run loses at most a
# few seconds of a GPU's work per actor, and a 100M-image run writes ~25k files.
DEFAULT_RECORDS_PER_SHARD = 4096


@dataclass(frozen=True)
class EmbeddingShard:
    """One finished shard, as read back from disk."""

    positions: np.ndarray  # int64, the records embedded
    keys: list[str]
    vectors: np.ndarray  # float16 (len(positions), dim)
    skipped: list[tuple[int, str, str]]  # (position, reason, detail)


class ShardSet:
    """The embedding shards of one run over `records`, in `directory`."""

    def __init__(
        self,
        directory: Path,
        records: Sequence[Record],
        plan: Mapping[str, Any],
        shard_size: int = DEFAULT_RECORDS_PER_SHARD,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.directory = directory
        self.records = records
        self.shard_size = shard_size
        self._buffers: dict[int, dict[int, tuple[str, np.ndarray | None, str, str]]] = {}
        digest = hashlib.sha256("\n".join(r.label for r in records).encode()).hexdigest()
        full_plan = {**plan, "shard_size": shard_size, "records_sha256": digest}
        plan_path = directory / "plan.json"
        if plan_path.is_file() and json.loads(plan_path.read_text()) != full_plan:
            shutil.rmtree(directory)  # another run's shards: never mix them into this one
        directory.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(full_plan, sort_keys=True))

    @property
    def count(self) -> int:
        return (len(self.records) + self.shard_size - 1) // self.shard_size

    def _path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:06d}.npz"

    def _size(self, shard: int) -> int:
        return min(self.shard_size, len(self.records) - shard * self.shard_size)

    def finished(self) -> set[int]:
        return {shard for shard in range(self.count) if self._path(shard).is_file()}

    def pending_ranges(self) -> list[range]:
        """Positions of the records whose shard has no file yet, one range per such shard (a
        run of 100M records costs one range per 4,096 records, not one int per record)."""
        done = self.finished()
        return [
            range(shard * self.shard_size, shard * self.shard_size + self._size(shard))
            for shard in range(self.count)
            if shard not in done
        ]

    def pending_count(self) -> int:
        return sum(len(span) for span in self.pending_ranges())

    def pending_blocks(self, rows: int) -> Iterator[dict[str, list[Any]]]:
        """The pending records as columns (position, path, member), at most `rows` per block,
        built one block at a time so a caller can hand each to Ray and drop it."""
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        for span in self.pending_ranges():
            for start in range(span.start, span.stop, rows):
                records = self.records[start : min(start + rows, span.stop)]
                yield {
                    "position": list(range(start, start + len(records))),
                    "path": [record.path for record in records],
                    "member": [record.member for record in records],
                }

    def add(
        self,
        positions: Sequence[int],
        keys: Sequence[str],
        vectors: np.ndarray,
        reasons: Sequence[str],
        details: Sequence[str],
    ) -> int:
        """Take one batch of results (reason '' = embedded); write every shard it completes.
        Returns how many records were new (not already seen)."""
        new = 0
        for row, position in enumerate(positions):
            shard = int(position) // self.shard_size
            buffer = self._buffers.setdefault(shard, {})
            if int(position) in buffer or self._path(shard).is_file():
                continue  # a duplicate from a retried task
            vector = None if reasons[row] else np.asarray(vectors[row], dtype=np.float16)
            buffer[int(position)] = (keys[row], vector, reasons[row], details[row])
            new += 1
            if len(buffer) == self._size(shard):
                self._write(shard, self._buffers.pop(shard))
        return new

    def _write(self, shard: int, rows: dict[int, tuple[str, np.ndarray | None, str, str]]) -> None:
        good = sorted(p for p, row in rows.items() if row[1] is not None)
        bad = sorted(p for p, row in rows.items() if row[1] is None)
        vectors = np.stack([rows[p][1] for p in good]) if good else np.zeros((0, 0), np.float16)
        with atomic_path(self._path(shard)) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                positions=np.asarray(good, dtype=np.int64),
                keys=np.asarray([rows[p][0] for p in good], dtype=str),
                vectors=vectors,
                skip_positions=np.asarray(bad, dtype=np.int64),
                skip_reasons=np.asarray([rows[p][2] for p in bad], dtype=str),
                skip_details=np.asarray([rows[p][3] for p in bad], dtype=str),
            )

    def __iter__(self) -> Iterator[EmbeddingShard]:
        for shard in range(self.count):
            with np.load(self._path(shard)) as data:
                skipped = zip(
                    data["skip_positions"].tolist(),
                    data["skip_reasons"].tolist(),
                    data["skip_details"].tolist(),
                    strict=True,
                )
                yield EmbeddingShard(
                    positions=data["positions"],
                    keys=data["keys"].tolist(),
                    vectors=data["vectors"],
                    skipped=list(skipped),
                )

    def remove(self) -> None:
        """Delete the run's shards once the catalog holds their vectors."""
        shutil.rmtree(self.directory, ignore_errors=True)
