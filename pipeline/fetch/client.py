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
import select
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
from pipeline.fetch.hosts import HostBackingOff, HostLimiter
from pipeline.fetch.robots import MAX_ROBOTS_BYTES, RobotsCache, RobotsRules, rules_from_answer
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
    # A failure that cannot go otherwise on another try (a certificate not trusted).
    no_retry: bool = False
    # Set only by fetch(..., patience=): the URL is not done. It is to be fetched again at
    # this time.monotonic() (not before: its host asked us to back off, or its retry is
    # due then), passing this result as ``resume``.
    retry_at: float | None = None
    deferrals: int = 0  # how many times the host's back-off handed the URL back untried

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

    def fetch(
        self, url: str, *, patience: float | None = None, resume: FetchResult | None = None
    ) -> FetchResult:
        """GET one URL with retries; never raises for network or content problems.

        Without ``patience`` the calling thread waits for a host's back-off and for its own
        retries (each wait at most max_retry_after). With it, a wait longer than
        ``patience`` seconds is not waited: the result then has ``retry_at`` set, and the
        caller fetches the URL again at that time with ``resume=`` that result, while its
        thread serves other hosts. Either way a host whose back-off runs past
        max_retry_after fails its URLs at once, untried."""
        target = parse_target(url)
        if isinstance(target, str):
            return FetchResult(Status.INVALID_URL, target, final_url=url)
        return self._retrying(
            lambda backoff: self._follow(url, target, backoff, patience=patience),
            patience=patience,
            resume=resume,
        )

    def close(self) -> None:
        """Close the idle connections of every thread that used this fetcher."""
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for conns in pools:
            for conn in list(conns.values()):
                conn.close()
            conns.clear()

    # ---- retries --------------------------------------------------------------------------

    def _retrying(
        self,
        attempt_once: Callable[[float], FetchResult],
        *,
        patience: float | None = None,
        resume: FetchResult | None = None,
    ) -> FetchResult:
        """Run attempts until one is final. Each is given the backoff it would be followed
        by, so that a 429/503 answer can hold back its whole host for as long. With
        ``patience``, a wait longer than that is handed back to the caller (``retry_at``)."""
        cfg = self.config
        attempt = resume.attempts if resume is not None else 0
        deferrals = resume.deferrals if resume is not None else 0
        while True:
            attempt += 1
            # Exponential backoff with full jitter (AWS architecture blog's recommendation).
            backoff = self._rng.uniform(
                0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
            )
            result = attempt_once(backoff)
            if result.retry_at is not None:
                # Not tried: the host is backing off for longer than we wait. A URL is
                # handed back at most retries + 1 times, so that a host that keeps asking
                # for time cannot hold its shard for long.
                deferrals += 1
                if result.no_retry:  # longer than max_retry_after: given up at once
                    return dataclasses.replace(result, attempts=attempt - 1, retry_at=None)
                if deferrals > cfg.retries + 1:
                    msg = f"{result.error_message}; given up after {deferrals - 1} waits"
                    return dataclasses.replace(
                        result, error_message=msg, attempts=attempt - 1, retry_at=None
                    )
                return dataclasses.replace(result, attempts=attempt - 1, deferrals=deferrals)
            retryable = not result.no_retry and (
                result.status in _RETRYABLE
                or (result.status is Status.HTTP_ERROR and result.http_status in _RETRY_HTTP)
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
            wait = backoff if delay is None else delay
            if patience is not None and wait > patience:
                return dataclasses.replace(
                    _with_attempts(result, attempt),
                    retry_at=time.monotonic() + wait,
                    deferrals=deferrals,
                )
            self.sleep(wait)

    # ---- one attempt: the redirect chain ------------------------------------------------

    def _follow(
        self,
        url: str,
        target: _Target,
        backoff: float,
        *,
        robots_txt: bool = False,
        patience: float | None = None,
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
                refusal = self._robots_refusal(target, patience)
                deadline.extend(time.monotonic() - checking)
                if refusal is not None:
                    return _with_url(refusal, url)
            try:
                result, location = self._request(
                    target, address, deadline, backoff, robots_txt=robots_txt, patience=patience
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
            if not _readable(conn.sock):
                conns[key] = conn
                return conn, True
            conn.close()  # idle, yet readable: closed by the server, or stray bytes on it

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
        robots_txt: bool = False,
        patience: float | None = None,
    ) -> tuple[FetchResult, str | None]:
        """One GET to the guard-checked address. Returns (result, redirect location or None);
        raises _TotalTimeout when the attempt's deadline passes. ``robots_txt``: the answer is
        a robots.txt, not checked for X-Robots-Tag and cut at MAX_ROBOTS_BYTES, not refused
        over max_bytes (RFC 9309 2.5: parse at least the first 500 KiB)."""
        cfg = self.config
        max_wait = cfg.max_retry_after if patience is None else min(patience, cfg.max_retry_after)
        queued = time.monotonic()
        try:
            with self.hosts.slot(target.origin, max_wait):
                deadline.extend(time.monotonic() - queued)
                return self._request_in_slot(target, checked, deadline, backoff, robots_txt)
        except HostBackingOff as off:
            left = off.until - time.monotonic()
            if left > cfg.max_retry_after:
                return FetchResult(
                    Status.HTTP_ERROR,
                    f"not tried: {target.host_header} asked to back off {left:.0f}s more "
                    f"({off.reason}), over max_retry_after {cfg.max_retry_after:g}s",
                    http_status=off.http_status,
                    no_retry=True,
                    retry_at=off.until,
                ), None
            return FetchResult(
                Status.HTTP_ERROR,
                f"{target.host_header} asked to back off ({off.reason})",
                http_status=off.http_status,
                retry_at=off.until,
            ), None

    def _request_in_slot(
        self,
        target: _Target,
        checked: str,
        deadline: _Deadline,
        backoff: float,
        robots_txt: bool,
    ) -> tuple[FetchResult, str | None]:
        headers = {
            "Host": target.host_header,
            "User-Agent": self.config.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
            "Accept-Encoding": "identity",
        }
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
            except (
                http.client.RemoteDisconnected,
                http.client.BadStatusLine,
                BrokenPipeError,
                ConnectionResetError,
            ) as e:
                self._drop(conn)
                if reused and fresh_try == 0:
                    # The server closed an idle keep-alive connection, or left stray bytes
                    # on it after its last answer: not this URL's failure. A GET is
                    # idempotent; ask again once on a fresh connection, as urllib3 does.
                    continue
                return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
            except ssl.SSLCertVerificationError as e:
                self._drop(conn)
                return FetchResult(
                    Status.CONNECTION_ERROR,
                    f"TLS certificate of {target.host} not trusted (not retried): "
                    f"{type(e).__name__}: {e}",
                    no_retry=True,
                ), None
            except TimeoutError:
                self._drop(conn)
                return FetchResult(Status.TIMEOUT, f"no answer within {conn.idle_timeout:g}s"), None
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
            if resp.status in _OVERLOADED:
                # Back off the whole host, not only this URL, and before the slot is
                # released: no request to it may start inside the window. A longer
                # back-off than max_retry_after fails the host's URLs untried meanwhile.
                header = resp.getheader("Retry-After")
                wait = _retry_after_seconds(header)
                why = f"HTTP {resp.status} {resp.reason or ''}".strip()
                if wait is None:
                    wait = backoff
                    why += f", backing off {wait:.1f}s"
                else:
                    why += f", Retry-After {header.strip()}"  # type: ignore[union-attr]
                self.hosts.defer(target.origin, wait, why, resp.status)
            try:
                return self._read_response(conn, resp, robots_txt)
            except _TotalTimeout:
                self._drop(conn)
                raise
        raise AssertionError("unreachable")

    def _read_response(
        self, conn: _Bounded, resp: http.client.HTTPResponse, robots_txt: bool
    ) -> tuple[FetchResult, str | None]:
        check_opt_out = not robots_txt
        limit = MAX_ROBOTS_BYTES if robots_txt else self.config.max_bytes
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
        if length is not None and length > limit and not robots_txt:
            self._drop(conn)
            return FetchResult(
                Status.TOO_LARGE,
                f"Content-Length {length} > max_bytes {limit}",
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
                chunks.append(chunk)
                if size > limit:
                    self._drop(conn)
                    if robots_txt:  # its first MAX_ROBOTS_BYTES are the rules
                        return self._decoded(
                            b"".join(chunks),
                            resp.getheader("Content-Encoding"),
                            code,
                            ctype,
                            limit,
                            cut=True,
                        ), None
                    return FetchResult(
                        Status.TOO_LARGE,
                        f"body exceeds max_bytes {limit} (streamed)",
                        http_status=code,
                        content_type=ctype,
                    ), None
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
                f"body stalled for {self.config.timeout:g}s after {size} bytes",
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
            b"".join(chunks), resp.getheader("Content-Encoding"), code, ctype, limit, robots_txt
        ), None

    def _decoded(
        self,
        body: bytes,
        coding: str | None,
        code: int,
        ctype: str | None,
        limit: int,
        cut: bool = False,
    ) -> FetchResult:
        """The body without the content coding a server applied although we asked for
        identity: gzip and deflate are undone (capped at ``limit``, so a compression bomb
        is too_large), any other coding is named instead of passing on bytes no one reads.
        ``cut``: a body over ``limit`` is cut to it instead (a robots.txt's prefix is its
        rules; ``body`` may then be a prefix too, so a stream cut short is fine)."""
        coding = (coding or "").strip().lower()
        if coding in ("", "identity"):
            return FetchResult(
                Status.SUCCESS, data=body[:limit], http_status=code, content_type=ctype
            )
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
            try:
                data = _inflate(body, wbits, limit, prefix_ok=cut)
            except zlib.error as e:
                error = str(e)
                continue
            if data is None:
                return FetchResult(
                    Status.TOO_LARGE,
                    f"body exceeds max_bytes {limit} once its Content-Encoding {coding} is undone",
                    http_status=code,
                    content_type=ctype,
                )
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

    def _robots_refusal(self, target: _Target, patience: float | None) -> FetchResult | None:
        try:
            rules = self.robots.get(target.origin, lambda: self._fetch_robots(target, patience))
        except _RobotsNotYet as later:
            return later.result  # the URL waits for its host's robots.txt, uncached
        if rules.allows(self._ua_token, f"{target.origin}{target.path}"):
            return None
        if rules.unreachable is not None:
            why = f"robots.txt of {target.host_header} unreachable ({rules.unreachable}), so nothing is fetched from it"
        else:
            why = f"robots.txt of {target.host_header} disallows {target.path}"
        return FetchResult(Status.OPT_OUT, why)

    def _fetch_robots(self, target: _Target, patience: float | None = None) -> RobotsRules:
        """RFC 9309: redirects followed (five), retried as any fetch; a complete 200 body is
        the rules, a 4xx other than 429 means none, anything else is unreachable. A wait
        longer than ``patience`` raises _RobotsNotYet, with no verdict kept."""
        robots = _Target(target.scheme, target.host, target.port, "/robots.txt")
        url = f"{target.scheme}://{target.host_header}/robots.txt"
        result = self._retrying(
            lambda backoff: self._follow(url, robots, backoff, robots_txt=True, patience=patience),
            patience=patience,
        )
        if result.retry_at is not None:
            raise _RobotsNotYet(result)
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


def _inflate(body: bytes, wbits: int, limit: int, *, prefix_ok: bool = False) -> bytes | None:
    """``body`` decompressed, every member of a multi-member gzip stream (RFC 1952 2.2) in
    turn; None past ``limit`` bytes, or its first ``limit`` bytes when ``prefix_ok`` (a cut
    stream is then fine too). Raises zlib.error for a stream that does not decode, is cut
    short, or is followed by anything but another member or padding."""
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        decoder = zlib.decompressobj(wbits)
        data = decoder.decompress(rest, limit + 1 - size)
        out.append(data)
        size += len(data)
        if size > limit or decoder.unconsumed_tail:
            return b"".join(out)[:limit] if prefix_ok else None
        if not decoder.eof:
            if prefix_ok:
                return b"".join(out)
            raise zlib.error("the compressed stream is cut short")
        rest = decoder.unused_data
        if not rest.strip(b"\0\t\n\r "):
            return b"".join(out)
        if not rest.startswith(b"\x1f\x8b") or wbits < 0:
            raise zlib.error(f"{len(rest)} bytes of other data after the compressed stream")


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: an EOF or bytes no request asked
    for (urllib3's is_connection_dropped). Either way it cannot carry the next request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


class _RobotsNotYet(Exception):
    def __init__(self, result: FetchResult) -> None:
        super().__init__(result.error_message)
        self.result = dataclasses.replace(
            result,
            error_message=f"robots.txt not read yet: {result.error_message}",
            attempts=0,
            deferrals=0,
        )


def _with_attempts(result: FetchResult, attempts: int) -> FetchResult:
    return dataclasses.replace(result, attempts=attempts)


def _with_url(result: FetchResult, url: str) -> FetchResult:
    return dataclasses.replace(result, final_url=url)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
