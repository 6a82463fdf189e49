"""WARC and WAT reading: HTML responses and WAT link lists become candidates; damage of
every kind is counted and skipped, never raised; gzip or plain, local or fsspec URLs."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import fsspec
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.sources import warc
from pipeline.sources.pairs import InputError
from pipeline.sources.warc import expand_paths, iter_candidates, read_candidates
from pipeline.stats.counters import Counters


def _page(i: int) -> bytes:
    return (
        f"<html><head><title>p{i}</title></head><body>"
        f'<img src="/img/{i}.jpg" alt="a photo of thing {i}">'
        f'<figure><img src="fig{i}.png"><figcaption>figure {i}</figcaption></figure>'
        f'<img src="noalt{i}.gif"></body></html>'
    ).encode()


def _warcio_record(
    uri: str,
    rec_type: str,
    payload: bytes,
    http: tuple[str, list[tuple[str, str]]] | None = None,
    content_type: str = "",
    gz: bool = False,
) -> bytes:
    """One record as warcio writes it (one gzip member when gz)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    headers = StatusAndHeaders(http[0], http[1], protocol="HTTP/1.1") if http else None
    record = writer.create_warc_record(
        uri,
        rec_type,
        payload=io.BytesIO(payload),
        http_headers=headers,
        warc_content_type=content_type,
    )
    writer.write_record(record)
    return buf.getvalue()


def html_record(i: int, gz: bool, status: str = "200 OK", ctype: str = "text/html") -> bytes:
    return _warcio_record(
        f"http://site.test/p/{i}.html",
        "response",
        _page(i),
        (status, [("Content-Type", ctype)]),
        gz=gz,
    )


def wat_envelope(i: int, links: list[dict] | None = None, html: bool = True) -> dict:
    """A WAT record's JSON, in Common Crawl's layout."""
    if links is None:
        links = [
            {"path": "A@/href", "url": "/next.html", "text": "next"},
            {"path": "IMG@/src", "url": f"img/{i}.jpg", "alt": f"wat alt {i}"},
            {"path": "IMG@/src", "url": f"t{i}.jpg", "title": f"wat title {i}"},
            {"path": "IMG@/src", "url": f"bare{i}.jpg"},
        ]
    response: dict = {
        "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
        "Headers": {"Content-Type": "text/html"},
    }
    if html:
        response["HTML-Metadata"] = {"Head": {"Title": f"p{i}", "Base": "/b/"}, "Links": links}
    return {
        "Container": {"Filename": "x.warc.gz", "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {
                "WARC-Type": "response",
                "WARC-Target-URI": f"http://wat.test/{i}/",
            },
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": response,
            },
        },
    }


def wat_record(i: int, gz: bool, body: bytes | None = None) -> bytes:
    payload = body if body is not None else json.dumps(wat_envelope(i)).encode()
    return _warcio_record(
        f"http://wat.test/{i}/", "metadata", payload, content_type="application/json", gz=gz
    )


def raw_record(
    uri: str, block: bytes, rec_type: str = "response", length: int | None = None
) -> bytes:
    """A hand-made record (uncompressed), for headers warcio would refuse to write."""
    n = len(block) if length is None else length
    head = (
        f"WARC/1.0\r\nWARC-Type: {rec_type}\r\nWARC-Target-URI: {uri}\r\n"
        "WARC-Date: 2024-01-01T00:00:00Z\r\n"
        "WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {n}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def _member(raw: bytes, gz: bool) -> bytes:
    return gzip.compress(raw) if gz else raw


def _write(tmp_path: Path, name: str, parts: list[bytes]) -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(parts))
    return str(path)


def _check_funnel(c: Counters) -> None:
    """Every record is html, wat, other or a counted skip; every image a candidate or skip."""
    buckets = c["warc.records.html"] + c["warc.records.wat"] + c["warc.records.other"]
    assert c["warc.records"] == buckets + sum(c.with_prefix("warc.skip.").values())
    skipped = sum(c.with_prefix("extract.skip.").values())
    assert c["extract.images"] == c["extract.candidates"] + skipped


EXPECTED_HTML = [
    ("http://site.test/img/{i}.jpg", "a photo of thing {i}", "alt", "warc"),
    ("http://site.test/p/fig{i}.png", "figure {i}", "figcaption", "warc"),
]
EXPECTED_WAT = [
    ("http://wat.test/b/img/{i}.jpg", "wat alt {i}", "alt", "wat"),
    ("http://wat.test/b/t{i}.jpg", "wat title {i}", "title", "wat"),
]


def _expected(i: int, kind: list) -> list[tuple[str, str, str, str]]:
    return [tuple(s.format(i=i) for s in row) for row in kind]  # type: ignore[misc]


def _rows(cands: list) -> list[tuple[str, str, str, str]]:
    return [(c.url, c.caption, c.caption_source, c.source) for c in cands]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_html_and_wat_records_give_candidates(tmp_path: Path, gz: bool) -> None:
    writer_buf = io.BytesIO()
    WARCWriter(writer_buf, gzip=gz).write_record(
        WARCWriter(io.BytesIO(), gzip=gz).create_warcinfo_record("t.warc", {"software": "test"})
    )
    parts = [writer_buf.getvalue()]
    for i in range(3):
        parts += [html_record(i, gz), wat_record(i, gz)]
    path = _write(tmp_path, "t.warc" + (".gz" if gz else ""), parts)
    cands, counters = read_candidates(path)
    expected: list = []
    for i in range(3):
        expected += _expected(i, EXPECTED_HTML) + _expected(i, EXPECTED_WAT)
    assert _rows(cands) == expected
    assert {c.page_url for c in cands if c.source == "warc"} == {
        f"http://site.test/p/{i}.html" for i in range(3)
    }
    assert counters["warc.records"] == 7
    assert counters["warc.records.html"] == 3
    assert counters["warc.records.wat"] == 3
    assert counters["warc.records.other"] == 1  # warcinfo
    assert counters["extract.skip.no_text"] == 6  # noalt*.gif and bare*.jpg
    _check_funnel(counters)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_a_record_with_unparseable_warc_headers_is_counted_and_reading_goes_on(
    tmp_path: Path, gz: bool
) -> None:
    bad = b"WARC/1.0\r\nWARC-Type: response\r\nthis line is no header\r\n\r\n<html>junk</html>\r\n\r\n"
    garbage = b"GET / HTTP/1.1\r\nnot a warc record at all\r\n\r\n"
    parts = [
        html_record(0, gz),
        _member(bad, gz),
        html_record(1, gz),
        _member(garbage, gz),
        wat_record(2, gz),
    ]
    cands, counters = read_candidates(_write(tmp_path, "bad.warc", parts))
    assert _rows(cands) == (
        _expected(0, EXPECTED_HTML) + _expected(1, EXPECTED_HTML) + _expected(2, EXPECTED_WAT)
    )
    assert counters["warc.skip.malformed_record"] == 2
    assert counters["warc.records"] == 5
    _check_funnel(counters)


def test_a_corrupt_gzip_member_costs_only_its_own_record(tmp_path: Path) -> None:
    good = gzip.compress(raw_record("http://site.test/x", b"HTTP/1.1 200 OK\r\n\r\n"))
    corrupt = good[:12] + bytes(b ^ 0x5A for b in good[12:-8]) + good[-8:]
    parts = [html_record(0, True), corrupt, b"\x1f\x8b\x08 stray header", html_record(1, True)]
    cands, counters = read_candidates(_write(tmp_path, "c.warc.gz", parts))
    assert _rows(cands) == _expected(0, EXPECTED_HTML) + _expected(1, EXPECTED_HTML)
    assert counters["warc.skip.corrupt_gzip"] == 1  # one damaged stretch, one count
    _check_funnel(counters)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_bad_lengths_and_http_heads_skip_only_their_record(tmp_path: Path, gz: bool) -> None:
    no_http = raw_record("http://site.test/bad", b"garbage, no status line\r\n\r\n<img alt=x>")
    bad_length = raw_record("http://site.test/len", b"HTTP/1.1 200 OK\r\n\r\n").replace(
        b"Content-Length: 19", b"Content-Length: twelve"
    )
    parts = [
        html_record(0, gz),
        _member(no_http, gz),
        html_record(1, gz),
        _member(bad_length, gz),
        html_record(2, gz),
    ]
    cands, counters = read_candidates(_write(tmp_path, "h.warc", parts))
    assert _rows(cands) == [r for i in range(3) for r in _expected(i, EXPECTED_HTML)]
    # warcio reads HTTP heads leniently (real crawls hold odd ones): a head with no status
    # line and no Content-Type is simply not an HTML page.
    assert counters["warc.records.other"] == 1
    assert counters["warc.skip.malformed_record"] == 1  # no length: resynchronised
    assert counters["warc.records"] == 5
    _check_funnel(counters)


def test_wat_bad_json_non_html_and_non_200_are_counted(tmp_path: Path) -> None:
    not_html = json.dumps(wat_envelope(1, html=False)).encode()
    env = wat_envelope(2)
    env["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["Response-Message"]["Status"] = (
        "404"
    )
    wrong_shape = json.dumps({"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": 3}}})
    parts = [
        wat_record(0, True, b"{not json"),
        wat_record(1, True, not_html),
        wat_record(2, True, json.dumps(env).encode()),
        wat_record(3, True, json.dumps({"no": "envelope"}).encode()),
        wat_record(4, True, wrong_shape.encode()),
        wat_record(5, True),
    ]
    cands, counters = read_candidates(_write(tmp_path, "w.wat.gz", parts))
    assert _rows(cands) == _expected(5, EXPECTED_WAT)
    assert counters["warc.skip.bad_json"] == 2
    assert counters["warc.skip.http_status"] == 1
    assert counters["warc.records.other"] == 2  # no HTML-Metadata: not about a page
    _check_funnel(counters)


def test_wat_links_without_base_resolve_against_the_page_and_skips_are_counted(
    tmp_path: Path,
) -> None:
    env = wat_envelope(0)
    meta = env["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    meta["Head"] = {}
    meta["Links"] = [
        {"path": "IMG@/src", "url": "//cdn.test/a.jpg", "alt": "protocol relative"},
        {"path": "IMG@/src", "url": "data:image/png;base64,AAAA", "alt": "inline"},
        {"path": "IMG@/src", "url": 7, "alt": "not a string"},
        {"path": "IMG@/src", "url": "rel.jpg", "alt": "relative"},
        "not a link",
    ]
    path = _write(tmp_path, "w.wat", [wat_record(0, False, json.dumps(env).encode())])
    cands, counters = read_candidates(path)
    assert [(c.url, c.caption) for c in cands] == [
        ("http://cdn.test/a.jpg", "protocol relative"),
        ("http://wat.test/0/rel.jpg", "relative"),
    ]
    assert counters.with_prefix("extract.skip.") == {"data_url": 1, "no_src": 1}
    _check_funnel(counters)


def test_non_200_and_non_html_responses(tmp_path: Path) -> None:
    parts = [
        html_record(0, True, status="404 Not Found"),
        html_record(1, True, ctype="image/jpeg"),
        html_record(2, True, ctype="application/xhtml+xml; charset=utf-8"),
        _warcio_record("http://site.test/r", "request", b"", ("GET / HTTP/1.1", []), gz=True),
    ]
    cands, counters = read_candidates(_write(tmp_path, "n.warc.gz", parts))
    assert _rows(cands) == _expected(2, EXPECTED_HTML)
    assert counters["warc.skip.http_status"] == 1
    assert counters["warc.records.other"] == 2
    _check_funnel(counters)


def test_chunked_and_gzip_encoded_bodies_are_decoded(tmp_path: Path) -> None:
    body = gzip.compress(_page(7))
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 50]), body[i : i + 50]) for i in range(0, len(body), 50)
    )
    http = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    )
    broken = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: deflate\r\n\r\n"
    broken += b"this is not deflate data <img src=x.jpg alt='stored decoded'>"
    parts = [
        raw_record("http://site.test/p/7.html", http),
        raw_record("http://site.test/p/8.html", broken),
        html_record(9, False),
    ]
    cands, counters = read_candidates(_write(tmp_path, "e.warc", parts))
    # A body that does not decode as its Content-Encoding says is read as it is stored
    # (warcio's fallback: crawlers often store bodies decoded but keep the header).
    assert _rows(cands) == [
        *_expected(7, EXPECTED_HTML),
        ("http://site.test/p/x.jpg", "stored decoded", "alt", "warc"),
        *_expected(9, EXPECTED_HTML),
    ]
    assert counters["warc.records.html"] == 3
    _check_funnel(counters)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_a_file_cut_inside_its_last_record(tmp_path: Path, gz: bool) -> None:
    whole = b"".join([html_record(0, gz), html_record(1, gz)])
    cut = whole[: len(whole) - 60]
    cands, counters = read_candidates(_write(tmp_path, "cut.warc", [cut]))
    assert _rows(cands)[:2] == _expected(0, EXPECTED_HTML)
    assert counters["warc.truncated_records"] == 1
    _check_funnel(counters)


def test_a_length_that_overruns_is_a_truncated_record(tmp_path: Path) -> None:
    rec = raw_record("http://site.test/p/0.html", b"HTTP/1.1 200 OK\r\n\r\n", length=10_000)
    cands, counters = read_candidates(_write(tmp_path, "o.warc", [rec]))
    assert cands == []
    assert counters["warc.truncated_records"] == 1
    _check_funnel(counters)


def test_single_stream_gzip_is_read_whole_or_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = b"".join(html_record(i, False) for i in range(4))
    path = _write(tmp_path, "one.warc.gz", [gzip.compress(plain)])
    expected = [r for i in range(4) for r in _expected(i, EXPECTED_HTML)]
    cands, counters = read_candidates(path)
    assert _rows(cands) == expected
    monkeypatch.setattr(warc, "MEMBER_LIMIT", 300)  # force the streaming path
    cands, counters = read_candidates(path)
    assert _rows(cands) == expected
    assert counters["warc.single_stream_gzip"] == 1
    _check_funnel(counters)


def test_trailing_padding_and_empty_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "pad.warc.gz", [html_record(0, True), b"\x00" * 16])
    cands, counters = read_candidates(path)
    assert len(cands) == 2
    assert counters["warc.skip.corrupt_gzip"] == 0
    empty = _write(tmp_path, "empty.warc", [b""])
    assert read_candidates(empty)[0] == []


def test_fsspec_urls_and_streaming(tmp_path: Path) -> None:
    data = b"".join([html_record(0, True), wat_record(1, True)])
    with fsspec.open("memory://bucket/a.warc.gz", "wb") as f:
        f.write(data)
    counters = Counters()
    stream = iter_candidates("memory://bucket/a.warc.gz", counters=counters)
    first = next(stream)  # a generator: nothing is read past what is asked
    assert first.url == "http://site.test/img/0.jpg"
    rest = list(stream)
    assert len(rest) == 3
    assert counters["warc.files"] == 1
    local = _write(tmp_path, "b.warc.gz", [data])
    assert len(read_candidates("file://" + local)[0]) == 4


def test_unreadable_paths_raise_a_clear_error_and_globs_expand(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        list(iter_candidates(str(tmp_path / "missing.warc.gz")))
    for name in ("b.warc.gz", "a.warc.gz", "c.wat.gz"):
        (tmp_path / name).write_bytes(b"")
    assert expand_paths([str(tmp_path / "*.warc.gz")]) == [
        str(tmp_path / "a.warc.gz"),
        str(tmp_path / "b.warc.gz"),
    ]
    with pytest.raises(InputError, match="no input file matches"):
        expand_paths([str(tmp_path / "*.arc")])
    with pytest.raises(InputError, match="not found"):
        expand_paths([str(tmp_path / "nope.warc")])


def test_a_folder_is_its_warc_and_wat_files_and_a_glob_skips_folders(tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    (crawl / "sub.warc.gz").mkdir(parents=True)  # a folder, whatever its name
    for name in ("b.warc.gz", "a.warc", "c.wat.gz", "d.warc.wat.gz", "_SUCCESS", ".x.warc.gz"):
        (crawl / name).write_bytes(b"")
    (crawl / "notes.txt").write_text("not a WARC")
    expected = [str(crawl / n) for n in ("a.warc", "b.warc.gz", "c.wat.gz", "d.warc.wat.gz")]
    assert expand_paths([str(crawl)]) == expected
    assert expand_paths([str(crawl) + "/"]) == expected
    assert expand_paths([str(crawl / "[a-z]*.warc.gz")]) == [str(crawl / "b.warc.gz")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no WARC or WAT file in folder .*empty: expected"):
        expand_paths([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="no input file matches"):
        expand_paths([str(crawl / "sub*")])


def test_zlib_bomb_output_is_bounded_per_call() -> None:
    # 8 MB of zeros in ~8 KB: decompressed in bounded pieces, never in one allocation.
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = bomb.compress(b"\x00" * (8 << 20)) + bomb.flush()
    sizes = [len(d) for k, d in warc._gzip_events(io.BytesIO(data), b"") if k == warc._DATA]
    assert max(sizes) <= warc._OUT_SIZE < 8 << 20
    assert sum(sizes) == 8 << 20


def test_members_that_split_records_are_joined(tmp_path: Path) -> None:
    # Compressed in fixed-size blocks (as bgzip does): members do not align with records.
    plain = b"".join([html_record(0, False), wat_record(1, False), html_record(2, False)])
    blocks = [gzip.compress(plain[i : i + 700]) for i in range(0, len(plain), 700)]
    cands, counters = read_candidates(_write(tmp_path, "blocks.warc.gz", blocks))
    assert _rows(cands) == (
        _expected(0, EXPECTED_HTML) + _expected(1, EXPECTED_WAT) + _expected(2, EXPECTED_HTML)
    )
    assert counters["warc.records"] == 3
    _check_funnel(counters)


def test_a_huge_line_of_garbage_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    garbage = b"x" * (300 * 1024) + b"\r\n"  # no newline for 300 KB: one malformed stretch
    parts = [html_record(0, False), garbage, html_record(1, False)]
    cands, counters = read_candidates(_write(tmp_path, "g.warc", parts))
    assert _rows(cands) == _expected(0, EXPECTED_HTML) + _expected(1, EXPECTED_HTML)
    assert counters["warc.skip.malformed_record"] == 1
    _check_funnel(counters)
