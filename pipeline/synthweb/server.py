"""Serve a ``Site`` on loopback: one listening socket per host, 127.0.0.1..N, one port.

Why the standard library: ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive, Nagle off and
a deep accept backlog serves a few thousand small requests a second on two cores, which is
what the benchmarks need, and a fault (a stall, a drip, a cut body) is a few lines in a
handler thread. Distinct loopback addresses make distinct hosts for the engine's per-host
limits, robots.txt cache and cross-host redirects, without DNS.

Only loopback addresses are accepted: nothing here may listen on, or connect to, anything
else. ``HTTPServer.server_bind`` is bypassed because it calls ``socket.getfqdn``, a
reverse DNS lookup.
"""

from __future__ import annotations

import errno
import http.server
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from types import TracebackType
from urllib.parse import urlsplit

from pipeline.fetch.connections import OpenConnections
from pipeline.synthweb.site import (
    DRIP_PIECES,
    RETRY_AFTER_SECONDS,
    ROBOTS_TXT,
    SHORT_LENGTH_FRACTION,
    STALL_SENT_FRACTION,
    TRUNCATED_FRACTION,
    ImageEntry,
    Route,
    Site,
    SiteSpec,
    default_addresses,
)

_BIND_ATTEMPTS = 50
_POLL_INTERVAL = 0.05  # how fast serve_forever notices shutdown
_CHUNK = 64 * 1024


class _HostServer(http.server.ThreadingHTTPServer):
    """One host's listening socket; requests are handled by ``_Handler`` threads."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # bursts of connections from many fetch threads

    def __init__(self, address: tuple[str, int], web: SynthWeb, host_index: int) -> None:
        self.web = web
        self.host_index = host_index
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up between requests (a fetcher dropping a connection after a
        # fault) is normal on this web; anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the name (socket.getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Dispatch one request to the route's behaviour, counting it for the tests."""

    protocol_version = "HTTP/1.1"
    server_version = "synthweb/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is dropped after this
    server: _HostServer

    def setup(self) -> None:
        super().setup()
        self.server.web.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.web.connections.discard(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Silence: a benchmark makes millions of requests; the request log is in memory."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- dispatch -----------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        web = self.server.web
        host = self.server.host_index
        path = urlsplit(self.path).path or "/"
        web._begin(host, path, self.headers.get("User-Agent"))
        try:
            route = web.site.route(host, path)
            if route is None:
                self._simple(404, b"not found\n", "text/plain", head)
            elif route.kind == "entry":
                self._entry(route, head)
            elif route.kind == "final":
                assert route.entry is not None
                self._full(route.entry, head)
            elif route.kind == "redirect":
                self._redirect(route, head)
            elif route.kind == "robots":
                self._simple(200, ROBOTS_TXT.encode(), "text/plain; charset=utf-8", head)
            elif route.kind == "index":
                self._simple(200, web._page(host, -1), "text/html; charset=utf-8", head)
            else:
                self._simple(200, web._page(host, route.page), "text/html; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left; nothing to report
        finally:
            web._end(host)

    def _entry(self, route: Route, head: bool) -> None:
        web = self.server.web
        e = route.entry
        assert e is not None
        kind = e.fault
        host = self.server.host_index
        if kind == "not_found":
            self._simple(404, b"not found\n", "text/plain", head)
        elif kind == "always_503":
            self._simple(503, b"service unavailable\n", "text/plain", head)
        elif kind == "server_error_then_ok" and web._first(host, e.path):
            self._simple(500, b"internal server error\n", "text/plain", head)
        elif kind == "rate_limited" and web._first(host, e.path):
            self._simple(
                429, b"slow down\n", "text/plain", head, {"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        elif kind == "oversized_chunked":
            self._chunked(e, head)
        elif head:
            self._full(e, head)
        elif kind == "slow_drip":
            self._drip(e)
        elif kind == "stall":
            self._partial(e, STALL_SENT_FRACTION, stall=True)
        elif kind == "truncated":
            self._partial(e, TRUNCATED_FRACTION, stall=False)
        elif kind == "content_length_short":
            body = web.payload(e)
            short = body[: int(len(body) * SHORT_LENGTH_FRACTION)]
            self._simple(200, short, web.site.content_type(e), head, {"Connection": "close"})
        else:
            extra = {"X-Robots-Tag": "noai"} if kind == "noai" else None
            self._full(e, head, extra)

    # -- responses ----------------------------------------------------------------------

    def _simple(
        self,
        status: int,
        body: bytes,
        content_type: str,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _full(self, e: ImageEntry, head: bool, extra: dict[str, str] | None = None) -> None:
        web = self.server.web
        self._simple(200, web.payload(e), web.site.content_type(e), head, extra)

    def _redirect(self, route: Route, head: bool) -> None:
        web = self.server.web
        if route.external is not None:
            location = route.external.format(port=web.port)
        else:
            assert route.location is not None
            host, path = route.location
            location = path if route.relative else web.site.origin(host, web.port) + path
        self._simple(route.status, b"", "text/plain", head, {"Location": location})

    def _drip(self, e: ImageEntry) -> None:
        web = self.server.web
        body = web.payload(e)
        self.send_response(200)
        self.send_header("Content-Type", web.site.content_type(e))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        piece = -(-len(body) // DRIP_PIECES)
        pause = web.site.spec.drip_seconds / DRIP_PIECES
        for i in range(0, len(body), piece):
            if i and web._stopping.wait(pause):
                self.close_connection = True
                return
            self.wfile.write(body[i : i + piece])

    def _partial(self, e: ImageEntry, fraction: float, stall: bool) -> None:
        """Promise the whole body, send a fraction, then (maybe) go silent, then hang up."""
        web = self.server.web
        body = web.payload(e)
        self.send_response(200)
        self.send_header("Content-Type", web.site.content_type(e))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: int(len(body) * fraction)])
        self.close_connection = True
        if stall:
            web._stopping.wait(web.site.spec.stall_seconds)

    def _chunked(self, e: ImageEntry, head: bool) -> None:
        """No Content-Length: the size is only known by counting, as with a live stream."""
        web = self.server.web
        body = web.payload(e)
        self.send_response(200)
        self.send_header("Content-Type", web.site.content_type(e))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if head:
            return
        for i in range(0, len(body), _CHUNK):
            piece = body[i : i + _CHUNK]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class SynthWeb:
    """The site served on loopback hosts; a context manager that starts on construction.

    ``SynthWeb(spec, port=0)`` binds 127.0.0.1..127.0.0.{n_hosts} on one port (port 0
    picks a free one, the same on every host) and serves from daemon threads until
    ``stop()``. A port that is taken on some host raises, unless ``fallback_port``: then
    a free one is picked as for port 0 (``port`` tells which). Bodies are generated on
    first request and cached; ``warm()`` makes them all up front so a benchmark measures
    the engine, not the generator.
    """

    def __init__(
        self,
        spec: SiteSpec | None = None,
        port: int = 0,
        host_addresses: Sequence[str] | None = None,
        *,
        fallback_port: bool = False,
    ) -> None:
        spec = spec if spec is not None else SiteSpec()
        addresses = (
            tuple(host_addresses) if host_addresses is not None else default_addresses(spec.n_hosts)
        )
        for a in addresses:
            if not ip_address(a).is_loopback:
                raise ValueError(f"synthweb only listens on loopback addresses, got {a!r}")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"host addresses must be distinct, got {addresses}")
        self.site = Site(spec, addresses)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._cache: dict[object, bytes] = {}
        self._cache_locks: dict[object, threading.Lock] = {}
        self._seen: set[tuple[int, str]] = set()
        self._hits: Counter[tuple[int, str]] = Counter()
        self._in_flight = [0] * spec.n_hosts
        self._max_in_flight = [0] * spec.n_hosts
        self.connections = OpenConnections()
        # (time.monotonic(), host_index, path without query, User-Agent or None)
        self.request_log: list[tuple[float, int, str, str | None]] = []
        self._servers = self._bind(addresses, port, fallback_port)
        self.port: int = self._servers[0].server_port
        self._threads = [
            threading.Thread(
                target=s.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"synthweb-{a}",
                daemon=True,
            )
            for s, a in zip(self._servers, addresses, strict=True)
        ]
        for t in self._threads:
            t.start()

    def _bind(self, addresses: Sequence[str], port: int, fallback: bool) -> list[_HostServer]:
        """Bind every host on one port; with port 0 (or the asked port taken and
        ``fallback``), retry until a free number fits all."""
        for _ in range(_BIND_ATTEMPTS):
            servers: list[_HostServer] = []
            try:
                for k, a in enumerate(addresses):
                    # Host 0 takes the asked port (0: any); the others must match it.
                    want = servers[0].server_port if servers else port
                    servers.append(_HostServer((a, want), self, k))
                return servers
            except OSError as e:
                for s in servers:
                    s.server_close()
                if e.errno != errno.EADDRINUSE or (port and not fallback):
                    raise
                port = 0
        raise OSError(errno.EADDRINUSE, f"no port free on all of {', '.join(addresses)}")

    # -- public -------------------------------------------------------------------------

    def base_url(self, host_index: int = 0) -> str:
        """``http://127.0.0.(k+1):PORT`` for host k."""
        return self.site.origin(host_index, self.port)

    def url_for(self, entry: ImageEntry) -> str:
        return self.site.url_for(entry, self.port)

    def pair_rows(self) -> list[dict[str, object]]:
        """``Site.pair_rows`` at this server's port."""
        return self.site.pair_rows(self.port)

    def payload(self, entry: ImageEntry) -> bytes:
        """The entry's full body, generated once (thread-safe) and cached."""
        return self._cached(("entry", entry.id), lambda: self.site.payload(entry))

    def warm(self, entries: Iterable[ImageEntry] | None = None, workers: int = 4) -> None:
        """Generate bodies ahead of requests (Pillow releases the GIL, so threads help)."""
        todo = list(self.site.entries if entries is None else entries)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(self.payload, todo))

    def hits(self, path: str, host_index: int | None = None) -> int:
        """Requests seen for ``path`` (no query string) on one host, or on all hosts."""
        with self._lock:
            if host_index is not None:
                return self._hits[(host_index, path)]
            return sum(n for (_, p), n in self._hits.items() if p == path)

    def max_concurrent(self, host_index: int) -> int:
        """Most requests in flight at once on a host since start (or ``clear_log``)."""
        with self._lock:
            return self._max_in_flight[host_index]

    def reset_state(self) -> None:
        """Forget which paths were requested, so 'first request' faults fire again."""
        with self._lock:
            self._seen.clear()

    def clear_log(self) -> None:
        """Empty the request log, hit counts and concurrency maxima."""
        with self._lock:
            self.request_log.clear()
            self._hits.clear()
            self._max_in_flight = list(self._in_flight)

    def stop(self) -> None:
        """Stop serving, wake stalled and dripping handlers, and drop open connections."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        stoppers = [threading.Thread(target=s.shutdown, daemon=True) for s in self._servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for s in self._servers:
            s.server_close()
        self.connections.shutdown_all()

    def __enter__(self) -> SynthWeb:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- used by the handler ------------------------------------------------------------

    def _cached(self, key: object, make: Callable[[], bytes]) -> bytes:
        data = self._cache.get(key)
        if data is not None:
            return data
        with self._lock:
            lock = self._cache_locks.setdefault(key, threading.Lock())
        with lock:  # one generator per key; others wait for its result
            data = self._cache.get(key)
            if data is None:
                data = make()
                self._cache[key] = data
        return data

    def _page(self, host_index: int, page: int) -> bytes:
        if page < 0:
            return self._cached(
                ("index", host_index), lambda: self.site.render_index(host_index).encode()
            )
        return self._cached(
            ("page", host_index, page),
            lambda: self.site.render_page(host_index, page, self.port).encode(),
        )

    def _first(self, host_index: int, path: str) -> bool:
        """True exactly once per (host, path) until ``reset_state``."""
        with self._lock:
            if (host_index, path) in self._seen:
                return False
            self._seen.add((host_index, path))
            return True

    def _begin(self, host_index: int, path: str, user_agent: str | None) -> None:
        with self._lock:
            self.request_log.append((time.monotonic(), host_index, path, user_agent))
            self._hits[(host_index, path)] += 1
            n = self._in_flight[host_index] + 1
            self._in_flight[host_index] = n
            if n > self._max_in_flight[host_index]:
                self._max_in_flight[host_index] = n

    def _end(self, host_index: int) -> None:
        with self._lock:
            self._in_flight[host_index] -= 1
