"""Recall tuning: pick the search parameters of an approximate index (IVF nprobe, HNSW
efSearch, refine k_factor) that reach a target recall@10 against exact search at the lowest
measured latency, using a sample of the collection's own vectors as queries plus, when the
write path gives them, probes that look like what users search with (short text spans embedded
by the text tower, recorded server queries: storage/probes.py), each kind measured on its own.

Recall grows monotonically with nprobe / efSearch / k_factor, and so does cost, so for each
k_factor the cheapest setting that reaches the target is the smallest one: we double until the
target is met, then bisect. "Met" means the recall's one-sided 95% lower confidence bound over
the sampled queries reaches the target (falling back to the plain mean when no setting can), so
the chosen setting holds on queries the tuner never saw. The few candidates left (one per
k_factor) are timed and the fastest wins. faiss.contrib has an autotuner
(ParameterSpace.explore) but it sweeps the whole grid and keeps a Pareto front; it needs ground
truth in its own form and does not bisect, so the ~40 lines below are cheaper to run at build
time and easier to reason about."""

# ruff: noqa: E741

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from retrieval.index.faiss_index import _core, _refine
from retrieval.types import Ids, SearchParams, Vectors

K = 10
DEFAULT_TARGET_RECALL = 0.95
# 1,000 queries x 10 neighbours: the recall estimate's standard error is ~0.002 at 0.95.
TUNE_QUERIES = 1000
# Text queries decide the setting; 2,000 keep the tail of hard ones from hiding a miss
# (docs/design.md, "How many queries tune recall").
TUNE_TEXT_QUERIES = 2000
HNSW_MAX_EF = 4096
REFINE_K_FACTORS = (1, 2, 4, 8)
TIMING_REPEATS = 2
SEED = 4321
# Vectors per exact-search chunk in tune_streamed: 262,144 x 512 float32 is 512 MiB, one
# on-disk build shard (ondisk.DEFAULT_SHARD_SIZE).
STREAM_CHUNK = 262_144
# A setting "reaches" the target when the one-sided 95% lower confidence bound of its measured
# recall does (mean - 1.645 standard errors); why: docs/design.md, same section.
CONFIDENCE_Z = 1.645
# Probe kinds: the collection's own vectors (STORED), stored text vectors searched against an
# image index (TEXTS), and any the caller adds (storage/probes.py: text_spans, recorded).
STORED = "stored"
TEXTS_KIND = "texts"
# The recall an index claims (Tuning.recall_at_10) is that of the most user-like probe kind it
# was tuned with: real recorded queries first, then short text spans, then stored texts, then
# stored vectors (the easiest queries, so the least honest claim).
CLAIM_ORDER = ("recorded", "text_spans", TEXTS_KIND, STORED)


@dataclass(frozen=True)
class Tuning:
    """What tuning chose and measured; stored with the index generation (see store.py)."""

    params: SearchParams
    recall_at_10: float
    target_recall: float
    reached: bool  # False: even the widest search tried stays below the target
    latency_ms: float  # mean per query, in a batch of the tuning queries, this machine
    queries: int
    tuned_n: int  # index size when tuned: re-tune once it grows past RETUNE_GROWTH x this
    # recall@10 per probe kind under `params` (tunings recorded before kinds existed: empty)
    recall: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = self.params.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tuning:
        return cls(**{**data, "params": SearchParams.from_dict(data["params"])})


def is_approximate(index: Any) -> bool:
    """True when the faiss index has a search-time knob (IVF or HNSW)."""

    core = _core(index)
    return isinstance(core, faiss.IndexIVF | faiss.IndexHNSW)


def sample_rows(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """Sorted row numbers of a seeded sample of min(n, size) rows."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def tune(
    index: Any,
    vectors: Vectors,
    ids: Ids,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    text_queries: Vectors | None = None,
    n_queries: int = TUNE_QUERIES,
    n_text_queries: int = TUNE_TEXT_QUERIES,
    probes: dict[str, Vectors] | None = None,
) -> Tuning:
    """Tune `index` (a FaissIndex holding exactly `vectors` under `ids`) and apply the result.

    Queries are a sample of `vectors` themselves (each query's own id is dropped from both the
    exact and the approximate answer, so it does not inflate recall) plus, when given, a sample
    of `text_queries` (e.g. caption vectors searched against an image index), at most
    `n_text_queries` of them: more queries narrow the confidence bound (benchmarks/ann.py).
    `probes` adds other kinds of queries (kind -> vectors, at most `n_text_queries` each).
    Every kind must reach the target; the recall of each is reported (Tuning.recall).
    """
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    rows = sample_rows(len(xb), n_queries)
    xq, self_ids, kinds = _with_probes(
        xb[rows], ids[rows], _kinds(text_queries, probes), n_text_queries
    )
    truth = _exact_knn(xb, ids, xq, self_ids)
    return _choose(index, xq, self_ids, truth, target_recall, kinds)


def tune_streamed(
    index: Any,
    ids: Ids,
    read_vectors: Callable[[Ids], Vectors],
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    text_queries: Vectors | None = None,
    n_queries: int = TUNE_QUERIES,
    chunk_size: int = STREAM_CHUNK,
    probes: dict[str, Vectors] | None = None,
) -> Tuning:
    """`tune`, reading the collection through `read_vectors(ids)` one chunk at a time, so peak
    memory follows `chunk_size`, not n: for indexes built shard by shard (ondisk.py), whose
    vectors never sit in RAM together. Same query sample and exact truth as `tune`."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = sample_rows(len(ids), n_queries)
    sampled = np.ascontiguousarray(read_vectors(ids[rows]), dtype=np.float32)
    xq, self_ids, kinds = _with_probes(
        sampled, ids[rows], _kinds(text_queries, probes), TUNE_TEXT_QUERIES
    )
    # faiss's ResultHeap merges each chunk's exact top-k into a running one.
    heap = faiss.ResultHeap(len(xq), K + 1, keep_max=True)
    for start in range(0, len(ids), chunk_size):
        chunk = ids[start : start + chunk_size]
        flat = faiss.IndexFlatIP(xq.shape[1])
        flat.add(np.ascontiguousarray(read_vectors(chunk), dtype=np.float32))
        D, I = flat.search(xq, min(K + 1, len(chunk)))
        pad = K + 1 - I.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
        I = np.pad(
            np.where(I >= 0, chunk[np.maximum(I, 0)], -1), ((0, 0), (0, pad)), constant_values=-1
        )
        heap.add_result(D, I)
    heap.finalize()
    truth = _drop_self(heap.I, self_ids)
    return _choose(index, xq, self_ids, truth, target_recall, kinds)


def _kinds(text_queries: Vectors | None, probes: dict[str, Vectors] | None) -> dict[str, Vectors]:
    """Every non-stored probe kind: `text_queries` as TEXTS_KIND, then `probes`."""
    kinds = {} if text_queries is None else {TEXTS_KIND: text_queries}
    kinds.update(probes or {})
    return {kind: vectors for kind, vectors in kinds.items() if len(vectors)}


def _with_probes(
    xq: Any, self_ids: Any, probes: dict[str, Vectors], n_per_kind: int
) -> tuple[Any, Any, Any]:
    """The sampled stored-vector queries plus a sample of each probe kind's vectors, which
    have no own id to drop (-2); and each query's kind."""
    parts, own, kinds = [xq], [self_ids], [np.full(len(xq), STORED, dtype=object)]
    for kind, vectors in probes.items():
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors = vectors[sample_rows(len(vectors), n_per_kind)]
        parts.append(vectors)
        own.append(np.full(len(vectors), -2, np.int64))
        kinds.append(np.full(len(vectors), kind, dtype=object))
    return np.vstack(parts), np.concatenate(own), np.concatenate(kinds)


def claimed_recall(recall: dict[str, float]) -> float:
    """The recall an index claims: that of its most user-like probe kind (CLAIM_ORDER)."""
    kind = next((k for k in CLAIM_ORDER if k in recall), None)
    return recall[kind] if kind is not None else min(recall.values())


def _choose(
    index: Any, xq: Any, self_ids: Any, truth: Any, target_recall: float, kinds: Any
) -> Tuning:
    """Search the candidate parameters against `truth`, apply and return the cheapest."""
    probe = _Probe(index, xq, self_ids, truth, kinds)
    # Confidently first (the lower bound reaches the target); when no setting can (a small or
    # hard query sample, or a compressed index near its ceiling), the plain mean decides.
    for confident in (True, False):
        candidates = [
            probe.smallest_reaching(target_recall, k_factor, confident)
            for k_factor in probe.k_factors()
        ]
        reached = [c for c in candidates if probe.reaches(c[0], target_recall, confident)]
        if reached:
            break
    if reached:
        timed = [(probe.latency(p), p, r) for p, r in reached]
        latency, params, recall = min(timed, key=lambda t: t[0])
    else:  # unreachable: the most accurate setting tried
        params, recall = max(candidates, key=lambda c: c[1])
        latency = probe.latency(params)
    index.set_search_params(params)
    by_kind = {kind: round(value, 4) for kind, value in probe.recall_by_kind(params).items()}
    return Tuning(
        params=params,
        recall_at_10=round(claimed_recall(by_kind), 4),
        target_recall=target_recall,
        reached=bool(reached),
        latency_ms=round(latency * 1e3, 4),
        queries=len(xq),
        tuned_n=int(index.ntotal),
        recall=by_kind,
    )


def _exact_knn(xb: Any, ids: Any, xq: Any, self_ids: Any) -> Any:
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    _, I = flat.search(xq, K + 1)
    return _drop_self(np.where(I >= 0, ids[np.maximum(I, 0)], -1), self_ids)


def _drop_self(found: Any, self_ids: Any) -> Any:
    """First K ids per row other than the query's own id."""
    keep = found != self_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in rank order
    return np.take_along_axis(found, order, axis=1)[:, :K]


def per_query_recall(found: Any, truth: Any) -> np.ndarray:
    """Each row's fraction of its true top-k found, ignoring -1 padding in the truth."""
    return np.array(
        [
            len(set(f) & set(t[t >= 0])) / max(1, (t >= 0).sum())
            for f, t in zip(found, truth, strict=True)
        ],
        dtype=np.float64,
    )


def recall_at_k(found: Any, truth: Any) -> float:
    """Mean fraction of each row's true top-k found, ignoring -1 padding in the truth."""
    hits = per_query_recall(found, truth)
    return float(hits.mean()) if len(hits) else 1.0


def lower_bound(hits: np.ndarray) -> float:
    """One-sided 95% lower confidence bound of the mean of per-query recalls."""
    if len(hits) < 2:
        return float(hits.mean()) if len(hits) else 1.0
    return float(hits.mean() - CONFIDENCE_Z * hits.std(ddof=1) / np.sqrt(len(hits)))


class _Probe:
    """Runs the tuning queries against the index under candidate parameters."""

    def __init__(self, index: Any, xq: Any, self_ids: Any, truth: Any, kinds: Any) -> None:
        self.index, self.xq, self.self_ids, self.truth = index, xq, self_ids, truth
        self.groups = {kind: kinds == kind for kind in dict.fromkeys(kinds)}
        core = _core(index.faiss_index)
        self.ivf = core if isinstance(core, faiss.IndexIVF) else None
        self.refine = _refine(index.faiss_index) is not None
        # params -> kind -> (recall, lower bound)
        self._cache: dict[SearchParams, dict[str, tuple[float, float]]] = {}

    def k_factors(self) -> tuple[int | None, ...]:
        return REFINE_K_FACTORS if self.refine else (None,)

    def params(self, value: int, k_factor: int | None) -> SearchParams:
        if self.ivf is not None:
            return SearchParams(nprobe=value, k_factor=k_factor)
        return SearchParams(ef_search=value, k_factor=k_factor)

    def recall_by_kind(self, params: SearchParams) -> dict[str, float]:
        return {kind: values[0] for kind, values in self._measure_kinds(params).items()}

    def _measure_kinds(self, params: SearchParams) -> dict[str, tuple[float, float]]:
        if params not in self._cache:
            self.index.set_search_params(params)
            _, I = self.index.search(self.xq, K + 1)
            found = _drop_self(I, self.self_ids)
            hits = {
                kind: per_query_recall(found[g], self.truth[g]) for kind, g in self.groups.items()
            }
            self._cache[params] = {
                kind: (float(h.mean()), lower_bound(h)) for kind, h in hits.items()
            }
        return self._cache[params]

    def measure(self, params: SearchParams) -> tuple[float, float]:
        """(recall@10, its lower confidence bound) under `params`, the worst kind of query's:
        each kind (stored vectors, texts, spans, recorded) must reach the target on its own;
        user queries are harder, and a mean would hide them behind easy ones."""
        kinds = self._measure_kinds(params).values()
        return min(v[0] for v in kinds), min(v[1] for v in kinds)

    def recall(self, params: SearchParams) -> float:
        return self.measure(params)[0]

    def reaches(self, params: SearchParams, target: float, confident: bool = True) -> bool:
        return self.measure(params)[1 if confident else 0] >= target

    def smallest_reaching(
        self, target: float, k_factor: int | None, confident: bool = True
    ) -> tuple[SearchParams, float]:
        low, high = (1, self.ivf.nlist) if self.ivf is not None else (K + 1, HNSW_MAX_EF)
        value = low
        while value < high and not self.reaches(self.params(value, k_factor), target, confident):
            value = min(high, value * 2)
        best = self.params(value, k_factor)
        if not self.reaches(best, target, confident):
            return best, self.recall(best)
        lo = max(low, value // 2)  # the last value below the target (or the floor)
        while lo + 1 < value:
            mid = (lo + value) // 2
            if self.reaches(self.params(mid, k_factor), target, confident):
                value = mid
            else:
                lo = mid
        best = self.params(value, k_factor)
        return best, self.recall(best)

    def latency(self, params: SearchParams) -> float:
        self.index.set_search_params(params)
        times = []
        for _ in range(TIMING_REPEATS):
            start = time.perf_counter()
            self.index.search(self.xq, K)
            times.append(time.perf_counter() - start)
        return min(times) / len(self.xq)
