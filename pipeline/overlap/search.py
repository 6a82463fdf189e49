"""Exact nearest-neighbour search of eval items among training images, shard by shard.

The eval items (every eval set, concatenated) are the queries; each training shard is
embedded and searched as a small flat FAISS index, so a task holds one shard's codes
plus the eval index, never the training set. A shard's answer is, per eval item, its top
k training images and its matches (training images scoring at least the item's
threshold, at most ``max_matches``). Answers merge with ``+``, keeping the best by
(score descending, reference ascending): a total order, so any grouping and order of
merges gives the same result, which is why local and Spark runs agree.

Matches beyond ``max_matches`` are not kept, but they are counted: each shard reports per
item how many matches it has, up to ``max_matches + 1``, and the counts add, so an item
whose sum exceeds ``max_matches`` has more matches than were listed (``capped``).

A training image's reference is ``shard_id << 32 | index in shard``, shard ids being
positions in the run's shard list (--train folders in order, each one's shards sorted).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.overlap.detectors import Detector, embed_many
from pipeline.shards.reader import iter_shard
from pipeline.stats.counters import Counters

_EMBED_CHUNK = 256  # encoded images handed to a detector at once (embedding detectors batch)
EMPTY_REF = np.iinfo(np.int64).max
NO_SCORE = np.float32(-np.inf)


def make_ref(shard_id: int, index: np.ndarray | int) -> np.ndarray:
    return (np.int64(shard_id) << np.int64(32)) | np.asarray(index, dtype=np.int64)


def ref_shard(ref: int) -> int:
    return int(ref) >> 32


def ref_index(ref: int) -> int:
    return int(ref) & 0xFFFFFFFF


def similarity(distances: np.ndarray, kind: str, dim: int) -> np.ndarray:
    """Scores from FAISS distances, higher is closer: 1 - Hamming/bits, or the inner product.
    Every score of a run goes through here, so thresholds compare exactly."""
    if kind == "binary":
        return (1.0 - distances.astype(np.float64) / dim).astype(np.float32)
    return distances.astype(np.float32)


def knn(
    base: np.ndarray, queries: np.ndarray, k: int, kind: Literal["binary", "float"], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among ``base``: (scores, base row or -1), best first."""
    import faiss

    n_q = len(queries)
    if n_q == 0 or len(base) == 0 or k == 0:
        return np.full((n_q, k), NO_SCORE, np.float32), np.full((n_q, k), -1, np.int64)
    kk = min(k, len(base))
    if kind == "binary":
        index = faiss.IndexBinaryFlat(dim)
        # FAISS scans the base once per batch of queries (32 by default): one batch for all
        # eval items is 5-10x faster here (measured: 50k x 10k codes of 512 bits).
        index.query_batch_size = max(32, min(n_q, 100_000))
        index.add(np.ascontiguousarray(base, dtype=np.uint8))
        d, i = index.search(np.ascontiguousarray(queries, dtype=np.uint8), kk)
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(base, dtype=np.float32))
        d, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), kk)
    scores = similarity(d, kind, dim)
    i = i.astype(np.int64)
    scores[i < 0] = NO_SCORE
    if kk < k:
        pad = k - kk
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=NO_SCORE)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return scores, i


@dataclass(frozen=True)
class EvalIndex:
    """Codes of every eval item of a run, with the threshold of the set each belongs to."""

    kind: Literal["binary", "float"]
    dim: int
    codes: np.ndarray  # (n, dim // 8) uint8 or (n, dim) float32
    thresholds: np.ndarray  # (n,) float32
    valid: np.ndarray  # (n,) bool: False where the eval image could not be decoded

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class SearchResult:
    top_scores: np.ndarray  # (n, k) float32, NO_SCORE where empty
    top_refs: np.ndarray  # (n, k) int64, EMPTY_REF where empty
    match_rows: np.ndarray  # (m,) int32: eval row
    match_refs: np.ndarray  # (m,) int64
    match_scores: np.ndarray  # (m,) float32
    keys: dict[int, str] = field(default_factory=dict)  # ref -> training key, refs above only
    counters: Counters = field(default_factory=Counters)
    max_matches: int = 100
    # (n,) int64: per eval row, the sum over shards of its matches in each shard, each
    # counted up to max_matches + 1; above max_matches: more matches than were kept.
    match_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # (n,) float32: per eval row, the best score of the matches the cap left out (-inf:
    # none), so that a threshold raised after the search still knows which rows have more.
    overflow: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @classmethod
    def empty(cls, n: int, k: int, max_matches: int) -> SearchResult:
        return cls(
            np.full((n, k), NO_SCORE, np.float32),
            np.full((n, k), EMPTY_REF, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            max_matches=max_matches,
            match_counts=np.zeros(n, np.int64),
            overflow=np.full(n, -np.inf, np.float32),
        )

    @property
    def capped(self) -> np.ndarray:
        """(n,) bool: eval rows with more matches than the ``max_matches`` kept."""
        return self.match_counts > self.max_matches

    def __add__(self, other: SearchResult) -> SearchResult:
        k = self.top_scores.shape[1]
        scores = np.concatenate([self.top_scores, other.top_scores], axis=1)
        refs = np.concatenate([self.top_refs, other.top_refs], axis=1)
        order = np.lexsort((refs, -scores), axis=1)[:, :k]
        rows = np.concatenate([self.match_rows, other.match_rows])
        mrefs = np.concatenate([self.match_refs, other.match_refs])
        mscores = np.concatenate([self.match_scores, other.match_scores])
        keep = _best_per_row(rows, mrefs, mscores, self.max_matches)
        overflow = np.maximum(self.overflow, other.overflow)
        _raise_overflow(overflow, rows, mscores, keep)
        merged = SearchResult(
            np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(refs, order, axis=1),
            rows[keep],
            mrefs[keep],
            mscores[keep],
            counters=self.counters + other.counters,
            max_matches=self.max_matches,
            match_counts=self.match_counts + other.match_counts,
            overflow=overflow,
        )
        merged.keys = _keys_for(merged, {**self.keys, **other.keys})
        return merged

    def key(self, ref: int) -> str:
        return self.keys[int(ref)]


def _best_per_row(rows: np.ndarray, refs: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
    """Positions of the best ``limit`` entries of each row, ordered by row then rank."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((refs, -scores, rows))
    sorted_rows = rows[order]
    starts = np.searchsorted(sorted_rows, sorted_rows, side="left")
    rank = np.arange(len(order)) - starts
    return order[rank < limit]


def _raise_overflow(
    overflow: np.ndarray, rows: np.ndarray, scores: np.ndarray, keep: np.ndarray
) -> None:
    """``overflow`` (in place) at least the best score per row of the entries not kept."""
    dropped = np.ones(len(rows), bool)
    dropped[keep] = False
    if dropped.any():
        np.maximum.at(overflow, rows[dropped], scores[dropped])


def _keys_for(result: SearchResult, keys: dict[int, str]) -> dict[int, str]:
    refs = np.union1d(result.top_refs[result.top_refs != EMPTY_REF], result.match_refs)
    return {int(r): keys[int(r)] for r in refs}


def search_codes(
    shard_id: int,
    codes: np.ndarray,
    indices: np.ndarray,
    keys: Sequence[str],
    index: EvalIndex,
    top_k: int,
    max_matches: int,
) -> SearchResult:
    """One shard's answer from its codes (``indices``: each code's sample index in the shard)."""
    n = len(index)
    result = SearchResult.empty(n, top_k, max_matches)
    rows = np.flatnonzero(index.valid)
    if len(codes) == 0 or len(rows) == 0:
        return result
    queries = index.codes[rows]
    thresholds = index.thresholds[rows, None]
    scores, refs = _ranked(codes, indices, queries, top_k, index, shard_id)
    result.top_scores[rows] = scores
    result.top_refs[rows] = refs
    # Matches: every training image at or above the item's threshold, up to max_matches. An
    # item whose k-th neighbour is still above may have more: only those are searched again
    # (rare, and a big k costs 2-3x on every item), with one more than max_matches, so that
    # an item with more matches than are kept is known (``capped``).
    saturated = (scores[:, -1] >= thresholds[:, 0]) & (refs[:, -1] != EMPTY_REF)
    if max_matches >= top_k and saturated.any():
        more_scores, more_refs = _ranked(
            codes, indices, queries[saturated], max_matches + 1, index, shard_id
        )
    else:  # top k already holds more than max_matches of each saturated item's matches
        more_scores, more_refs = scores[saturated], refs[saturated]
    match_rows, match_refs, match_scores = [], [], []
    for rr, sc, rf, thr in (
        (rows[~saturated], scores[~saturated], refs[~saturated], thresholds[~saturated]),
        (rows[saturated], more_scores, more_refs, thresholds[saturated]),
    ):
        r, c = np.nonzero((sc >= thr) & (rf != EMPTY_REF))
        match_rows.append(rr[r].astype(np.int32))
        match_refs.append(rf[r, c])
        match_scores.append(sc[r, c])
    result.match_rows = np.concatenate(match_rows)
    result.match_refs = np.concatenate(match_refs)
    result.match_scores = np.concatenate(match_scores)
    result.match_counts = np.minimum(
        np.bincount(result.match_rows, minlength=n).astype(np.int64), max_matches + 1
    )
    keep = _best_per_row(result.match_rows, result.match_refs, result.match_scores, max_matches)
    _raise_overflow(result.overflow, result.match_rows, result.match_scores, keep)
    result.match_rows = result.match_rows[keep]
    result.match_refs = result.match_refs[keep]
    result.match_scores = result.match_scores[keep]
    key_of = {int(make_ref(shard_id, i)): key for i, key in zip(indices, keys, strict=True)}
    result.keys = _keys_for(result, key_of)
    return result


def _ranked(
    codes: np.ndarray,
    indices: np.ndarray,
    queries: np.ndarray,
    k: int,
    index: EvalIndex,
    shard_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top k (score, ref) of each query in one shard, sorted by (score desc, ref asc)."""
    scores, pos = knn(codes, queries, k, index.kind, index.dim)
    refs = np.where(
        pos >= 0, make_ref(shard_id, np.asarray(indices, np.int64)[np.maximum(pos, 0)]), EMPTY_REF
    )
    # FAISS returns ties in its own order; re-sort by (score, ref) so that the top k of a
    # shard is the same set whichever way its results are later merged.
    order = np.lexsort((refs, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(refs, order, axis=1)


def search_shard(
    shard_id: int,
    path: str | Path,
    index: EvalIndex,
    detector: Detector,
    top_k: int,
    max_matches: int,
) -> SearchResult:
    """Embed every image of one shard and search it: the unit a worker or a Spark task runs."""
    counters = Counters()
    codes: list[np.ndarray] = []
    indices: list[int] = []
    keys: list[str] = []
    pending: list[Any] = []

    def flush() -> None:
        for sample, code in zip(
            pending, embed_many(detector, [s.image for s in pending]), strict=True
        ):
            if code is None:
                counters.add("undecodable")
                continue
            codes.append(code)
            indices.append(sample.index)
            keys.append(sample.key)
        pending.clear()

    for sample in iter_shard(path, counters):
        pending.append(sample)
        if len(pending) >= _EMBED_CHUNK:
            flush()
    flush()
    counters.add("embedded", len(codes))
    counters.add("shards")
    dtype = np.uint8 if index.kind == "binary" else np.float32
    width = index.codes.shape[1]
    stacked = np.stack(codes).astype(dtype) if codes else np.zeros((0, width), dtype)
    result = search_codes(
        shard_id, stacked, np.array(indices, np.int64), keys, index, top_k, max_matches
    )
    result.counters = counters
    return result


# ---------------------------------------------------------------------------------------------
# Local execution: shards in a process pool, answers merged as they come.

_WORKER: dict[str, Any] = {}


def _init_worker(index: EvalIndex, detector: Detector, top_k: int, max_matches: int) -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # one process per core already
    _WORKER.update(index=index, detector=detector, top_k=top_k, max_matches=max_matches)


def _search_in_worker(shard_id: int, path: str) -> SearchResult:
    w = _WORKER
    return search_shard(shard_id, path, w["index"], w["detector"], w["top_k"], w["max_matches"])


def search_local(
    shards: Sequence[str | Path],
    index: EvalIndex,
    detector: Detector,
    top_k: int,
    max_matches: int,
    processes: int = 1,
    on_shard_done: Callable[[SearchResult], None] | None = None,
) -> SearchResult:
    total = SearchResult.empty(len(index), top_k, max_matches)
    if processes <= 1 or len(shards) <= 1:
        for sid, path in enumerate(shards):
            part = search_shard(sid, path, index, detector, top_k, max_matches)
            if on_shard_done:
                on_shard_done(part)
            total = total + part
        return total
    # spawn: the parent may already run FAISS/OpenMP threads, which fork would copy broken.
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(
        min(processes, len(shards)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(index, detector, top_k, max_matches),
    ) as pool:
        futures = [pool.submit(_search_in_worker, sid, str(p)) for sid, p in enumerate(shards)]
        for fut in cf.as_completed(futures):
            part = fut.result()
            if on_shard_done:
                on_shard_done(part)
            total = total + part
    return total
