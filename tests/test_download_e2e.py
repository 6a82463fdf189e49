"""The download engine end to end against the loopback synthweb: every fault gets its
expected status, every row is accounted for exactly once, shards are readable."""

from __future__ import annotations

import dataclasses
import itertools
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DownloadConfig
from pipeline.engine import ledger_rows, run_download
from pipeline.shards.layout import OutputLayout
from pipeline.sources.pairs import InputError
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec, reference_config
from tests.loopback import serve

SPEC = SiteSpec(seed=7, n_images=24, n_hosts=3, n_pages=3, stall_seconds=10.0)


@pytest.fixture(scope="module")
def web():
    with SynthWeb(SPEC) as server:
        server.warm()
        yield server


def _config(**changes) -> DownloadConfig:
    base = reference_config()
    cfg = dataclasses.replace(base, samples_per_shard=10, threads=8, processes=1)
    fetch_changes = {k: v for k, v in changes.items() if hasattr(cfg.fetch, k)}
    image_changes = {k: v for k, v in changes.items() if hasattr(cfg.image, k)}
    top = {k: v for k, v in changes.items() if k not in fetch_changes and k not in image_changes}
    return dataclasses.replace(
        cfg,
        fetch=dataclasses.replace(cfg.fetch, **fetch_changes),
        image=dataclasses.replace(cfg.image, **image_changes),
        **top,
    )


def _pairs(web: SynthWeb, path: Path) -> tuple[Path, list[dict]]:
    rows = web.pair_rows()
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, rows


def _tar_members(out: Path) -> list[str]:
    names: list[str] = []
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            names.extend(tf.getnames())
    return names


@pytest.fixture(scope="module")
def reference_run(web: SynthWeb, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ref")
    web.reset_state()
    web.clear_log()
    pairs, rows = _pairs(web, tmp / "pairs.parquet")
    summary = run_download(str(pairs), tmp / "out", _config(), show_progress=False)
    return tmp / "out", rows, summary


def test_every_url_gets_the_status_the_site_expects(reference_run) -> None:
    out, rows, summary = reference_run
    assert summary.ok
    by_url = {r["url"]: r for r in ledger_rows(out)}
    mismatches = [
        (
            r["fault"],
            r["expected_status"],
            by_url[r["url"]]["status"],
            by_url[r["url"]]["error_message"],
        )
        for r in rows
        if by_url[r["url"]]["status"] != r["expected_status"]
    ]
    assert mismatches == []


def test_every_row_once_in_the_ledger_and_every_success_once_in_the_tars(reference_run) -> None:
    out, rows, summary = reference_run
    ledger = list(ledger_rows(out))
    assert sorted(r["row_index"] for r in ledger) == list(range(len(rows)))
    assert len({r["key"] for r in ledger}) == len(rows)
    assert all(len(r["key"]) == 9 and r["key"].isdigit() for r in ledger)
    successes = {r["key"] for r in ledger if r["status"] == "success"}
    members = _tar_members(out)
    assert Counter(members) == Counter(
        f"{k}.{ext}" for k in successes for ext in ("jpg", "txt", "json")
    )
    counts = Counter(r["status"] for r in ledger)
    assert summary.stats["status_counts"] == dict(counts)
    assert summary.stats["rows"] == len(rows)
    stats_file = json.loads((out / "stats.json").read_text())
    assert stats_file["status_counts"] == dict(counts)


def test_samples_carry_sizes_hash_and_caption(reference_run, web: SynthWeb) -> None:
    import hashlib

    out, _rows, _ = reference_run
    payload_by_url = {web.url_for(e): e for e in web.site.entries}
    tar = sorted((out / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        metas = [json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith(".json")]
        captions = {
            m.name[:-4]: tf.extractfile(m).read().decode()
            for m in tf.getmembers()
            if m.name.endswith(".txt")
        }
    assert metas
    for meta in metas:
        assert meta["status"] == "success"
        assert captions[meta["key"]] == meta["caption"]
        assert (
            min(meta["width"], meta["height"]) == 256
            or meta["original_width"] <= 256
            or meta["original_height"] <= 256
        )
        entry = payload_by_url.get(meta["url"])
        if entry is not None and entry.fault is None:
            assert meta["sha256"] == hashlib.sha256(web.payload(entry)).hexdigest()
            assert (meta["original_width"], meta["original_height"]) == (entry.width, entry.height)
        for col in ("fault", "expected_status", "host"):  # extra input columns kept
            assert col in meta


def test_shards_have_img2dataset_layout_and_read_with_webdataset(reference_run) -> None:
    import webdataset as wds

    out, rows, _ = reference_run
    layout = OutputLayout(out)
    n_shards = (len(rows) + 9) // 10
    for sid in range(n_shards):
        assert (
            layout.tar(sid).is_file()
            and layout.parquet(sid).is_file()
            and layout.shard_stats(sid).is_file()
        )
        stats = json.loads(layout.shard_stats(sid).read_text())
        assert stats["count"] == pq.read_metadata(layout.parquet(sid)).num_rows
        assert (
            stats["successes"] + stats["failed_to_download"] + stats["failed_to_resize"]
            == stats["count"]
        )
    ds = (
        wds.WebDataset(
            str(out / "shards" / f"{{00000..{n_shards - 1:05d}}}.tar"), shardshuffle=False
        )
        .decode("pil")
        .to_tuple("jpg", "txt", "json")
    )
    samples = list(ds)
    assert len(samples) == sum(1 for r in ledger_rows(out) if r["status"] == "success")
    for image, caption, meta in samples:
        assert image.size == (meta["width"], meta["height"])
        assert caption == meta["caption"]


def test_user_agent_names_the_project(reference_run, web: SynthWeb) -> None:
    agents = {ua for (_, _, _, ua) in web.request_log}
    assert agents and all(ua and ua.startswith("wit-builder/") for ua in agents)


def test_robots_txt_fetched_once_per_host(reference_run, web: SynthWeb) -> None:
    for host in range(SPEC.n_hosts):
        assert web.hits("/robots.txt", host) == 1


def test_rerun_skips_committed_shards(web: SynthWeb, tmp_path: Path) -> None:
    pairs, rows = _pairs(web, tmp_path / "pairs.csv.parquet")
    small = [r for r in rows if r["fault"] is None][:6]
    pq.write_table(pa.Table.from_pylist(small), pairs)
    first = run_download(
        str(pairs), tmp_path / "out", _config(samples_per_shard=3), show_progress=False
    )
    assert first.stats["status_counts"] == {"success": 6}
    web.clear_log()
    again = run_download(
        str(pairs), tmp_path / "out", _config(samples_per_shard=3), show_progress=False
    )
    assert again.stats["status_counts"] == {"success": 6}
    assert again.stats["rows_this_run"] == 0
    assert [p for (_, _, p, _) in web.request_log] == []  # nothing fetched again
    with pytest.raises(Exception, match=r"different input or settings \(samples_per_shard changed"):
        run_download(
            str(pairs), tmp_path / "out", _config(samples_per_shard=2), show_progress=False
        )
    moved = tmp_path / "moved.parquet"  # the same content elsewhere resumes the same plan
    moved.write_bytes(pairs.read_bytes())
    again = run_download(
        str(moved), tmp_path / "out", _config(samples_per_shard=3), show_progress=False
    )
    assert again.stats["rows_this_run"] == 0
    pq.write_table(pa.Table.from_pylist(small[:5]), moved)  # other content is refused
    with pytest.raises(Exception, match=r"\(input_sha256 changed\)"):
        run_download(
            str(moved), tmp_path / "out", _config(samples_per_shard=3), show_progress=False
        )


def test_min_image_size_and_aspect_ratio(web: SynthWeb, tmp_path: Path) -> None:
    rows = [r for r in web.pair_rows() if r["fault"] in ("tiny", None)][:5]
    pairs = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    run_download(
        str(pairs),
        tmp_path / "out",
        _config(min_image_size=32, max_aspect_ratio=1.4),
        show_progress=False,
    )
    by_url = {r["url"]: r for r in ledger_rows(tmp_path / "out")}
    entries = {web.url_for(e): e for e in web.site.entries}
    for r in rows:
        e = entries[r["url"]]
        status = by_url[r["url"]]["status"]
        if r["fault"] == "tiny":
            assert status == "too_small"
        elif max(e.width, e.height) / min(e.width, e.height) > 1.4:
            assert status == "bad_aspect_ratio"
        else:
            assert status == "success"


def test_politeness_delay_and_per_host_cap(tmp_path: Path) -> None:
    # A server of its own: no request of another test is still in flight on it.
    with SynthWeb(SiteSpec(seed=3, n_images=6, n_hosts=1, n_pages=1)) as web:
        rows = [r for r in web.pair_rows() if r["fault"] is None][:5]
        pairs = tmp_path / "p.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        run_download(
            str(pairs),
            tmp_path / "out",
            _config(host_delay=0.3, per_host_connections=1, respect_robots=False, threads=8),
            show_progress=False,
        )
        starts = sorted(t for (t, _, _, _) in web.request_log)
        assert len(starts) == 5
        assert all(b - a >= 0.25 for a, b in itertools.pairwise(starts))
        assert web.max_concurrent(0) == 1


def test_retry_after_is_honoured(web: SynthWeb, tmp_path: Path) -> None:
    rows = [r for r in web.pair_rows() if r["fault"] in ("rate_limited", "server_error_then_ok")]
    pairs = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    web.reset_state()
    web.clear_log()
    run_download(str(pairs), tmp_path / "out", _config(respect_robots=False), show_progress=False)
    ledger = {r["url"]: r for r in ledger_rows(tmp_path / "out")}
    for r in rows:
        assert ledger[r["url"]]["status"] == "success"
        assert ledger[r["url"]]["attempts"] == 2
    limited = next(r for r in rows if r["fault"] == "rate_limited")
    path = limited["url"].split(str(web.port), 1)[1]
    times = sorted(t for (t, _, p, _) in web.request_log if p == path)
    assert len(times) == 2 and times[1] - times[0] >= 0.95  # waited for Retry-After: 1


def test_no_retries_means_one_attempt(web: SynthWeb, tmp_path: Path) -> None:
    rows = [r for r in web.pair_rows() if r["fault"] == "always_503"]
    pairs = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    web.clear_log()
    run_download(str(pairs), tmp_path / "out", _config(retries=0), show_progress=False)
    (row,) = ledger_rows(tmp_path / "out")
    assert (row["status"], row["attempts"], row["http_status"]) == ("http_error", 1, 503)


def test_bad_rows_become_ledger_rows(web: SynthWeb, tmp_path: Path) -> None:
    good = next(r for r in web.pair_rows() if r["fault"] is None)
    pairs = tmp_path / "p.csv"
    pairs.write_bytes(
        b"url,caption\n" + f"{good['url']},{good['caption']}\n".encode() + b"not a url,caption\n"
        b"file:///etc/passwd,a file\n"
        b'"data:image/png;base64,iVBORw0KGgo=",inline\n'
        b"ftp://127.0.0.1/x.jpg,ftp\n"
        + f"{good['url']},\n".encode()
        + f"{good['url']},caf\xe9\n".encode("latin-1")
    )
    summary = run_download(
        str(pairs), tmp_path / "out", _config(respect_robots=False), show_progress=False
    )
    assert summary.ok
    statuses = [
        r["status"] for r in sorted(ledger_rows(tmp_path / "out"), key=lambda r: r["row_index"])
    ]
    assert statuses == [
        "success",
        "invalid_url",
        "invalid_url",
        "invalid_url",
        "invalid_url",
        "invalid_caption",
        "invalid_caption",
    ]


def test_shard_parquets_share_one_schema_and_read_as_one_table(web, tmp_path: Path) -> None:
    # A shard of successes only (error_message all null), one of failures only (width,
    # height and the input's extras all null), one mixed: one schema all the same, as
    # img2dataset writes, so a folder of them reads as one table.
    good = [r for r in web.pair_rows() if r["fault"] is None][:4]
    bad = {**good[0], "url": good[0]["url"] + "-missing"}  # a 404
    rows = [
        {"url": r["url"], "caption": r["caption"], "extra_id": i, "tag": f"t{i}", "status": "ok"}
        for i, r in enumerate(good)
    ]
    rows += [
        {"url": bad["url"], "caption": "gone", "extra_id": None, "tag": None},
        {"url": bad["url"], "caption": "gone", "extra_id": None, "tag": None},
        {"url": good[1]["url"], "caption": "mixed", "extra_id": 9, "tag": [1, "x"]},
        {"url": bad["url"], "caption": "gone", "extra_id": 10, "tag": "t10"},
    ]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "tag": json.dumps(r["tag"])} for r in rows]), pairs)
    # The same rows with a column of mixed types (a list among strings) as JSON Lines.
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, given in (("parquet", pairs), ("jsonl", jsonl)):
        out = tmp_path / name
        run_download(str(given), out, _config(samples_per_shard=2), show_progress=False)
        parts = sorted((out / "shards").glob("*.parquet"))
        assert len(parts) == 4
        schemas = {pq.read_schema(p) for p in parts}
        assert len(schemas) == 1, schemas
        table = pq.read_table(parts)  # one table: pyarrow refuses shards that disagree
        assert table.num_rows == 8
        schema = schemas.pop()
        assert schema.field("width").type == pa.int32()
        assert schema.field("error_message").type == pa.string()
        assert schema.field("extra_id").type == pa.int64()
        assert schema.field("tag").type == pa.string()
        by_caption = table.to_pylist()
        assert [r["status"] for r in by_caption].count("success") == 5
        # An input column named as one of the engine's fields is kept, renamed.
        assert by_caption[0]["input_status"] == "ok" and by_caption[0]["status"] == "success"
        if name == "jsonl":  # the list is kept, as JSON text, in the one string column
            assert json.loads(by_caption[6]["tag"]) == [1, "x"]
        # Strict JSON (no Infinity for the unlimited max_aspect_ratio), as other tools read it.
        for path in (out / "stats.json", out / "_plan" / "plan.json"):
            recorded = json.loads(path.read_text(), parse_constant=_not_json)
        assert recorded["fingerprint"]["image"]["max_aspect_ratio"] is None
        # ... and a rerun still matches its plan.
        run_download(str(given), out, _config(samples_per_shard=2), show_progress=False)


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_extract_exif_writes_img2dataset_exif_field(tmp_path: Path) -> None:
    from tests.images.test_process import encode, exif_jpeg, noise

    bodies = {"/camera.jpg": exif_jpeg(), "/plain.png": encode(noise(40, 40), "PNG")}
    with serve(bodies) as origin:
        rows = [
            {"url": origin + "/camera.jpg", "caption": "a camera photo", "exif": "theirs"},
            {"url": origin + "/plain.png", "caption": "a plain picture", "exif": None},
            {"url": origin + "/missing.jpg", "caption": "not there", "exif": None},
        ]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        on, off = tmp_path / "on", tmp_path / "off"
        run_download(str(pairs), on, _config(extract_exif=True), show_progress=False)
        run_download(str(pairs), off, _config(), show_progress=False)

    table = pq.read_table(sorted((on / "shards").glob("*.parquet"))).to_pylist()
    assert [r["status"] for r in table] == ["success", "success", "http_error"]
    camera, plain, missing = table
    assert json.loads(camera["exif"])["Image Make"] == "Canon"
    assert json.loads(camera["exif"])["GPS GPSLatitudeRef"] == "N"
    assert plain["exif"] == "{}" and missing["exif"] is None
    assert camera["input_exif"] == "theirs"  # the input's own column is kept, renamed
    with tarfile.open(on / "shards" / "00000.tar") as tf:
        meta = json.load(tf.extractfile(f"{camera['key']}.json"))
    assert meta["exif"] == camera["exif"]
    # Off (the default): no exif field at all, as img2dataset with extract_exif=False.
    schema = pq.read_schema(next((off / "shards").glob("*.parquet")))
    assert "exif" not in schema.names and "input_exif" in schema.names
    # The setting shapes the output: changing it on a planned output is refused.
    with pytest.raises(InputError, match="image changed"):
        run_download(str(pairs), off, _config(extract_exif=True), show_progress=False)


def test_a_plan_from_before_a_new_image_setting_still_matches(web, tmp_path: Path) -> None:
    # Plans made before extract_exif existed hold no such key: read as its default (off),
    # what the engine then did, so an older output resumes instead of being refused.
    pairs = tmp_path / "pairs.parquet"
    good = [r for r in web.pair_rows() if r["fault"] is None][:3]
    pq.write_table(pa.Table.from_pylist(good), pairs)
    out = tmp_path / "out"
    run_download(str(pairs), out, _config(), show_progress=False)
    plan_json = out / "_plan" / "plan.json"
    plan = json.loads(plan_json.read_text())
    del plan["fingerprint"]["image"]["extract_exif"]
    plan_json.write_text(json.dumps(plan))
    summary = run_download(str(pairs), out, _config(), show_progress=False)
    assert summary.stats["rows_this_run"] == 0
    with pytest.raises(InputError, match="image changed"):
        run_download(str(pairs), out, _config(extract_exif=True), show_progress=False)


def test_hostile_answers_are_ledger_rows_and_the_shard_commits(tmp_path: Path) -> None:
    # A Content-Length of "²", a redirect to "http://[bad", X-Robots-Tag: none, and a host
    # whose robots.txt answers 503: each one row with its status, in one committed shard.
    from tests.fetch.rawweb import serve
    from tests.images.test_process import encode, noise

    png = encode(noise(40, 30), "PNG")
    routes = {
        "/robots.txt": lambda h: h.answer(404, []),
        "/ok.png": lambda h: h.answer(200, [("Content-Type", "image/png")], png),
        "/sup.png": lambda h: h.answer(200, [("Content-Length", b"\xb2")], png),
        "/ipv6": lambda h: h.answer(302, [("Location", "http://[bad/x.png")]),
        "/none.png": lambda h: h.answer(200, [("X-Robots-Tag", "none")], png),
        "/a%20b.png": lambda h: h.answer(302, [("Location", "/ok.png")]),  # sent encoded
    }
    down = {"/robots.txt": lambda h: h.answer(503, []), "/ok.png": routes["/ok.png"]}
    with serve(routes) as web, serve(down) as unreachable:
        rows = [
            {"url": web.origin + p, "caption": f"row {i}"}
            for i, p in enumerate(["/ok.png", "/sup.png", "/ipv6", "/none.png", "/a b.png"])
        ]
        rows.append({"url": unreachable.origin + "/ok.png", "caption": "robots down"})
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        summary = run_download(
            str(pairs), tmp_path / "out", _config(respect_robots=True), show_progress=False
        )
    assert summary.ok
    ledger = sorted(ledger_rows(tmp_path / "out"), key=lambda r: r["row_index"])
    assert [r["status"] for r in ledger] == [
        "success",
        "connection_error",
        "invalid_url",
        "opt_out",
        "success",
        "opt_out",
    ]
    host = unreachable.origin.removeprefix("http://")
    assert ledger[5]["error_message"].startswith(f"robots.txt of {host} unreachable (HTTP 503")
    saved = json.loads(
        next(
            (tmp_path / "out" / "_robots").glob(f"*{unreachable.server_address[1]}.json")
        ).read_text()
    )
    assert saved["unreachable"]  # kept minutes, not the 24 h of real rules


def _backoff_run(tmp_path: Path, slow_route, n_slow: int, n_good: int, **changes):
    """Rows on four healthy hosts and on one host answering ``slow_route``, interleaved as
    a shard's rows are; returns (ledger by URL, the slow host's request log, the healthy
    hosts' request logs, the slow host's origin)."""
    from tests.fetch.rawweb import serve
    from tests.images.test_process import encode, noise

    png = encode(noise(40, 30), "PNG")
    good = {"/ok.png": lambda h: h.answer(200, [("Content-Type", "image/png")], png)}
    with (
        serve({"/a.png": slow_route(png)}) as slow,
        serve(good) as b,
        serve(good) as c,
        serve(good) as d,
        serve(good) as e,
    ):
        rows = [{"url": f"{slow.origin}/a.png?{i}", "caption": f"a {i}"} for i in range(n_slow)]
        for web in (b, c, d, e):
            rows += [{"url": f"{web.origin}/ok.png?{i}", "caption": "ok"} for i in range(n_good)]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        config = _config(respect_robots=False, threads=32, samples_per_shard=5000, **changes)
        summary = run_download(str(pairs), tmp_path / "out", config, show_progress=False)
        good_log = sorted(t for web in (b, c, d, e) for t, _ in web.log)
    assert summary.ok
    ledger = {r["url"]: r for r in ledger_rows(tmp_path / "out")}
    return ledger, list(slow.log), good_log, slow.origin


def test_a_host_backing_off_for_an_hour_stalls_no_other_host(tmp_path: Path) -> None:
    def route(_png: bytes):
        return lambda h: h.answer(429, [("Retry-After", "3600")], b"slow down")

    ledger, slow_log, good_log, slow_origin = _backoff_run(tmp_path, route, 40, 200)
    good = [r for url, r in ledger.items() if not url.startswith(slow_origin)]
    slow = [r for url, r in ledger.items() if url.startswith(slow_origin)]
    assert len(good) == 800 and {r["status"] for r in good} == {"success"}
    # Only the requests in flight with the first 429 (per_host_connections: 8) were made;
    # every other row fails at once, untried, naming the Retry-After.
    assert 1 <= len(slow_log) <= 8
    assert {(r["status"], r["http_status"]) for r in slow} == {("http_error", 429)}
    assert all("Retry-After 3600" in r["error_message"] for r in slow)
    assert sum(r["attempts"] == 0 for r in slow) == 40 - len(slow_log)
    # Not a benchmark: a generous bound, where parked threads took minutes (1 host in 5).
    assert good_log[-1] - good_log[0] < 20


def test_a_host_backing_off_briefly_gets_its_rows_later_and_no_request_meanwhile(
    tmp_path: Path,
) -> None:
    def route(png: bytes):
        def answer(h) -> None:
            if len(h.server.log) == 1:  # the host's first request, whichever row's
                h.answer(429, [("Retry-After", "2")], b"slow down")
            else:
                h.answer(200, [("Content-Type", "image/png")], png)

        return answer

    ledger, slow_log, good_log, _ = _backoff_run(
        tmp_path, route, 30, 100, retries=1, per_host_connections=1
    )
    assert {r["status"] for r in ledger.values()} == {"success"}
    asked = min(t for t, _ in slow_log)
    later = sorted(t for t, _ in slow_log if t > asked)
    # One request at a time per host: none was in flight with the 429, none started inside
    # the back-off it asked for.
    assert len(later) == 30 and later[0] - asked >= 1.95
    # Its rows waited without holding the threads: the other hosts were done meanwhile.
    assert good_log[-1] < asked + 2
