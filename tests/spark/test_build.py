"""spark-submit jobs/build_wit.py end to end: a crawl of the synthweb and generated WARC
files in, a balanced, deduplicated dataset and a funnel that adds up out."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.demo import demo_config
from pipeline.engine import ledger_rows
from pipeline.sources.pairs import InputError
from pipeline.spark.build import BuildConfig, run_build
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec
from tests.spark.job import SparkWouldStart, build_job

SPEC = SiteSpec(seed=21, n_images=40, n_hosts=2, n_pages=4, stall_seconds=4.0)


@pytest.fixture(scope="module")
def web():
    with SynthWeb(SPEC) as server:
        server.warm()
        yield server


def _config(web: SynthWeb, out: Path, **changes) -> BuildConfig:
    base = BuildConfig(
        output=str(out), query=dataclasses.replace(BuildConfig().query, unigram_source="none")
    )
    cfg = demo_config(base, web)
    cfg = dataclasses.replace(
        cfg, download=dataclasses.replace(cfg.download, samples_per_shard=16, threads=8)
    )
    return dataclasses.replace(cfg, **changes)


def _candidates(out: Path) -> list[dict]:
    return pq.read_table(out / "candidates").to_pylist()


@pytest.fixture(scope="module")
def built(spark, web, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "ds"
    stats = run_build(spark, _config(web, out), log=lambda m: None)
    return out, stats


def test_every_candidate_is_accounted_for_at_every_stage(built) -> None:
    out, stats = built
    rows = _candidates(out)
    fates = Counter(r["reason"] or r["status"] for r in rows)
    funnel = stats["funnel"]
    assert funnel["start"]["count"] == len(rows)
    by_stage = {s["name"]: s for s in funnel["stages"]}
    # the rows' own fates give the same drops as the stage counters
    for stage in ("cleaned", "unique", "matched", "balanced"):
        for reason, n in by_stage[stage]["drops"].items():
            assert fates[reason] == n, (stage, reason)
    assert by_stage["balanced"]["count"] == fates["kept"]
    ledger = list(ledger_rows(out))
    assert len(ledger) == fates["kept"]  # every selected pair has one download ledger row
    assert by_stage["downloaded"]["count"] == sum(r["status"] == "success" for r in ledger)
    final = pq.read_table(out / "final.parquet").to_pylist()
    assert by_stage["deduplicated"]["count"] == len(final)
    card = (out / "README.md").read_text()
    assert card.count("| candidates |") == 1
    # MetaCLIP's rule is a target per query, not a cap (pairs kept for other queries count).
    assert "with MetaCLIP's rule at t = 25 pairs per query" in card and "at most" not in card
    for png in ("funnel.png", "contact_sheet.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_balancing_caps_hold_and_the_report_says_so(built) -> None:
    out, stats = built
    cap = 25
    kept = [r for r in _candidates(out) if r["status"] == "kept"]
    per_entry = Counter(e for r in kept for e in r["matched"])
    before = Counter(
        e for r in _candidates(out) if r["reason"] in (None, "balanced") for e in r["matched"]
    )
    for entry, n_before in before.items():
        if n_before <= cap:
            assert per_entry[entry] == n_before  # a tail entry keeps every pair
    assert stats["queries"]["max_per_query"] == cap
    assert stats["queries"]["share_matched"] > 0.5


def test_rerun_is_identical_and_fetches_nothing_again(spark, web, built) -> None:
    out, stats = built
    first_final = pq.read_table(out / "final.parquet").column("key").to_pylist()
    first_selected = pq.read_table(out / "selected.parquet").column("url").to_pylist()
    web.clear_log()
    again = run_build(spark, _config(web, out), log=lambda m: None)
    assert pq.read_table(out / "final.parquet").column("key").to_pylist() == first_final
    assert pq.read_table(out / "selected.parquet").column("url").to_pylist() == first_selected
    assert again["funnel"] == stats["funnel"]
    image_requests = [
        p
        for (_, _, p, _) in web.request_log
        if not p.startswith("/pages") and p not in ("/", "/robots.txt")
    ]
    assert image_requests == []  # committed shards were not downloaded again


def _snapshot(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(spark, web, built) -> None:
    out, _ = built
    before = _snapshot(out)
    cfg = _config(web, out)
    other = dataclasses.replace(cfg, balance=dataclasses.replace(cfg.balance, max_per_query=1))
    with pytest.raises(InputError, match="planned from a different input or settings"):
        run_build(spark, other, log=lambda m: None)
    # The selection it made was staged, never moved over the finished dataset's.
    assert _snapshot(out) == before
    assert not (out / "_tmp").exists()


def _warc(path: Path, web: SynthWeb, pages: list[tuple[int, int]], malformed: bool) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for host, page in pages:
            url = f"{web.base_url(host)}/pages/{page}.html"
            body = web.site.render_page(host, page, web.port)
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(body if isinstance(body, bytes) else body.encode()),
                http_headers=headers,
            )
            writer.write_record(record)
    if malformed:
        with open(path, "ab") as f:
            f.write(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\ntruncated")


def test_warc_input_with_a_malformed_record(spark, web, tmp_path: Path) -> None:
    _warc(tmp_path / "a.warc.gz", web, [(0, 0), (0, 1)], malformed=False)
    _warc(tmp_path / "b.warc.gz", web, [(1, 2)], malformed=True)
    cfg = dataclasses.replace(
        _config(web, tmp_path / "ds"), crawl=(), warc=(str(tmp_path / "*.warc.gz"),)
    )
    stats = run_build(spark, cfg, log=lambda m: None)
    expected = sum(
        1
        for h, p in [(0, 0), (0, 1), (1, 2)]
        for pair in web.site.page_pairs(h, p, web.port)
        if pair["caption"] is not None  # an <img> without text is counted, not a candidate
    )
    assert stats["funnel"]["start"]["count"] == expected
    extract = stats["counters"]["extract"]
    assert extract["warc.files"] == 2
    assert sum(v for k, v in extract.items() if k.startswith("warc.skip.")) >= 1


def test_bad_inputs_are_clear_errors(spark, web, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no input file matches"):
        run_build(
            spark,
            dataclasses.replace(
                _config(web, tmp_path / "x"), crawl=(), warc=(str(tmp_path / "none*.warc"),)
            ),
        )
    bad = tmp_path / "pairs.csv"
    bad.write_text("link,caption\nhttp://127.0.0.1/x.jpg,a cat\n")
    with pytest.raises(InputError, match="column 'url' not found"):
        run_build(
            spark, dataclasses.replace(_config(web, tmp_path / "y"), crawl=(), pairs=(str(bad),))
        )
    with pytest.raises(ConfigError, match="engine must be one of"):
        BuildConfig(engine="wget")


def test_job_cli_help_and_stats_file(built) -> None:
    import subprocess
    import sys

    out, stats = built
    assert json.loads((out / "stats.json").read_text())["funnel"] == stats["funnel"]
    done = subprocess.run(
        [sys.executable, "jobs/build_wit.py", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0
    for flag in (
        "--warc",
        "--pairs",
        "--crawl",
        "--max-per-query",
        "--allow-networks",
        "--image-size",
    ):
        assert flag in done.stdout


def test_per_entry_balance_report(built) -> None:
    out, _ = built
    table = pq.read_table(out / "queries_balance.parquet").to_pylist()
    assert table
    kept = [r for r in _candidates(out) if r["status"] == "kept"]
    realized = Counter(e for r in kept for e in r["matched"])
    for row in table:
        assert row["realized_after"] == realized[row["entry_id"]]
        assert row["realized_after"] <= row["count_before"]
        if row["count_before"] <= 25:  # tail entries: every pair kept, expected = count
            assert row["expected_after"] == pytest.approx(row["count_before"])


def test_balance_report_in_stats(built) -> None:
    out, stats = built
    report = stats["balance"]
    fates = Counter(r["reason"] or r["status"] for r in _candidates(out))
    assert report["kept"] == fates["kept"]
    assert report["dropped_balanced"] == fates.get("balanced", 0)
    assert report["pairs"] == report["kept"] + report["dropped_balanced"] + report["unmatched"]
    assert report["max_per_query"] == 25


def test_job_flags_conflict_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    job = build_job()
    code = job.main(["--pairs", "x.parquet", "--queries", "q.txt", "--build-queries"])
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == "error: --queries and --build-queries exclude each other"
    )


@pytest.mark.parametrize("given", ["flag", "config file", "neither"])
@pytest.mark.usefixtures("no_spark")
def test_job_notes_that_processes_is_ignored_on_spark(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "download.toml"
    cfg.write_text("processes = 4\nthreads = 8\n" if given == "config file" else "threads = 8\n")
    argv = ["--pairs", "x.parquet", "--config", str(cfg)]
    if given == "flag":
        argv += ["--processes", "4"]
    with pytest.raises(SparkWouldStart):  # the note comes before Spark starts
        build_job().main(argv)
    err = capsys.readouterr().err
    if given == "neither":
        assert err == ""
        return
    named = "--processes" if given == "flag" else f"processes in {cfg}"
    assert err.count("\n") == 1
    assert err.startswith(f"note: {named} is ignored on Spark: each shard is one Spark task; ")
    assert "--master local[N]" in err


@pytest.mark.parametrize("missing", ["queries", "wordnet-dir"])
@pytest.mark.usefixtures("no_spark")
def test_job_missing_query_input_is_one_error_line_before_spark(
    missing: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gone = tmp_path / "missing"
    if missing == "queries":
        argv = ["--queries", str(gone / "q.txt")]
        expected = f"error: query list not found: {gone / 'q.txt'}: "
    else:
        argv = ["--wordnet-dir", str(gone)]
        expected = f"error: no WordNet 3.0 database in {gone} (missing index.noun, "
    code = build_job().main(["--pairs", "x.parquet", "--output", str(tmp_path / "out"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected)
    if missing == "wordnet-dir":  # what a user without wordnet-base does next
        assert "wordnet-base" in err and "--wordnet-dir DIR" in err and "--wordnet false" in err


@pytest.mark.usefixtures("no_spark")
def test_job_without_wordnet_needs_no_database(tmp_path: Path) -> None:
    argv = ["--pairs", "x.parquet", "--wordnet-dir", str(tmp_path / "none"), "--wordnet", "false"]
    with pytest.raises(SparkWouldStart):  # the advice of the error above works
        build_job().main(argv)


def test_pairs_folder_is_read_file_by_file_in_name_order(tmp_path: Path) -> None:
    import pyarrow as pa

    from pipeline.spark.build import _driver_candidates

    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in ("b", "a"):
        pq.write_table(
            pa.Table.from_pylist([{"url": f"http://x.test/{name}.jpg", "caption": "a dog"}]),
            folder / f"{name}.parquet",
        )
    (folder / "_SUCCESS").write_text("")
    empty = {"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}
    pq.write_table(pa.table(empty), folder / "c.parquet")  # an empty Spark partition
    rows, counters = _driver_candidates(BuildConfig(pairs=(str(folder),)), log=lambda m: None)
    assert [r["candidate_id"] for r in rows] == [
        f"pairs:{folder / 'a.parquet'}#000000000",
        f"pairs:{folder / 'b.parquet'}#000000000",
    ]
    assert counters.to_dict()["pairs.files"] == 3


def test_a_failed_shard_stops_the_build_naming_it_and_a_rerun_finishes(
    spark, web, built, tmp_path: Path
) -> None:
    import shutil

    from pipeline.shards.layout import OutputLayout
    from pipeline.spark.build import ShardsFailed

    done, stats = built
    out = tmp_path / "ds"
    shutil.copytree(done, out)
    layout = OutputLayout(out)
    # Shard 1 uncommitted, and its plan part damaged (as by a disk fault): that shard
    # cannot be downloaded. The others are committed and stay as they are.
    layout.shard_stats(1).unlink()
    part = layout.plan_part(1)
    good_part = part.read_bytes()
    part.write_bytes(b"not parquet")
    with pytest.raises(ShardsFailed, match=r"1 of \d+ shards failed \(shard 1: .*rerun"):
        run_build(spark, _config(web, out), log=lambda m: None)
    assert not layout.is_committed(1) and layout.is_committed(0)
    part.write_bytes(good_part)
    again = run_build(spark, _config(web, out), log=lambda m: None)
    assert again["funnel"] == stats["funnel"]
    assert layout.is_committed(1)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("q.parquet", {"query": ["dog"]}, "needs an 'entry' column; columns are: query"),
        ("q.json", '{"dog": 1}', "a JSON query list must be a list of strings"),
        ("q.parquet", b"PAR1 damaged", "cannot read the query list"),
    ],
)
@pytest.mark.usefixtures("no_spark")
def test_job_unusable_query_list_is_one_error_line_before_spark(
    name: str, content: object, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pyarrow as pa

    path = tmp_path / name
    if isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code = build_job().main(
        ["--pairs", "x.parquet", "--output", str(tmp_path / "out"), "--queries", str(path)]
    )
    assert code == 2  # not SparkWouldStart: refused before Spark
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert expected in err


def test_a_pair_list_with_empty_and_unfetchable_urls_builds_each_drop_in_its_stage(
    spark, web, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    good = [r for r in web.pair_rows() if r["fault"] is None][:3]
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        w.writerows([r["url"], r["caption"]] for r in good)
        w.writerow(["", "a gradient with no url"])  # the reader: invalid_url
        w.writerow(["ftp://127.0.0.1/b.jpg", "a gradient over ftp"])  # dedup: unfetchable
        w.writerow(["http://127.0.0.1/c.jpg", "a gradient", "a third field"])  # invalid_row
    queries = tmp_path / "queries.txt"
    queries.write_text("Gradient \n\n***\n")  # normalized as captions are matched
    out = tmp_path / "ds"
    cfg = dataclasses.replace(
        _config(web, out), crawl=(), pairs=(str(pairs),), queries=str(queries)
    )

    # A build that dies after the download (here in image dedup) leaves no stats.json:
    # only a finished build writes it. The download's own stats are apart.
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed in image dedup")

    monkeypatch.setattr("pipeline.spark.dedup.dedup_on_spark", crash)
    with pytest.raises(RuntimeError, match="killed in image dedup"):
        run_build(spark, cfg, log=lambda m: None)
    assert not (out / "stats.json").exists()
    partial = json.loads((out / "download_stats.json").read_text())
    assert partial["rows"] == 3 and "funnel" not in partial
    monkeypatch.undo()

    stats = run_build(spark, cfg, log=lambda m: None)  # the same rerun finishes
    stages = {s["name"]: s for s in stats["funnel"]["stages"]}
    assert stats["funnel"]["start"]["count"] == 6
    assert stages["readable"]["drops"] == {"invalid_url": 1, "invalid_row": 1}
    assert stages["unique"]["drops"] == {"unfetchable_url": 1}
    assert stages["balanced"]["count"] == 3
    loaded = {"entries": 1, "changed": 1, "dropped": 1, "repeats": 0}
    assert stats["queries"]["list_loaded"] == loaded
    assert "- the list given: 1 entries normalized" in (out / "README.md").read_text()
    assert json.loads((out / "stats.json").read_text())["funnel"] == stats["funnel"]
    why = {r["reason"]: r["error_message"] for r in _candidates(out) if r["status"] != "kept"}
    assert why == {
        "invalid_url": "url is empty",
        "unfetchable_url": None,
        "invalid_row": "line 7: 3 fields, header has 2",
    }


def test_a_warc_file_a_task_cannot_open_is_one_input_error(spark, web, tmp_path: Path) -> None:
    import fsspec

    # In the driver's memory only: the driver lists it, the Spark task cannot open it.
    with fsspec.open("memory://wit-tests/gone.warc.gz", "wb") as f:
        f.write(b"")
    cfg = dataclasses.replace(
        _config(web, tmp_path / "ds"), crawl=(), warc=("memory://wit-tests/gone.warc.gz",)
    )
    try:
        with pytest.raises(InputError) as raised:
            run_build(spark, cfg, log=lambda m: None)
    finally:
        fsspec.filesystem("memory").rm("/wit-tests", recursive=True)
    assert str(raised.value) == "input file not found: memory://wit-tests/gone.warc.gz"


def test_a_reason_two_stages_share_is_counted_in_each_stage_that_dropped_rows() -> None:
    # Before unfetchable_url, candidate dedup dropped under the reader's invalid_url: the
    # funnel lost the reader's rows and the build crashed at its very end.
    from pipeline.spark.build import _funnel
    from pipeline.stats.counters import Counters

    dedup = Counters()
    dedup.add("dedup.drop.invalid_url")
    funnel = _funnel(
        3,
        {"kept": 1, "invalid_url": 2},
        Counters(),
        dedup,
        {"successes": 1, "status_counts": {"success": 1}},
        {"exact": 0, "near": 0, "final": 1},
    )
    stages = {s.name: s for s in funnel.stages}
    assert stages["readable"].drops == {"invalid_url": 1}
    assert stages["unique"].drops == {"invalid_url": 1}
    assert stages["balanced"].count == 1
