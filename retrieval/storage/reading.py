"""The read path of an index directory (mixed into storage/store.py's IndexStore): the current
generation's faiss file of a collection, loaded lock-free and verified against what its commit
recorded, reloaded when a writer commits a new generation, with the generation's change log
applied (delta.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IndexCorruptError, IndexNotFoundError
from ..files import file_sha256
from ..index import FaissIndex
from ..index.tuning import Tuning
from ..types import ModelIdentity
from .catalog import Catalog
from .collections import read_state
from .delta import Delta, LiveIndex, base_count

if TYPE_CHECKING:
    from .store import StoreOptions

logger = logging.getLogger(__name__)

# faiss files at least this large are memory-mapped read-only on open: `query` and `serve` start
# without reading them (benchmarks/ann.py: cold open + first query of 1M vectors); writers
# reload them fully before an in-place update.
MMAP_MIN_BYTES = 256 << 20


class ReadPath:
    """Finding and loading a collection's faiss index (see IndexStore)."""

    directory: Path
    catalog: Catalog
    identity: ModelIdentity
    options: StoreOptions
    _indexes: dict[str, tuple[int, FaissIndex | None]]
    # Per collection: the LiveIndex served at a (generation, log seq), and the applied log.
    _live: dict[str, tuple[tuple[int, int], LiveIndex | None]]
    _deltas: dict[str, tuple[int, int, Delta]]

    # -- reading ------------------------------------------------------------------------------
    def _faiss_path(self, collection: str, generation: int) -> Path:
        return self.directory / f"{collection}.{generation}.faiss"

    def get_index(self, collection: str) -> LiveIndex | None:
        """The current vectors of a collection (None when it has none): the base generation's
        faiss index with the change log applied (delta.py). Reloaded when an index run or
        compaction has committed a new generation since the last call; the log's new rows are
        applied when a write has appended some (one small query per call tells which)."""
        while True:
            generation, seq = self.catalog.position()
            cached = self._live.get(collection)
            if cached is not None and cached[0] == (generation, seq):
                return cached[1]
            base = self.get_base_index(collection, generation)
            delta = self._read_delta(collection, generation, seq)
            if delta is None:  # a compaction committed meanwhile: start again
                continue
            live = LiveIndex(base, delta) if base is not None or delta.added else None
            self._live[collection] = ((generation, seq), live)
            return live

    def _read_delta(self, collection: str, generation: int, seq: int) -> Delta | None:
        """The log of `generation` up to `seq` applied, reusing what was applied before; None
        when the generation moved while reading (the rows read may be from another)."""
        known = self._deltas.get(collection)
        if known is None or known[0] != generation or known[1] > seq:
            known = (generation, 0, Delta())
        _, done, delta = known
        if seq > done:
            # A private copy: searches in flight keep the Delta they started with.
            delta = _copy(delta)
            logged = [
                item_id
                for row_seq, name, item_id, _ in self.catalog.read_delta(done)
                if name == collection and row_seq <= seq
            ]
            wanted = delta.apply(logged, self.catalog.base_max_id)
            if wanted:
                ids, vectors = self.catalog.get_item_vectors(wanted, self.identity.dim)
                delta.extend(ids, vectors)
        # Rows are only deleted by the compaction that moves the generation: an unchanged
        # generation means they were read whole.
        if self.catalog.generation != generation:
            return None
        self._deltas[collection] = (generation, seq, delta)
        return delta

    def get_base_index(self, collection: str, generation: int | None = None) -> FaissIndex | None:
        """The faiss index of `generation` (default: the current one) as its file holds it,
        without the change log (None when the collection was empty at that generation)."""
        if generation is None:
            generation = self.catalog.generation
        cached = self._indexes.get(collection)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            index = self._open_generation(collection, generation)
        except (IndexCorruptError, IndexNotFoundError, FileNotFoundError):
            # Readers take no lock: the generation, the file, its checksum and the count are
            # read one after another, and an index run may commit in between (recording the
            # next file's checksum, then deleting this generation's file: faiss then says
            # IndexNotFoundError). Only a failure at an unchanged generation means damage;
            # otherwise open the new one.
            if self.catalog.generation == generation:
                raise
            return self.get_base_index(collection)
        self._indexes[collection] = (generation, index)
        return index

    def _open_generation(self, collection: str, generation: int) -> FaissIndex | None:
        path = self._faiss_path(collection, generation)
        if path.is_file():
            return self._load_verified(collection, path)
        if generation == 0 or not self._had_items(collection):
            return None
        if self.catalog.generation != generation:
            raise FileNotFoundError(path)  # deleted by the commit that moved the generation
        # Cannot happen after a clean commit; rebuild rather than refuse to answer.
        logger.warning("%s is missing; rebuilding it in memory from stored vectors", path)
        ids, vectors = self.catalog.get_vectors(collection, self.identity.dim)
        return FaissIndex.build(vectors, ids, self.index_type(collection))

    def _had_items(self, collection: str) -> bool:
        """Whether the collection has items the current generation's files must hold: those
        up to base_max_id. Items added since come from the change log (delta.py), so a
        collection empty at the generation has no file and no base index."""
        query = "SELECT EXISTS(SELECT 1 FROM items WHERE collection=? AND id<=?)"
        row = self.catalog.db.execute(query, (collection, self.catalog.base_max_id)).fetchone()
        return bool(row[0])

    def _load_verified(self, collection: str, path: Path) -> FaissIndex:
        """Load a faiss file, refusing one that differs from what the commit recorded: a
        damaged file must fail loudly, never answer with wrong neighbours."""
        repair = f"run `mmsearch check --repair --index {self.directory}` to rebuild it"
        # on-disk inverted lists are mapped by faiss itself (IO_FLAG_MMAP breaks them)
        mmap = path.stat().st_size >= MMAP_MIN_BYTES and not self._ivfdata(collection)
        recorded = read_state(self.catalog, collection).sha256
        # Files read fully are hashed too (one more pass over bytes in the page cache);
        # memory-mapped ones are too large for every open: `mmsearch check` hashes them.
        if recorded and not mmap and file_sha256(path) != recorded:
            raise IndexCorruptError(
                f"{path} does not match the checksum recorded at commit; {repair}"
            )
        tuning = self.tuning(collection)
        try:
            index = FaissIndex.load(
                path,
                use_gpu=self.options.use_gpu,
                mmap=mmap,
                search_params=tuning.params if tuning is not None else None,
            )
        except IndexCorruptError as err:
            raise IndexCorruptError(f"{err}; {repair}") from err
        # A writer loads the old generation inside its transaction, after changing the items.
        if not self.catalog.db.in_transaction:
            self._check_count(collection, path, index, repair)
        return index

    def _check_count(self, collection: str, path: Path, index: FaissIndex, repair: str) -> None:
        """The file holds as many vectors as the catalog's items, its orphans and its change
        log say; a write committing meanwhile moves the log, so compare at one position."""
        while True:
            position = self.catalog.position()
            delta = Delta()
            logged = [i for _, name, i, _ in self.catalog.read_delta() if name == collection]
            wanted = delta.apply(logged, self.catalog.base_max_id)
            existing = self.catalog.get_items(wanted)
            delta.rows = {i: -1 for i in existing}
            # Ids of merged duplicates stay in the file until the next commit
            # (catalog.MIGRATIONS); searches skip them, as they skip any id without an item.
            orphans = len(self.catalog.orphan_ids(collection))
            count = base_count(self.catalog.count(collection), orphans, delta)
            if self.catalog.position() != position:
                continue
            if index.ntotal != count:
                raise IndexCorruptError(
                    f"{path} holds {index.ntotal} vectors but the catalog and its change log "
                    f"list {count} {collection}; {repair}"
                )
            return

    def index_type(self, collection: str) -> str:
        return read_state(self.catalog, collection).index_type

    def tuning(self, collection: str) -> Tuning | None:
        """The recall tuning recorded for the current generation's index, if approximate."""
        return read_state(self.catalog, collection).tuning

    def _ivfdata(self, collection: str) -> str:
        """File name of the collection's on-disk inverted lists, or '' when it has none."""
        return read_state(self.catalog, collection).ivfdata


def _copy(delta: Delta) -> Delta:
    return Delta(
        hidden=set(delta.hidden),
        rows=dict(delta.rows),
        ids=delta.ids.copy(),
        vectors=delta.vectors,
    )
