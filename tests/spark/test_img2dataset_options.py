"""--engine img2dataset and the settings it cannot honour: robots.txt asked for is one
error line before any work; the others, set away from their defaults, one note each
before Spark starts; README and docs/CONFIG.md name every one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.spark.img2dataset_engine import REFUSED, UNHONOURED
from tests.spark.job import SparkWouldStart, build_job

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("given", ["flag", "config file"])
@pytest.mark.usefixtures("no_spark")
def test_robots_with_img2dataset_is_refused_before_any_work(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = ["--pairs", "x.parquet", "--output", str(out), "--engine", "img2dataset"]
    if given == "flag":
        argv.append("--respect-robots")
    else:
        cfg = tmp_path / "c.toml"
        cfg.write_text("respect_robots = true\n")
        argv += ["--config", str(cfg)]
    assert build_job().main(argv) == 2  # returned before get_session: no Spark started
    err = capsys.readouterr().err
    assert err == (
        "error: engine img2dataset cannot honour respect_robots (img2dataset does not read "
        "robots.txt): use --engine native, which does\n"
    )
    assert not out.exists()


@pytest.mark.usefixtures("no_spark")
def test_robots_with_the_native_engine_goes_on(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SparkWouldStart):
        build_job().main(["--pairs", "x.parquet", "--respect-robots"])
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("no_spark")
def test_settings_img2dataset_ignores_get_a_note_each_before_spark(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("host-delay: 0.5\nthreads: 8\nimage-size: 64\n")  # threads, size: honoured
    argv = ["--pairs", "x.parquet", "--engine", "img2dataset", "--config", str(cfg),
            "--max-bytes", "1000000", "--per-host-connections", "2", "--processes", "4",
            "--respect-robots", "false"]  # fmt: skip
    with pytest.raises(SparkWouldStart):  # the notes come before Spark starts
        build_job().main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("note: --processes is ignored on Spark")
    assert lines[1:] == [
        "note: engine img2dataset ignores max_bytes (it reads every image whole, with no byte "
        "cap); --engine native honours it",
        "note: engine img2dataset ignores per_host_connections (it has no per-host connection "
        "limit); --engine native honours it",
        "note: engine img2dataset ignores host_delay (it has no delay between requests to one "
        "host); --engine native honours it",
    ]


@pytest.mark.usefixtures("no_spark")
def test_defaults_with_img2dataset_need_no_note(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SparkWouldStart):
        build_job().main(["--pairs", "x.parquet", "--engine", "img2dataset"])
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("no_spark")
def test_img2dataset_demo_says_it_goes_without_robots(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SparkWouldStart):
        build_job().main(["--engine", "img2dataset"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: the demo honours robots.txt")


def test_img2dataset_demo_config_leaves_robots_off() -> None:
    """The demo's reference settings honour robots.txt; with img2dataset (which refuses it)
    the demo goes without, instead of failing at its download stage."""
    from pipeline.demo import DEMO_PORT, demo_config
    from pipeline.spark.build import BuildConfig
    from pipeline.spark.img2dataset_engine import check_config

    class Web:  # demo_config reads only the seeds' base URLs
        site = type("Site", (), {"spec": type("Spec", (), {"n_hosts": 1})})

        def base_url(self, host: int) -> str:
            return f"http://127.0.0.1:{DEMO_PORT}"

    native = demo_config(BuildConfig(), Web())
    assert native.download.fetch.respect_robots is True
    i2d = demo_config(BuildConfig(engine="img2dataset"), Web())
    assert i2d.download.fetch.respect_robots is False
    assert i2d.download.fetch.max_bytes == native.download.fetch.max_bytes  # the rest holds
    check_config(i2d.download)  # the engine's own check lets it through


def test_img2dataset_refuses_robots_when_called_directly(tmp_path: Path) -> None:
    """Callers other than the job (run_build from Python) are refused too, before a plan."""
    import dataclasses

    from pipeline.config import ConfigError, DownloadConfig
    from pipeline.spark.img2dataset_engine import download_with_img2dataset

    config = DownloadConfig()
    config = dataclasses.replace(
        config, fetch=dataclasses.replace(config.fetch, respect_robots=True)
    )
    with pytest.raises(ConfigError, match="cannot honour respect_robots"):
        download_with_img2dataset(None, str(tmp_path / "p.parquet"), tmp_path / "o", config)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("doc", ["README.md", "docs/CONFIG.md"])
def test_docs_name_every_setting_img2dataset_does_not_honour(doc: str) -> None:
    text = (REPO / doc).read_text()
    for name in [*REFUSED, *UNHONOURED]:
        assert re.search(rf"`(--)?{name.replace('_', '-')}`", text), f"{doc} omits {name}"


def test_run_build_refuses_before_any_stage(tmp_path: Path) -> None:
    """run_build from Python: refused before extraction (no Spark needed to find out)."""
    import dataclasses

    from pipeline.config import ConfigError
    from pipeline.spark.build import BuildConfig, run_build

    base = BuildConfig(output=str(tmp_path / "o"), pairs=("p.parquet",), engine="img2dataset")
    fetch = dataclasses.replace(base.download.fetch, respect_robots=True)
    config = dataclasses.replace(base, download=dataclasses.replace(base.download, fetch=fetch))
    with pytest.raises(ConfigError, match="cannot honour respect_robots"):
        run_build(None, config, log=lambda m: None)
    assert [p.name for p in (tmp_path / "o").iterdir()] == [".lock"]
