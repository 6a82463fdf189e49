from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.overlap.calibrate import CalibrationError, calibrate, choose_threshold, pr_curve
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
