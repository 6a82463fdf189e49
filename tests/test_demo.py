"""The build demo's web (``make demo``): served on a fixed port, so that the balancing
draw, a hash of each pair's URL, selects the same pairs on every run. And the download
demo (``python -m pipeline.demo``), which empties its output: never the build demo's."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.curate.balance import BalanceConfig, Balancer, EntryCounts, pair_key
from pipeline.demo import DEMO_PORT, build_parser, demo_web, main
from pipeline.spark.build import BuildConfig
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec

SMALL = {"n_images": 40, "n_pages": 2}  # demo_web's spec changes: fewer images to warm
ENTRIES = ("square", "circle", "triangle", "diamond", "ring", "small", "large", "gradient")


def _balanced(rows: list[dict]) -> list[str]:
    """The URLs the demo's balancing keeps: every caption word in ENTRIES is a query, and
    each pair is decided as the build's balance step decides it (``pair_key(url, caption)``)."""
    matched = [[e for e, word in enumerate(ENTRIES) if word in r["caption"].split()] for r in rows]
    balancer = Balancer(
        EntryCounts.from_matches(matched, len(ENTRIES)), BalanceConfig(max_per_query=10)
    )
    return [
        r["url"]
        for r, ids in zip(rows, matched, strict=True)
        if balancer.decide(pair_key(r["url"], r["caption"]), ids) is None
    ]


def _free_port() -> int:
    """A port free on every demo host a moment ago."""
    with SynthWeb(SiteSpec(n_images=0, n_hosts=4)) as web:
        return web.port


def test_demo_web_serves_on_the_demo_port() -> None:
    with demo_web(**SMALL) as web:
        if web.port != DEMO_PORT:
            pytest.skip(f"port {DEMO_PORT} is in use on this machine (a demo running?)")
        assert {urlsplit(r["url"]).port for r in web.pair_rows()} == {DEMO_PORT}


def test_two_demo_runs_keep_the_same_balanced_pairs() -> None:
    port = _free_port()
    runs = []
    for _ in range(2):
        with demo_web(port=port, **SMALL) as web:
            assert web.port == port
            rows = web.pair_rows()
            runs.append(_balanced(rows))
            elsewhere = _balanced(web.site.pair_rows(port + 1))
    assert 0 < len(runs[0]) < len(rows)  # the draw decided some pairs
    assert runs[0] == runs[1]
    # Why the port is fixed: the same pairs served on another port draw differently.
    assert [urlsplit(u).path for u in elsewhere] != [urlsplit(u).path for u in runs[0]]


def test_demo_web_moves_off_a_taken_port() -> None:
    with (
        SynthWeb(SiteSpec(n_images=0, n_hosts=1)) as other,
        demo_web(port=other.port, **SMALL) as web,
    ):
        assert web.port != other.port
        assert {urlsplit(r["url"]).port for r in web.pair_rows()} == {web.port}


def test_download_demo_writes_apart_from_the_build_demo() -> None:
    download_demo = Path(build_parser().parse_args([]).output).resolve()
    build_demo = Path(BuildConfig().output).resolve()  # make demo's output
    assert download_demo != build_demo
    assert build_demo not in download_demo.parents and download_demo not in build_demo.parents


def test_download_demo_refuses_to_empty_a_folder_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    build = tmp_path / "demo"  # a build demo's output
    (build / "shards").mkdir(parents=True)
    (build / "stats.json").write_text("{}")
    assert main(["--output", str(build)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"error: --output {build} holds what this demo did not write (shards, stats.json)"
    )
    assert (build / "stats.json").read_text() == "{}" and (build / "shards").is_dir()


def test_download_demo_refuses_a_file_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    assert main(["--output", str(target)]) == 2
    assert "holds what this demo did not write (notes.txt)" in capsys.readouterr().err
    assert target.read_text() == "keep"
