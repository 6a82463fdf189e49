"""The fetcher: one guarded, polite, retrying HTTP GET per URL, as a FetchResult value.

Failures are values (a status and a message), never exceptions: the caller writes them
to the ledger. Only http and https are fetched; every hop of a redirect chain is
validated, resolved, checked by the address guard, checked against robots.txt when asked,
and connected to by the checked address.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import ipaddress
import random
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import FetchConfig
from pipeline.fetch.guard import AddressGuard, Resolver, system_resolver
from pipeline.fetch.hosts import HostLimiter
from pipeline.fetch.robots import RobotsCache, RobotsRules, rules_from_answer
from pipeline.schema import Status

_CHUNK = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_HTTP = frozenset({429, 500, 502, 503, 504})
_RETRYABLE = frozenset({Status.CONNECTION_ERROR})
_KEEP_PER_THREAD = 8  # idle keep-alive connections a fetch thread holds
DNS_CACHE_SECONDS = 120.0
_ROBOTS_REDIRECTS = 5  # RFC 9309 2.3.1.2: follow at least five
_OVERLOADED = frozenset({429, 503})  # answers that make every request to the host back off
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
# Content codings we undo (asked for identity, some servers compress anyway): zlib's
# wbits 32 + 15 reads a gzip or a zlib stream; raw deflate is tried for "deflate" too.
_DECODED_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: Status
    error_message: str | None = None
    data: bytes | None = None
    http_status: int | None = None
    attempts: int = 0
    final_url: str | None = None
    content_type: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, what goes on the request line

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str) -> _Target | str:
    """Split a URL into what a request needs, or say why it is not fetchable.

    A space or a non-ASCII character in the path or query is percent-encoded, as browsers
    and img2dataset do (pair lists hold many such URLs); one in the host is refused.
    """
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    url = url.strip()
    if any(c < " " or c == "\x7f" for c in url):
        return "URL contains control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"malformed URL: {e}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"scheme {scheme or '(none)'!r} is not fetched (only http and https)"
    if " " in parts.netloc:
        return "URL host contains whitespace"
    host = parts.hostname
    if not host:
        return "URL has no host"
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return f"host {host!r} is not a valid international domain name"
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _redirect_url(base: str, location: str) -> str:
    """The absolute URL a Location header points to (ValueError when it cannot be joined).

    http.client decodes header bytes as latin-1; a Location sent as raw UTF-8 (common) is
    decoded again as UTF-8, as requests does, and other raw bytes are percent-encoded as
    they came. parse_target then percent-encodes spaces and non-ASCII characters.
    """
    location = location.strip()
    try:
        raw = location.encode("latin-1")
    except UnicodeEncodeError:
        raw = None  # not from the wire as latin-1: already text
    if raw is not None and not raw.isascii():
        try:
            location = raw.decode("utf-8")
        except UnicodeDecodeError:
            location = urllib.parse.quote(raw, safe=_PRINTABLE_ASCII)
    return urllib.parse.urljoin(base, location)


def _content_length(value: str | None) -> int | str | None:
    """A Content-Length header as an int, None when absent, or the value itself when it is
    not a plain decimal number (str.isdigit() accepts "²", which int() refuses)."""
    if value is None:
        return None
    digits = value.strip()
    if digits.isascii() and digits.isdigit():
        return int(digits)
    return value


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Deadline:
    __slots__ = ("end",)

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def extend(self, seconds: float) -> None:
        """Give back time the attempt spent waiting on us, not on the server: a politeness
        slot, a robots.txt check."""
        self.end += seconds


class _TotalTimeout(Exception):
    pass


class _DeadlineReader(io.RawIOBase):
    """A socket's reads for http.client, each waiting at most what the connection allows
    (its idle timeout, or less when the attempt's deadline is nearer). http.client reads
    headers and body through one buffered file; bounding every recv this way bounds a
    server that drips either one byte at a time, which a per-recv timeout alone does not."""

    def __init__(self, sock: socket.socket, conn: _Bounded) -> None:
        super().__init__()
        self._sock = sock
        # The socket's own unbuffered file: it holds the socket open while the response
        # reads, as http.client expects when it closes a will-close connection early.
        self._file = sock.makefile("rb", buffering=0)
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._conn.budget())
        try:
            return self._file.readinto(buffer)
        except TimeoutError:
            if self._conn.deadline.remaining() <= 0:
                raise _TotalTimeout from None
            raise

    def close(self) -> None:
        self._file.close()
        super().close()


class _SocketForResponse:
    """What http.client.HTTPResponse needs of a socket: makefile, here a bounded reader."""

    def __init__(self, sock: socket.socket, conn: _Bounded) -> None:
        self._sock = sock
        self._conn = conn

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._conn))


class _Bounded:
    """A connection to the address the guard approved, never to a second lookup's answer,
    that waits at most ``budget()`` in any one step: connect, TLS handshake, send, each
    read. Mixed into http.client's connection classes."""

    address: str
    idle_timeout: float
    deadline: _Deadline

    def _setup(self, address: str, idle_timeout: float) -> None:
        self.address = address
        self.idle_timeout = idle_timeout
        self.deadline = _Deadline(idle_timeout)  # each request sets its attempt's own
        # http.client connects through this instance attribute (set in its __init__).
        self._create_connection = self._connect_checked

    def budget(self) -> float:
        """How long the next blocking step may wait; _TotalTimeout once the attempt's
        deadline has passed."""
        left = self.deadline.remaining()
        if left <= 0:
            raise _TotalTimeout
        return min(self.idle_timeout, left)

    def _connect_checked(
        self, addr: tuple[str, int], timeout: float, source: Any = None
    ) -> socket.socket:
        sock = socket.create_connection((self.address, addr[1]), self.budget(), source)
        try:
            # Python's TLS handshake takes the socket timeout as its whole duration: give
            # it what is left of the attempt after connecting.
            sock.settimeout(self.budget())
        except _TotalTimeout:
            sock.close()
            raise
        return sock

    def response_class(self, sock: socket.socket, **kwargs: Any) -> http.client.HTTPResponse:
        # http.client calls self.response_class(sock, method=...): a method works as well
        # as a class, and hands the response a socket whose reads are bounded.
        return http.client.HTTPResponse(_SocketForResponse(sock, self), **kwargs)  # type: ignore[arg-type]


class _BoundedConnection(_Bounded, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, idle_timeout: float) -> None:
        super().__init__(host, port, timeout=idle_timeout)
        self._setup(address, idle_timeout)


class _BoundedTLSConnection(_Bounded, http.client.HTTPSConnection):
    """The certificate is verified against the host name (SNI uses ``host``), whatever
    address was connected to."""

    def __init__(
        self, host: str, port: int, address: str, idle_timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=idle_timeout, context=context)
        self._setup(address, idle_timeout)


class Fetcher:
    """Fetches URLs from many threads; holds the config and per-process shared state."""

    def __init__(
        self,
        config: FetchConfig,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
        robots: RobotsCache | None = None,
    ) -> None:
        self.config = config
        self.guard = AddressGuard.from_cidrs(config.allow_networks)
        self.resolver = resolver or system_resolver
        self.hosts = HostLimiter(config.per_host_connections, config.host_delay)
        self._rng = rng or random.Random()
        self.sleep = time.sleep  # backoff waits go through here (tests record them)
        self._local = threading.local()
        self._ssl = ssl.create_default_context()
        self.robots = robots if robots is not None else RobotsCache()
        self._pools_lock = threading.Lock()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._dns_lock = threading.Lock()
        self._pools: list[OrderedDict] = []  # each thread's keep-alive connections
        self._ua_token = config.user_agent.split("/", 1)[0].strip() or "*"

    # ---- public -----------------------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        """GET one URL with retries; never raises for network or content problems."""
        target = parse_target(url)
        if isinstance(target, str):
            return FetchResult(Status.INVALID_URL, target, final_url=url)
        return self._retrying(lambda backoff: self._follow(url, target, backoff))

    def close(self) -> None:
        """Close the idle connections of every thread that used this fetcher."""
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for conns in pools:
            for conn in list(conns.values()):
                conn.close()
            conns.clear()

    # ---- retries --------------------------------------------------------------------------

    def _retrying(self, attempt_once: Callable[[float], FetchResult]) -> FetchResult:
        """Run attempts until one is final. Each is given the backoff it would be followed
        by, so that a 429/503 answer can hold back its whole host for as long."""
        cfg = self.config
        attempt = 0
        while True:
            attempt += 1
            # Exponential backoff with full jitter (AWS architecture blog's recommendation).
            backoff = self._rng.uniform(
                0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
            )
            result = attempt_once(backoff)
            retryable = result.status in _RETRYABLE or (
                result.status is Status.HTTP_ERROR and result.http_status in _RETRY_HTTP
            )
            if not retryable or attempt > cfg.retries:
                return _with_attempts(result, attempt)
            delay = result.retry_after
            if delay is not None and delay > cfg.max_retry_after:
                msg = f"{result.error_message}; Retry-After {delay:.0f}s exceeds max_retry_after {cfg.max_retry_after:.0f}s"
                return _with_attempts(
                    FetchResult(
                        Status.HTTP_ERROR,
                        msg,
                        http_status=result.http_status,
                        final_url=result.final_url,
                    ),
                    attempt,
                )
            self.sleep(backoff if delay is None else delay)

    # ---- one attempt: the redirect chain ------------------------------------------------

    def _follow(
        self, url: str, target: _Target, backoff: float, *, robots_txt: bool = False
    ) -> FetchResult:
        """One attempt at ``url``: its redirect chain under one deadline. ``robots_txt``:
        the chain of a robots.txt, which is not itself checked against robots.txt or
        X-Robots-Tag and follows RFC 9309's five redirects."""
        cfg = self.config
        total = cfg.total_timeout or 3 * cfg.timeout
        deadline = _Deadline(total)
        max_redirects = _ROBOTS_REDIRECTS if robots_txt else cfg.max_redirects
        for _hop in range(max_redirects + 1):
            # The guard first, on every hop: not even robots.txt is fetched from a refused
            # address, and the request goes to the address that was checked.
            address = self._resolve_checked(target)
            if isinstance(address, FetchResult):
                return _with_url(address, url)
            if cfg.respect_robots and not robots_txt:
                checking = time.monotonic()
                refusal = self._robots_refusal(target)
                deadline.extend(time.monotonic() - checking)
                if refusal is not None:
                    return _with_url(refusal, url)
            try:
                result, location = self._request(
                    target, address, deadline, backoff, check_opt_out=not robots_txt
                )
            except _TotalTimeout:
                return FetchResult(
                    Status.TIMEOUT, f"transfer exceeded total timeout {total:g}s", final_url=url
                )
            if location is None:
                return _with_url(result, url)
            try:
                url = _redirect_url(url, location)
            except ValueError as e:
                return FetchResult(
                    Status.INVALID_URL,
                    f"redirect to unfetchable URL: malformed URL: {e}",
                    http_status=result.http_status,
                    final_url=location,
                )
            nxt = parse_target(url)
            if isinstance(nxt, str):
                return FetchResult(
                    Status.INVALID_URL,
                    f"redirect to unfetchable URL: {nxt}",
                    http_status=result.http_status,
                    final_url=url,
                )
            target = nxt
        return FetchResult(
            Status.TOO_MANY_REDIRECTS, f"more than {max_redirects} redirects", final_url=url
        )

    # ---- one request --------------------------------------------------------------------

    def _resolve(self, host: str, port: int) -> list[str]:
        """Resolve, with a short in-process cache: a shard asks for the same hosts again and
        again, and DNS failures are the most common download error at scale."""
        try:
            ipaddress.ip_address(host)
            return [host]  # a literal needs no lookup
        except ValueError:
            pass
        now = time.monotonic()
        with self._dns_lock:
            hit = self._dns.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        addresses = self.resolver(host, port)
        with self._dns_lock:
            if len(self._dns) > 100_000:
                self._dns.clear()
            self._dns[(host, port)] = (now + DNS_CACHE_SECONDS, addresses)
        return addresses

    def _resolve_checked(self, target: _Target) -> str | FetchResult:
        try:
            addresses = self._resolve(target.host, target.port)
        except (OSError, UnicodeError) as e:
            return FetchResult(Status.CONNECTION_ERROR, f"cannot resolve {target.host}: {e}")
        if not addresses:
            return FetchResult(Status.CONNECTION_ERROR, f"cannot resolve {target.host}: no address")
        refusals = []
        for address in addresses:
            refusal = self.guard.refusal(address)
            if refusal is None:
                return address
            refusals.append(refusal)
        return FetchResult(Status.BLOCKED_ADDRESS, f"{target.host}: " + "; ".join(refusals))

    def _connection(self, target: _Target, address: str) -> tuple[_Bounded, bool]:
        conns: OrderedDict | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = OrderedDict()
            with self._pools_lock:
                self._pools.append(conns)
        key = (target.scheme, target.host, target.port, address)
        conn = conns.pop(key, None)
        if conn is not None and conn.sock is not None:
            conns[key] = conn
            return conn, True
        timeout = self.config.timeout
        if target.scheme == "https":
            conn = _BoundedTLSConnection(target.host, target.port, address, timeout, self._ssl)
        else:
            conn = _BoundedConnection(target.host, target.port, address, timeout)
        conns[key] = conn
        while len(conns) > _KEEP_PER_THREAD:
            _, old = conns.popitem(last=False)
            old.close()
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        conns = getattr(self._local, "conns", None)
        if conns:
            for k, c in list(conns.items()):
                if c is conn:
                    del conns[k]

    def _request(
        self,
        target: _Target,
        checked: str,
        deadline: _Deadline,
        backoff: float,
        *,
        check_opt_out: bool = True,
    ) -> tuple[FetchResult, str | None]:
        """One GET to the guard-checked address. Returns (result, redirect location or None);
        raises _TotalTimeout when the attempt's deadline passes."""
        headers = {
            "Host": target.host_header,
            "User-Agent": self.config.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
            "Accept-Encoding": "identity",
        }
        queued = time.monotonic()
        with self.hosts.slot(target.origin):
            deadline.extend(time.monotonic() - queued)
            for fresh_try in range(2):
                conn, reused = self._connection(target, checked)
                conn.deadline = deadline
                try:
                    try:
                        if conn.sock is not None:
                            conn.sock.settimeout(conn.budget())
                        conn.request("GET", target.path, headers=headers)
                        resp = conn.getresponse()
                    except TimeoutError:
                        if deadline.remaining() <= 0:
                            raise _TotalTimeout from None
                        raise
                except _TotalTimeout:
                    self._drop(conn)
                    raise
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                    self._drop(conn)
                    if reused and fresh_try == 0:
                        continue  # the server closed an idle keep-alive connection: not a failure
                    return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
                except TimeoutError:
                    self._drop(conn)
                    return FetchResult(
                        Status.TIMEOUT, f"no answer within {conn.idle_timeout:g}s"
                    ), None
                except (OSError, http.client.HTTPException) as e:
                    self._drop(conn)
                    return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
                if resp.status in _OVERLOADED:
                    # Back off the whole host, not only this URL, and before the slot is
                    # released: no request to it may start inside the window.
                    wait = _retry_after_seconds(resp.getheader("Retry-After"))
                    wait = backoff if wait is None else wait
                    self.hosts.defer(target.origin, min(wait, self.config.max_retry_after))
                try:
                    return self._read_response(conn, resp, check_opt_out)
                except _TotalTimeout:
                    self._drop(conn)
                    raise
            raise AssertionError("unreachable")

    def _read_response(
        self, conn: _Bounded, resp: http.client.HTTPResponse, check_opt_out: bool
    ) -> tuple[FetchResult, str | None]:
        cfg = self.config
        code = resp.status
        ctype = resp.getheader("Content-Type")
        # Transfer-Encoding overrides Content-Length (RFC 9112 6.3), as in http.client.
        length = None if resp.chunked else _content_length(resp.getheader("Content-Length"))
        if code in _REDIRECTS:
            location = resp.getheader("Location")
            self._discard(conn, resp, length)
            if not location:
                return FetchResult(
                    Status.HTTP_ERROR, f"HTTP {code} without Location", http_status=code
                ), None
            return FetchResult(Status.SUCCESS, http_status=code), location
        if code != 200:
            retry_after = _retry_after_seconds(resp.getheader("Retry-After"))
            reason = resp.reason or ""
            self._discard(conn, resp, length)
            return (
                FetchResult(
                    Status.HTTP_ERROR,
                    f"HTTP {code} {reason}".strip(),
                    http_status=code,
                    retry_after=retry_after,
                ),
                None,
            )
        opt_out = self._opt_out_directive(resp.getheaders()) if check_opt_out else None
        if opt_out is not None:
            self._drop(conn)
            return FetchResult(
                Status.OPT_OUT, f"X-Robots-Tag: {opt_out}", http_status=code, content_type=ctype
            ), None
        if isinstance(length, str):
            # RFC 9112 6.3: an invalid Content-Length leaves the body's end unknown; a user
            # agent closes the connection and discards the response.
            self._drop(conn)
            return FetchResult(
                Status.CONNECTION_ERROR,
                f"invalid Content-Length {length.strip()!r}: response discarded",
                http_status=code,
                content_type=ctype,
            ), None
        if length is not None and length > cfg.max_bytes:
            self._drop(conn)
            return FetchResult(
                Status.TOO_LARGE,
                f"Content-Length {length} > max_bytes {cfg.max_bytes}",
                http_status=code,
                content_type=ctype,
            ), None
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = resp.read1(_CHUNK)  # one recv, bounded by the deadline
                if not chunk:
                    break
                size += len(chunk)
                if size > cfg.max_bytes:
                    self._drop(conn)
                    return FetchResult(
                        Status.TOO_LARGE,
                        f"body exceeds max_bytes {cfg.max_bytes} (streamed)",
                        http_status=code,
                        content_type=ctype,
                    ), None
                chunks.append(chunk)
        except http.client.IncompleteRead as e:
            self._drop(conn)
            got = size + len(e.partial)
            return FetchResult(
                Status.CONNECTION_ERROR,
                f"truncated body: connection closed after {got} bytes"
                + (f" of {e.expected + got} announced" if e.expected else ""),
                http_status=code,
            ), None
        except TimeoutError:
            self._drop(conn)
            return FetchResult(
                Status.TIMEOUT,
                f"body stalled for {cfg.timeout:g}s after {size} bytes",
                http_status=code,
            ), None
        except (OSError, http.client.HTTPException) as e:
            self._drop(conn)
            return FetchResult(
                Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}", http_status=code
            ), None
        resp.close()  # read1() leaves a complete response open; the connection stays
        if resp.will_close:
            self._drop(conn)
        if length is not None and size < length:
            # http.client's read1() returns empty at EOF instead of raising IncompleteRead.
            self._drop(conn)
            return FetchResult(
                Status.CONNECTION_ERROR,
                f"truncated body: connection closed after {size} of {length} bytes",
                http_status=code,
            ), None
        return self._decoded(
            b"".join(chunks), resp.getheader("Content-Encoding"), code, ctype
        ), None

    def _decoded(
        self, body: bytes, coding: str | None, code: int, ctype: str | None
    ) -> FetchResult:
        """The body without the content coding a server applied although we asked for
        identity: gzip and deflate are undone (capped at max_bytes, so a compression bomb
        is too_large), any other coding is named instead of passing on bytes no one reads."""
        coding = (coding or "").strip().lower()
        if coding in ("", "identity"):
            return FetchResult(Status.SUCCESS, data=body, http_status=code, content_type=ctype)
        limit = self.config.max_bytes
        if coding not in _DECODED_CODINGS:
            return FetchResult(
                Status.NOT_IMAGE,
                f"body sent with Content-Encoding {coding} (identity was asked for), not decoded",
                http_status=code,
                content_type=ctype,
            )
        attempts = (
            (32 + zlib.MAX_WBITS, -zlib.MAX_WBITS)
            if coding == "deflate"
            else (32 + zlib.MAX_WBITS,)
        )
        error = ""
        for wbits in attempts:
            decoder = zlib.decompressobj(wbits)
            try:
                data = decoder.decompress(body, limit + 1)
            except zlib.error as e:
                error = str(e)
                continue
            if len(data) > limit or decoder.unconsumed_tail:
                return FetchResult(
                    Status.TOO_LARGE,
                    f"body exceeds max_bytes {limit} once its Content-Encoding {coding} is undone",
                    http_status=code,
                    content_type=ctype,
                )
            if not decoder.eof:
                error = "the compressed stream is cut short"
                continue
            return FetchResult(Status.SUCCESS, data=data, http_status=code, content_type=ctype)
        return FetchResult(
            Status.NOT_IMAGE,
            f"body sent with Content-Encoding {coding} does not decode ({error})",
            http_status=code,
            content_type=ctype,
        )

    def _discard(
        self, conn: _Bounded, resp: http.client.HTTPResponse, length: int | str | None
    ) -> None:
        """Drain a small error/redirect body to keep the connection, or drop it."""
        if isinstance(length, int) and length <= 65536 and not resp.will_close:
            try:
                resp.read()
                return
            except (OSError, http.client.HTTPException, _TotalTimeout):
                pass
        self._drop(conn)

    def _opt_out_directive(self, headers: list[tuple[str, str]]) -> str | None:
        """The first opt-out directive of X-Robots-Tag that applies to us (or to all bots)."""
        wanted = {d.lower() for d in self.config.opt_out_directives}
        ua = self._ua_token.lower()
        for name, value in headers:
            if name.lower() != "x-robots-tag":
                continue
            agent = None
            rest = value
            head, sep, tail = value.partition(":")
            # "otherbot: noai" applies only to otherbot; a directive list has no agent.
            if sep and "," not in head and head.strip().lower() not in {"unavailable_after"}:
                agent, rest = head.strip().lower(), tail
            if agent is not None and agent not in (ua, "*"):
                continue
            for directive in rest.split(","):
                d = directive.strip().lower()
                # "none" is shorthand for "noindex, nofollow".
                if d in wanted or (d == "none" and "noindex" in wanted):
                    return value.strip()
        return None

    # ---- robots.txt ----------------------------------------------------------------------

    def _robots_refusal(self, target: _Target) -> FetchResult | None:
        rules = self.robots.get(target.origin, lambda: self._fetch_robots(target))
        if rules.allows(self._ua_token, f"{target.origin}{target.path}"):
            return None
        if rules.unreachable is not None:
            why = f"robots.txt of {target.host_header} unreachable ({rules.unreachable}), so nothing is fetched from it"
        else:
            why = f"robots.txt of {target.host_header} disallows {target.path}"
        return FetchResult(Status.OPT_OUT, why)

    def _fetch_robots(self, target: _Target) -> RobotsRules:
        """RFC 9309: redirects followed (five), retried as any fetch; a complete 200 body is
        the rules, a 4xx other than 429 means none, anything else is unreachable."""
        robots = _Target(target.scheme, target.host, target.port, "/robots.txt")
        url = f"{target.scheme}://{target.host_header}/robots.txt"
        result = self._retrying(lambda backoff: self._follow(url, robots, backoff, robots_txt=True))
        if result.ok:
            return rules_from_answer(200, result.data)
        code = result.http_status or 0
        if result.status is Status.HTTP_ERROR and 400 <= code < 500 and code != 429:
            return rules_from_answer(code, None)
        if result.status is Status.TOO_MANY_REDIRECTS:
            return rules_from_answer(404, None)  # RFC 9309 2.3.1.2: may count as unavailable
        why = result.error_message or result.status.value
        if result.status is not Status.HTTP_ERROR:
            why = f"{result.status.value}: {why}"
        return RobotsRules.unreachable_because(why)


def _with_attempts(result: FetchResult, attempts: int) -> FetchResult:
    return dataclasses.replace(result, attempts=attempts)


def _with_url(result: FetchResult, url: str) -> FetchResult:
    return dataclasses.replace(result, final_url=url)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
