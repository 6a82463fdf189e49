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

from pipeline.overlap.detectors import Detector, embed_many, png_bytes, stack_codes
from pipeline.overlap.evalsets import EvalSet
from pipeline.overlap.search import knn, similarity
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
    return stack_codes(detector, codes), np.array(ok, dtype=np.int64)


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
    positive = pair_scores(codes[rows], plants, detector)
    # Distractors: every decodable eval item and every copy; each query drops itself, its
    # own copy and in-set items identical to it.
    base_rows = np.concatenate([candidates, n + np.arange(len(rows))])
    base = np.concatenate([codes[candidates], plants])
    # Top 8: room for the query itself, its copy and a few identical in-set twins.
    scores, pos_idx = knn(base, codes[rows], 8, detector.kind, detector.dim)
    refs = np.where(pos_idx >= 0, base_rows[np.maximum(pos_idx, 0)], -1)
    own = (refs == rows[:, None]) | (refs == (n + np.arange(len(rows)))[:, None]) | (refs < 0)
    # An eval item whose code is the query's own (the set holds the same image twice), or
    # that item's planted copy, is the same image, not a detector error: counted as false
    # matches, a few such twins kept every threshold from the target and switched
    # detection off.
    source = np.where(refs >= n, rows[np.clip(refs - n, 0, len(rows) - 1)], np.maximum(refs, 0))
    own |= (codes[source] == codes[rows][:, None, :]).all(axis=2) & (refs >= 0)
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


def pair_scores(a: np.ndarray, b: np.ndarray, detector: Detector) -> np.ndarray:
    """The similarity of each code in ``a`` to the code in the same row of ``b``."""
    if detector.kind == "binary":  # as FAISS's Hamming distances, through one conversion
        bits = np.unpackbits(a ^ b, axis=1).sum(axis=1) if len(a) else np.zeros(0)
        return similarity(bits, "binary", detector.dim)
    return similarity(np.einsum("ij,ij->i", a, b), "float", detector.dim)


# ---- the false-match rate at the training set's size: mirrored decoys -------------------
#
# Planted copies give the recall; the eval set's own items give false matches, but among
# ~2n distractors only, while the search takes each item's best score over all N training
# images: once N >> n, unrelated images pass a threshold set among 2n. Decoys measure
# that at N exactly. A decoy is the mirror image of an eval item, searched over the whole
# training set with the eval items: it has the item's content, layout and statistics, but
# no copy in the training set (the CLIP detector's training transformations, and a
# perceptual hash, do not include mirroring), so its best score is a sample of an
# unrelated item's best score over N training images. A decoy whose detector score to its
# own source is at the threshold or above (a mirror-symmetric image) is dropped: it would
# be its source. A decoy whose best training image is a copy of its own source (the
# source's search found that image at the threshold or above: a near-symmetric image finds
# its source's copies) is not counted, nor one scoring at copy level (the planted copies'
# median score or more: it found a flipped copy of its eval image, common on the web):
# neither is an unrelated image matched by chance, and one such hit would stand for n/D
# false matches. As in target-decoy estimation (proteomics, Elias &
# Gygi 2007): among the eval items at or above a threshold t, about n/D x (decoys >= t)
# are false; the threshold is raised to the lowest t whose estimated precision reaches
# the target.


@dataclass(frozen=True)
class Decoys:
    codes: np.ndarray  # (D, width): the mirror images' codes
    sources: np.ndarray  # (D,) the eval row each mirrors
    symmetric: int  # sampled items dropped: their mirror image scores >= floor to them


def make_decoys(
    eval_set: EvalSet,
    codes: np.ndarray,
    valid: np.ndarray,
    detector: Detector,
    count: int,
    seed: int,
    floor: float,
) -> Decoys:
    """Mirror images of up to ``count`` decodable items of ``eval_set`` (a seeded sample),
    without those whose mirror image scores ``floor`` or more to the item itself."""
    from PIL import ImageOps

    candidates = np.flatnonzero(valid)
    rng = random.Random(f"{seed}:{eval_set.name}:decoys")
    m = min(count, len(candidates))
    rows = np.array(sorted(rng.sample(list(candidates), m)), dtype=np.int64)
    encoded = [
        png_bytes(ImageOps.mirror(eval_set.images.image(int(r)).convert("RGB"))) for r in rows
    ]
    got = [
        (r, c) for r, c in zip(rows, embed_many(detector, encoded), strict=True) if c is not None
    ]
    src = np.array([r for r, _ in got], dtype=np.int64)
    mirrored = stack_codes(detector, [c for _, c in got])
    keep = pair_scores(codes[src], mirrored, detector) < floor
    return Decoys(mirrored[keep], src[keep], int((~keep).sum()))


@dataclass(frozen=True)
class ScaleCheck:
    """The threshold checked against decoys searched over the whole training set."""

    base: float  # the threshold before (calibrated on planted copies, or given)
    threshold: float  # the threshold after: base, or raised to reach the target
    target: float
    items: int  # decodable eval items searched
    decoys: int  # decoys counted (searched, less those whose hit was a copy)
    symmetric: int  # decoys dropped as mirror-symmetric
    # Decoys not counted: their best training image is a copy of their own eval item (its
    # search found that image too), or they score like a planted copy (a flipped copy).
    copy_hits: int
    decoy_hits: int  # decoys whose best training score is >= threshold
    eval_hits: int  # eval items whose best training score is >= threshold
    base_decoy_hits: int  # the same two at the base threshold
    base_eval_hits: int
    raised: bool

    @property
    def expected_false(self) -> float | None:
        """Eval items at or above the threshold expected to be unrelated matches."""
        return self.decoy_hits * self.items / self.decoys if self.decoys else None

    @property
    def precision(self) -> float | None:
        """Estimated precision at the threshold (None: no decoys, or nothing called)."""
        false = self.expected_false
        if false is None or not self.eval_hits:
            return None
        return max(0.0, 1.0 - false / self.eval_hits)


def threshold_at_scale(
    base: float,
    decoy_top: np.ndarray,
    eval_top: np.ndarray,
    target: float,
    symmetric: int = 0,
    *,
    may_raise: bool = True,
    copy_hits: int = 0,
) -> ScaleCheck:
    """The lowest threshold >= ``base`` at which the eval items' best scores (``eval_top``)
    reach ``target`` precision, false matches estimated from the decoys' (``decoy_top``).
    ``may_raise=False`` (a threshold the user gave) keeps ``base`` and only estimates."""
    decoy = np.sort(np.asarray(decoy_top, np.float32)[np.isfinite(decoy_top)])
    items = np.sort(np.asarray(eval_top, np.float32)[np.isfinite(eval_top)])
    n, d = len(items), len(decoy)

    def hits(sorted_scores: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        return len(sorted_scores) - np.searchsorted(sorted_scores, t, side="left")

    base32 = np.float32(base)
    chosen = base32
    if d and n and may_raise:
        above = np.concatenate([items, np.nextafter(decoy, np.float32(np.inf)), [base32]])
        cands = np.unique(above[above >= base32])
        e, f = hits(items, cands), hits(decoy, cands) * n / d
        ok = (e == 0) | (f <= (1.0 - target) * e + 1e-9)
        chosen = (
            cands[int(np.flatnonzero(ok)[0])]
            if ok.any()
            else np.nextafter(items.max(), np.float32(np.inf))
        )
        # Any threshold between the highest score below the chosen one and the lowest eval
        # score at or above it makes the same split: the midpoint, with the widest margin
        # to both (just above a decoy, it printed as the decoy's own score).
        at = int(np.searchsorted(items, chosen, side="left"))
        if at < n and chosen > base32:
            below = np.concatenate([items[items < chosen], decoy[decoy < chosen], [base32]])
            chosen = np.float32((float(below.max()) + float(items[at])) / 2)
    return ScaleCheck(
        base=float(base32),
        threshold=float(chosen),
        target=target,
        decoys=d,
        symmetric=symmetric,
        copy_hits=copy_hits,
        decoy_hits=int(hits(decoy, chosen)),
        eval_hits=int(hits(items, chosen)),
        base_decoy_hits=int(hits(decoy, base32)),
        base_eval_hits=int(hits(items, base32)),
        raised=bool(chosen > base32),
        items=n,
    )
