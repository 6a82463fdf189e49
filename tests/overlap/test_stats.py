"""The statistics against scipy and statsmodels, and the paper's identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from pipeline.overlap.stats import (
    REPORT_FIELDS,
    SplitCounts,
    binomial_p_greater,
    bonferroni,
    clopper_pearson,
    split_statistics,
)

# Small, edge and large trial counts; k at 0, 1, middle, n-1, n.
CASES = [
    (k, n)
    for n in (1, 2, 3, 5, 10, 17, 50, 100, 333, 1000, 5000)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n})
    if 0 <= k <= n
]


@pytest.mark.parametrize("confidence", [0.995, 0.95])
def test_clopper_pearson_matches_statsmodels_and_scipy(confidence: float) -> None:
    for k, n in CASES:
        low, high = clopper_pearson(k, n, confidence)
        sm_low, sm_high = proportion_confint(k, n, alpha=1 - confidence, method="beta")
        sp = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        # statsmodels gives NaN at k = 0 / k = n for the open end; the interval is [0, x] / [x, 1].
        assert low == pytest.approx(0.0 if math.isnan(sm_low) else sm_low, abs=1e-12), (k, n)
        assert high == pytest.approx(1.0 if math.isnan(sm_high) else sm_high, abs=1e-12), (k, n)
        assert low == pytest.approx(sp.low, abs=1e-10), (k, n)
        assert high == pytest.approx(sp.high, abs=1e-10), (k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0


def test_clopper_pearson_edges() -> None:
    assert clopper_pearson(0, 0, 0.995) == (0.0, 1.0)
    assert clopper_pearson(0, 10, 0.995)[0] == 0.0
    assert clopper_pearson(10, 10, 0.995)[1] == 1.0
    with pytest.raises(ValueError):
        clopper_pearson(3, 2, 0.995)


def test_binomial_p_value_matches_scipy_binomtest_greater() -> None:
    for k, n in CASES:
        for p0 in (0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
            expected = binomtest(k, n, p0, alternative="greater").pvalue
            assert binomial_p_greater(k, n, p0) == pytest.approx(expected, rel=1e-9, abs=1e-300), (
                k,
                n,
                p0,
            )


def test_binomial_p_value_is_one_for_an_empty_overlap() -> None:
    # binomtest refuses n = 0; with no overlapping item there is no evidence at all.
    with pytest.raises(ValueError):
        binomtest(0, 0, 0.5)
    assert binomial_p_greater(0, 0, 0.5) == 1.0


def _random_split(rng: np.random.Generator, n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    overlap = rng.random(n) < share
    correct = rng.random(n) < np.where(overlap, 0.9, 0.6)
    return overlap, correct


def test_all_minus_clean_equals_share_times_difference() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 3000))
        overlap, correct = _random_split(rng, n, float(rng.uniform(0, 0.5)))
        if overlap.all() or not overlap.any():
            continue
        r = split_statistics(SplitCounts.from_arrays(overlap, correct), 0.9, "phash")
        share = r["n_overlap"] / r["n_all"]
        expected = share * (r["acc_overlap"] - r["acc_clean"])
        assert r["all_minus_clean"] == pytest.approx(expected, abs=1e-12), trial
        assert r["acc_all"] == pytest.approx(correct.mean())
        assert r["acc_clean"] == pytest.approx(correct[~overlap].mean())
        assert r["acc_overlap"] == pytest.approx(correct[overlap].mean())


def test_report_fields_are_exactly_the_issues_and_the_values_agree() -> None:
    overlap = np.array([True] * 10 + [False] * 90)
    correct = np.array([True] * 9 + [False] + [True] * 45 + [False] * 45)
    r = split_statistics(SplitCounts.from_arrays(overlap, correct), 0.875, "phash(x)", 0.995)
    assert tuple(r) == REPORT_FIELDS == (
        "n_all", "n_overlap", "n_clean", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
        "all_minus_clean", "p_value", "ci_low", "ci_high", "threshold", "detector",
    )  # fmt: skip
    assert (r["n_all"], r["n_overlap"], r["n_clean"]) == (100, 10, 90)
    assert r["overlap_pct"] == 10.0
    assert r["acc_all"] == 0.54 and r["acc_clean"] == 0.5 and r["acc_overlap"] == 0.9
    assert r["p_value"] == pytest.approx(binomtest(9, 10, 0.5, alternative="greater").pvalue)
    ci = binomtest(9, 10).proportion_ci(0.995, method="exact")
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert r["threshold"] == 0.875 and r["detector"] == "phash(x)"


def test_empty_overlap_is_well_defined() -> None:
    overlap = np.zeros(50, bool)
    correct = np.arange(50) % 2 == 0
    r = split_statistics(SplitCounts.from_arrays(overlap, correct), 0.9, "phash")
    assert r["n_overlap"] == 0 and r["overlap_pct"] == 0.0
    assert r["acc_overlap"] is None
    assert r["all_minus_clean"] == 0.0
    assert r["p_value"] == 1.0
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)


def test_everything_overlapping_has_no_null_to_test_against() -> None:
    r = split_statistics(
        SplitCounts.from_arrays(np.ones(4, bool), np.array([1, 1, 0, 1], bool)), 0.9, "phash"
    )
    assert r["acc_clean"] is None and r["all_minus_clean"] is None and r["p_value"] is None
    assert r["acc_overlap"] == 0.75 and r["ci_low"] is not None


def test_without_predictions_only_the_counts_are_reported() -> None:
    r = split_statistics(
        SplitCounts.from_arrays(np.array([True, False, False]), None), 0.9, "phash"
    )
    assert (r["n_all"], r["n_overlap"]) == (3, 1)
    for f in (
        "acc_all",
        "acc_clean",
        "acc_overlap",
        "all_minus_clean",
        "p_value",
        "ci_low",
        "ci_high",
    ):
        assert r[f] is None, f


def test_bonferroni_multiplies_by_the_number_of_tests() -> None:
    b = bonferroni({"a": 0.001, "b": 0.02, "c": None, "d": 0.5}, alpha=0.05)
    assert b["tests"] == 3
    assert b["adjusted_p_values"] == {"a": pytest.approx(0.003), "b": pytest.approx(0.06), "d": 1.0}
    assert b["significant"] == ["a"]
    assert b["per_test_alpha"] == pytest.approx(0.05 / 3)
    assert bonferroni({"a": None})["tests"] == 0
