"""The download stage on Spark gives the same dataset as the local engine."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engine import ledger_rows, run_download
from pipeline.spark.download import download_on_spark
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec, reference_config


def _members(out: Path) -> set[str]:
    names: set[str] = set()
    for tar in (out / "shards").glob("*.tar"):
        with tarfile.open(tar) as tf:
            names.update(tf.getnames())
    return names


def test_spark_download_matches_local_and_reruns_are_noops(spark, tmp_path: Path) -> None:
    spec = SiteSpec(seed=9, n_images=10, n_hosts=2, n_pages=1, stall_seconds=3.0)
    with SynthWeb(spec) as web:
        rows = [r for r in web.pair_rows() if r["fault"] != "stall"]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        config = dataclasses.replace(
            reference_config(), samples_per_shard=8, threads=4, processes=1
        )
        stats = download_on_spark(spark, str(pairs), tmp_path / "spark", config)
        web.reset_state()
        run_download(str(pairs), tmp_path / "local", config, show_progress=False)
        spark_ledger = {r["url"]: (r["key"], r["status"]) for r in ledger_rows(tmp_path / "spark")}
        local_ledger = {r["url"]: (r["key"], r["status"]) for r in ledger_rows(tmp_path / "local")}
        assert spark_ledger == local_ledger
        assert {r["url"]: s for r in rows for s in [spark_ledger[r["url"]][1]]} == {
            r["url"]: r["expected_status"] for r in rows
        }
        assert _members(tmp_path / "spark") == _members(tmp_path / "local")
        assert stats["rows"] == len(rows) and not stats["failed_shards"]
        web.clear_log()
        again = download_on_spark(spark, str(pairs), tmp_path / "spark", config)
        assert again["rows_this_run"] == 0 and again["status_counts"] == stats["status_counts"]
        assert web.request_log == []
