"""The target-decoy check end to end: mirrored copies of eval images in the training set
are not chance matches, a raised threshold reads as an eval score, matches beyond the cap
are judged at the final threshold, and what the decoys say reaches the warnings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import ImageOps

from pipeline.overlap.__main__ import main
from pipeline.overlap.calibrate import threshold_at_scale
from pipeline.overlap.run import _eval_rows
from pipeline.overlap.search import EvalIndex, search_codes
from tests.overlap.layouts import field_image, jpeg, write_imagefolder, write_train_dir


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def contaminated(tmp_path: Path) -> tuple[Path, Path, dict]:
    """40 eval fields; training: 120 unrelated fields, JPEG copies of 3 eval items and a
    mirrored (flipped) copy of a fourth."""
    images = write_imagefolder(tmp_path / "eval", ["a", "b"], per_class=20, seed=0)
    ids = sorted(images)
    copied, flipped = ids[3:6], ids[30]
    train = [jpeg(field_image(50_000 + i)) for i in range(120)]
    train += [jpeg(images[i], quality=85) for i in copied]
    train.append(jpeg(ImageOps.mirror(images[flipped].convert("RGB")), quality=85))
    write_train_dir(tmp_path / "train", train, per_shard=40)
    return tmp_path / "eval", tmp_path / "train", {"copied": copied, "flipped": flipped}


def test_a_mirrored_copy_in_training_is_no_chance_match(
    contaminated: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # One flipped copy of one eval image: its decoy (the eval image mirrored) finds it at
    # copy level. Counted as a chance match it stood for n/D = 1 false item in 1, and lifted
    # the threshold above the three real copies: 0% overlap, silently.
    eval_dir, train_dir, planted = contaminated
    out = tmp_path / "report"
    code, _, err = _run(
        ["--eval", f"set=imagefolder:{eval_dir}", "--train", str(train_dir), "--out", str(out),
         "--processes", "1", "--contact-pairs", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    splits = pq.read_table(out / "set" / "splits.parquet").to_pylist()
    overlap = {r["id"] for r in splits if r["split"] == "overlap"}
    assert overlap == set(planted["copied"])
    decoys = json.loads((out / "report.json").read_text())["set"]["decoys"]
    assert (
        decoys["copy_hits"] >= 1
        and decoys["decoys"] == 40 - decoys["symmetric"] - decoys["copy_hits"]
    )
    assert "copy of their own eval item" in (out / "report.md").read_text()
    assert "warning" not in err


def test_a_given_threshold_the_decoys_contradict_is_a_warning(
    contaminated: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    eval_dir, train_dir, _ = contaminated
    out = tmp_path / "report"
    code, _, err = _run(
        ["--eval", f"set=imagefolder:{eval_dir}", "--train", str(train_dir), "--out", str(out),
         "--threshold", "0.3", "--processes", "1", "--contact-pairs", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    decoys = run["decoys"]["set"]
    assert decoys["threshold"] == pytest.approx(0.3) and decoys["precision"] < 0.99
    assert any("at the given threshold 0.3000" in w for w in run["warnings"])
    assert "likely unrelated images" in err


def test_a_raised_threshold_is_the_next_eval_score_not_the_decoys() -> None:
    items = np.array([0.5, 0.84375, 0.875, 0.9, 0.95], np.float32)
    decoy = np.array([0.84375, 0.2, 0.1], np.float32)
    check = threshold_at_scale(0.6, decoy, items, target=0.99)
    # Between the decoy and the next eval score: the same split, and the widest margin.
    assert check.raised and check.threshold == np.float32((0.84375 + 0.875) / 2)
    assert check.eval_hits == 3 and check.decoy_hits == 0


def test_matches_beyond_the_cap_are_judged_at_the_final_threshold() -> None:
    # Item 0 has 3 copies at 1.0 and 3 near copies at 0.75; item 1 one copy at 1.0. With
    # max_matches 3 at threshold 0.7 item 0 is capped; raised to 0.9 it has exactly 3.
    bits = 16
    rng = np.random.default_rng(3)
    eval_codes = rng.integers(0, 256, (2, bits // 8), dtype=np.uint8)
    near = eval_codes[0].copy()
    near[0] ^= 0b1111  # 4 of 16 bits: score 0.75
    train = np.stack([eval_codes[0]] * 3 + [near] * 3 + [eval_codes[1]])
    index = EvalIndex("binary", bits, eval_codes, np.full(2, 0.7, np.float32), np.ones(2, bool))
    keys = [f"k{i}" for i in range(len(train))]
    searched = search_codes(0, train, np.arange(len(train)), keys, index, 2, 3)
    assert searched.capped.tolist() == [True, False]
    prep = SimpleNamespace(eval_sets=[_Set("s", 2)])
    at_base = _eval_rows(searched, 2, np.array([0, 2]), {"s": 0.7}, prep)
    assert at_base.capped.tolist() == [True, False]
    raised = _eval_rows(searched, 2, np.array([0, 2]), {"s": 0.9}, prep)
    assert raised.capped.tolist() == [False, False]
    assert np.bincount(raised.match_rows, minlength=2).tolist() == [3, 1]
    assert (raised.match_scores == 1.0).all()


class _Set:
    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n


def test_what_the_decoys_say_reaches_the_warnings() -> None:
    from pipeline.overlap.config import OverlapConfig
    from pipeline.overlap.run import _scale_warnings

    raised = threshold_at_scale(
        0.6, np.array([0.9, 0.1], np.float32), np.array([0.65, 0.7], np.float32), 0.99
    )
    assert raised.raised and raised.eval_hits == 0 < raised.base_eval_hits == 2
    given = threshold_at_scale(
        0.6,
        np.array([0.7] * 5 + [0.1] * 5, np.float32),
        np.full(20, 0.8, np.float32),
        0.99,
        may_raise=False,
    )
    assert given.expected_false == 10 and given.precision == 0.5
    warnings = _scale_warnings({"a": raised}, OverlapConfig())
    assert len(warnings) == 1 and "above all 2 items the calibrated threshold" in warnings[0]
    warnings = _scale_warnings({"b": given}, OverlapConfig(threshold=0.6))
    assert len(warnings) == 1 and "about 10 of its 20 overlap items" in warnings[0]
    assert _scale_warnings({"b": given}, OverlapConfig()) == []  # calibrated: raised instead
