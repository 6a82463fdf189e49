"""--engine img2dataset: the same shard plan through img2dataset's pyspark distributor,
the same layout, and our address guard on every request (a loopback proxy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engine import ledger_rows
from pipeline.schema import Status
from pipeline.spark.download import download_on_spark
from pipeline.spark.img2dataset_engine import classify, download_with_img2dataset
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec, reference_config


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("success", None, Status.SUCCESS),
        ("failed_to_download", "HTTP Error 404: Not Found", Status.HTTP_ERROR),
        (
            "failed_to_download",
            "HTTP Error 403: Forbidden (X-Wit-Blocked: 10.255.255.1 is a private address)",
            Status.BLOCKED_ADDRESS,
        ),
        ("failed_to_download", "<urlopen error timed out>", Status.TIMEOUT),
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", Status.OPT_OUT),
        (
            "failed_to_download",
            "<urlopen error [Errno 111] Connection refused>",
            Status.CONNECTION_ERROR,
        ),
        ("failed_to_resize", "image too small", Status.TOO_SMALL),
        ("failed_to_resize", "aspect ratio too large", Status.BAD_ASPECT_RATIO),
        ("failed_to_resize", "image area too large", Status.TOO_LARGE),
        ("failed_to_resize", "Image decoding error", Status.DECODE_ERROR),
    ],
)
def test_img2dataset_outcomes_map_to_our_statuses(
    status: str, message: str | None, expected: Status
) -> None:
    assert classify(status, message) is expected


def test_same_plan_same_layout_and_the_guard_holds(spark, tmp_path: Path) -> None:
    faults = (None, "not_found", "redirect_chain", "redirect_private", "noai")
    with SynthWeb(SiteSpec(seed=51, n_images=8, n_hosts=3, n_pages=1)) as web:
        rows = [
            {"url": r["url"], "caption": r["caption"], "fault": r["fault"]}
            for r in web.pair_rows()
            if r["fault"] in faults
        ]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        config = dataclasses.replace(reference_config(), samples_per_shard=5, threads=4)
        config = dataclasses.replace(
            config, fetch=dataclasses.replace(config.fetch, respect_robots=False, retries=0)
        )
        theirs = download_with_img2dataset(spark, str(pairs), tmp_path / "i2d", config)
        ours = download_on_spark(spark, str(pairs), tmp_path / "native", config)
        private_hits = [p for (_, _, p, _) in web.request_log if p == "/x.jpg"]
    assert private_hits == []  # nothing reached past the redirect (it is not on loopback anyway)
    assert theirs["shards"] == ours["shards"]
    i2d = {r["url"]: r for r in ledger_rows(tmp_path / "i2d")}
    nat = {r["url"]: r for r in ledger_rows(tmp_path / "native")}
    assert len(i2d) == len(rows)
    assert {u: r["shard"] for u, r in i2d.items()} == {
        u: r["shard"] for u, r in nat.items()
    }  # same plan
    by_fault = {r["fault"]: i2d[r["url"]]["status"] for r in rows if r["fault"]}
    assert by_fault["redirect_private"] == "blocked_address"
    assert by_fault["not_found"] == "http_error"
    assert by_fault["noai"] == "opt_out"
    assert by_fault["redirect_chain"] == "success"
    normal = [i2d[r["url"]]["status"] for r in rows if r["fault"] is None]
    assert normal and set(normal) == {"success"}
    for sid in range(theirs["shards"]):
        assert (tmp_path / "i2d" / "shards" / f"{sid:05d}.tar").is_file()
    assert not (tmp_path / "i2d" / "_tmp").exists()  # no empty scratch folder left
