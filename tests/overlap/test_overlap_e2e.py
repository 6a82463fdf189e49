"""A whole run on generated data with planted duplicates: the ground truth comes back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import binomtest

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, OverlapReport, run_overlap
from pipeline.overlap.stats import REPORT_FIELDS
from tests.overlap.conftest import Scenario


def _job(sc: Scenario, out: Path, **settings: object) -> OverlapJob:
    return OverlapJob(
        evals=(
            parse_eval_spec(f"cifar10:{sc.cifar}"),
            parse_eval_spec(f"pets=imagefolder:{sc.pets}"),
        ),
        train=(sc.ours, sc.i2d),
        out=out,
        config=OverlapConfig(
            **{"calibration_items": 40, "processes": 1, "contact_pairs": 8, **settings}
        ),
        predictions={"cifar10": sc.cifar_predictions, "pets": sc.pets_predictions},
    )


# The planted copies score about 0.98 and every other pair below 0.65 (phash+dhash, 16x16,
# 512 bits): a threshold of 0.9 separates them with a wide margin.
THRESHOLD = 0.9


@pytest.fixture(scope="module")
def given(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> OverlapReport:
    return run_overlap(
        _job(scenario, tmp_path_factory.mktemp("given"), threshold=THRESHOLD), log=lambda _: None
    )


@pytest.fixture(scope="module")
def calibrated(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> OverlapReport:
    return run_overlap(_job(scenario, tmp_path_factory.mktemp("calibrated")), log=lambda _: None)


def test_planted_duplicates_are_exactly_the_overlap_split(
    scenario: Scenario, given: OverlapReport
) -> None:
    for name, planted in scenario.planted.items():
        splits = pq.read_table(given.out / name / "splits.parquet").to_pylist()
        overlap = {r["id"]: r for r in splits if r["split"] == "overlap"}
        assert set(overlap) == set(planted), name
        for item, (folder, key) in planted.items():
            assert overlap[item]["train_key"] == key
            assert overlap[item]["train_source"] == str(folder)
            assert overlap[item]["score"] >= THRESHOLD
        clean = [r for r in splits if r["split"] == "clean"]
        assert all(r["score"] < THRESHOLD for r in clean)
        assert len(splits) == given.per_set[name]["n_all"]


def test_a_calibrated_threshold_finds_every_planted_duplicate(
    scenario: Scenario, calibrated: OverlapReport
) -> None:
    # Calibration distractors are eval-set sized (see calibrate.py), so at this scale a few
    # unrelated pairs may also pass; the planted copies, far above, always do.
    for name, planted in scenario.planted.items():
        cal = calibrated.calibrations[name]
        assert cal is not None and cal.reached and cal.precision >= 0.99
        assert 0.5 < calibrated.per_set[name]["threshold"] == cal.threshold < 0.9
        splits = pq.read_table(calibrated.out / name / "splits.parquet").to_pylist()
        assert set(planted) <= {r["id"] for r in splits if r["split"] == "overlap"}


def test_decontamination_list_holds_the_planted_training_keys(
    scenario: Scenario, given: OverlapReport
) -> None:
    rows = pq.read_table(given.out / "decontaminate.parquet").to_pylist()
    got = {(r["eval_set"], r["eval_id"], r["train_source"], r["train_key"]) for r in rows}
    expected = {(n, i, str(f), k) for n, p in scenario.planted.items() for i, (f, k) in p.items()}
    assert got == expected
    assert all(r["train_shard"].endswith(".tar") for r in rows)


def test_report_json_has_exactly_the_fields_and_the_right_numbers(
    scenario: Scenario, given: OverlapReport
) -> None:
    report = json.loads((given.out / "report.json").read_text())
    assert list(report) == ["cifar10", "pets"]
    for name, correct, ids in (
        ("cifar10", scenario.cifar_correct, [str(i) for i in range(60)]),
        (
            "pets",
            scenario.pets_correct,
            sorted(f"{c}/{j:03d}.png" for c in ("cat", "dog") for j in range(15)),
        ),
    ):
        r = report[name]
        assert tuple(r) == REPORT_FIELDS
        is_dup = np.array([i in scenario.planted[name] for i in ids])
        assert (r["n_all"], r["n_overlap"], r["n_clean"]) == (
            len(ids),
            int(is_dup.sum()),
            int((~is_dup).sum()),
        )
        assert r["overlap_pct"] == pytest.approx(100 * is_dup.mean())
        assert r["acc_all"] == pytest.approx(correct.mean())
        assert r["acc_overlap"] == 1.0  # every planted item was predicted right
        assert r["acc_clean"] == pytest.approx(correct[~is_dup].mean())
        assert r["all_minus_clean"] == pytest.approx(
            is_dup.mean() * (1.0 - correct[~is_dup].mean())
        )
        k, n = int(is_dup.sum()), int(is_dup.sum())
        assert r["p_value"] == pytest.approx(
            binomtest(k, n, r["acc_clean"], alternative="greater").pvalue
        )
        ci = binomtest(k, n).proportion_ci(0.995, method="exact")
        assert (r["ci_low"], r["ci_high"]) == (pytest.approx(ci.low), 1.0)
        assert r["detector"] == "phash(phash+dhash, 16x16)"
        assert r["threshold"] == pytest.approx(THRESHOLD)


def test_every_output_file_is_written(given: OverlapReport, calibrated: OverlapReport) -> None:
    md = (given.out / "report.md").read_text()
    assert "| cifar10 | 60 | 3 | 5.00 | 35.0 | 31.6 | 100.0 | +3.42 |" in md
    assert "| pets | 30 | 4 | 13.33 |" in md
    assert "Bonferroni over 2 test(s)" in md and "given on the command line" in md
    out = calibrated.out
    assert "calibrated on 40 planted copies" in (out / "report.md").read_text()
    for png in (
        "overlap.png",
        "cifar10/borderline.png",
        "cifar10/pr_curve.png",
        "pets/borderline.png",
    ):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 300, png
    curve = pq.read_table(out / "cifar10" / "calibration.parquet").to_pydict()
    assert set(curve) == {"threshold", "tp", "fp", "precision", "recall"}
    assert curve["recall"][-1] == 0.0 and max(curve["recall"]) == 1.0
    items = pq.read_table(out / "cifar10" / "calibration_items.parquet")
    assert items.num_rows == 40
    neighbours = pq.read_table(out / "pets" / "neighbours.parquet").to_pylist()
    assert {r["rank"] for r in neighbours} == {1, 2, 3, 4, 5}
    run = json.loads((out / "run.json").read_text())
    assert run["training_images"]["embedded"] == 127
    assert run["shards"] == 4 + 3
    assert run["bonferroni"]["tests"] == 2


def test_a_given_threshold_skips_calibration(scenario: Scenario, tmp_path: Path) -> None:
    report = run_overlap(
        _job(scenario, tmp_path, threshold=1.0, contact_pairs=0), log=lambda _: None
    )
    assert report.calibrations == {"cifar10": None, "pets": None}
    # Above every score here (the planted copies score ~0.98; a threshold above 1 is
    # refused): nothing overlaps, and the statistics stay defined.
    r = report.per_set["cifar10"]
    assert r["n_overlap"] == 0 and r["p_value"] == 1.0 and (r["ci_low"], r["ci_high"]) == (0.0, 1.0)
    assert r["acc_overlap"] is None and r["all_minus_clean"] == 0.0
    assert pq.read_table(tmp_path / "decontaminate.parquet").num_rows == 0
    assert not (tmp_path / "cifar10" / "borderline.png").exists()
    json.loads((tmp_path / "report.json").read_text())  # still strict JSON


def test_a_report_rewritten_with_fewer_sets_drops_the_others_folders(
    scenario: Scenario, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    run_overlap(_job(scenario, out, threshold=THRESHOLD, contact_pairs=0), log=lambda _: None)
    (out / "notes").mkdir()  # not the tool's: left alone
    assert {"cifar10", "pets"} <= {p.name for p in out.iterdir()}
    job = OverlapJob(
        evals=(parse_eval_spec(f"cifar10:{scenario.cifar}"),),
        train=(scenario.ours,),
        out=out,
        config=OverlapConfig(threshold=THRESHOLD, processes=1, contact_pairs=0),
    )
    said: list[str] = []
    run_overlap(job, log=said.append)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cifar10", "notes"]
    assert f"removed {out / 'pets'}: eval set pets is not in this report" in said
    assert set(json.loads((out / "report.json").read_text())) == {"cifar10"}
