"""GuardedProxy: urllib through the proxy against the loopback test web, and raw CONNECTs.

Everything stays on loopback (the conftest seal): a refused address must be answered by
the proxy without a connection attempt, which the seal would turn into a handler error.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from pipeline.fetch.guard import AddressGuard
from pipeline.fetch.proxy import GuardedProxy
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def web() -> Iterator[SynthWeb]:
    with SynthWeb(SiteSpec(seed=7, n_images=4, n_hosts=2, n_pages=1)) as w:
        yield w


@pytest.fixture
def proxy() -> Iterator[GuardedProxy]:
    with GuardedProxy(AddressGuard.from_cidrs(["127.0.0.0/8"]), timeout=5.0) as p:
        yield p
    assert p.errors == []  # nothing failed inside a handler thread (e.g. the seal tripping)


def _opener(proxy: GuardedProxy) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))


def _get(proxy: GuardedProxy, url: str, headers: dict[str, str] | None = None) -> bytes:
    with _opener(proxy).open(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
        return r.read()


def _raw(port: int, request: bytes) -> tuple[socket.socket, bytes, bytes]:
    """Send raw bytes to the proxy; return the socket, the response head and what followed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = s.recv(4096)
        if not piece:
            break
        buf += piece
    head, _, rest = buf.partition(b"\r\n\r\n")
    return s, head, rest


def test_binds_loopback_only_and_stops(proxy: GuardedProxy) -> None:
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert proxy._server.server_address[0] == "127.0.0.1"
    proxy.stop()
    proxy.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_stop_hangs_up_an_idle_keep_alive_client(web: SynthWeb) -> None:
    # A handler waiting for a keep-alive client's next request would hold on until its
    # 30 s timeout; stop() shuts the connection down and the client sees the end at once.
    proxy = GuardedProxy(AddressGuard.from_cidrs(["127.0.0.0/8"]), timeout=30.0)
    entry = web.site.by_fault(None)[0]
    url = web.url_for(entry)
    s, head, body = _raw(proxy.port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    with s:
        assert head.startswith(b"HTTP/1.1 200")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        while len(body) < length:
            body += s.recv(65536)
        assert body == web.payload(entry) and len(proxy.connections) == 1  # kept alive
        proxy.stop()
        s.settimeout(5)  # well under the handler's 30 s
        assert s.recv(1) == b""
    deadline = time.monotonic() + 5
    while len(proxy.connections) and time.monotonic() < deadline:
        time.sleep(0.01)  # the woken handler finishes and unregisters
    assert len(proxy.connections) == 0 and proxy.errors == []


def test_normal_image_is_relayed_byte_for_byte(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.by_fault(None)[0]
    assert _get(proxy, web.url_for(entry)) == web.payload(entry)
    assert proxy.refused == 0


def test_chunked_response_is_relayed(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.fault_entry("oversized_chunked")
    assert _get(proxy, web.url_for(entry)) == web.payload(entry)


def test_truncated_body_stays_truncated(web: SynthWeb, proxy: GuardedProxy) -> None:
    # The proxy must not turn a short body into a complete-looking one.
    entry = web.site.fault_entry("truncated")
    with pytest.raises(http.client.IncompleteRead):
        _get(proxy, web.url_for(entry))


def test_head_keeps_the_length_and_sends_no_body(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.by_fault(None)[0]
    request = urllib.request.Request(web.url_for(entry), method="HEAD")
    with _opener(proxy).open(request, timeout=5) as r:
        assert int(r.headers["Content-Length"]) == len(web.payload(entry))
        assert r.read() == b""


def test_redirect_chain_is_followed_by_the_client(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.fault_entry("redirect_chain")
    assert _get(proxy, web.url_for(entry)) == web.payload(entry)
    final_host, final_path = web.site.final_location(entry)  # type: ignore[misc]
    assert web.hits(final_path, final_host) >= 1


def test_redirect_to_private_address_is_refused(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.fault_entry("redirect_private")
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(proxy, web.url_for(entry))
    err = info.value
    assert err.code == 403
    assert "10.255.255.1" in err.headers["X-Wit-Blocked"]
    assert "private" in err.headers["X-Wit-Blocked"]
    # img2dataset keeps only str(err); the reason phrase carries the marker the ledger needs.
    assert "X-Wit-Blocked" in str(err)
    assert proxy.refused == 1
    assert proxy.refusals[0][0] == "10.255.255.1"
    assert proxy.errors == []  # no connection attempt tripped the network seal


def test_img2dataset_error_message_classifies_as_blocked(
    web: SynthWeb, proxy: GuardedProxy
) -> None:
    from pipeline.schema import Status
    from pipeline.spark.img2dataset_engine import classify

    with pytest.raises(urllib.error.HTTPError) as info:
        _get(proxy, web.url_for(web.site.fault_entry("redirect_private")))
    assert classify("failed_to_download", str(info.value)) is Status.BLOCKED_ADDRESS


def test_a_connection_outside_loopback_would_show_up_in_errors(web: SynthWeb) -> None:
    # Why asserting ``errors == []`` means something: a guard that let the private hop
    # through makes the proxy connect, the network seal raises in its handler thread, and
    # that lands here (the client just sees the connection drop).
    guard = AddressGuard.from_cidrs(["127.0.0.0/8", "10.0.0.0/8"])
    with GuardedProxy(guard, timeout=2.0) as p:
        with pytest.raises((urllib.error.URLError, http.client.HTTPException)):
            _get(p, web.url_for(web.site.fault_entry("redirect_private")))
        assert p.refused == 0
        assert any("NetworkSealError" in e and "10.255.255.1" in e for e in p.errors)


def test_narrow_guard_refuses_another_loopback_host(web: SynthWeb) -> None:
    url = f"{web.base_url(1)}/robots.txt"
    assert url.startswith("http://127.0.0.2:")
    with GuardedProxy(AddressGuard.from_cidrs(["127.0.0.1/32"])) as p:
        assert _get(p, f"{web.base_url(0)}/robots.txt")  # 127.0.0.1 itself still passes
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(p, url)
        assert info.value.code == 403
        assert "127.0.0.2" in info.value.headers["X-Wit-Blocked"]
        assert p.refusals == [("127.0.0.2", p.refusals[0][1])]
        assert p.errors == []


def test_user_agent_is_replaced(web: SynthWeb, proxy: GuardedProxy) -> None:
    entry = web.site.by_fault(None)[1]
    with GuardedProxy(proxy.guard, user_agent="wit-builder/test") as p:
        _get(p, web.url_for(entry), headers={"User-Agent": "something else"})
    agents = {ua for _, _, path, ua in web.request_log if path == entry.path}
    assert agents == {"wit-builder/test"}


def test_a_request_to_the_proxy_itself_is_refused(proxy: GuardedProxy) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(proxy, f"{proxy.url}/loop")
    assert info.value.code == 403
    assert "this proxy" in info.value.headers["X-Wit-Blocked"]


def test_upstream_failures_are_502(proxy: GuardedProxy) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(proxy, f"http://127.0.0.1:{closed_port}/x")
    assert info.value.code == 502

    def no_dns(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "no such host")

    with GuardedProxy(proxy.guard, resolver=no_dns) as p:
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(p, "http://images.example/x.jpg")
        assert info.value.code == 502
        assert p.refused == 0


def test_connect_to_refused_address_is_403(proxy: GuardedProxy) -> None:
    s, head, _ = _raw(proxy.port, b"CONNECT 10.255.255.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    with s:
        assert head.startswith(b"HTTP/1.1 403 ")
        assert b"X-Wit-Blocked: 10.255.255.1" in head
    assert proxy.refusals[0][0] == "10.255.255.1"
    assert proxy.errors == []


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()[1]
    listener.close()
    t.join(5)


def test_connect_tunnels_both_ways(proxy: GuardedProxy, echo_port: int) -> None:
    # "early" follows the CONNECT in the same write: it must not be lost in a read buffer.
    request = f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\nearly".encode()
    s, head, rest = _raw(proxy.port, request)
    with s:
        assert head.startswith(b"HTTP/1.1 200 ")
        got = rest
        while len(got) < len(b"early"):
            got += s.recv(4096)
        assert got == b"early"
        s.sendall(b"ping")
        assert s.recv(4096) == b"ping"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(4096) == b""  # the tunnel closes when a side does
    assert proxy.refused == 0


def test_urllib_takes_the_proxy_from_the_environment(
    web: SynthWeb, proxy: GuardedProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)  # no_proxy would bypass; CGI drops it
    monkeypatch.setenv("http_proxy", proxy.url)
    # urlopen caches its opener (and the proxies it read) on first use in a process: start
    # from none so this test sees the environment it set, as a fresh worker would.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(web.url_for(web.site.fault_entry("redirect_private")), timeout=5)
    assert info.value.code == 403
    entry = web.site.by_fault(None)[2]
    with urllib.request.urlopen(web.url_for(entry), timeout=5) as r:
        assert r.read() == web.payload(entry)
    assert proxy.refused == 1
