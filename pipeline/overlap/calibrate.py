"""Per-eval-set threshold: plant transformed copies, maximize recall at the target precision.

For a sample of eval items, a copy made by the synthetic transformations is planted
among distractors; an item's positive score is its similarity to its own copy, its
negative score its best similarity to any distractor. The distractors are the other
items of the same eval set and the other planted copies: images known to be different
ones (up to the eval set's own near-duplicates, which count against the detector).

Training images are deliberately not used as negatives: some of them may be real copies
of eval items (that is what we measure), and counting those as false positives would
push the threshold above exactly the duplicates we look for. The price: the distractor
set is the eval set's size, not the training set's, so at web scale the false-match rate
per item is underestimated; the contact sheet of borderline real pairs is the check, as
the paper's manual inspection was.

Precision and recall are item-level on a balanced sample (each sampled item gives one
positive and one negative): recall(t) = share of copies scoring >= t, precision(t) =
TP / (TP + FP). The threshold is the highest one reaching the best recall among those
with precision >= target; if none has positive recall, it sits above every score and
nothing is called overlap (reported as not reached).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pipeline.overlap.detectors import Detector, embed_many
from pipeline.overlap.evalsets import EvalSet
from pipeline.overlap.search import knn
from pipeline.overlap.transforms import TransformSpec, transform


class CalibrationError(ValueError):
    """An eval set too small to calibrate on: a threshold must be given."""


@dataclass(frozen=True)
class Calibration:
    threshold: float
    precision: float  # at the threshold, on the calibration sample
    recall: float
    target: float
    reached: bool  # some threshold had positive recall at the target precision
    items: np.ndarray  # eval rows given a copy
    positive: np.ndarray  # score of each item to its own copy
    negative: np.ndarray  # best score of each item to a distractor
    negative_ref: np.ndarray  # the distractor: eval row, or n + j for the copy of items[j]
    curve_thresholds: np.ndarray
    curve_tp: np.ndarray
    curve_fp: np.ndarray
    distractors: int

    @property
    def curve_precision(self) -> np.ndarray:
        tot = self.curve_tp + self.curve_fp
        return np.where(tot > 0, self.curve_tp / np.maximum(tot, 1), 1.0)

    @property
    def curve_recall(self) -> np.ndarray:
        return self.curve_tp / max(1, len(self.positive))


def pr_curve(
    positive: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threshold, TP, FP) at every distinct score, plus one above all (TP = FP = 0)."""
    pos = np.sort(np.asarray(positive, np.float32))
    neg = np.sort(np.asarray(negative, np.float32))
    scores = np.concatenate([pos, neg])
    top = scores.max() if len(scores) else np.float32(1.0)
    cands = np.unique(np.append(scores, np.nextafter(top, np.float32(np.inf))))
    tp = len(pos) - np.searchsorted(pos, cands, side="left")
    fp = len(neg) - np.searchsorted(neg, cands, side="left")
    return cands, tp.astype(np.int64), fp.astype(np.int64)


def choose_threshold(
    thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, target: float
) -> tuple[int, bool]:
    """Index of the chosen threshold, and whether recall > 0 was possible at the target."""
    tot = tp + fp
    precision = np.where(tot > 0, tp / np.maximum(tot, 1), 1.0)
    ok = precision >= target
    best_tp = tp[ok].max()  # the last candidate (TP = FP = 0) always qualifies
    # Same recall, higher threshold: never more false positives.
    chosen = int(np.flatnonzero(ok & (tp == best_tp)).max())
    return chosen, bool(best_tp > 0)


def plant_copies(
    eval_set: EvalSet, rows: np.ndarray, detector: Detector, rng: random.Random, spec: TransformSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of transformed copies of ``rows``, and which rows got one (decodable copies)."""
    codes, ok = [], []
    # Transform every row first (same rng sequence as one at a time), then embed in batches.
    copies = [transform(eval_set.images.image(int(r)), rng, spec) for r in rows]
    for r, code in zip(rows, embed_many(detector, copies), strict=True):
        if code is not None:
            codes.append(code)
            ok.append(r)
    dtype = np.uint8 if detector.kind == "binary" else np.float32
    width = detector.dim // 8 if detector.kind == "binary" else detector.dim
    arr = np.stack(codes).astype(dtype) if codes else np.zeros((0, width), dtype)
    return arr, np.array(ok, dtype=np.int64)


def calibrate(
    eval_set: EvalSet,
    codes: np.ndarray,
    valid: np.ndarray,
    detector: Detector,
    target: float,
    items: int,
    seed: int,
    spec: TransformSpec | None = None,
) -> Calibration:
    """The threshold of one eval set from ``codes`` (its items' codes; ``valid``: decodable)."""
    candidates = np.flatnonzero(valid)
    if len(candidates) < 2:
        raise CalibrationError(
            f"eval set {eval_set.name}: {len(candidates)} decodable item(s), too few to "
            "calibrate a threshold; give --threshold"
        )
    # A string seed is hashed with SHA-512 by random.seed: the same sample on every run.
    rng = random.Random(f"{seed}:{eval_set.name}")
    m = min(items, len(candidates))
    rows = np.array(sorted(rng.sample(list(candidates), m)), dtype=np.int64)
    plants, rows = plant_copies(eval_set, rows, detector, rng, spec or TransformSpec())
    n = len(codes)
    if detector.kind == "binary":
        pos = 1.0 - np.unpackbits(codes[rows] ^ plants, axis=1).sum(axis=1) / detector.dim
        positive = pos.astype(np.float32)
    else:
        positive = np.einsum("ij,ij->i", codes[rows], plants).astype(np.float32)
    # Distractors: every decodable eval item and every copy; each query drops itself and
    # its own copy, so its top 3 always hold its best distractor.
    base_rows = np.concatenate([candidates, n + np.arange(len(rows))])
    base = np.concatenate([codes[candidates], plants])
    scores, pos_idx = knn(base, codes[rows], 3, detector.kind, detector.dim)
    refs = np.where(pos_idx >= 0, base_rows[np.maximum(pos_idx, 0)], -1)
    own = (refs == rows[:, None]) | (refs == (n + np.arange(len(rows)))[:, None]) | (refs < 0)
    masked = np.where(own, -np.inf, scores)
    best = masked.argmax(axis=1)
    negative = masked[np.arange(len(rows)), best].astype(np.float32)
    negative_ref = refs[np.arange(len(rows)), best]
    thresholds, tp, fp = pr_curve(positive, negative)
    chosen, reached = choose_threshold(thresholds, tp, fp, target)
    tot = tp[chosen] + fp[chosen]
    return Calibration(
        threshold=float(thresholds[chosen]),
        precision=float(tp[chosen] / tot) if tot else 1.0,
        recall=float(tp[chosen] / max(1, len(positive))),
        target=target,
        reached=reached,
        items=rows,
        positive=positive,
        negative=negative,
        negative_ref=negative_ref,
        curve_thresholds=thresholds,
        curve_tp=tp,
        curve_fp=fp,
        distractors=len(base) - 2,
    )
