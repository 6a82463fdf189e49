"""The overlap tool's decontaminate.parquet, passed to training.run --exclude: the training
samples it names are never trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, run_overlap
from tests.overlap.conftest import Scenario
from training import run as train_run


def test_decontaminate_parquet_excludes_the_overlap_from_training(
    scenario: Scenario, tmp_path: Path
) -> None:
    job = OverlapJob(
        evals=(
            parse_eval_spec(f"cifar10:{scenario.cifar}"),
            parse_eval_spec(f"pets=imagefolder:{scenario.pets}"),
        ),
        train=(scenario.ours,),
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
    assert set(pq.read_table(decontaminate).column("train_key").to_pylist()) == planted

    # The same tars without the fixture's stats files (they count no successes): training
    # counts the samples from the tars themselves.
    tars = tmp_path / "tars"
    tars.mkdir()
    for tar in sorted((scenario.ours / "shards").glob("*.tar")):
        shutil.copy(tar, tars)
    out = tmp_path / "run"
    argv = ["--train-data", str(tars), "--output", str(out), "--steps", "1"]
    argv += ["--batch-size", "8", "--threads", "1", "--exclude", str(decontaminate)]
    assert train_run.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    # Every sample was read into the shuffle buffer once; the planted copies were dropped.
    assert summary["exclude_keys"] == summary["data_excluded"] == len(planted) == 4
    assert summary["data_samples"] == 84
