"""SearchService: the one application object shared by the CLI and the HTTP app. It answers a
SearchRequest with a SearchResult, whose JSON both front ends print as is."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DEFAULT_FACET_MARGIN, MAX_K, MERCH_DEPTH, MERCH_START_DEPTH
from ..embedders.protocols import QueryEmbedder
from ..errors import InvalidQueryError, ItemNotFoundError
from ..storage import keywords
from ..storage.catalog import Item, product_columns
from ..storage.store import IndexStore
from ..storage.synonyms import load_synonyms
from ..types import COLLECTIONS, IMAGES, PRODUCTS, TARGETS, Hit, Vectors
from . import shop
from .candidates import ProductCandidates
from .hits import hit_from_item
from .hybrid import HYBRID, HYBRID_DEPTH, KEYWORD, MODES, SEMANTIC, fuse_hits
from .merch import CatalogCache
from .products import passing_products, score_products
from .queries import (
    MAX_COLLAPSE_DEPTH,
    MAX_PARTS,
    QueryPart,
    collapse,
    combine,
)
from .requests import SearchRequest, SearchResult, check_k

if TYPE_CHECKING:
    from ..storage.probes import QueryRecorder
    from .batching import BatchingTextEncoder


class SearchService:
    """Embeds queries and searches one index directory. Closing it (or leaving a `with`
    block) closes the store and the embedder, which stops a text batcher's worker."""

    def __init__(
        self,
        store: IndexStore,
        embedder_factory: Callable[[], QueryEmbedder],
        *,
        text_batcher: BatchingTextEncoder | None = None,
        recorder: QueryRecorder | None = None,
    ) -> None:
        """`text_batcher`: the micro-batcher behind the embedder's text queries, if any; the
        service reports its counters (/stats, /metrics) and stops it on close. `recorder`:
        keeps a sample of the query vectors searched with, for re-tuning (serve
        --record-queries, storage/probes.py); saved on close."""
        self.store = store
        self._embedder_factory = embedder_factory
        self.text_batcher = text_batcher
        self.recorder = recorder
        self._lock = threading.Lock()
        self._catalog_cache = CatalogCache()  # facet bands and browsing's counts (merch.py)
        self._candidates = ProductCandidates(store, self._lock)

    @cached_property
    def embedder(self) -> QueryEmbedder:
        return self._embedder_factory()

    # -- embedding ----------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> Vectors:
        """Normalised query vectors for texts (rejects empty ones)."""
        for text in texts:
            if not text or not text.strip():
                raise InvalidQueryError("the query text is empty; pass some words to search for")
        return self.embedder.encode_texts([text.strip() for text in texts])

    def embed_image(self, source: Path | bytes) -> Vectors:
        """Normalised (1, dim) query vector for an image file or its bytes."""
        return self.embedder.encode_image_sources([source])

    # -- searching ----------------------------------------------------------------------------
    def _metadata(self, product_id: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
        if product_id is None:
            return metadata
        product = self.store.catalog.get_product(product_id) or {}
        return {**product, **metadata, "product_id": product_id}

    def _products_metadata(self, product_ids: list[str]) -> dict[str | None, dict[str, Any]]:
        """What product hits show, for many products in one read (unknown ids left out)."""
        records = self.store.catalog.get_product_records(product_ids)
        return {pid: {**rec.metadata, "product_id": pid} for pid, rec in records.items()}

    # -- the general entry point ------------------------------------------------------------
    @property
    def has_catalog(self) -> bool:
        return self.store.catalog.has_products()

    def default_target(self) -> str:
        """The target of a request that names none: products with a catalog, else images."""
        return PRODUCTS if self.has_catalog else IMAGES

    def search(self, request: SearchRequest) -> SearchResult:
        """Run one SearchRequest: text or image, over images, texts or products; a product
        request without a query browses (shop.py)."""
        target = request.target or self.default_target()
        if request.browse and target == PRODUCTS and self.has_catalog and request.mode is None:
            listing = shop.browse(self.store.catalog, request, self._catalog_cache)
            echo = request.echo(target)
            return SearchResult(echo, listing.hits, listing.has_more, listing.total, listing.facets)
        mode = self.resolve_mode(request)
        echo = {**request.echo(target), "mode": mode}
        if request.merchandised:
            if target != PRODUCTS:
                raise InvalidQueryError("facets, sort and boost apply to products only")
            listing = shop.merchandise(
                self.store.catalog, request, self._ranker(request, mode), self._catalog_cache
            )
            return SearchResult(echo, listing.hits, listing.has_more, listing.total, listing.facets)
        if mode == SEMANTIC:
            hits, has_more = self._search(request, target)
        else:
            hits, has_more = self._search_keywords(request, target, mode)
        return SearchResult(echo, hits, has_more)

    def resolve_mode(self, request: SearchRequest) -> str:
        """The request's search mode, or its default: hybrid for a text query of an index with
        a product catalog, semantic otherwise."""
        if request.mode is None:
            return HYBRID if request.text is not None and self.has_catalog else SEMANTIC
        if request.mode not in MODES:
            raise InvalidQueryError(f"unknown mode {request.mode!r}; use one of {', '.join(MODES)}")
        if request.composed and request.mode != SEMANTIC:
            raise InvalidQueryError(
                "composed and more-like-this queries are vectors: use mode semantic (the default)"
            )
        if request.mode != SEMANTIC and request.text is None:
            raise InvalidQueryError(
                f"{request.mode} search needs a query text; search by image with mode semantic"
            )
        return request.mode

    def _search_keywords(
        self, request: SearchRequest, target: str, mode: str
    ) -> tuple[list[Hit], bool]:
        """Keyword (BM25) hits, or in hybrid mode their reciprocal rank fusion with the
        semantic hits (see hybrid.py), and whether another page follows; filters narrow both
        rankings alike. `min_score` (a cosine) and `collapse` act on the semantic ranking."""
        check_k(request.k, request.offset)
        wanted = request.k + request.offset
        if wanted > MAX_K:
            raise InvalidQueryError(
                f"{mode} results go {MAX_K} deep: offset + k must be at most {MAX_K}"
            )
        if target not in TARGETS:
            raise InvalidQueryError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
        if request.filters and target != PRODUCTS:
            raise InvalidQueryError("filters apply to products only; use target=products")
        if mode == KEYWORD:
            if request.min_score is not None:
                raise InvalidQueryError(
                    "min_score is a cosine cutoff: use it with mode semantic or hybrid"
                )
            hits = self._keyword_hits(request, target, wanted + 1)
            return hits[request.offset : wanted], len(hits) > wanted
        depth = min(MAX_K, max(HYBRID_DEPTH, wanted + 1))
        # Keyword first: of two hits that tie (each ranked r by one list only), the one whose
        # words match wins; a match of names or captions is the more precise evidence.
        rankings = {
            KEYWORD: self._keyword_hits(request, target, depth),
            SEMANTIC: self._search(replace(request, k=depth, offset=0), target)[0],
        }
        page = fuse_hits(rankings, _fusion_key(target), k=request.k + 1, offset=request.offset)
        return page[: request.k], len(page) > request.k

    def _keyword_hits(
        self,
        request: SearchRequest,
        target: str,
        depth: int,
        matched: Callable[[], list[keywords.KeywordMatch]] | None = None,
    ) -> list[Hit]:
        """The top `depth` BM25 hits of the query's words (products: each product scored by
        its best item, shown by its best-matching image). `matched`: the query's product
        matches, when the caller has them (a merchandised query ranks under two filter sets)."""
        catalog = self.store.catalog
        if not keywords.has_keywords(catalog.db):
            raise InvalidQueryError(
                f"the index at {self.store.directory} has no keyword index (an older mmsearch "
                "built it and it is read-only here); run `mmsearch index` on it once to add one"
            )
        text = request.text or ""
        synonyms = load_synonyms(self.store.directory)  # see storage/synonyms.py
        if target != PRODUCTS:
            matches = keywords.search(catalog.db, text, target, limit=depth, synonyms=synonyms)
        else:
            if not self.has_catalog:
                raise InvalidQueryError("target products needs a product catalog")
            # The filters are checked on the matched products only (their SKUs' rows), not by
            # listing every product that passes: a broad filter listed 66k SKUs at 100k.
            if matched is not None:
                found = matched()
            else:
                found = keywords.search(
                    catalog.db, text, None, limit=None, products_only=bool(request.filters),
                    synonyms=synonyms,
                )  # fmt: skip
            if request.filters:
                matched = list({match.product_id or "" for match in found})
                passing = passing_products(catalog, request.filters, matched)
                found = [match for match in found if match.product_id in passing]
            best: dict[str, keywords.KeywordMatch] = {}
            shown: dict[str, keywords.KeywordMatch] = {}
            for match in found:  # best first, so the first match of a product is its score
                pid = match.product_id or ""
                best.setdefault(pid, match)
                upgrade = pid in shown and shown[pid].collection != IMAGES == match.collection
                if pid not in shown or upgrade:  # show the best-matching image, if any
                    shown[pid] = match
            matches = [replace(shown[pid], score=best[pid].score) for pid in list(best)[:depth]]
        items = catalog.get_items([m.id for m in matches])
        products = {}  # one read for all product hits (merchandised searches go 1000 deep)
        if target == PRODUCTS:
            products = self._products_metadata([m.product_id or "" for m in matches])
        hits = []
        for match in matches:
            item = items.get(match.id)
            if item is None:  # deleted by a commit since the keyword match was read
                continue
            rank = len(hits) + 1
            if target == PRODUCTS:
                metadata = products.get(item.product_id) or self._metadata(item.product_id, {})
            else:
                metadata = self._metadata(item.product_id, item.metadata)
            hits.append(
                hit_from_item(
                    item, rank=rank, score=match.score, metadata=metadata, signals={KEYWORD: rank}
                )
            )
        return hits

    def _ranker(self, request: SearchRequest, mode: str) -> shop.Ranker:
        """How shop.merchandise ranks this query's products under some filters (see
        shop.Ranker): the query embedded once; the semantic ranking deepened (x4, from
        MERCH_START_DEPTH up to MERCH_DEPTH) until it passes below the cutoff."""
        check_k(request.k, request.offset)
        if mode == KEYWORD and request.min_score is not None:
            raise InvalidQueryError(
                "min_score is a cosine cutoff: use it with mode semantic or hybrid"
            )
        vector = None if mode == KEYWORD else self._query_vector(request, PRODUCTS)
        start = min(MERCH_DEPTH, max(request.offset + request.k + 1, MERCH_START_DEPTH))
        found: list[list[keywords.KeywordMatch]] = []

        def matched() -> list[keywords.KeywordMatch]:
            """The query's keyword matches among product items, searched once per request."""
            if not found:
                synonyms = load_synonyms(self.store.directory)
                db, text = self.store.catalog.db, request.text or ""
                found.append(
                    keywords.search(
                        db, text, None, limit=None, products_only=True, synonyms=synonyms
                    )
                )
            return found[0]

        def rank(
            filters: Mapping[str, Any], cutoff: float | None, margin: bool
        ) -> tuple[list[Hit], float | None, bool]:
            query = replace(request, filters=filters, offset=0, min_score=None)
            semantic: list[Hit] = []
            complete = True
            if vector is not None:
                depth = start
                while True:
                    semantic = self._products_page(vector, replace(query, k=depth))
                    if cutoff is None and margin and semantic:
                        cutoff = semantic[0].score - DEFAULT_FACET_MARGIN
                    complete = len(semantic) < depth or (
                        cutoff is not None and semantic[-1].score < cutoff
                    )
                    if complete or cutoff is None or depth >= MERCH_DEPTH:
                        break
                    depth = min(depth * 4, MERCH_DEPTH)
                if cutoff is not None:
                    semantic = [hit for hit in semantic if hit.score >= cutoff]
            if mode == SEMANTIC:
                return semantic, cutoff, complete
            keyword = self._keyword_hits(query, PRODUCTS, MERCH_DEPTH, matched)
            complete = complete and len(keyword) < MERCH_DEPTH
            if mode == KEYWORD:
                return keyword, cutoff, complete
            rankings = {KEYWORD: keyword, SEMANTIC: semantic}
            fused = fuse_hits(rankings, _fusion_key(PRODUCTS), k=MERCH_DEPTH, offset=0)
            return fused, cutoff, complete

        return rank

    def _query_vector(self, request: SearchRequest, target: str) -> np.ndarray:
        """The request's query vector, after checking that it asks one thing."""
        if request.composed:
            if request.text is not None or request.image is not None:
                raise InvalidQueryError("give either query parts or a text/image, not both")
        elif (request.text is None) == (request.image is None):
            raise InvalidQueryError("give either a query text or an image (not both, not neither)")
        if target not in TARGETS:
            raise InvalidQueryError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
        if request.min_score is not None and not np.isfinite(request.min_score):
            raise InvalidQueryError(f"min_score must be a finite number, got {request.min_score}")
        if request.composed:
            vector = self.composed_vector(request.parts, like=request.like)
        elif request.text is not None:
            vector = self.embed_texts([request.text])[0]
        else:
            vector = self.embed_image(request.image)[0]
        if self.recorder is not None:
            self.recorder.add(vector)
        return vector

    def _search(self, request: SearchRequest, target: str) -> tuple[list[Hit], bool]:
        check_k(request.k, request.offset)
        vector = self._query_vector(request, target)
        if target == PRODUCTS:
            # `collapse` changes nothing here: a product search already gives one hit per
            # product. One more than the page: whether a next page exists.
            probe = replace(request, k=request.k + 1)
            hits = self._products_page(vector, probe)
            if request.min_score is not None:
                hits = [hit for hit in hits if hit.score >= request.min_score]
            return hits[: request.k], len(hits) > request.k
        if request.filters:
            raise InvalidQueryError("filters apply to products only; use target=products")
        return self.search_page(vector, request, target)

    def _products_page(self, vector: np.ndarray, request: SearchRequest) -> list[Hit]:
        if not self.has_catalog:
            raise InvalidQueryError(
                "target products needs a product catalog: index one with "
                "`mmsearch index --catalog products.csv`"
            )
        has_text = request.text is not None or any(p.text is not None for p in request.parts)
        weight = request.text_weight if has_text else 0.0
        like = self.store.catalog.get_item(request.like) if request.like is not None else None
        if like is None or like.product_id is None:
            return self._search_products(vector, request, weight)
        # More like a product's item: every product but its own, as /search ranks them.
        wide = replace(request, offset=0, k=request.offset + request.k + 1)
        hits = self._search_products(vector, wide, weight)
        others = [hit for hit in hits if hit.metadata.get("product_id") != like.product_id]
        page = others[request.offset : request.offset + request.k]
        return [replace(hit, rank=request.offset + n + 1) for n, hit in enumerate(page)]

    # -- composed queries, paging with cutoffs, collapsed duplicates --------------------------
    def composed_vector(self, parts: tuple[QueryPart, ...], *, like: int | None = None) -> Vectors:
        """The normalised weighted sum of the parts' normalised vectors; item parts (and
        `like`) use the stored vector, so only text and image parts run the model."""
        if like is not None:
            parts = (QueryPart(item=like), *parts)
        if not parts:
            raise InvalidQueryError("a composed query needs at least one part")
        if len(parts) > MAX_PARTS:
            raise InvalidQueryError(f"at most {MAX_PARTS} query parts, got {len(parts)}")
        for part in parts:
            part.check()
        dim = self.store.identity.dim
        vectors = np.zeros((len(parts), dim), dtype=np.float32)
        texts = [n for n, part in enumerate(parts) if part.text is not None]
        images = [n for n, part in enumerate(parts) if part.image is not None]
        items = [n for n, part in enumerate(parts) if part.item is not None]
        if texts:  # one batched forward pass for all text parts
            vectors[texts] = self.embed_texts([parts[n].text or "" for n in texts])
        if images:
            sources = [parts[n].image for n in images]
            vectors[images] = self.embedder.encode_image_sources(sources)  # type: ignore[arg-type]
        if items:
            vectors[items] = self.stored_vectors([parts[n].item or 0 for n in items])
        return combine(vectors, [part.weight for part in parts])

    def stored_vectors(self, item_ids: list[int]) -> Vectors:
        """The stored (float16, re-normalised) vectors of indexed items, in that order.

        Raises:
            ItemNotFoundError: an id is not in the index.
        """
        known = self.store.catalog.get_items(item_ids)
        missing = [item_id for item_id in item_ids if item_id not in known]
        if missing:
            raise ItemNotFoundError(unknown_item(missing[0]))
        vectors = self.store.catalog.get_vectors_by_id(item_ids, self.store.identity.dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def search_page(
        self, vector: np.ndarray, request: SearchRequest, target: str
    ) -> tuple[list[Hit], bool]:
        """One page (offset, k) of `target` hits for a vector, after dropping `request.like`,
        hits under `min_score` and (with `collapse`) near-duplicates of better hits; and
        whether another page follows. Searches deeper until the page is full or the index
        runs out."""
        if target not in COLLECTIONS:
            raise InvalidQueryError(
                f"unknown target {target!r}; use one of {', '.join(COLLECTIONS)}"
            )
        with self._lock:
            index = self.store.get_index(target)
        if index is None:
            return [], False
        wanted = request.offset + request.k + 1  # one more: whether a next page exists
        depth = min(wanted + (request.like is not None), max(index.ntotal, 1))
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        while True:
            scores, ids = index.search(query, depth)
            pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            exhausted = len(pairs) < depth or depth >= index.ntotal
            pairs = [pair for pair in pairs if pair[1] != request.like]
            if request.min_score is not None:
                exhausted = exhausted or any(s < request.min_score for s, _ in pairs)
                pairs = [pair for pair in pairs if pair[0] >= request.min_score]
            groups = self._group(pairs, request)
            if len(groups) >= wanted or exhausted or depth >= MAX_COLLAPSE_DEPTH:
                break
            depth = min(depth * 4, index.ntotal)
        page = groups[request.offset : request.offset + request.k]
        return self._page_hits(page, request.offset), len(groups) > request.offset + request.k

    def _group(
        self, pairs: list[tuple[float, int]], request: SearchRequest
    ) -> list[tuple[float, int, tuple[int, ...] | None]]:
        """(score, id, folded duplicate ids or None when not collapsing), in rank order."""
        if not request.collapse:
            return [(score, item_id, None) for score, item_id in pairs]
        vectors = self.store.catalog.get_vectors_by_id(
            [i for _, i in pairs], self.store.identity.dim
        )
        return [
            (pairs[row][0], pairs[row][1], tuple(pairs[f][1] for f in folded))
            for row, folded in collapse(vectors, request.duplicate_threshold)
        ]

    def _page_hits(
        self, page: list[tuple[float, int, tuple[int, ...] | None]], offset: int
    ) -> list[Hit]:
        items = self.store.catalog.get_items([item_id for _, item_id, _ in page])
        hits = []
        for score, item_id, duplicates in page:
            item = items.get(item_id)
            if item is None:
                continue
            hits.append(
                hit_from_item(
                    item,
                    rank=offset + len(hits) + 1,
                    score=score,
                    metadata=self._metadata(item.product_id, item.metadata),
                    duplicates=duplicates,
                )
            )
        return hits

    def _search_products(
        self, vector: np.ndarray, request: SearchRequest, weight: float
    ) -> list[Hit]:
        """Score products by weight * title similarity + (1 - weight) * best image similarity.

        Candidates come from both faiss indexes (filtered after the search when the filters
        pass most products, else inside faiss to the allowed products); each candidate is then
        scored exactly from its stored vectors, so the fusion never misses half of a product's
        score because one list was cut short."""
        if not 0.0 <= weight <= 1.0:
            raise InvalidQueryError(f"text_weight must be between 0 and 1, got {weight}")
        wanted = request.k + request.offset
        candidates = None
        if request.filters:
            candidates = self._candidates.post_filtered(vector, request.filters, wanted, weight)
        if candidates is None:
            candidates = self._candidates.pre_filtered(vector, request.filters, wanted, weight)
            if candidates is None:
                return []
        scored = score_products(
            self.store.catalog, self.store.identity.dim, vector, sorted(candidates), weight
        )
        page = scored[request.offset : wanted]
        metadata = self._products_metadata([item.product_id or "" for _, item in page])
        return [
            hit_from_item(
                item, rank=request.offset + n + 1, score=score, metadata=metadata[item.product_id]
            )
            for n, (score, item) in enumerate(page)
            if item.product_id in metadata
        ]

    def get_item(self, item_id: int) -> Item | None:
        """A catalog item with its product's metadata merged in (None if unknown)."""
        item = self.store.catalog.get_item(item_id)
        if item is None:
            return None
        return replace(item, metadata=self._metadata(item.product_id, item.metadata))

    def require_item(self, item_id: int) -> Item:
        """get_item, or ItemNotFoundError: the one way an unknown id is said (CLI and HTTP)."""
        item = self.get_item(item_id)
        if item is None:
            raise ItemNotFoundError(unknown_item(item_id))
        return item

    def stats(self) -> dict[str, Any]:
        """Counts, model and index details (see IndexStore.info), plus catalog columns."""
        details = self.store.info()
        details["product_columns"] = product_columns(self.store.catalog.db)
        return details

    def warm(self) -> None:
        """Load the model and every index now, so the first query is not slow."""
        _ = self.embedder
        for collection in COLLECTIONS:
            with self._lock:
                self.store.get_index(collection)
        self.embed_texts(["warm up"])

    def close(self) -> None:
        """Stop the text batcher (after its queued texts), then close the store."""
        try:
            if self.text_batcher is not None:
                self.text_batcher.close()
            if self.recorder is not None:
                self.recorder.flush()
        finally:
            self.store.close()

    def __enter__(self) -> SearchService:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def unknown_item(item_id: int) -> str:
    return f"no item with id {item_id} in this index; use an id from a search result"


def _fusion_key(target: str) -> Callable[[Hit], Any]:
    """What makes two hits the same result: the product for product searches, else the item."""
    if target == PRODUCTS:
        return lambda hit: hit.metadata.get("product_id")
    return lambda hit: hit.id


__all__ = ["MAX_K", "SearchRequest", "SearchResult", "SearchService", "check_k"]
