"""Spark and the local run give the same splits (one small run each)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.overlap.run import run_overlap
from tests.overlap.conftest import Scenario
from tests.overlap.test_overlap_e2e import _job


def test_spark_search_gives_the_same_splits_as_local(
    spark, scenario: Scenario, tmp_path: Path
) -> None:
    local = run_overlap(_job(scenario, tmp_path / "local", contact_pairs=0), log=lambda _: None)
    on_spark = run_overlap(
        _job(scenario, tmp_path / "spark", contact_pairs=0, spark=True), log=lambda _: None
    )
    for name in ("cifar10", "pets"):
        for f in ("splits.parquet", "neighbours.parquet"):
            a = pq.read_table(tmp_path / "local" / name / f)
            b = pq.read_table(tmp_path / "spark" / name / f)
            assert a.equals(b), (name, f)
        assert local.per_set[name] == on_spark.per_set[name]
    a = pq.read_table(tmp_path / "local" / "decontaminate.parquet")
    assert a.equals(pq.read_table(tmp_path / "spark" / "decontaminate.parquet"))
    assert a.num_rows >= 7  # the planted copies at least
    assert local.read_counts == on_spark.read_counts
