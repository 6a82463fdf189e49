"""The statistics of CLIP's overlap analysis (section 5, appendix C).

Per eval set: accuracy on All, Clean (below the threshold) and Overlap; All - Clean,
which equals overlap share x (acc_Overlap - acc_Clean); a one-tailed binomial test of the
Overlap accuracy against the Clean accuracy as the null (is accuracy higher on what the
model may have seen?); a two-sided Clopper-Pearson interval on the Overlap accuracy.
Across eval sets: a Bonferroni correction of the tests.

Everything is defined when Overlap is empty (the common case: 9 of CLIP's 35 sets): the
test's p-value is 1 (P(X >= 0) = 1) and the interval is [0, 1]. Undefined quantities
(accuracy of an empty split, a test with no Clean items) are None, never NaN, so that
report.json stays valid JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

REPORT_FIELDS: tuple[str, ...] = (
    "n_all",
    "n_overlap",
    "n_clean",
    "overlap_pct",
    "acc_all",
    "acc_clean",
    "acc_overlap",
    "all_minus_clean",
    "p_value",
    "ci_low",
    "ci_high",
    "threshold",
    "detector",
)


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact binomial interval for k successes in n trials; [0, 1] when n = 0."""
    from scipy.stats import beta

    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def binomial_p_greater(k: int, n: int, p0: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p0): the one-tailed test that the rate exceeds p0.

    Same value as ``scipy.stats.binomtest(k, n, p0, alternative='greater').pvalue``, which
    raises for n = 0; here n = 0 gives 1.0 (no evidence at all).
    """
    from scipy.stats import binom

    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must be in [0, 1], got {p0}")
    if k == 0:
        return 1.0
    return float(min(1.0, binom.sf(k - 1, n, p0)))


@dataclass(frozen=True)
class SplitCounts:
    """How many items each split has and how many of them the model got right."""

    n_overlap: int
    n_clean: int
    correct_overlap: int | None = None  # None: no predictions
    correct_clean: int | None = None

    @property
    def n_all(self) -> int:
        return self.n_overlap + self.n_clean

    @classmethod
    def from_arrays(cls, overlap: np.ndarray, correct: np.ndarray | None) -> SplitCounts:
        overlap = np.asarray(overlap, dtype=bool)
        if correct is None:
            return cls(int(overlap.sum()), int((~overlap).sum()))
        correct = np.asarray(correct, dtype=bool)
        return cls(
            int(overlap.sum()),
            int((~overlap).sum()),
            int(correct[overlap].sum()),
            int(correct[~overlap].sum()),
        )


def _ratio(k: int | None, n: int) -> float | None:
    return None if k is None or n == 0 else k / n


def split_statistics(
    counts: SplitCounts, threshold: float, detector: str, confidence: float = 0.995
) -> dict[str, Any]:
    """The report.json fields of one eval set, in REPORT_FIELDS order."""
    n_all, n_o, n_c = counts.n_all, counts.n_overlap, counts.n_clean
    has_predictions = counts.correct_overlap is not None and counts.correct_clean is not None
    acc_o = _ratio(counts.correct_overlap, n_o)
    acc_c = _ratio(counts.correct_clean, n_c)
    acc_all = (
        _ratio((counts.correct_overlap or 0) + (counts.correct_clean or 0), n_all)
        if has_predictions
        else None
    )
    all_minus_clean = None if acc_all is None or acc_c is None else acc_all - acc_c
    p_value: float | None = None
    ci_low = ci_high = None
    if has_predictions:
        k = int(counts.correct_overlap or 0)
        ci_low, ci_high = clopper_pearson(k, n_o, confidence)
        # The null is the Clean accuracy; with no Clean item there is no null to test.
        p_value = None if acc_c is None else binomial_p_greater(k, n_o, acc_c)
    out = {
        "n_all": n_all,
        "n_overlap": n_o,
        "n_clean": n_c,
        "overlap_pct": 100.0 * n_o / n_all if n_all else 0.0,
        "acc_all": acc_all,
        "acc_clean": acc_c,
        "acc_overlap": acc_o,
        "all_minus_clean": all_minus_clean,
        "p_value": p_value,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "threshold": float(threshold),
        "detector": detector,
    }
    return out


def bonferroni(p_values: Mapping[str, float | None], alpha: float = 0.05) -> dict[str, Any]:
    """Bonferroni over the eval sets that have a test: adjusted p = min(1, m x p)."""
    tested = {k: v for k, v in p_values.items() if v is not None}
    m = len(tested)
    adjusted = {k: min(1.0, v * m) for k, v in tested.items()}
    return {
        "tests": m,
        "alpha": alpha,
        "per_test_alpha": alpha / m if m else None,
        "adjusted_p_values": adjusted,
        "significant": sorted(k for k, v in adjusted.items() if v <= alpha),
    }
