"""Inputs and --output as fsspec URLs, against moto's S3 server on loopback."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.demo import demo_config
from pipeline.sources.pairs import InputError
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
        _build_check_and_rebuild(spark, web, fs, tmp_path)


def _build_check_and_rebuild(spark, web: SynthWeb, fs, tmp_path: Path) -> None:
    rows = [
        {"url": r["url"], "caption": r["caption"]} for r in web.pair_rows() if r["fault"] is None
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
    # Uploaded without Hadoop's .crc files or the run lock; the staging folder is gone.
    assert not [p for p in listed if p.endswith(".crc") or p.endswith(".lock")]
    assert not any((tmp_path / ".wit-staging").iterdir())
    # Complete: nothing is redone, also when only how it is fetched changes.
    faster = dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, threads=4))
    again = run_build(spark, faster, log=lambda m: None)
    assert again["funnel"] == stats["funnel"]
    # Other settings are refused, as for a local dataset, not answered "nothing to do".
    other = dataclasses.replace(cfg, balance=dataclasses.replace(cfg.balance, max_per_query=1))
    with pytest.raises(
        InputError,
        match=r"complete and was built with other settings "
        r"\(balance\.max_per_query changed\): use another --output",
    ):
        run_build(spark, other, log=lambda m: None)

    # An upload interrupted before stats.json: the rerun builds and uploads again, and the
    # candidates' Spark part files (named anew each run) replace the old ones.
    fs.rm_file("data/out/ds/stats.json")
    rebuilt = run_build(spark, cfg, log=lambda m: None)
    assert rebuilt["funnel"] == stats["funnel"]
    with fs.open("data/out/ds/stats.json") as f:
        assert json.load(f)["funnel"] == stats["funnel"]
    fs.invalidate_cache()  # this client listed the old parts before
    parts = [p for p in fs.find("data/out/ds/candidates") if p.endswith(".parquet")]
    n = sum(pq.ParquetFile(fs.open(p, "rb")).metadata.num_rows for p in parts)
    assert n == stats["funnel"]["start"]["count"]
