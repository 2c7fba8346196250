"""The read path of an index directory (mixed into storage/store.py's IndexStore): the current
generation's faiss file of a collection, loaded lock-free and verified against what its commit
recorded, reloaded when a writer commits a new generation."""

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

    # -- reading ------------------------------------------------------------------------------
    def _faiss_path(self, collection: str, generation: int) -> Path:
        return self.directory / f"{collection}.{generation}.faiss"

    def get_index(self, collection: str) -> FaissIndex | None:
        """The current faiss index of a collection (None when it is empty), reloaded when an
        index run has committed a new generation since the last call."""
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
            return self.get_index(collection)
        self._indexes[collection] = (generation, index)
        return index

    def _open_generation(self, collection: str, generation: int) -> FaissIndex | None:
        path = self._faiss_path(collection, generation)
        if path.is_file():
            return self._load_verified(collection, path)
        if generation == 0 or not self.catalog.count(collection):
            return None
        if self.catalog.generation != generation:
            raise FileNotFoundError(path)  # deleted by the commit that moved the generation
        # Cannot happen after a clean commit; rebuild rather than refuse to answer.
        logger.warning("%s is missing; rebuilding it in memory from stored vectors", path)
        ids, vectors = self.catalog.get_vectors(collection, self.identity.dim)
        return FaissIndex.build(vectors, ids, self.index_type(collection))

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
        # Ids of merged duplicates stay in the file until the next commit (catalog.MIGRATIONS);
        # searches skip them, as they skip any id without an item.
        count = self.catalog.count(collection) + len(self.catalog.orphan_ids(collection))
        # A writer loads the old generation inside its transaction, after changing the items.
        if index.ntotal != count and not self.catalog.db.in_transaction:
            raise IndexCorruptError(
                f"{path} holds {index.ntotal} vectors but the catalog lists {count} "
                f"{collection}; {repair}"
            )
        return index

    def index_type(self, collection: str) -> str:
        return read_state(self.catalog, collection).index_type

    def tuning(self, collection: str) -> Tuning | None:
        """The recall tuning recorded for the current generation's index, if approximate."""
        return read_state(self.catalog, collection).tuning

    def _ivfdata(self, collection: str) -> str:
        """File name of the collection's on-disk inverted lists, or '' when it has none."""
        return read_state(self.catalog, collection).ivfdata
