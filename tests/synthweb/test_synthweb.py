"""The loopback test web: deterministic site, every fault as documented, pages, CLI.

Every request goes to 127.0.0.x through ``http.client`` or a raw socket; redirects are
followed by hand, and the private-address redirect is only read, never followed.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.schema import STATUSES, Status
from pipeline.synthweb import (
    EXPECTED_STATUS,
    FAULT_KINDS,
    REFERENCE_SETTINGS,
    Site,
    SiteSpec,
    SynthWeb,
    encode,
    reference_config,
    render_image,
)
from pipeline.synthweb.__main__ import main
from pipeline.synthweb.images import COLOURS, corrupt_jpeg
from pipeline.synthweb.site import OVERSIZED_BYTES, ROBOTS_TXT

REPO = Path(__file__).resolve().parents[2]
SPEC = SiteSpec(seed=7, n_images=12, n_hosts=4, n_pages=3, drip_seconds=0.2)
TIMEOUT = 20.0  # generous: a loaded CI machine must not fail a test by being slow
MAX_BYTES = REFERENCE_SETTINGS["max_bytes"]
MAX_PIXELS = REFERENCE_SETTINGS["max_image_pixels"]


@pytest.fixture(scope="module")
def web() -> Iterator[SynthWeb]:
    with SynthWeb(SPEC) as w:
        yield w


class Response:
    """A response read to the end, or as far as the server let us (``error`` then says why)."""

    def __init__(
        self, status: int, headers: http.client.HTTPMessage, body: bytes, error: Exception | None
    ):
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error


def get(
    web: SynthWeb,
    host_index: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    conn = http.client.HTTPConnection(web.site.addresses[host_index], web.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        try:
            body, error = r.read(), None
        except (http.client.IncompleteRead, TimeoutError) as e:
            body, error = getattr(e, "partial", b""), e
        return Response(r.status, r.headers, body, error)
    finally:
        conn.close()


def get_url(web: SynthWeb, url: str) -> Response:
    parts = urlsplit(url)
    assert parts.hostname in web.site.addresses, f"refusing to contact {url}"
    assert parts.port == web.port
    return get(web, web.site.addresses.index(parts.hostname), parts.path)


def get_entry(web: SynthWeb, fault: str | None) -> tuple[Any, Response]:
    e = web.site.fault_entry(fault) if fault else web.site.by_fault(None)[0]
    return e, get(web, e.host_index, e.path)


def decodes(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return str(img.format), img.size


# -- images -----------------------------------------------------------------------------


def test_render_image_is_deterministic_and_captioned() -> None:
    a, cap_a = render_image(123, 320, 200)
    b, cap_b = render_image(123, 320, 200)
    c, cap_c = render_image(124, 320, 200)
    assert a.mode == "RGB" and a.size == (320, 200)
    assert a.tobytes() == b.tobytes() and cap_a == cap_b
    assert a.tobytes() != c.tobytes()
    for cap in (cap_a, cap_c):
        assert re.fullmatch(r"an? .+ over an? \w+ and \w+ gradient", cap), cap
        assert sum(name in cap.split() for name in COLOURS) >= 2


def test_render_sizes_and_encodings() -> None:
    for w, h in ((16, 16), (3000, 2000), (300, 1000)):
        img, _ = render_image(5, w, h)
        assert img.size == (w, h)
    img, _ = render_image(9, 640, 480)
    for fmt, pil_name in (
        ("jpeg", "JPEG"),
        ("jpg", "JPEG"),
        ("png", "PNG"),
        ("webp", "WEBP"),
        ("gif", "GIF"),
    ):
        assert decodes(encode(img, fmt)) == (pil_name, (640, 480))
    # Grain and texture make a photo-like JPEG, not a few-kilobyte flat drawing.
    assert 20_000 < len(encode(img, "jpeg")) < 200_000
    with pytest.raises(ValueError):
        encode(img, "bmp")


def test_largest_normal_images_stay_under_the_byte_cap() -> None:
    """Each format's biggest possible normal image must still be a success, not too_large."""
    for fmt, side in (("jpeg", 3000), ("png", 1200), ("webp", 2000), ("gif", 800)):
        img, _ = render_image(11, side, side)
        assert len(encode(img, fmt)) < MAX_BYTES, fmt


def test_corrupt_jpeg_opens_but_does_not_decode() -> None:
    for seed in range(5):
        img, _ = render_image(seed, 400, 300)
        data = corrupt_jpeg(encode(img, "jpeg"), seed)
        with Image.open(io.BytesIO(data)) as bad:
            assert bad.format == "JPEG" and bad.size == (400, 300)
            with pytest.raises(OSError):
                bad.load()


# -- the site ---------------------------------------------------------------------------


def test_same_spec_same_site() -> None:
    a, b = Site(SPEC), Site(SPEC)
    assert a.entries == b.entries
    assert a.pair_rows(1234) == b.pair_rows(1234)
    assert a.render_page(0, 1, 1234) == b.render_page(0, 1, 1234)
    firsts = {e.format: e for e in reversed(a.by_fault(None))}
    assert set(firsts) == {"jpeg", "png", "webp", "gif"}
    for ea in [
        *firsts.values(),
        *(a.fault_entry(f) for f in ("corrupt_jpeg", "oversized", "bomb_png")),
    ]:
        assert a.payload(ea) == b.payload(b.entry(ea.id))
    other = Site(SiteSpec(seed=8, n_images=12, n_hosts=4, n_pages=3))
    assert [e.caption for e in other.entries] != [e.caption for e in a.entries]


def test_every_fault_kind_once_with_its_status() -> None:
    for n_images in (0, 3, 200):
        site = Site(SiteSpec(n_images=n_images))
        assert len(site.entries) == n_images + len(FAULT_KINDS)
        assert [e.id for e in site.entries] == list(range(len(site.entries)))
        counts = Counter(e.fault for e in site.entries)
        assert all(counts[k] == 1 for k in FAULT_KINDS)
        assert counts[None] == n_images
        for e in site.entries:
            assert e.expected_status == EXPECTED_STATUS[e.fault].value
            assert e.expected_status in STATUSES
            assert e.caption
    assert EXPECTED_STATUS["stall"] is Status.TIMEOUT
    assert EXPECTED_STATUS["redirect_private"] is Status.BLOCKED_ADDRESS
    # fault_every adds faults among the slots, cycling through the kinds.
    site = Site(SiteSpec(n_images=100, fault_every=5))
    assert len(site.entries) == 100 + len(FAULT_KINDS)
    assert len(site.by_fault(None)) == 80


def test_sizes_formats_hosts_and_paths() -> None:
    site = Site(SiteSpec())
    normal = site.by_fault(None)
    sides = [max(e.width, e.height) for e in normal]
    assert min(sides) >= 200 and max(sides) <= 3000
    assert sum(400 <= s <= 1500 for s in sides) > 0.7 * len(sides)
    formats = Counter(e.format for e in normal)
    assert set(formats) == {"jpeg", "png", "webp", "gif"}
    assert formats["jpeg"] > 0.7 * len(normal)
    assert {e.host_index for e in site.entries} == set(range(4))
    keys = [(e.host_index, e.path) for e in site.entries]
    assert len(set(keys)) == len(keys)
    for e in site.entries:
        assert e.path.startswith("/private/") == (e.fault == "robots_disallowed")
    rows = site.pair_rows(8765)
    assert [r["url"] for r in rows] == [
        f"http://{site.addresses[e.host_index]}:8765{e.path}" for e in site.entries
    ]
    assert [r["host"] for r in rows] == [e.host_index for e in site.entries]


def test_special_payloads() -> None:
    site = Site(SPEC)
    bomb = site.payload(site.fault_entry("bomb_png"))
    assert len(bomb) < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(bomb)) as img:
            w, h = img.size
    assert (w, h) == (12000, 12000) and MAX_PIXELS < w * h < 2 * MAX_PIXELS
    big = site.payload(site.fault_entry("oversized"))
    assert len(big) == OVERSIZED_BYTES > MAX_BYTES
    assert decodes(big) == ("PNG", (640, 480))
    assert decodes(site.payload(site.fault_entry("tiny"))) == ("JPEG", (16, 16))
    chain = site.fault_entry("redirect_chain")
    assert decodes(site.payload(chain)) == ("JPEG", (chain.width, chain.height))


def test_reference_config() -> None:
    cfg = reference_config()
    assert cfg.fetch.timeout == 2.0 and cfg.fetch.retries == 2
    assert cfg.fetch.max_bytes == 5_000_000 and cfg.fetch.max_redirects == 5
    assert cfg.fetch.respect_robots and cfg.fetch.allow_networks == ("127.0.0.0/8",)
    assert cfg.image.max_image_pixels == 89_478_485 and cfg.image.min_image_size == 0


# -- the server: plain responses --------------------------------------------------------


def test_hosts_share_one_port(web: SynthWeb) -> None:
    assert web.port > 0
    assert [web.base_url(k) for k in range(4)] == [
        f"http://127.0.0.{k + 1}:{web.port}" for k in range(4)
    ]
    for k in range(4):
        r = get(web, k, "/robots.txt")
        assert r.status == 200 and r.body.decode() == ROBOTS_TXT
        assert "Disallow: /private/" in r.body.decode()


def test_normal_images_and_head(web: SynthWeb) -> None:
    for e in web.site.by_fault(None)[:6]:
        r = get(web, e.host_index, e.path)
        assert r.status == 200 and r.error is None
        assert r.headers["Content-Type"] == f"image/{e.format}"
        assert int(r.headers["Content-Length"]) == len(r.body)
        assert r.body == web.payload(e)
        assert decodes(r.body)[1] == (e.width, e.height)
        assert web.url_for(e) == f"{web.base_url(e.host_index)}{e.path}"
    e = web.site.by_fault(None)[0]
    r = get(web, e.host_index, e.path, method="HEAD")
    assert (
        r.status == 200
        and r.body == b""
        and int(r.headers["Content-Length"]) == len(web.payload(e))
    )


def test_entries_live_only_on_their_host(web: SynthWeb) -> None:
    e = web.site.by_fault(None)[0]
    assert get(web, (e.host_index + 1) % 4, e.path).status == 404
    assert get(web, 0, "/no/such/thing.jpg").status == 404


def test_keep_alive(web: SynthWeb) -> None:
    e = web.site.by_fault(None)[0]
    conn = http.client.HTTPConnection(web.site.addresses[e.host_index], web.port, timeout=TIMEOUT)
    try:
        for _ in range(3):
            conn.request("GET", e.path)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == web.payload(e)
            assert r.version == 11 and not r.will_close
    finally:
        conn.close()


def test_request_log_and_hits(web: SynthWeb) -> None:
    e = web.site.by_fault(None)[1]
    before = web.hits(e.path, e.host_index)
    get(web, e.host_index, e.path, headers={"User-Agent": "synthweb-test/1"})
    get(web, e.host_index, e.path + "?x=1")
    assert web.hits(e.path, e.host_index) == before + 2
    assert web.hits(e.path) == before + 2
    assert web.hits(e.path, (e.host_index + 1) % 4) == 0
    assert (e.host_index, e.path, "synthweb-test/1") in {
        (h, p, ua) for _, h, p, ua in web.request_log
    }


# -- the server: faults -----------------------------------------------------------------


def test_http_errors(web: SynthWeb) -> None:
    assert get_entry(web, "not_found")[1].status == 404
    e = web.site.fault_entry("always_503")
    assert [get(web, e.host_index, e.path).status for _ in range(3)] == [503, 503, 503]


def test_first_request_faults_then_ok(web: SynthWeb) -> None:
    web.reset_state()
    e = web.site.fault_entry("server_error_then_ok")
    assert get(web, e.host_index, e.path).status == 500
    r = get(web, e.host_index, e.path)
    assert r.status == 200 and r.body == web.payload(e)
    e = web.site.fault_entry("rate_limited")
    r = get(web, e.host_index, e.path)
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert get(web, e.host_index, e.path).status == 200
    web.reset_state()
    assert get(web, e.host_index, e.path).status == 429


def test_slow_drip_delivers_the_whole_image(web: SynthWeb) -> None:
    e, r = get_entry(web, "slow_drip")
    assert r.status == 200 and r.error is None and r.body == web.payload(e)
    assert decodes(r.body) == ("JPEG", (320, 240))


def test_truncated_closes_mid_body(web: SynthWeb) -> None:
    e, r = get_entry(web, "truncated")
    full = web.payload(e)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(full)
    assert isinstance(r.error, http.client.IncompleteRead)
    assert 0 < len(r.body) < len(full)


def test_content_length_short_is_a_cut_image(web: SynthWeb) -> None:
    e, r = get_entry(web, "content_length_short")
    full = web.payload(e)
    assert r.status == 200 and r.error is None
    assert int(r.headers["Content-Length"]) == len(r.body) < 0.5 * len(full)
    assert r.body == full[: len(r.body)]
    assert r.headers["Connection"] == "close"
    with Image.open(io.BytesIO(r.body)) as img, pytest.raises(OSError):
        img.load()


def test_not_images(web: SynthWeb) -> None:
    _, r = get_entry(web, "html_as_image")
    assert r.headers["Content-Type"] == "image/jpeg" and r.body.startswith(b"<!doctype html>")
    _, r = get_entry(web, "not_image_text")
    assert r.headers["Content-Type"].startswith("text/html") and r.body.startswith(
        b"<!doctype html>"
    )
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(r.body))


def test_corrupt_and_bomb_are_served_as_is(web: SynthWeb) -> None:
    e, r = get_entry(web, "corrupt_jpeg")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.body)) as img, pytest.raises(OSError):
        img.load()
    e, r = get_entry(web, "bomb_png")
    assert r.status == 200 and r.body == web.payload(e) and len(r.body) < 1000


def test_oversized_with_and_without_length(web: SynthWeb) -> None:
    e, r = get_entry(web, "oversized")
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(r.body) > MAX_BYTES
    e, r = get_entry(web, "oversized_chunked")
    assert r.status == 200 and r.headers["Content-Length"] is None
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.body == web.payload(e) and len(r.body) > MAX_BYTES
    r = get(web, e.host_index, e.path, method="HEAD")
    assert r.headers["Transfer-Encoding"] == "chunked" and r.body == b""


def test_redirect_chain_crosses_hosts_to_an_image(web: SynthWeb) -> None:
    e = web.site.fault_entry("redirect_chain")
    url = web.url_for(e)
    statuses, hosts = [], []
    for _ in range(10):
        r = get_url(web, url)
        if r.status not in (301, 302, 307):
            break
        statuses.append(r.status)
        hosts.append(urlsplit(url).hostname)
        url = urljoin(url, r.headers["Location"])
    assert statuses == [302, 301, 307]
    assert len(set(hosts)) == 3  # four hosts: the chain visits three of them
    assert r.status == 200 and r.body == web.payload(e)
    final_host, final_path = web.site.final_location(e)
    assert url == web.base_url(final_host) + final_path


def test_redirect_loop_never_ends(web: SynthWeb) -> None:
    e = web.site.fault_entry("redirect_loop")
    url, seen = web.url_for(e), []
    for _ in range(8):
        r = get_url(web, url)
        assert r.status == 302
        url = urljoin(url, r.headers["Location"])
        seen.append(url)
    assert len(set(seen)) == 2


def test_redirect_private_points_outside_loopback(web: SynthWeb) -> None:
    _, r = get_entry(web, "redirect_private")
    assert r.status == 302
    assert r.headers["Location"] == f"http://10.255.255.1:{web.port}/x.jpg"  # read, never followed


def test_opt_out_signals(web: SynthWeb) -> None:
    e, r = get_entry(web, "noai")
    assert r.status == 200 and r.headers["X-Robots-Tag"] == "noai"
    assert decodes(r.body)[1] == (e.width, e.height)
    e, r = get_entry(web, "robots_disallowed")
    assert r.status == 200 and e.path.startswith("/private/")
    assert get(web, e.host_index, "/robots.txt").body.decode() == ROBOTS_TXT
    e, r = get_entry(web, "tiny")
    assert decodes(r.body) == ("JPEG", (16, 16))


def test_stall_is_partial_concurrent_and_interrupted_by_stop() -> None:
    web = SynthWeb(SiteSpec(n_images=0, n_hosts=2, stall_seconds=60))
    socks: list[socket.socket] = []
    try:
        e = web.site.fault_entry("stall")
        address = (web.site.addresses[e.host_index], web.port)
        for _ in range(3):
            s = socket.create_connection(address, timeout=TIMEOUT)
            s.sendall(f"GET {e.path} HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode())
            socks.append(s)
        data = b""
        while b"\r\n\r\n" not in data:
            data += socks[0].recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        socks[0].settimeout(1.0)
        with pytest.raises(TimeoutError):  # a third of the body, then silence
            while chunk := socks[0].recv(65536):
                body += chunk
        assert 0 < len(body) < length
        deadline = time.monotonic() + TIMEOUT
        while web.hits(e.path) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert web.max_concurrent(e.host_index) >= 3
    finally:
        web.stop()
    # stop() woke the stalled handlers and hung up: end of stream, well before 60 s.
    for s in socks:
        s.settimeout(TIMEOUT)
        with s:
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
            assert len(rest) < length


def test_only_loopback_and_port_conflicts() -> None:
    with pytest.raises(ValueError):
        SynthWeb(SiteSpec(n_hosts=1), host_addresses=["10.1.2.3"])
    with pytest.raises(ValueError):
        SynthWeb(SiteSpec(n_hosts=2), host_addresses=["127.0.0.1", "127.0.0.1"])
    with SynthWeb(SiteSpec(n_images=0, n_hosts=2)) as first, pytest.raises(OSError):
        SynthWeb(SiteSpec(n_images=0, n_hosts=2), port=first.port)


def test_fallback_port_binds_the_asked_port_when_free_else_any_on_every_host() -> None:
    spec = SiteSpec(n_images=0, n_hosts=2)
    with SynthWeb(spec) as first:
        port = first.port
    with SynthWeb(spec, port=port, fallback_port=True) as web:  # free again
        assert web.port == port
    with socket.socket() as blocker:  # taken on the second host only
        blocker.bind(("127.0.0.2", port))
        blocker.listen()
        with pytest.raises(OSError):
            SynthWeb(spec, port=port)
        with SynthWeb(spec, port=port, fallback_port=True) as web:
            assert web.port != port
            assert web.base_url(1) == f"http://127.0.0.2:{web.port}"
            assert [get(web, k, "/robots.txt").status for k in range(2)] == [200, 200]


# -- pages ------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collect base href, (src, alt, figcaption) per image, and links."""

    def __init__(self) -> None:
        super().__init__()
        self.base: str | None = None
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "base":
            self.base = a["href"]
        elif tag == "img":
            self.images.append({"src": a["src"], "alt": a.get("alt"), "figcaption": None})
        elif tag == "a":
            self.links.append(a["href"] or "")
        elif tag == "figcaption":
            self._in_caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.images[-1]["figcaption"] = data


def test_pages_reference_images_with_captions(web: SynthWeb) -> None:
    forms: Counter[str] = Counter()
    bases = 0
    for host in range(4):
        for page in range(SPEC.n_pages):
            page_url = f"{web.base_url(host)}/pages/{page}.html"
            r = get(web, host, f"/pages/{page}.html")
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            p = PageParser()
            p.feed(r.body.decode())
            bases += p.base is not None
            doc_base = p.base or page_url
            found = [
                {"url": urljoin(doc_base, img["src"]), "caption": img["alt"] or img["figcaption"]}
                for img in p.images
            ]
            expected = web.site.page_pairs(host, page, web.port)
            assert found == [{"url": x["url"], "caption": x["caption"]} for x in expected]
            forms.update(x["form"] for x in expected)
            links = {urljoin(doc_base, href) for href in p.links}
            assert f"{web.base_url(host)}/pages/{(page + 1) % SPEC.n_pages}.html" in links
            assert f"{web.base_url((host + 1) % 4)}/pages/{page}.html" in links
            srcs = [img["src"] for img in p.images]
            if p.base is None and srcs:
                assert any(s.startswith("http://") for s in srcs)
    assert bases == 4  # one page per host carries <base href>
    assert forms["alt"] and forms["figure"] and forms["no_alt"]
    index = get(web, 0, "/").body.decode()
    assert '<a href="/pages/0.html">' in index


# -- command line -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_urls_cli_writes_pairs(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"pairs{suffix}"
    assert (
        main(
            [
                "urls",
                "--out",
                str(out),
                "--images",
                "10",
                "--hosts",
                "2",
                "--seed",
                "3",
                "--port",
                "9999",
            ]
        )
        == 0
    )
    expected = Site(SiteSpec(seed=3, n_images=10, n_hosts=2)).pair_rows(9999)
    if suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        with out.open(newline="", encoding="utf-8") as f:
            rows = [
                {k: (v or None) for k, v in r.items()} | {"host": int(r["host"])}
                for r in csv.DictReader(f)
            ]
    else:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {"url", "caption", "fault", "expected_status"} <= set(rows[0])
    assert rows == expected
    assert all(
        r["url"].startswith(("http://127.0.0.1:9999/", "http://127.0.0.2:9999/")) for r in rows
    )


def test_help_describes_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["serve", "--help"], ["urls", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--port", "--seed", "--images", "--hosts", "--out"):
        assert flag in out
    for argv in (["urls", "--out", "pairs.txt"], ["serve", "--hosts", "0"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_serve_cli_prints_base_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.synthweb",
            "serve",
            "--port",
            "0",
            "--images",
            "5",
            "--hosts",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(TIMEOUT * 3)
        assert line, "serve printed nothing"
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)\n", line[0])
        assert m, line[0]
        conn = http.client.HTTPConnection("127.0.0.2", int(m.group(1)), timeout=TIMEOUT)
        conn.request("GET", "/robots.txt")
        assert conn.getresponse().read().decode() == ROBOTS_TXT
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_import_starts_nothing() -> None:
    code = (
        "import threading, pipeline.synthweb as s\n"
        "from pipeline.synthweb import images\n"
        "assert threading.active_count() == 1\n"
        "assert images._grain_tile.cache_info().currsize == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=TIMEOUT * 3)


def test_urls_help_gives_the_download_command_of_the_reference_settings(
    capsys: pytest.CaptureFixture,
) -> None:
    import shlex

    from pipeline.download import build_parser as download_parser
    from pipeline.download import config_from_args
    from pipeline.synthweb.site import reference_config

    with pytest.raises(SystemExit):
        main(["urls", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    command = text.split("python -m pipeline.download ", 1)[1].split(" options:")[0]
    assert "--allow-networks 127.0.0.0/8" in command
    # the command as printed gives exactly the settings the expected statuses assume
    args = download_parser().parse_args(shlex.split(command))
    assert config_from_args(args) == reference_config()
