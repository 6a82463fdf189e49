"""Dedup of a downloaded dataset: locally and on Spark, the same marks and final list."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedup.dataset import dedup_dataset
from pipeline.dedup.images import DedupConfig
from pipeline.engine import ledger_rows, run_download
from pipeline.spark.dedup import dedup_on_spark
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec, reference_config


def test_repeated_images_are_marked_and_left_out_of_the_final_list(spark, tmp_path: Path) -> None:
    with SynthWeb(SiteSpec(seed=12, n_images=6, n_hosts=1, n_pages=1)) as web:
        normal = [r for r in web.pair_rows() if r["fault"] is None]
        rows = [*normal, normal[0], normal[3], {**normal[0], "caption": "another caption"}]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        config = dataclasses.replace(
            reference_config(), samples_per_shard=4, processes=1, threads=4
        )
        run_download(str(pairs), tmp_path / "local", config, show_progress=False)
    shutil.copytree(tmp_path / "local", tmp_path / "spark")
    n_shards = 3
    counts = dedup_dataset(tmp_path / "local", n_shards, DedupConfig())
    assert counts == {"images": 9, "undecodable": 0, "exact": 3, "near": 0, "final": 6}
    ledger = sorted(ledger_rows(tmp_path / "local"), key=lambda r: r["row_index"])
    marks = [
        (r["row_index"], r["duplicate_of"], r["duplicate_kind"])
        for r in ledger
        if r["duplicate_of"]
    ]
    key = {r["row_index"]: r["key"] for r in ledger}
    assert marks == [(6, key[0], "exact"), (7, key[3], "exact"), (8, key[0], "exact")]
    # Each duplicate names its tar, relative to the dataset (training's --exclude reads it).
    listed = pq.read_table(tmp_path / "local" / "dedup" / "duplicates.parquet").to_pylist()
    shard = {r["row_index"]: r["shard"] for r in ledger}  # the ledger's shard number
    assert {r["key"]: r["shard"] for r in listed} == {
        key[i]: f"shards/{shard[i]:05d}.tar" for i in (6, 7, 8)
    }
    final = pq.read_table(tmp_path / "local" / "final.parquet").column("key").to_pylist()
    assert sorted(final) == sorted(key[i] for i in range(6))
    spark_counts = dedup_on_spark(spark, tmp_path / "spark", n_shards, DedupConfig())
    assert spark_counts == counts
    assert pq.read_table(tmp_path / "spark" / "final.parquet").column("key").to_pylist() == final
