"""The fetcher against a raw loopback server that answers as a hostile or broken web does:
every answer ends as a FetchResult with a status (never an exception), within its
deadline, and a host that asks us to back off is left alone for as long as it asked."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import FetchConfig
from pipeline.fetch.client import Fetcher
from pipeline.fetch.robots import RobotsCache
from pipeline.schema import Status
from tests.fetch.rawweb import RawHandler, serve


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


PNG = _png()


def _fetcher(**kw) -> Fetcher:
    kw.setdefault("retries", 0)
    return Fetcher(FetchConfig(allow_networks=("127.0.0.0/8",), **kw))


def _image(h: RawHandler) -> None:
    h.answer(200, [("Content-Type", "image/png")], PNG)


# ---- malformed answers are rows, not exceptions ---------------------------------------------


def test_a_content_length_of_unicode_digits_is_a_bad_length_not_a_crash() -> None:
    # latin-1 "²" and "¹": str.isdigit() says yes, int() says no.
    routes = {
        "/sup.png": lambda h: h.answer(200, [("Content-Length", b"\xb2")], PNG),
        "/sup404.png": lambda h: h.answer(404, [("Content-Length", b"\xb9")], b"x"),
        "/list.png": lambda h: h.answer(200, [("Content-Length", b"5, 5")], b"abcde"),
    }
    with serve(routes) as web:
        fetcher = _fetcher()
        sup = fetcher.fetch(web.origin + "/sup.png")
        gone = fetcher.fetch(web.origin + "/sup404.png")
        listed = fetcher.fetch(web.origin + "/list.png")
    assert (sup.status, sup.http_status) == (Status.CONNECTION_ERROR, 200)
    assert "invalid Content-Length '²'" in sup.error_message
    assert (gone.status, gone.http_status) == (Status.HTTP_ERROR, 404)
    assert listed.status is Status.CONNECTION_ERROR  # RFC 9112 6.3: unusable framing


def test_a_redirect_to_an_unparseable_url_is_invalid_url() -> None:
    routes = {"/r": lambda h: h.answer(302, [("Location", "http://[bad/x.png")])}
    with serve(routes) as web:
        result = _fetcher().fetch(web.origin + "/r")
    assert result.status is Status.INVALID_URL
    assert result.error_message.startswith("redirect to unfetchable URL")


# ---- the total timeout bounds the whole attempt ---------------------------------------------


def _drip_body(h: RawHandler) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 40\r\n\r\n")
    for _ in range(40):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.25)


def _drip_headers(h: RawHandler) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(40):
        h.wfile.write(b"X-Pad: y\r\n")
        h.wfile.flush()
        time.sleep(0.25)
    h.wfile.write(b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize("route", [_drip_body, _drip_headers], ids=["body", "headers"])
def test_total_timeout_bounds_a_server_that_drips(route) -> None:
    # Each byte comes well within the 1 s idle timeout, so only the total deadline can end
    # it: ten seconds of dripping against a 1.5 s limit.
    with serve({"/drip.png": route}) as web:
        started = time.monotonic()
        result = _fetcher(timeout=1.0, total_timeout=1.5).fetch(web.origin + "/drip.png")
        elapsed = time.monotonic() - started
    assert result.status is Status.TIMEOUT
    assert "total timeout 1.5s" in result.error_message
    assert elapsed < 4 * 1.5  # the deadline's effect, with room for a loaded machine


# ---- Location headers and URLs as browsers take them ----------------------------------------


def test_locations_with_spaces_or_raw_utf8_and_urls_with_spaces_are_fetched() -> None:
    routes = {
        "/space": lambda h: h.answer(302, [("Location", "/a b.png")]),
        "/utf8": lambda h: h.answer(302, [("Location", "/café.png".encode())]),
        "/a%20b.png": _image,
        "/caf%C3%A9.png": _image,
    }
    with serve(routes) as web:
        fetcher = _fetcher()
        results = [fetcher.fetch(web.origin + p) for p in ("/space", "/utf8", "/a b.png")]
        paths = [p for _, p in web.log]
    assert [r.status for r in results] == [Status.SUCCESS] * 3
    assert all(r.data == PNG for r in results)
    assert paths == ["/space", "/a%20b.png", "/utf8", "/caf%C3%A9.png", "/a%20b.png"]


# ---- content codings we did not ask for -----------------------------------------------------


def test_a_body_compressed_against_our_request_is_decoded_within_max_bytes() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)  # about 5 kB on the wire
    routes = {
        "/gz.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], gzip.compress(PNG)),
        "/bomb.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], bomb),
        "/br.png": lambda h: h.answer(200, [("Content-Encoding", "br")], b"\x1b\x03\x00\xf8"),
        "/bad.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], PNG),
    }
    with serve(routes) as web:
        fetcher = _fetcher(max_bytes=1_000_000)
        gz, bombed, br, bad = (
            fetcher.fetch(web.origin + p) for p in ("/gz.png", "/bomb.png", "/br.png", "/bad.png")
        )
    assert gz.status is Status.SUCCESS and gz.data == PNG
    assert bombed.status is Status.TOO_LARGE and "Content-Encoding gzip" in bombed.error_message
    assert br.status is Status.NOT_IMAGE and "Content-Encoding br" in br.error_message
    assert bad.status is Status.NOT_IMAGE and "Content-Encoding gzip" in bad.error_message


# ---- X-Robots-Tag: none ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", "wit-builder: none", "NONE, noarchive"])
def test_x_robots_tag_none_is_noindex(value: str) -> None:
    routes = {"/x.png": lambda h: h.answer(200, [("X-Robots-Tag", value)], PNG)}
    with serve(routes) as web:
        result = _fetcher().fetch(web.origin + "/x.png")
    assert result.status is Status.OPT_OUT and "X-Robots-Tag" in result.error_message


# ---- Retry-After holds back the whole host --------------------------------------------------


def test_retry_after_holds_back_every_request_to_the_host() -> None:
    def limited(h: RawHandler) -> None:
        if h.hit_count() == 1:
            h.answer(429, [("Retry-After", "1")])
        else:
            _image(h)

    with serve({"/limited.png": limited, "/ok.png": _image}) as web:
        fetcher = _fetcher(per_host_connections=1, retries=1)
        urls = [web.origin + "/limited.png"] + [f"{web.origin}/ok.png?{i}" for i in range(5)]
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(fetcher.fetch, urls))
        log = list(web.log)
    assert [r.status for r in results] == [Status.SUCCESS] * 6
    assert results[0].attempts == 2
    refused_at = next(t for t, p in log if p == "/limited.png")
    inside = [(round(t - refused_at, 3), p) for t, p in log if refused_at < t < refused_at + 0.99]
    assert inside == []  # nothing reached the host while it asked us to wait
    assert len(log) == 7


def test_a_503_without_retry_after_backs_off_the_host_too() -> None:
    def flaky(h: RawHandler) -> None:
        if h.hit_count() == 1:
            h.answer(503, [])
        else:
            _image(h)

    with serve({"/flaky.png": flaky}) as web:
        fetcher = _fetcher(retries=1, backoff_base=0.4, backoff_max=0.4)
        waits: list[float] = []
        fetcher.sleep = waits.append  # this URL's own wait is recorded, not slept ...
        result = fetcher.fetch(web.origin + "/flaky.png")
        (first, _), (second, _) = web.log
    assert result.ok and result.attempts == 2
    assert second - first >= waits[0] - 0.01  # ... but the host's back-off still holds


# ---- robots.txt (RFC 9309) ------------------------------------------------------------------

RULES = b"User-agent: *\nDisallow: /private/\n"


def _rules(h: RawHandler) -> None:
    h.answer(200, [("Content-Type", "text/plain")], RULES)


def _then_rules(first: int):
    def route(h: RawHandler) -> None:
        if h.hit_count() == 1:
            h.answer(first, [])
        else:
            _rules(h)

    return route


def _stall(h: RawHandler) -> None:
    time.sleep(3)


ROBOTS_CASES = {
    # robots.txt route -> what it means for /ok.png and /private/x.png (None: allowed)
    "noindex_header": (
        lambda h: h.answer(200, [("X-Robots-Tag", "noindex, noai")], RULES),
        (None, "disallows /private/x.png"),
    ),
    "redirect": (
        lambda h: h.answer(301, [("Location", "/robots-real.txt")]),
        (None, "disallows /private/x.png"),
    ),
    "503_then_rules": (_then_rules(503), (None, "disallows /private/x.png")),
    "404": (lambda h: h.answer(404, []), (None, None)),
    "always_503": (lambda h: h.answer(503, []), ("unreachable (HTTP 503",) * 2),
    "429": (lambda h: h.answer(429, []), ("unreachable (HTTP 429",) * 2),
    "truncated": (
        lambda h: h.answer(200, [("Content-Length", "500")], RULES),
        ("unreachable (connection_error: truncated body",) * 2,
    ),
    # RFC 9309 2.5: at least the first 500 KiB are parsed, whatever max_bytes allows images.
    "over_max_bytes": (lambda h: h.answer(200, [], RULES * 100), (None, "disallows /private/x")),
    "over_500_kib": (
        lambda h: h.answer(200, [], RULES + b"#" * 600_000 + b"\nDisallow: /ok.png\n"),
        (None, "disallows /private/x"),
    ),
    "over_500_kib_chunked": (
        lambda h: h.answer(
            200,
            [("Transfer-Encoding", "chunked")],
            b"%x\r\n" % 700_000 + RULES + b"#" * (700_000 - len(RULES)) + b"\r\n0\r\n\r\n",
            length=False,
        ),
        (None, "disallows /private/x"),
    ),
    "stall": (_stall, ("unreachable (timeout",) * 2),
}


@pytest.mark.parametrize("case", ROBOTS_CASES)
def test_robots_txt_answers_per_rfc_9309(case: str, tmp_path: Path) -> None:
    route, expected = ROBOTS_CASES[case]
    routes = {"/robots.txt": route, "/robots-real.txt": _rules, "/ok.png": _image}
    routes["/private/x.png"] = _image
    with serve(routes) as web:
        fetcher = Fetcher(
            FetchConfig(
                allow_networks=("127.0.0.0/8",),
                respect_robots=True,
                retries=1,
                backoff_base=0.01,
                timeout=0.5,
                max_bytes=2000,
            ),
            robots=RobotsCache(tmp_path),
        )
        results = [fetcher.fetch(web.origin + p) for p in ("/ok.png", "/private/x.png")]
        robots_hits = web.hits.get("/robots.txt", 0)
    host = web.origin.removeprefix("http://")
    for result, want in zip(results, expected, strict=True):
        if want is None:
            assert result.status is Status.SUCCESS, result.error_message
        else:
            assert result.status is Status.OPT_OUT
            assert result.error_message.startswith(f"robots.txt of {host} ")
            assert want in result.error_message
    assert fetcher.robots.fetches == 1  # one robots.txt verdict per host
    # Transient failures are retried as any fetch (a stall, like any timeout, is not).
    assert robots_hits == {"always_503": 2, "429": 2, "503_then_rules": 2, "truncated": 2}.get(
        case, 1
    )


def test_an_unreachable_robots_txt_is_not_kept_for_a_day(tmp_path: Path) -> None:
    config = FetchConfig(
        allow_networks=("127.0.0.0/8",), respect_robots=True, retries=0, backoff_base=0.01
    )
    with serve({"/robots.txt": lambda h: h.answer(503, []), "/ok.png": _image}) as web:
        first = Fetcher(config, robots=RobotsCache(tmp_path)).fetch(web.origin + "/ok.png")
        (saved,) = (json.loads(p.read_text()) for p in tmp_path.iterdir())
        # Another process of the run (or a resumed run) shortly after: the verdict stands.
        again = Fetcher(config, robots=RobotsCache(tmp_path)).fetch(web.origin + "/ok.png")
        assert web.hits["/robots.txt"] == 1
        # Once an unreachable verdict is old (minutes, not a day) robots.txt is asked again.
        later = RobotsCache(tmp_path, unreachable_max_age=0.0)
        Fetcher(config, robots=later).fetch(web.origin + "/ok.png")
        assert web.hits["/robots.txt"] == 2
    assert first.status is Status.OPT_OUT and "unreachable (HTTP 503" in first.error_message
    assert again.status is Status.OPT_OUT
    assert saved["unreachable"].startswith("HTTP 503")


def test_the_robots_cache_waits_for_one_fetch_per_origin() -> None:
    cache = RobotsCache()
    calls: list[int] = []

    def fetch() -> tuple[int, bytes]:
        calls.append(1)
        time.sleep(0.1)
        return 200, RULES

    threads = [threading.Thread(target=cache.get, args=("http://h:80", fetch)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert not cache.get("http://h:80", fetch).allows("wit-builder", "http://h:80/private/x")


def test_a_gzip_body_of_several_members_is_decoded_whole_or_refused() -> None:
    two = gzip.compress(PNG[:50]) + gzip.compress(PNG[50:])  # RFC 1952 2.2: members in turn
    routes = {
        "/two.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], two),
        "/padded.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], two + b"\0\0\n"),
        "/junk.png": lambda h: h.answer(200, [("Content-Encoding", "gzip")], two + b"JUNK"),
        "/many.png": lambda h: h.answer(
            200, [("Content-Encoding", "gzip")], gzip.compress(b"\0" * 500) * 20
        ),
    }
    with serve(routes) as web:
        fetcher = _fetcher(max_bytes=7_000)  # each member's 500 bytes fit, all 10,000 do not
        whole, padded, junk, many = (
            fetcher.fetch(web.origin + p)
            for p in ("/two.png", "/padded.png", "/junk.png", "/many.png")
        )
    assert whole.status is Status.SUCCESS and whole.data == PNG
    assert padded.status is Status.SUCCESS and padded.data == PNG
    assert junk.status is Status.NOT_IMAGE and "4 bytes of other data" in junk.error_message
    # max_bytes caps the members together, not each one.
    assert many.status is Status.TOO_LARGE and "Content-Encoding gzip" in many.error_message


# ---- keep-alive connections -----------------------------------------------------------------


def test_stray_bytes_or_a_close_on_an_idle_connection_do_not_fail_the_next_url() -> None:
    def with_junk(h: RawHandler) -> None:
        h.answer(200, [], b"hello", keep_alive=True, extra=b"JUNK")  # longer than announced

    def junk_later(h: RawHandler) -> None:
        h.answer(200, [], b"hello", keep_alive=True)
        time.sleep(0.1)
        h.wfile.write(b"JUNKJUNK")
        h.wfile.flush()

    def kept(h: RawHandler) -> None:
        h.answer(200, [("Content-Type", "image/png")], PNG, keep_alive=True)

    routes = {"/junk": with_junk, "/later": junk_later, "/ok.png": kept}
    for first in ("/junk", "/later", "/ok.png"):
        with serve(routes) as web:
            fetcher = _fetcher()  # retries=0: the next URL has one attempt
            assert fetcher.fetch(web.origin + first).ok
            time.sleep(0.3)
            results = [fetcher.fetch(web.origin + "/ok.png") for _ in range(3)]
            fetcher.close()
            connections = web.connections
        assert [r.status for r in results] == [Status.SUCCESS] * 3, results[0].error_message
        assert all(r.attempts == 1 for r in results)
        # A connection that cannot carry a request is replaced; a clean one is reused.
        assert connections == {"/later": 2, "/ok.png": 1}.get(first, connections)


# ---- TLS ------------------------------------------------------------------------------------


def _self_signed_server_context(tmp_path: Path):
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = tmp_path / "key.pem"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem, key_pem)
    return context, pem


def test_an_untrusted_certificate_is_not_retried(tmp_path: Path) -> None:
    import ssl

    context, pem = _self_signed_server_context(tmp_path)
    kept = lambda h: h.answer(200, [("Content-Type", "image/png")], PNG, keep_alive=True)  # noqa: E731
    with serve({"/ok.png": kept}, tls=context) as web:
        fetcher = _fetcher(retries=2, backoff_base=0.01)
        waits: list[float] = []
        fetcher.sleep = waits.append
        refused = fetcher.fetch(web.origin + "/ok.png")
        # The same server, its certificate trusted: fetched, over one kept connection.
        trusting = _fetcher()
        trusting._ssl = ssl.create_default_context(cafile=str(pem))
        connections_before = web.connections
        trusted = [trusting.fetch(web.origin + "/ok.png") for _ in range(3)]
        trusting.close()
        trusted_connections = web.connections - connections_before
    assert refused.status is Status.CONNECTION_ERROR and refused.attempts == 1 and waits == []
    assert "certificate" in refused.error_message and "not retried" in refused.error_message
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error_message
    assert [r.status for r in trusted] == [Status.SUCCESS] * 3
    assert trusted_connections == 1


# ---- the robots.txt cache on disk -----------------------------------------------------------


@pytest.mark.parametrize(
    "saved",
    [
        '{"rules": null, "fetched_at": NOW}',
        '{"rules": 5, "fetched_at": NOW}',
        '{"rules": ["Disallow: /"], "fetched_at": NOW}',
        '{"rules": "", "unreachable": 7, "fetched_at": NOW}',
        '{"rules": "", "fetched_at": "NOW"}',
        "[" * 100_000 + "]" * 100_000,
        # Written "in the future" (or never expiring): not trusted, fetched again.
        '{"rules": "User-agent: *\\nDisallow: /\\n", "fetched_at": Infinity}',
        '{"rules": "User-agent: *\\nDisallow: /\\n", "fetched_at": NaN}',
        '{"rules": "User-agent: *\\nDisallow: /\\n", "fetched_at": FUTURE}',
    ],
)
def test_a_damaged_robots_cache_file_is_fetched_again(saved: str, tmp_path: Path) -> None:
    config = FetchConfig(allow_networks=("127.0.0.0/8",), respect_robots=True, retries=0)
    with serve({"/robots.txt": _rules, "/ok.png": _image}) as web:
        path = tmp_path / ("http_127.0.0.1_" + web.origin.rsplit(":", 1)[1] + ".json")
        now = time.time()
        path.write_text(saved.replace("NOW", str(now)).replace("FUTURE", str(now + 1e9)))
        fetcher = Fetcher(config, robots=RobotsCache(tmp_path))
        results = [fetcher.fetch(web.origin + p) for p in ("/ok.png", "/private/x.png")]
        hits = web.hits.get("/robots.txt", 0)
    assert results[0].status is Status.SUCCESS, results[0].error_message
    assert results[1].status is Status.OPT_OUT and "disallows" in results[1].error_message
    assert hits == 1
    assert json.loads(path.read_text())["rules"] == RULES.decode()  # replaced


@pytest.mark.parametrize("blocked", ["directory_is_a_file", "file_is_a_directory"])
def test_an_unwritable_robots_cache_keeps_the_rules_in_memory(blocked: str, tmp_path: Path) -> None:
    config = FetchConfig(allow_networks=("127.0.0.0/8",), respect_robots=True, retries=0)
    with serve({"/robots.txt": _rules, "/ok.png": _image}) as web:
        cache_dir = tmp_path / "_robots"
        if blocked == "directory_is_a_file":
            cache_dir.write_text("")
        else:
            name = "http_127.0.0.1_" + web.origin.rsplit(":", 1)[1] + ".json"
            (cache_dir / name).mkdir(parents=True)
        fetcher = Fetcher(config, robots=RobotsCache(cache_dir))
        paths = ("/ok.png", "/private/x.png", "/ok.png?again")
        results = [fetcher.fetch(web.origin + p) for p in paths]
        hits = web.hits.get("/robots.txt", 0)
    assert [r.status for r in results] == [Status.SUCCESS, Status.OPT_OUT, Status.SUCCESS]
    assert hits == 1 and fetcher.robots.fetches == 1


def test_with_patience_a_long_wait_is_handed_back_and_resumed() -> None:
    def limited(h: RawHandler) -> None:
        if h.hit_count() == 1:
            h.answer(503, [("Retry-After", "1")])
        else:
            _image(h)

    with serve({"/limited.png": limited, "/ok.png": _image}) as web:
        fetcher = _fetcher(retries=1)
        waits: list[float] = []
        fetcher.sleep = waits.append
        url = web.origin + "/limited.png"
        first = fetcher.fetch(url, patience=0.5)
        # Another URL of the host is handed back untried, with the host's not-before time.
        other = fetcher.fetch(web.origin + "/ok.png", patience=0.5)
        assert web.hits.get("/ok.png") is None
        time.sleep(max(0.0, first.retry_at - time.monotonic()))
        done = fetcher.fetch(url, patience=0.5, resume=first)
    assert first.retry_at is not None and first.attempts == 1 and first.http_status == 503
    assert abs(other.retry_at - first.retry_at) < 0.1 and other.attempts == 0
    assert "Retry-After 1" in other.error_message
    assert done.ok and done.attempts == 2 and done.retry_at is None
    assert waits == []  # no thread slept for it
