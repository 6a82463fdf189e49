"""The overlap tool's decontaminate.parquet, passed to training.run --exclude: the training
samples it names are never trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, run_overlap
from tests.overlap.conftest import Scenario
from training import run as train_run


def _copy_tars(src: Path, dst: Path) -> Path:
    # The tars without the fixture's stats files (they count no successes): training
    # counts the samples from the tars themselves.
    dst.mkdir()
    for tar in sorted((src / "shards").glob("*.tar")):
        shutil.copy(tar, dst)
    return dst


def _train(argv: list[str], out: Path) -> dict:
    argv = [*argv, "--output", str(out), "--steps", "1", "--batch-size", "8", "--threads", "1"]
    assert train_run.main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_decontaminate_parquet_excludes_the_overlap_from_training(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two datasets numbered alike: b holds the same keys as a, other images in general
    # (here the same ones, which does not matter: only a is checked against the evals).
    a = _copy_tars(scenario.ours, tmp_path / "a")
    b = _copy_tars(scenario.ours, tmp_path / "b")
    job = OverlapJob(
        evals=(
            parse_eval_spec(f"cifar10:{scenario.cifar}"),
            parse_eval_spec(f"pets=imagefolder:{scenario.pets}"),
        ),
        train=(a,),
        out=tmp_path / "report",
        config=OverlapConfig(threshold=0.9, processes=1, contact_pairs=0),
    )
    report = run_overlap(job, log=lambda _: None)
    planted = {
        key
        for by_id in scenario.planted.values()
        for src, key in by_id.values()
        if src == scenario.ours
    }
    decontaminate = report.out / "decontaminate.parquet"
    rows = pq.read_table(decontaminate).to_pylist()
    assert {r["train_key"] for r in rows} == planted
    assert {Path(r["train_shard_path"]).parent for r in rows} == {a.resolve()}

    # Trained on a and b: the planted keys are left out of a's shards, and read in b's.
    summary = _train(
        ["--train-data", f"{a}::{b}", "--exclude", str(decontaminate)], tmp_path / "ab"
    )
    # Every sample was read into the shuffle buffer once; the planted copies in a skipped.
    assert summary["exclude_keys"] == summary["data_excluded"] == len(planted) == 4
    assert summary["data_samples"] == summary["samples_in_shards"] == 2 * 84
    assert summary["samples_per_epoch"] == 2 * 84 - len(planted)  # named per shard: known
    assert "not in --train-data" not in capsys.readouterr().err

    # Trained on b alone, which the report never saw: the keys are left out by key alone.
    summary = _train(["--train-data", str(b), "--exclude", str(decontaminate)], tmp_path / "b1")
    assert summary["exclude_keys"] == summary["data_excluded"] == 4
    assert summary["data_samples"] == 84
    err = capsys.readouterr().err
    assert "shard(s) it names are not in --train-data" in err
    assert "their keys are left out of every shard" in err
