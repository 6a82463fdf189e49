"""Fetcher pieces that need no server: URL validation, header parsing, the host limiter."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from pipeline.config import FetchConfig
from pipeline.fetch.client import Fetcher, _retry_after_seconds, parse_target
from pipeline.fetch.hosts import HostLimiter
from pipeline.schema import Status


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme 'data'"),
        ("ftp://127.0.0.1/x.jpg", "scheme 'ftp'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("//127.0.0.1/x.jpg", "scheme '(none)'"),
        ("http://", "no host"),
        ("http://127.0.0.1:99999/x", "malformed"),
        ("http://127.0.0.1/a\tb.jpg", "control characters"),
        ("http://127.0.0.1/a\x00b.jpg", "control characters"),
        ("http://exa mple.com/x.jpg", "host contains whitespace"),
        ("", "empty"),
        ("http://[::1/x", "malformed"),
    ],
)
def test_unfetchable_urls(url: str, why: str) -> None:
    target = parse_target(url)
    assert isinstance(target, str)
    assert why in target


def test_fetchable_url_parts() -> None:
    t = parse_target("HTTP://127.0.0.1:8080/a/b.jpg?x=1&y=é")
    assert not isinstance(t, str)
    assert (t.scheme, t.host, t.port) == ("http", "127.0.0.1", 8080)
    assert t.path == "/a/b.jpg?x=1&y=%C3%A9"
    assert t.host_header == "127.0.0.1:8080"
    # A literal space (or non-ASCII) in path or query is sent percent-encoded, as browsers
    # and img2dataset send it.
    spaced = parse_target("http://127.0.0.1/a b.jpg?q=x y ")
    assert not isinstance(spaced, str) and spaced.path == "/a%20b.jpg?q=x%20y"
    idn = parse_target("https://bücher.example/x")
    assert not isinstance(idn, str) and idn.host == "xn--bcher-kva.example" and idn.port == 443


def test_invalid_urls_never_touch_the_network() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("resolved an invalid URL")

    fetcher = Fetcher(FetchConfig(), resolver=resolver)
    for url in ("file:///etc/passwd", "data:,x", "ftp://127.0.0.1/"):
        result = fetcher.fetch(url)
        assert result.status is Status.INVALID_URL


def test_resolution_to_a_private_address_is_blocked_before_connecting() -> None:
    fetcher = Fetcher(
        FetchConfig(allow_networks=("127.0.0.0/8",)), resolver=lambda h, p: ["10.1.2.3"]
    )
    result = fetcher.fetch("http://images.internal/x.jpg")
    assert result.status is Status.BLOCKED_ADDRESS
    assert "10.1.2.3 is a private address" in result.error_message


def test_dns_failure_is_a_connection_error() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    result = Fetcher(FetchConfig(retries=0), resolver=resolver).fetch("http://nowhere.test/x.jpg")
    assert result.status is Status.CONNECTION_ERROR
    assert "cannot resolve nowhere.test" in result.error_message


def test_retry_after_forms() -> None:
    assert _retry_after_seconds("3") == 3.0
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("soon") is None
    assert 0 <= _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # in the past


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([("X-Robots-Tag", "noai")], True),
        ([("x-robots-tag", "noindex, noimageai")], True),
        ([("X-Robots-Tag", "otherbot: noai")], False),  # addressed to another crawler
        ([("X-Robots-Tag", "wit-builder: noai")], True),
        ([("X-Robots-Tag", "nofollow")], False),
        ([("X-Robots-Tag", "none")], True),  # none = noindex, nofollow
        ([("X-Robots-Tag", "wit-builder: none")], True),
        ([("X-Robots-Tag", "otherbot: none")], False),
        ([("X-Robots-Tag", "unavailable_after: 25 Jun 2010 15:00:00 PST")], False),
        ([("Content-Type", "image/jpeg")], False),
    ],
)
def test_x_robots_tag(headers: list[tuple[str, str]], refused: bool) -> None:
    fetcher = Fetcher(FetchConfig())
    assert (fetcher._opt_out_directive(headers) is not None) is refused


def test_host_limiter_caps_concurrency_and_spaces_starts() -> None:
    limiter = HostLimiter(max_connections=2, delay=0.05)
    active = 0
    peak = 0
    starts: list[float] = []
    lock = threading.Lock()

    def job() -> None:
        nonlocal active, peak
        with limiter.slot("h"):
            with lock:
                active += 1
                peak = max(peak, active)
                starts.append(time.monotonic())
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=job) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 2
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045  # every start waited for the politeness delay


def test_host_limiter_hosts_are_independent() -> None:
    limiter = HostLimiter(max_connections=1, delay=10.0)
    with limiter.slot("a"):
        pass
    t0 = time.monotonic()
    with limiter.slot("b"):  # another host is not delayed by a's politeness
        pass
    assert time.monotonic() - t0 < 5


def test_resolution_is_cached_per_host_and_literals_skip_it() -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["10.1.2.3"]

    fetcher = Fetcher(FetchConfig(), resolver=resolver)
    for path in ("a", "b", "c"):
        assert fetcher.fetch(f"http://images.internal/{path}.jpg").status is Status.BLOCKED_ADDRESS
    assert calls == ["images.internal"]
    assert fetcher.fetch("http://10.9.9.9/x.jpg").status is Status.BLOCKED_ADDRESS
    assert calls == ["images.internal"]  # an IP literal is not looked up
