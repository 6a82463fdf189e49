"""Inputs and --output as fsspec URLs, against moto's S3 server on loopback."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.demo import demo_config
from pipeline.spark.build import BuildConfig, run_build
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("data")
    yield port
    server.stop()


def test_pairs_from_s3_and_dataset_to_s3(
    spark, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    monkeypatch.chdir(tmp_path)  # the staging folder lands here
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    with SynthWeb(SiteSpec(seed=31, n_images=8, n_hosts=1, n_pages=1)) as web:
        rows = [
            {"url": r["url"], "caption": r["caption"]}
            for r in web.pair_rows()
            if r["fault"] is None
        ]
        local = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), local)
        fs.put_file(str(local), "data/in/pairs.parquet")
        queries = tmp_path / "queries.txt"  # a small list: this test is about storage
        queries.write_text("\n".join(["red", "blue", "green", "circle", "square", "gradient"]))
        base = BuildConfig(output="s3://data/out/ds", queries=str(queries))
        cfg = dataclasses.replace(
            demo_config(base, web), crawl=(), pairs=("s3://data/in/pairs.parquet",)
        )
        stats = run_build(spark, cfg, log=lambda m: None)
    assert stats["funnel"]["start"]["count"] == len(rows)
    listed = {p.split("data/out/ds/", 1)[1] for p in fs.find("data/out/ds")}
    assert {
        "stats.json",
        "README.md",
        "final.parquet",
        "shards/00000.tar",
        "ledger/00000.parquet",
    } <= listed
    with fs.open("data/out/ds/final.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == stats["dedup"]["final"] > 0
    again = run_build(spark, cfg, log=lambda m: None)  # complete: nothing is redone
    assert again["funnel"] == stats["funnel"]
