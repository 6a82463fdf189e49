"""Balancing: cap how many pairs each query contributes, as MetaCLIP does (arXiv 2309.16671).

Two passes over the matched pairs:

1. **Count.** ``EntryCounts.from_matches`` per task; counts add (``a + b``), a reduce sums
   them into the pool's per-entry counts.
2. **Decide.** Each entry gets ``p_e = t / max(count_e, t)`` (``t = max_per_query``): a
   tail entry (``count_e <= t``) keeps every pair, a head entry keeps ``t`` pairs in
   expectation. A pair is kept with probability ``1 - prod(1 - p_e)`` over the entries it
   matches, the same law as MetaCLIP's ``balance_sampling``, which keeps a pair when any
   of its entries' independent draws succeeds. The one draw a pair needs is a hash of
   ``(seed, pair key)``, not a random generator, so a rerun, a retried Spark task or a
   different partitioning decides every pair the same way. The pair key is the pair's id
   when it has one, else ``pair_key(url, caption)``.

Pairs that match no entry are dropped with the reason ``unmatched``, pairs lost to the
draw with ``balanced``. ``BalanceStats`` (mergeable) holds, per entry, the expected and the
realized count after balancing; ``make_report`` turns merged counts and stats into the
report (per-entry before/after, share of pairs matched, head and tail figures).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import ConfigError
from pipeline.curate.match import Matcher
from pipeline.curate.records import Candidate, CandidateFilter
from pipeline.stats.counters import Counters

DROP_UNMATCHED = "unmatched"  # the caption holds no query
DROP_BALANCED = "balanced"  # lost the draw: its queries are over their cap

MatchedIds = pa.ListArray | pa.ChunkedArray | Sequence[Sequence[int]]


@dataclass(frozen=True)
class BalanceConfig:
    max_per_query: int = 20_000  # t: CLIP's "up to 20,000 pairs per query", MetaCLIP's 400M t
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_per_query <= 0:
            raise ConfigError(f"max_per_query must be positive, got {self.max_per_query}")
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be in 0..2**64-1, got {self.seed}")


MATCHED = pa.list_(pa.int32())


def _flatten(matched: MatchedIds) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat entry ids) of per-pair id lists; offsets has one more item than pairs."""
    if isinstance(matched, pa.ChunkedArray):
        matched = matched.combine_chunks() if matched.num_chunks else pa.array([], MATCHED)
    if isinstance(matched, pa.ListArray | pa.LargeListArray):
        if matched.null_count:  # a null list matches nothing
            matched = pa.array([ids or [] for ids in matched.to_pylist()], matched.type)
        offsets = matched.offsets.to_numpy().astype(np.int64)
        values = matched.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return offsets - offsets[0], values
    lengths = np.fromiter((len(ids) for ids in matched), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((e for ids in matched for e in ids), dtype=np.int64, count=offsets[-1])
    return offsets, flat


@dataclass
class EntryCounts:
    """Per-entry match counts over some pairs, mergeable: ``a + b``, ``sum(parts)``.

    ``counts[e]`` is the number of pairs matching entry ``e`` (once per pair).
    """

    counts: np.ndarray  # int64, one per entry
    pairs: int = 0  # pairs seen, matched or not
    matched_pairs: int = 0  # of those, pairs matching at least one entry

    @classmethod
    def zeros(cls, n_entries: int) -> EntryCounts:
        return cls(np.zeros(n_entries, dtype=np.int64))

    @classmethod
    def from_matches(cls, matched: MatchedIds, n_entries: int) -> EntryCounts:
        offsets, flat = _flatten(matched)
        if flat.size and (flat.min() < 0 or flat.max() >= n_entries):
            raise ValueError(f"entry id out of range 0..{n_entries - 1}")
        counts = np.bincount(flat, minlength=n_entries).astype(np.int64, copy=False)
        matched_pairs = int(np.count_nonzero(np.diff(offsets)))
        return cls(counts, pairs=len(offsets) - 1, matched_pairs=matched_pairs)

    @property
    def n_entries(self) -> int:
        return len(self.counts)

    def __add__(self, other: EntryCounts) -> EntryCounts:
        if self.n_entries != other.n_entries:
            raise ValueError(
                f"cannot add counts over {self.n_entries} and {other.n_entries} entries"
            )
        return EntryCounts(
            self.counts + other.counts,
            self.pairs + other.pairs,
            self.matched_pairs + other.matched_pairs,
        )

    def __radd__(self, other: int | EntryCounts) -> EntryCounts:
        return self if other == 0 else self + other  # lets sum() start from 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, sparse: only entries with a count."""
        nz = np.flatnonzero(self.counts)
        return {
            "n_entries": self.n_entries,
            "pairs": self.pairs,
            "matched_pairs": self.matched_pairs,
            "counts": {str(int(e)): int(self.counts[e]) for e in nz},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntryCounts:
        counts = np.zeros(int(data["n_entries"]), dtype=np.int64)
        for e, n in data["counts"].items():
            counts[int(e)] = int(n)
        return cls(counts, int(data["pairs"]), int(data["matched_pairs"]))


def entry_probabilities(counts: EntryCounts | np.ndarray, max_per_query: int) -> np.ndarray:
    """``p_e = t / max(count_e, t)``: 1 for tail entries, ``t / count_e`` for head entries."""
    c = counts.counts if isinstance(counts, EntryCounts) else np.asarray(counts)
    return max_per_query / np.maximum(c, max_per_query).astype(np.float64)


def pair_key(url: str | None, caption: str | None) -> str:
    """The draw's key for a pair without an id: its URL and caption."""
    return f"{url or ''}\x00{caption or ''}"


def pair_uniform(seed: int, key: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, key): 53 bits of a keyed BLAKE2b."""
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "big")
    ).digest()
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


@dataclass
class BalanceStats:
    """What balancing did, mergeable like ``Counters``: per-entry expected and realized
    counts after balancing, and the pairs by outcome (``pairs``, ``kept``, and
    ``drop.unmatched`` / ``drop.balanced``)."""

    expected: np.ndarray  # float64 per entry: sum of keep probabilities of its pairs
    realized: np.ndarray  # int64 per entry: its kept pairs
    counters: Counters = field(default_factory=Counters)

    @classmethod
    def zeros(cls, n_entries: int) -> BalanceStats:
        return cls(np.zeros(n_entries, dtype=np.float64), np.zeros(n_entries, dtype=np.int64))

    def __add__(self, other: BalanceStats) -> BalanceStats:
        if len(self.realized) != len(other.realized):
            raise ValueError("cannot add stats over different entry lists")
        return BalanceStats(
            self.expected + other.expected,
            self.realized + other.realized,
            self.counters + other.counters,
        )

    def __radd__(self, other: int | BalanceStats) -> BalanceStats:
        return self if other == 0 else self + other

    def to_dict(self) -> dict[str, Any]:
        nz = np.flatnonzero(self.expected)
        return {
            "n_entries": len(self.realized),
            "counters": self.counters.to_dict(),
            "expected": {str(int(e)): float(self.expected[e]) for e in nz},
            "realized": {str(int(e)): int(self.realized[e]) for e in np.flatnonzero(self.realized)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BalanceStats:
        stats = cls.zeros(int(data["n_entries"]))
        for e, x in data["expected"].items():
            stats.expected[int(e)] = float(x)
        for e, n in data["realized"].items():
            stats.realized[int(e)] = int(n)
        stats.counters = Counters.from_dict(data["counters"])
        return stats


@dataclass
class BalanceBatch:
    """Decisions for a batch of pairs, in input order."""

    keep: np.ndarray  # bool
    reason: list[str | None]  # None when kept
    probability: np.ndarray  # float64: the keep probability (0 for unmatched pairs)
    stats: BalanceStats


class Balancer:
    """Decides pairs against the pool's merged ``EntryCounts``; holds only the probabilities."""

    def __init__(self, counts: EntryCounts | np.ndarray, config: BalanceConfig | None = None):
        self.config = config or BalanceConfig()
        self.probabilities = entry_probabilities(counts, self.config.max_per_query)
        # Python floats: indexing a list beats numpy scalars in the per-pair loop, and a
        # left-to-right product per pair is the same number on every partitioning.
        self._one_minus = (1.0 - self.probabilities).tolist()

    def __getstate__(self) -> dict[str, Any]:
        # Broadcast the numpy array only; the list is rebuilt on the other side.
        return {"config": self.config, "probabilities": self.probabilities}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self.probabilities = state["probabilities"]
        self._one_minus = (1.0 - self.probabilities).tolist()

    @property
    def n_entries(self) -> int:
        return len(self.probabilities)

    def keep_probability(self, matched: Sequence[int]) -> float:
        """``1 - prod(1 - p_e)`` over the matched entries (0 when none)."""
        if not matched:
            return 0.0
        q = 1.0
        one_minus = self._one_minus
        for e in matched:
            q *= one_minus[e]
        return 1.0 - q

    def decide(self, key: str, matched: Sequence[int]) -> str | None:
        """None to keep the pair, else the reason to drop it."""
        if not matched:
            return DROP_UNMATCHED
        p = self.keep_probability(matched)
        # p == 1 (a tail entry matched) keeps without hashing: most pairs of a small pool.
        return None if p >= 1.0 or pair_uniform(self.config.seed, key) < p else DROP_BALANCED

    def decide_batch(self, keys: Sequence[str], matched: MatchedIds) -> BalanceBatch:
        """Decide every pair of a batch; ``keys[i]`` is pair i's id or ``pair_key``."""
        offsets, flat = _flatten(matched)
        n = len(offsets) - 1
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} pairs")
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_entries):
            raise ValueError(f"entry id out of range 0..{self.n_entries - 1}")
        off, ids = offsets.tolist(), flat.tolist()
        one_minus, seed = self._one_minus, self.config.seed
        keep = np.zeros(n, dtype=bool)
        prob = np.zeros(n, dtype=np.float64)
        reason: list[str | None] = [DROP_UNMATCHED] * n
        for i in range(n):
            a, b = off[i], off[i + 1]
            if a == b:
                continue
            q = 1.0
            for e in ids[a:b]:
                q *= one_minus[e]
            p = 1.0 - q
            prob[i] = p
            if p >= 1.0 or pair_uniform(seed, keys[i]) < p:
                keep[i] = True
                reason[i] = None
            else:
                reason[i] = DROP_BALANCED
        lengths = np.diff(offsets)
        stats = BalanceStats(
            np.bincount(flat, weights=np.repeat(prob, lengths), minlength=self.n_entries),
            np.bincount(flat[np.repeat(keep, lengths)], minlength=self.n_entries).astype(np.int64),
        )
        n_kept = int(keep.sum())
        n_unmatched = int(np.count_nonzero(lengths == 0))
        stats.counters.add("pairs", n)
        stats.counters.add("kept", n_kept)
        stats.counters.add(f"drop.{DROP_UNMATCHED}", n_unmatched)
        stats.counters.add(f"drop.{DROP_BALANCED}", n - n_kept - n_unmatched)
        return BalanceBatch(keep, reason, prob, stats)


def batch_keys(
    data: pa.Table | pa.RecordBatch,
    key_col: str | None = None,
    url_col: str = "url",
    caption_col: str = "caption",
) -> list[str]:
    """Each pair's draw key: ``key_col`` when given, else ``pair_key(url, caption)``."""
    if key_col is not None:
        return [str(k) for k in data.column(key_col).to_pylist()]
    urls, captions = data.column(url_col).to_pylist(), data.column(caption_col).to_pylist()
    return [pair_key(u, c) for u, c in zip(urls, captions, strict=True)]


def balance_arrow(
    data: pa.Table | pa.RecordBatch,
    balancer: Balancer,
    matched_col: str = "matched",
    key_col: str | None = None,
    url_col: str = "url",
    caption_col: str = "caption",
    keep_dropped: bool = False,
) -> tuple[pa.Table | pa.RecordBatch, BalanceStats]:
    """Balance a table or batch with a ``matched`` column: the kept rows (or, with
    ``keep_dropped``, every row with a ``reason`` column, null when kept) and the stats."""
    batch = balancer.decide_batch(
        batch_keys(data, key_col, url_col, caption_col), data.column(matched_col)
    )
    if keep_dropped:
        return data.append_column("reason", pa.array(batch.reason, pa.string())), batch.stats
    return data.filter(pa.array(batch.keep)), batch.stats


class BalanceFilter(CandidateFilter):
    """Pass 2 as a stage over candidates: matches each caption and keeps or drops the pair
    (``balance.drop.unmatched``, ``balance.drop.balanced``), adding to ``self.stats``."""

    name = "balance"

    def __init__(self, matcher: Matcher, balancer: Balancer, emit_dropped: bool = False) -> None:
        super().__init__(emit_dropped)
        self.matcher = matcher
        self.balancer = balancer
        self.stats = BalanceStats.zeros(balancer.n_entries)

    def check(self, candidate: Candidate) -> str | None:
        ids = self.matcher.match(candidate.caption)
        stats = self.stats
        stats.counters.add("pairs")
        if not ids:
            stats.counters.add(f"drop.{DROP_UNMATCHED}")
            return DROP_UNMATCHED
        p = self.balancer.keep_probability(ids)
        stats.expected[ids] += p
        reason = self.balancer.decide(pair_key(candidate.url, candidate.caption), ids)
        if reason is None:
            stats.realized[ids] += 1
            stats.counters.add("kept")
        else:
            stats.counters.add(f"drop.{reason}")
        return reason


def count_candidates(candidates: Iterable[Candidate], matcher: Matcher) -> EntryCounts:
    """Pass 1 over kept candidates: per-entry counts of their matches."""
    return EntryCounts.from_matches(
        [matcher.match(c.caption) for c in candidates if c.kept], len(matcher)
    )


# -- the report -------------------------------------------------------------------------


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    q = np.quantile(values, [0.5, 0.9, 0.99])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(values.max())}


@dataclass(frozen=True)
class BalanceReport:
    """The balancing report, computed once from merged counts and stats."""

    max_per_query: int
    seed: int
    pairs: int
    matched: int
    unmatched: int
    kept: int
    dropped_balanced: int
    entries: int
    entries_matched: int  # entries with at least one pair
    head_entries: int  # count > t: capped
    tail_entries: int  # 0 < count <= t: every pair kept
    head_matches_before: int  # sum of counts over head entries
    head_matches_expected: float
    head_matches_realized: int
    count_quantiles_before: dict[str, float]  # over matched entries
    count_quantiles_realized: dict[str, float]
    max_expected_over_t: float  # the largest expected count after, in units of t
    top: list[dict[str, Any]]  # head entries by count before, with expected and realized

    @property
    def matched_share(self) -> float:
        return self.matched / self.pairs if self.pairs else 0.0

    @property
    def kept_share(self) -> float:
        return self.kept / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["matched_share"] = self.matched_share
        d["kept_share"] = self.kept_share
        return d

    def format(self) -> str:
        t = self.max_per_query
        lines = [
            f"balancing (t = {t:,}, seed = {self.seed})",
            f"  pairs            {self.pairs:>14,}",
            f"  matched          {self.matched:>14,}  ({100 * self.matched_share:.1f}%)",
            f"  drop.unmatched   {self.unmatched:>14,}",
            f"  drop.balanced    {self.dropped_balanced:>14,}",
            f"  kept             {self.kept:>14,}  ({100 * self.kept_share:.1f}%)",
            f"  entries matched  {self.entries_matched:>14,} of {self.entries:,}"
            f"  (head > t: {self.head_entries:,}, tail: {self.tail_entries:,})",
            f"  head matches     {self.head_matches_before:>14,} -> expected "
            f"{self.head_matches_expected:,.0f}, realized {self.head_matches_realized:,}",
        ]
        if self.top:
            lines.append(f"  {'entry':<28}{'before':>12}{'expected':>12}{'realized':>12}")
            for row in self.top:
                lines.append(
                    f"  {row['entry'][:27]:<28}{row['before']:>12,}"
                    f"{row['expected']:>12,.1f}{row['realized']:>12,}"
                )
        return "\n".join(lines)


def per_entry_table(
    entries: Sequence[str], counts: EntryCounts, stats: BalanceStats, only_matched: bool = True
) -> pa.Table:
    """Per entry: count before, expected and realized after (entries with matches only)."""
    idx = np.flatnonzero(counts.counts) if only_matched else np.arange(counts.n_entries)
    return pa.table(
        {
            "entry_id": pa.array(idx, pa.int32()),
            "entry": pa.array([entries[i] for i in idx.tolist()], pa.string()),
            "count_before": pa.array(counts.counts[idx], pa.int64()),
            "expected_after": pa.array(stats.expected[idx], pa.float64()),
            "realized_after": pa.array(stats.realized[idx], pa.int64()),
        }
    )


def make_report(
    entries: Sequence[str],
    counts: EntryCounts,
    stats: BalanceStats,
    config: BalanceConfig,
    top: int = 20,
) -> BalanceReport:
    """The report from the pool's merged counts and the decide pass's merged stats."""
    if not len(entries) == counts.n_entries == len(stats.realized):
        raise ValueError("entries, counts and stats must cover the same entry list")
    t = config.max_per_query
    c = counts.counts
    head = c > t
    tail = (c > 0) & ~head
    matched_entries = c > 0
    order = np.argsort(-c, kind="stable")[: min(top, int(head.sum()))]
    pairs = stats.counters["pairs"]
    unmatched = stats.counters[f"drop.{DROP_UNMATCHED}"]
    return BalanceReport(
        max_per_query=t,
        seed=config.seed,
        pairs=pairs,
        matched=pairs - unmatched,
        unmatched=unmatched,
        kept=stats.counters["kept"],
        dropped_balanced=stats.counters[f"drop.{DROP_BALANCED}"],
        entries=counts.n_entries,
        entries_matched=int(matched_entries.sum()),
        head_entries=int(head.sum()),
        tail_entries=int(tail.sum()),
        head_matches_before=int(c[head].sum()),
        head_matches_expected=float(stats.expected[head].sum()),
        head_matches_realized=int(stats.realized[head].sum()),
        count_quantiles_before=_quantiles(c[matched_entries]),
        count_quantiles_realized=_quantiles(stats.realized[matched_entries]),
        max_expected_over_t=float(stats.expected.max() / t) if stats.expected.size else 0.0,
        top=[
            {
                "entry": entries[i],
                "before": int(c[i]),
                "expected": float(stats.expected[i]),
                "realized": int(stats.realized[i]),
            }
            for i in order.tolist()
        ],
    )
