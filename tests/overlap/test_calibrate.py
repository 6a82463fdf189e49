from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.overlap.calibrate import (
    CalibrationError,
    calibrate,
    choose_threshold,
    make_decoys,
    pair_scores,
    pr_curve,
    threshold_at_scale,
)
from pipeline.overlap.detectors import PHashDetector
from pipeline.overlap.evalsets import EvalSpec, load_eval_set
from pipeline.overlap.run import embed_eval_set
from pipeline.overlap.transforms import TransformSpec, transform
from tests.overlap.layouts import field_image, write_imagefolder


def _choose(pos: list[float], neg: list[float], target: float) -> tuple[float, int, int, bool]:
    t, tp, fp = pr_curve(np.array(pos), np.array(neg))
    i, reached = choose_threshold(t, tp, fp, target)
    return float(t[i]), int(tp[i]), int(fp[i]), reached


def test_threshold_maximizes_recall_at_the_target_precision() -> None:
    pos = [0.9, 0.8, 0.7, 0.6]
    neg = [0.65, 0.5, 0.4, 0.3]
    t, tp, fp, reached = _choose(pos, neg, 1.0)
    assert (t, tp, fp, reached) == (pytest.approx(0.7), 3, 0, True)
    t, tp, fp, reached = _choose(pos, neg, 0.75)  # one false positive allowed in five
    assert (t, tp, fp) == (pytest.approx(0.6), 4, 1)


def test_unreachable_precision_puts_the_threshold_above_every_score() -> None:
    t, tp, fp, reached = _choose([0.5, 0.55], [0.9, 0.2], 0.99)
    assert tp == fp == 0 and not reached
    assert t > 0.9


def test_curve_counts_scores_at_or_above_each_threshold() -> None:
    t, tp, fp = pr_curve(np.array([0.5, 0.5, 0.75]), np.array([0.25, 0.5]))
    assert t[:3].tolist() == [0.25, 0.5, 0.75]
    assert tp.tolist() == [3, 3, 1, 0] and fp.tolist() == [2, 1, 0, 0]


def test_transformations_are_deterministic_and_each_can_apply() -> None:
    img = field_image(3, (80, 60))
    a = transform(img, random.Random(7))
    assert a == transform(img, random.Random(7))
    assert a != transform(img, random.Random(8))
    always = TransformSpec(p=1.0)
    out = Image.open(io.BytesIO(transform(img, random.Random(1), always)))
    assert out.format == "JPEG"
    assert out.size != (80, 60)  # the aspect distortion always applied here
    colour_only = TransformSpec(p=1.0, enabled=("hsv",))
    out = Image.open(io.BytesIO(transform(img, random.Random(1), colour_only)))
    assert out.size == (80, 60)
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_calibration_on_an_eval_set(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "set", ["a", "b"], per_class=40)
    s = load_eval_set(EvalSpec("set", "imagefolder", tmp_path / "set"))
    det = PHashDetector(("phash", "dhash"), 8)
    codes, valid = embed_eval_set(s, det)
    cal = calibrate(s, codes, valid, det, target=0.99, items=30, seed=0)
    again = calibrate(s, codes, valid, det, target=0.99, items=30, seed=0)
    assert cal.threshold == again.threshold and np.array_equal(cal.items, again.items)
    assert len(cal.items) == 30 and cal.distractors == 80 - 1 + 30 - 1
    assert cal.reached and cal.precision >= 0.99 and cal.recall > 0.5
    assert 0.5 < cal.threshold <= 1.0
    # Smooth random fields are far apart: the distractor scores stay below the threshold.
    assert (cal.negative < cal.threshold).all()
    assert cal.recall == pytest.approx((cal.positive >= cal.threshold).mean())
    # The reported operating point lies on the saved curve.
    i = int(np.flatnonzero(cal.curve_thresholds == np.float32(cal.threshold))[0])
    assert cal.curve_recall[i] == pytest.approx(cal.recall)
    assert cal.curve_precision[i] == pytest.approx(cal.precision)
    other = calibrate(s, codes, valid, det, target=0.99, items=30, seed=1)
    assert not np.array_equal(other.items, cal.items)


def test_too_few_items_to_calibrate(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "set", ["a"], per_class=1)
    s = load_eval_set(EvalSpec("set", "imagefolder", tmp_path / "set"))
    det = PHashDetector()
    codes, valid = embed_eval_set(s, det)
    with pytest.raises(CalibrationError, match=r"too few to calibrate.*--threshold"):
        calibrate(s, codes, valid, det, 0.99, 10, 0)


def test_identical_items_in_the_eval_set_do_not_switch_detection_off(tmp_path: Path) -> None:
    # A set holding a few images twice (ImageNet val and CIFAR-100 test do): the twin is the
    # same image, not a detector error. Counted as false matches they kept precision from
    # the target at every threshold, and nothing at all could be called overlap.
    write_imagefolder(tmp_path / "set", ["a", "b"], per_class=20)
    for i in range(3):  # 3 of 40 items (7.5%) have a byte-identical twin in the other class
        src = tmp_path / "set" / "a" / f"{i:03d}.png"
        (tmp_path / "set" / "b" / f"twin{i}.png").write_bytes(src.read_bytes())
    s = load_eval_set(EvalSpec("set", "imagefolder", tmp_path / "set"))
    det = PHashDetector(("phash", "dhash"), 8)
    codes, valid = embed_eval_set(s, det)
    cal = calibrate(s, codes, valid, det, target=0.99, items=43, seed=0)
    assert cal.reached and cal.threshold <= 1.0 and cal.recall > 0.5
    assert (cal.negative < 1.0).all()  # no twin is anybody's best distractor


def test_decoys_raise_the_threshold_to_the_target_at_the_training_sets_size() -> None:
    # 100 eval items, 5 of them real copies (score 0.95); unrelated items reach 0.6-0.7 over
    # a big training set, as their mirrored decoys do. A base threshold of 0.55 (set among
    # the eval set's own ~2n distractors) calls all 100 overlap.
    rng = np.random.default_rng(0)
    eval_top = np.concatenate([rng.uniform(0.6, 0.7, 95), np.full(5, 0.95)]).astype(np.float32)
    decoy_top = rng.uniform(0.6, 0.72, 100).astype(np.float32)
    check = threshold_at_scale(0.55, decoy_top, eval_top, target=0.99)
    assert check.base_eval_hits == 100 and check.base_decoy_hits == 100
    assert check.raised and decoy_top.max() < check.threshold <= 0.95
    assert (check.eval_hits, check.decoy_hits, check.precision) == (5, 0, 1.0)
    # A base already above every decoy stays; without decoys nothing is estimated.
    kept = threshold_at_scale(0.9, decoy_top, eval_top, target=0.99)
    assert not kept.raised and kept.threshold == np.float32(0.9) and kept.precision == 1.0
    none = threshold_at_scale(0.55, np.zeros(0, np.float32), eval_top, target=0.99)
    assert none.threshold == np.float32(0.55) and none.precision is None
    # The estimate: 1 decoy of 10 over t stands for n/D = 10 false items among those over t.
    mixed = threshold_at_scale(
        0.5, np.array([0.8] + [0.1] * 9, np.float32), np.full(100, 0.9, np.float32), 0.85
    )
    assert not mixed.raised and mixed.expected_false == 10 and mixed.precision == 0.9
    strict = threshold_at_scale(
        0.5, np.array([0.8] + [0.1] * 9, np.float32), np.full(100, 0.9, np.float32), 0.95
    )
    assert strict.raised and 0.8 < strict.threshold <= 0.9 and strict.precision == 1.0


def test_decoys_are_mirror_images_without_the_symmetric_ones(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "set", ["a"], per_class=12)
    symmetric = Image.new("RGB", (64, 48), (200, 30, 30))  # the same mirrored
    symmetric.save(tmp_path / "set" / "a" / "zz_flat.png")
    s = load_eval_set(EvalSpec("set", "imagefolder", tmp_path / "set"))
    det = PHashDetector(("phash", "dhash"), 8)
    codes, valid = embed_eval_set(s, det)
    decoys = make_decoys(s, codes, valid, det, count=100, seed=0, floor=0.9)
    assert decoys.symmetric == 1 and len(decoys.codes) == 12
    assert s.ids.index("a/zz_flat.png") not in decoys.sources.tolist()
    # A decoy is far from its source (mirroring is no copy to the detector).
    assert (pair_scores(codes[decoys.sources], decoys.codes, det) < 0.9).all()
    again = make_decoys(s, codes, valid, det, count=5, seed=0, floor=0.9)
    assert np.array_equal(again.sources, make_decoys(s, codes, valid, det, 5, 0, 0.9).sources)
