"""Balancing: caps in expectation, rare entries kept whole, determinism independent of order
and partitioning, mergeable counts and stats, a report that adds up."""

from __future__ import annotations

import itertools
import math
import pickle
import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import ConfigError
from pipeline.curate.balance import (
    DROP_BALANCED,
    DROP_UNMATCHED,
    BalanceConfig,
    BalanceFilter,
    Balancer,
    BalanceStats,
    EntryCounts,
    balance_arrow,
    count_candidates,
    entry_probabilities,
    make_report,
    pair_key,
    pair_uniform,
    per_entry_table,
)
from pipeline.curate.match import Matcher, add_matches
from pipeline.curate.records import Candidate


def within(observed: float, n: int, p: float, sds: float = 5.0) -> bool:
    """``observed`` within ``sds`` binomial standard deviations of ``n * p``."""
    return abs(observed - n * p) <= sds * math.sqrt(n * p * (1 - p))


def decide_all(
    matched: list[list[int]], n_entries: int, config: BalanceConfig, keys: list[str] | None = None
) -> tuple[np.ndarray, BalanceStats, EntryCounts]:
    keys = keys or [f"pair-{i}" for i in range(len(matched))]
    counts = EntryCounts.from_matches(matched, n_entries)
    batch = Balancer(counts, config).decide_batch(keys, matched)
    return batch.keep, batch.stats, counts


def mixed_pool(n: int = 30_000, seed: int = 1) -> tuple[list[list[int]], int]:
    """A Zipf-like pool over 200 entries: a few huge heads, a long tail, some unmatched."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) ** 1.2 for r in range(200)]
    matched = []
    for _ in range(n):
        k = rng.choice([0, 1, 1, 2, 3])
        matched.append(sorted(set(rng.choices(range(200), weights, k=k))))
    return matched, 200


def test_probabilities() -> None:
    p = entry_probabilities(np.array([0, 5, 10, 20, 1000]), 10)
    assert p.tolist() == [1.0, 1.0, 1.0, 0.5, 0.01]


def test_cap_holds_in_expectation() -> None:
    """100k pairs of one entry, t = 1000: ~1000 kept (sd ~31)."""
    n, t = 100_000, 1000
    keep, stats, counts = decide_all([[0]] * n, 1, BalanceConfig(max_per_query=t))
    assert counts.counts.tolist() == [n]
    assert within(keep.sum(), n, t / n)
    assert stats.expected[0] == pytest.approx(t)
    assert stats.realized[0] == keep.sum()


def test_rare_entries_keep_every_pair() -> None:
    """Entry 1 (500 pairs, under t) keeps all its pairs even when they also match a head."""
    t = 1000
    matched = [[0]] * 50_000 + [[0, 1]] * 300 + [[1]] * 200
    keep, stats, _ = decide_all(matched, 2, BalanceConfig(max_per_query=t))
    assert keep[50_000:].all()
    assert stats.realized[1] == 500
    # The head keeps ~t from its own pairs plus the 300 it shares with the tail entry.
    assert within(stats.realized[0] - 300, 50_000, t / 50_300)


def test_two_heads_combine_as_metaclip() -> None:
    """Two head entries with p = 0.1 and 0.2: kept with 1 - 0.9 * 0.8 = 0.28."""
    n = 20_000
    matched = [[0, 1]] * n + [[0]] * 80_000 + [[1]] * 30_000
    config = BalanceConfig(max_per_query=10_000)  # counts 100k and 50k -> p 0.1 and 0.2
    keep, _, _ = decide_all(matched, 2, config)
    balancer = Balancer(np.array([100_000, 50_000]), config)
    assert balancer.keep_probability([0, 1]) == pytest.approx(0.28)
    assert within(keep[:n].sum(), n, 0.28)


def test_unmatched_pairs_dropped_with_reason() -> None:
    balancer = Balancer(np.array([1, 1]), BalanceConfig(max_per_query=5))
    batch = balancer.decide_batch(["a", "b", "c"], [[0], [], [0, 1]])
    assert batch.keep.tolist() == [True, False, True]
    assert batch.reason == [None, DROP_UNMATCHED, None]
    assert balancer.decide("b", []) == DROP_UNMATCHED
    assert batch.stats.counters.to_dict() == {
        "drop.balanced": 0, "drop.unmatched": 1, "kept": 2, "pairs": 3,
    }  # fmt: skip


def test_deterministic_and_independent_of_order_and_partitions() -> None:
    matched, n_entries = mixed_pool()
    keys = [f"https://example.com/{i}.jpg\x00caption {i}" for i in range(len(matched))]
    config = BalanceConfig(max_per_query=300, seed=42)
    keep, stats, counts = decide_all(matched, n_entries, config, keys)
    again, _, _ = decide_all(matched, n_entries, config, keys)
    assert (keep == again).all()
    assert 0 < keep.sum() < len(matched)

    # Shuffled and cut into uneven partitions: counts merge to the same totals and every
    # pair gets the same decision.
    order = list(range(len(matched)))
    random.Random(3).shuffle(order)
    cuts = [0, 17, 5000, 5001, 20_000, len(order)]
    parts = [order[a:b] for a, b in itertools.pairwise(cuts)]
    part_counts = [EntryCounts.from_matches([matched[i] for i in p], n_entries) for p in parts]
    merged = sum(part_counts)
    assert (merged.counts == counts.counts).all()
    assert (merged.pairs, merged.matched_pairs) == (counts.pairs, counts.matched_pairs)
    balancer = Balancer(merged, config)
    part_stats = []
    for p in parts:
        batch = balancer.decide_batch([keys[i] for i in p], [matched[i] for i in p])
        for i, k in zip(p, batch.keep.tolist(), strict=True):
            assert k == keep[i]
        part_stats.append(batch.stats)
    merged_stats = sum(part_stats)
    assert (merged_stats.realized == stats.realized).all()
    assert np.allclose(merged_stats.expected, stats.expected)
    assert merged_stats.counters.to_dict() == stats.counters.to_dict()


def test_seeds_differ() -> None:
    matched, n_entries = mixed_pool(10_000)
    a, _, _ = decide_all(matched, n_entries, BalanceConfig(max_per_query=100, seed=0))
    b, _, _ = decide_all(matched, n_entries, BalanceConfig(max_per_query=100, seed=1))
    assert (a != b).sum() > 100
    assert within(a.sum(), len(matched), b.sum() / len(matched), sds=6)


def test_balancer_pickles() -> None:
    balancer = Balancer(np.array([5, 50_000, 0]), BalanceConfig(max_per_query=100, seed=9))
    clone = pickle.loads(pickle.dumps(balancer))
    assert clone.config == balancer.config
    assert clone.keep_probability([1]) == balancer.keep_probability([1])
    assert clone.keep_probability([1]) == pytest.approx(100 / 50_000)
    keys = [f"k{i}" for i in range(500)]
    assert (
        clone.decide_batch(keys, [[1]] * 500).keep == balancer.decide_batch(keys, [[1]] * 500).keep
    ).all()


def test_pair_uniform() -> None:
    draws = [pair_uniform(0, f"k{i}") for i in range(20_000)]
    assert all(0 <= u < 1 for u in draws)
    assert abs(np.mean(draws) - 0.5) < 0.01
    assert pair_uniform(0, "k") == pair_uniform(0, "k") != pair_uniform(1, "k")
    assert pair_key("u", "c") != pair_key("uc", "")


def test_report_adds_up() -> None:
    matched, n_entries = mixed_pool()
    entries = [f"entry{i}" for i in range(n_entries)]
    t = 300
    config = BalanceConfig(max_per_query=t)
    keep, stats, counts = decide_all(matched, n_entries, config)
    report = make_report(entries, counts, stats, config, top=5)
    n = len(matched)
    n_unmatched = sum(1 for ids in matched if not ids)
    assert report.pairs == n == counts.pairs
    assert report.unmatched == n_unmatched and report.matched == counts.matched_pairs
    assert report.kept + report.unmatched + report.dropped_balanced == report.pairs
    assert report.kept == keep.sum()
    assert report.matched_share == pytest.approx((n - n_unmatched) / n)
    # Per entry: realized counts are the kept pairs' matches; expected sums the keep
    # probabilities; nothing is kept that was not there before.
    assert stats.realized.sum() == sum(len(ids) for ids, k in zip(matched, keep, strict=True) if k)
    assert (stats.realized <= counts.counts).all()
    assert (stats.expected <= counts.counts + 1e-9).all()
    assert report.head_entries + report.tail_entries == report.entries_matched
    tail = (counts.counts > 0) & (counts.counts <= t)
    assert (stats.realized[tail] == counts.counts[tail]).all()  # the tail is kept whole
    assert report.head_matches_before > report.head_matches_realized
    assert [r["entry"] for r in report.top] == ["entry0", "entry1", "entry2", "entry3", "entry4"]
    assert report.top[0]["before"] == counts.counts.max()
    table = per_entry_table(entries, counts, stats)
    assert table.num_rows == report.entries_matched
    assert sum(table.column("count_before").to_pylist()) == counts.counts.sum()
    assert sum(table.column("realized_after").to_pylist()) == stats.realized.sum()
    d = report.to_dict()
    assert d["kept_share"] == pytest.approx(keep.sum() / n)
    assert "balancing" in report.format()


def test_counts_and_stats_serialize() -> None:
    matched, n_entries = mixed_pool(2000)
    _, stats, counts = decide_all(matched, n_entries, BalanceConfig(max_per_query=50))
    again = EntryCounts.from_dict(counts.to_dict())
    assert (again.counts == counts.counts).all() and again.pairs == counts.pairs
    s2 = BalanceStats.from_dict(stats.to_dict())
    assert (s2.realized == stats.realized).all() and np.allclose(s2.expected, stats.expected)
    assert s2.counters.to_dict() == stats.counters.to_dict()
    with pytest.raises(ValueError, match="entries"):
        _ = counts + EntryCounts.zeros(3)


def test_arrow_inputs() -> None:
    lists = [[0, 2], [], None, [1]]
    arr = pa.array(lists, pa.list_(pa.int32()))
    from_arrow = EntryCounts.from_matches(arr, 3)
    assert from_arrow.counts.tolist() == [1, 1, 1]
    assert (from_arrow.pairs, from_arrow.matched_pairs) == (4, 2)
    sliced = EntryCounts.from_matches(arr.slice(1), 3)
    assert sliced.counts.tolist() == [0, 1, 0] and sliced.pairs == 3
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)])
    assert EntryCounts.from_matches(chunked, 3).counts.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="out of range"):
        EntryCounts.from_matches([[3]], 3)


def test_balance_arrow_and_candidate_filter() -> None:
    matcher = Matcher(["dog", "cat", "bird"])
    captions = ["a dog"] * 400 + ["a cat"] * 5 + ["dog and cat"] * 3 + ["nothing here"] * 7
    table = pa.table(
        {"url": [f"https://x/{i}.jpg" for i in range(len(captions))], "caption": captions}
    )
    table = add_matches(table, matcher)
    counts = EntryCounts.from_matches(table.column("matched"), len(matcher))
    assert counts.counts.tolist() == [403, 8, 0]
    balancer = Balancer(counts, BalanceConfig(max_per_query=40, seed=5))
    kept, stats = balance_arrow(table, balancer)
    every, _ = balance_arrow(table, balancer, keep_dropped=True)
    reasons = every.column("reason").to_pylist()
    assert kept.num_rows == reasons.count(None) == stats.counters["kept"]
    assert reasons.count(DROP_UNMATCHED) == 7
    assert reasons.count(DROP_BALANCED) == stats.counters[f"drop.{DROP_BALANCED}"] > 300
    assert all(r is None for r in reasons[400:408])  # every cat pair is kept

    # The same decisions through the candidate stage (pass 1 and pass 2).
    candidates = [
        Candidate(url=u, caption=c, caption_source="alt", page_url=None, source="warc")
        for u, c in zip(table.column("url").to_pylist(), captions, strict=True)
    ]
    assert (count_candidates(candidates, matcher).counts == counts.counts).all()
    stage = BalanceFilter(matcher, balancer)
    out = list(stage(candidates))
    assert [c.url for c in out] == kept.column("url").to_pylist()
    assert stage.counters["balance.in"] == len(captions)
    assert stage.counters["balance.drop.unmatched"] == 7
    assert stage.stats.counters.to_dict() == stats.counters.to_dict()
    assert (stage.stats.realized == stats.realized).all()


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_per_query"):
        BalanceConfig(max_per_query=0)
    with pytest.raises(ConfigError, match="seed"):
        BalanceConfig(seed=-1)
    with pytest.raises(ValueError, match="keys"):
        Balancer(np.array([1])).decide_batch(["a"], [[0], [0]])
