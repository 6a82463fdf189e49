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
from tests.overlap.layouts import field_image, jpeg, write_train_dir


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
    # Calibration distractors are eval-set sized (see calibrate.py), so a few unrelated
    # pairs pass its threshold; the mirrored decoys, searched over the training set, raise
    # it above them: exactly the planted copies are overlap.
    for name, planted in scenario.planted.items():
        cal = calibrated.calibrations[name]
        assert cal is not None and cal.reached and cal.precision >= 0.99
        threshold = calibrated.per_set[name]["threshold"]
        decoys = calibrated.per_set[name]["decoys"]
        assert 0.5 < cal.threshold <= threshold == decoys["threshold"] < 0.9
        assert decoys["decoy_hits"] == 0 and decoys["precision"] == 1.0
        splits = pq.read_table(calibrated.out / name / "splits.parquet").to_pylist()
        assert set(planted) == {r["id"] for r in splits if r["split"] == "overlap"}


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
        assert tuple(r) == (*REPORT_FIELDS, "decoys")
        # A given threshold stands; the decoys estimate its precision at the training
        # set's size (here no decoy reaches it).
        decoys = r["decoys"]
        assert decoys["threshold"] == decoys["base"] == pytest.approx(r["threshold"])
        assert not decoys["raised"] and decoys["decoy_hits"] == 0 and decoys["decoys"] > 0
        assert decoys["eval_hits"] == r["n_overlap"] and decoys["precision"] == 1.0
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
    md = (out / "report.md").read_text()
    assert "on 40 planted copies" in md and "mirrored eval items" in md
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


def test_empty_predictions_count_wrong_and_the_report_says_how_many(
    scenario: Scenario, tmp_path: Path
) -> None:
    """training.run writes an undecodable item's prediction empty: such items are read as
    no answer, counted wrong, and counted in report.md and run.json."""
    lines = scenario.cifar_predictions.read_text().splitlines()
    blank = {3, 30}  # no prediction (3: Overlap, 30: Clean); both were predicted right before
    assert all(scenario.cifar_correct[i] for i in blank)
    preds = tmp_path / "with_blanks.csv"
    preds.write_text(
        "\n".join([lines[0], *(f"{i}," if i in blank else ln for i, ln in enumerate(lines[1:]))])
        + "\n"
    )
    job = OverlapJob(
        evals=(parse_eval_spec(f"cifar10:{scenario.cifar}"),),
        train=(scenario.ours, scenario.i2d),
        out=tmp_path / "out",
        config=OverlapConfig(threshold=THRESHOLD, processes=1, contact_pairs=0),
        predictions={"cifar10": preds},
    )
    said: list[str] = []
    report = run_overlap(job, log=said.append)
    right = scenario.cifar_correct.copy()
    right[sorted(blank)] = False
    assert report.per_set["cifar10"]["acc_all"] == pytest.approx(right.mean())
    rows = pq.read_table(job.out / "cifar10" / "splits.parquet").to_pylist()
    assert [(r["prediction"], r["correct"]) for r in rows if int(r["id"]) in blank] == [
        (None, False),
        (None, False),
    ]
    assert (
        f"cifar10: 2 of 60 item(s) have no prediction (empty or null in {preds}"
        in (job.out / "report.md").read_text()
    )
    run = json.loads((job.out / "run.json").read_text())
    assert run["eval_sets"]["cifar10"]["no_prediction"] == 2
    assert any("2 item(s) have no prediction" in line for line in said)


@pytest.mark.parametrize(("max_matches", "capped"), [(3, True), (5, False)])
def test_items_with_more_matches_than_max_matches_are_counted_and_reported(
    scenario: Scenario, tmp_path: Path, max_matches: int, capped: bool
) -> None:
    """Five training copies of one eval item: with --max-matches 3 only three are listed,
    and the run says so (console warning, report.md, run.json); with 5, all are."""
    copy = (scenario.pets / "cat" / "002.png").read_bytes()
    distractors = [jpeg(field_image(50_000 + i)) for i in range(6)]
    keys = write_train_dir(tmp_path / "train", [*distractors[:3], *[copy] * 5, *distractors[3:]], 4)
    job = OverlapJob(
        evals=(parse_eval_spec(f"pets=imagefolder:{scenario.pets}"),),
        train=(tmp_path / "train",),
        out=tmp_path / "out",
        config=OverlapConfig(
            threshold=0.95, max_matches=max_matches, top_k=2, processes=1, contact_pairs=0
        ),
    )
    report = run_overlap(job, log=lambda _: None)
    rows = pq.read_table(job.out / "decontaminate.parquet").to_pylist()
    assert [r["train_key"] for r in rows] == keys[3:8][:max_matches]
    run = json.loads((job.out / "run.json").read_text())
    assert run["decontaminate"] == {
        "rows": max_matches,
        "max_matches": max_matches,
        "capped_items": int(capped),
    }
    assert run["eval_sets"]["pets"]["capped_matches"] == int(capped)
    warning = (
        "1 eval item(s) (pets 1) match more than --max-matches 3 training images; "
        "decontaminate.parquet lists only the best 3 of each: rerun with a larger "
        "--max-matches to list them all"
    )
    assert report.warnings == ([warning] if capped else [])
    assert (f"- Warning: {warning}" in (job.out / "report.md").read_text()) is capped


def test_a_rerun_into_the_same_out_replaces_each_set_folder_whole(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A calibrated run with contact sheets, then a rerun with a given threshold and none:
    no calibration curve, contact sheet or predictions of the first run is left behind."""
    out = tmp_path / "report"
    run_overlap(_job(scenario, out, contact_pairs=4), log=lambda _: None)
    first = {p.name for p in (out / "cifar10").iterdir()}
    assert {"calibration.parquet", "pr_curve.png", "borderline.png"} <= first
    # As an earlier --checkpoint run leaves it.
    (out / "cifar10" / "predictions.parquet").write_bytes(b"an older run's")
    run_overlap(_job(scenario, out, threshold=THRESHOLD, contact_pairs=0), log=lambda _: None)
    for name in ("cifar10", "pets"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "neighbours.parquet",
            "splits.parquet",
        ]
    # Nothing of the swap is left in the report folder either.
    assert sorted(p.name for p in out.iterdir()) == [
        "cifar10", "decontaminate.parquet", "overlap.png", "pets", "report.json", "report.md",
        "run.json",
    ]  # fmt: skip
