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
import ipaddress
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass

from pipeline.config import FetchConfig
from pipeline.fetch.guard import AddressGuard, Resolver, system_resolver
from pipeline.fetch.hosts import HostLimiter
from pipeline.fetch.robots import RobotsCache
from pipeline.schema import Status

_CHUNK = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_HTTP = frozenset({429, 500, 502, 503, 504})
_RETRYABLE = frozenset({Status.CONNECTION_ERROR})
_KEEP_PER_THREAD = 8
DNS_CACHE_SECONDS = 120.0  # idle keep-alive connections a fetch thread holds


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
    """Split a URL into what a request needs, or say why it is not fetchable."""
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    url = url.strip()
    if any(c in url for c in "\r\n\t\x00 "):
        return "URL contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"malformed URL: {e}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"scheme {scheme or '(none)'!r} is not fetched (only http and https)"
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


class _TotalTimeout(Exception):
    pass


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
        cfg = self.config
        attempt = 0
        while True:
            attempt += 1
            result = self._follow(url, target)
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
            if delay is None:
                # Exponential backoff with full jitter (AWS architecture blog's recommendation).
                delay = self._rng.uniform(
                    0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
                )
            self.sleep(delay)

    def close(self) -> None:
        """Close the idle connections of every thread that used this fetcher."""
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for conns in pools:
            for conn in list(conns.values()):
                conn.close()
            conns.clear()

    # ---- one attempt: the redirect chain ------------------------------------------------

    def _follow(self, url: str, target: _Target) -> FetchResult:
        cfg = self.config
        total = cfg.total_timeout or 3 * cfg.timeout
        deadline = _Deadline(total)
        for _hop in range(cfg.max_redirects + 1):
            # The guard first, on every hop: not even robots.txt is fetched from a refused
            # address, and the request goes to the address that was checked.
            address = self._resolve_checked(target)
            if isinstance(address, FetchResult):
                return _with_url(address, url)
            if cfg.respect_robots:
                refusal = self._robots_refusal(target, address)
                if refusal is not None:
                    return _with_url(refusal, url)
            try:
                result, location = self._request(target, address, deadline)
            except _TotalTimeout:
                return FetchResult(
                    Status.TIMEOUT, f"transfer exceeded total timeout {total:g}s", final_url=url
                )
            if location is None:
                return _with_url(result, url)
            url = urllib.parse.urljoin(url, location)
            nxt = parse_target(url)
            if isinstance(nxt, str):
                return FetchResult(
                    Status.INVALID_URL, f"redirect to unfetchable URL: {nxt}", final_url=url
                )
            target = nxt
        return FetchResult(
            Status.TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects} redirects", final_url=url
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

    def _connection(self, target: _Target, address: str) -> tuple[http.client.HTTPConnection, bool]:
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
            conn = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        # Connect to the address the guard approved, never to a second lookup's answer;
        # TLS still verifies the certificate against the host name (SNI uses conn.host).
        conn._create_connection = lambda addr, t, src=None: socket.create_connection(  # type: ignore[attr-defined]
            (address, addr[1]), t, src
        )
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
        self, target: _Target, checked: str, deadline: _Deadline
    ) -> tuple[FetchResult, str | None]:
        """One GET to the guard-checked address. Returns (result, redirect location or None)."""
        headers = {
            "Host": target.host_header,
            "User-Agent": self.config.user_agent,
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
            "Accept-Encoding": "identity",
        }
        with self.hosts.slot(target.origin):
            for fresh_try in range(2):
                conn, reused = self._connection(target, checked)
                try:
                    if deadline.remaining() <= 0:
                        raise _TotalTimeout
                    conn.timeout = min(self.config.timeout, max(0.05, deadline.remaining()))
                    if conn.sock is not None:
                        conn.sock.settimeout(conn.timeout)
                    conn.request("GET", target.path, headers=headers)
                    resp = conn.getresponse()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                    self._drop(conn)
                    if reused and fresh_try == 0:
                        continue  # the server closed an idle keep-alive connection: not a failure
                    return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
                except TimeoutError:
                    self._drop(conn)
                    return FetchResult(Status.TIMEOUT, f"no answer within {conn.timeout:g}s"), None
                except (OSError, http.client.HTTPException) as e:
                    self._drop(conn)
                    return FetchResult(Status.CONNECTION_ERROR, f"{type(e).__name__}: {e}"), None
                try:
                    return self._read_response(conn, resp, deadline)
                except _TotalTimeout:
                    self._drop(conn)
                    raise
            raise AssertionError("unreachable")

    def _read_response(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: _Deadline
    ) -> tuple[FetchResult, str | None]:
        cfg = self.config
        code = resp.status
        ctype = resp.getheader("Content-Type")
        if code in _REDIRECTS:
            location = resp.getheader("Location")
            self._discard(conn, resp)
            if not location:
                return FetchResult(
                    Status.HTTP_ERROR, f"HTTP {code} without Location", http_status=code
                ), None
            return FetchResult(Status.SUCCESS, http_status=code), location
        if code != 200:
            retry_after = _retry_after_seconds(resp.getheader("Retry-After"))
            reason = resp.reason or ""
            self._discard(conn, resp)
            return (
                FetchResult(
                    Status.HTTP_ERROR,
                    f"HTTP {code} {reason}".strip(),
                    http_status=code,
                    retry_after=retry_after,
                ),
                None,
            )
        opt_out = self._opt_out_directive(resp.getheaders())
        if opt_out is not None:
            self._drop(conn)
            return FetchResult(
                Status.OPT_OUT, f"X-Robots-Tag: {opt_out}", http_status=code, content_type=ctype
            ), None
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cfg.max_bytes:
            self._drop(conn)
            return FetchResult(
                Status.TOO_LARGE,
                f"Content-Length {int(length)} > max_bytes {cfg.max_bytes}",
                http_status=code,
                content_type=ctype,
            ), None
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise _TotalTimeout
                if conn.sock is not None:
                    conn.sock.settimeout(min(cfg.timeout, max(0.05, remaining)))
                chunk = resp.read(_CHUNK)
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
        if resp.will_close:
            self._drop(conn)
        if length is not None and length.strip().isdigit() and size < int(length):
            # http.client's read(n) returns short at EOF instead of raising IncompleteRead.
            self._drop(conn)
            return FetchResult(
                Status.CONNECTION_ERROR,
                f"truncated body: connection closed after {size} of {int(length)} bytes",
                http_status=code,
            ), None
        return FetchResult(
            Status.SUCCESS, data=b"".join(chunks), http_status=code, content_type=ctype
        ), None

    def _discard(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Drain a small error/redirect body to keep the connection, or drop it."""
        length = resp.getheader("Content-Length")
        if (
            length is not None
            and length.strip().isdigit()
            and int(length) <= 65536
            and not resp.will_close
        ):
            try:
                resp.read()
                return
            except (OSError, http.client.HTTPException):
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
                if d in wanted:
                    return value.strip()
        return None

    # ---- robots.txt ----------------------------------------------------------------------

    def _robots_refusal(self, target: _Target, address: str) -> FetchResult | None:
        robots_target = _Target(target.scheme, target.host, target.port, "/robots.txt")

        def fetch_robots() -> tuple[int | None, bytes | None]:
            try:
                result, location = self._request(
                    robots_target, address, _Deadline(self.config.timeout)
                )
            except _TotalTimeout:
                return None, None
            if location is not None:
                return None, None  # a redirected robots.txt is treated as unreachable
            return result.http_status, result.data

        rules = self.robots.get(target.origin, fetch_robots)
        if rules.allows(self._ua_token, f"{target.origin}{target.path}"):
            return None
        return FetchResult(
            Status.OPT_OUT, f"robots.txt of {target.host_header} disallows {target.path}"
        )


def _with_attempts(result: FetchResult, attempts: int) -> FetchResult:
    return dataclasses.replace(result, attempts=attempts)


def _with_url(result: FetchResult, url: str) -> FetchResult:
    return dataclasses.replace(result, final_url=url)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
