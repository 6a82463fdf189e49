"""A loopback HTTP forward proxy that puts the address guard in front of every request.

Why: img2dataset (``--engine img2dataset``) fetches with urllib, which has no address guard
and follows redirects itself. urllib honours ``http_proxy``/``https_proxy`` and sends every
redirect hop as a new request through the proxy, so this proxy sees each hop: it resolves
the host once, checks every address with the guard, connects to the checked address (no
second lookup to rebind) and never follows a redirect itself. A refusal is a ``403`` with
``X-Wit-Blocked`` and the reason in the status line too, because img2dataset records only
``str(HTTPError)`` ("HTTP Error 403: <reason phrase>") and the ledger classifies from that.
"""

from __future__ import annotations

import http.client
import http.server
import ipaddress
import logging
import selectors
import socket
import socketserver
import sys
import threading
import urllib.parse
from email.message import Message
from types import TracebackType

from pipeline.fetch.connections import OpenConnections
from pipeline.fetch.guard import AddressGuard, Resolver, system_resolver

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message; the body
# framing is redone here, so Transfer-Encoding and Content-Length are set by the relay.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)


def _end_to_end(headers: Message) -> list[tuple[str, str]]:
    """The headers worth forwarding: no hop-by-hop, none named by Connection, no Proxy-*."""
    named = {t.strip().lower() for v in headers.get_all("Connection", []) for t in v.split(",")}
    return [
        (k, v)
        for k, v in headers.items()
        if (low := k.lower()) not in _HOP_BY_HOP
        and low not in named
        and not low.startswith("proxy-")
    ]


def _printable(text: str) -> str:
    """Safe in a header value or status line: printable ASCII only, no CR/LF smuggling."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:500]


def _same_ip(a: str, b: str) -> bool:
    try:
        x, y = ipaddress.ip_address(a.split("%", 1)[0]), ipaddress.ip_address(b)
    except ValueError:
        return False
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    return x == y


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True  # a stuck upstream must not keep the job's process alive
    block_on_close = False
    request_queue_size = 256  # img2dataset opens many connections at once

    def __init__(self, proxy: GuardedProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)  # loopback only, never 0.0.0.0

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # a client or upstream hanging up is normal traffic
        self.proxy._note_error(exc)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive to the client when the framing allows it
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.proxy.timeout  # bounds every read and write on the client
        super().setup()
        self.server.proxy.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy.connections.discard(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- replies ------------------------------------------------------------------------

    def _error(self, code: int, message: str, blocked: str | None = None) -> None:
        """A short plain-text answer; the connection closes (an unread body may follow)."""
        body = f"{_printable(message)}\n".encode()
        reason = self.responses.get(code, ("",))[0]
        if blocked is not None:
            reason = f"{reason} (X-Wit-Blocked: {_printable(blocked)})"
        self.send_response_only(code, reason)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if blocked is not None:
            self.send_header("X-Wit-Blocked", _printable(blocked))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _checked_address(self, host: str, port: int) -> str | None:
        """The first address of ``host`` the guard allows, or None after answering why not."""
        proxy = self.server.proxy
        try:
            addresses = proxy.resolver(host, port)
        except (OSError, UnicodeError) as e:
            self._error(502, f"cannot resolve {host}: {e}")
            return None
        if not addresses:
            self._error(502, f"cannot resolve {host}: no address")
            return None
        refusals = []
        for address in addresses:
            refusal = proxy.guard.refusal(address)
            if refusal is None and port == proxy.port and _same_ip(address, "127.0.0.1"):
                refusal = f"{address}:{port} is this proxy (a request loop)"
            if refusal is None:
                return address
            refusals.append(refusal)
        reason = "; ".join(refusals)
        proxy._note_refusal(host, reason)
        self._error(403, f"blocked by the address guard: {reason}", blocked=reason)
        return None

    # -- http: absolute-form requests -----------------------------------------------------

    def _forward(self) -> None:
        proxy = self.server.proxy
        try:
            parts = urllib.parse.urlsplit(self.path)
            host, port = parts.hostname, parts.port or 80
        except ValueError as e:
            return self._error(400, f"malformed request target: {e}")
        if parts.scheme.lower() != "http" or not host:
            return self._error(400, "only absolute http:// targets here; https goes by CONNECT")
        if "Transfer-Encoding" in self.headers:
            return self._error(411, "chunked request bodies are not relayed")
        length = (self.headers.get("Content-Length") or "0").strip()
        if not length.isdigit():
            return self._error(400, "bad Content-Length")
        address = self._checked_address(host, port)
        if address is None:
            return None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = f"[{host}]" if ":" in host else host
        headers = [(k, v) for k, v in _end_to_end(self.headers) if k.lower() != "host"]
        # RFC 9112 3.2.2: a proxy takes Host from the absolute target, not the client header.
        headers.insert(0, ("Host", authority if port == 80 else f"{authority}:{port}"))
        if proxy.user_agent is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "user-agent"]
            headers.append(("User-Agent", proxy.user_agent))
        # The literal checked address: http.client's connect does no name lookup for it.
        upstream = http.client.HTTPConnection(address, port, timeout=proxy.timeout)
        try:
            try:
                upstream.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    upstream.putheader(k, v)
                upstream.endheaders()
                left = int(length)
                while left > 0:  # the request body, a chunk at a time
                    piece = self.rfile.read(min(left, _CHUNK))
                    if not piece:
                        raise ConnectionError("client body ended early")
                    upstream.send(piece)
                    left -= len(piece)
                resp = upstream.getresponse()
            except TimeoutError:
                return self._error(504, f"{host}: no answer within {proxy.timeout:g}s")
            except (OSError, ValueError, http.client.HTTPException) as e:
                return self._error(502, f"{host}: {type(e).__name__}: {e}")
            self._relay(resp)
        finally:
            upstream.close()
        return None

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _forward

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Status, headers and body as they come, redirects included (the client follows)."""
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        headers = _end_to_end(resp.msg)
        if no_body:
            mode = "none"  # keep the upstream Content-Length: it describes a GET's body
        else:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if resp.chunked and self.request_version != "HTTP/1.0":
                mode, framing = "chunked", ("Transfer-Encoding", "chunked")
            elif not resp.chunked and resp.length is not None:
                mode, framing = "length", ("Content-Length", str(resp.length))
            else:
                mode, framing = "close", ("Connection", "close")  # the end is the hang-up
            headers.append(framing)
        self.send_response_only(resp.status, resp.reason)
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection and mode != "close":
            self.send_header("Connection", "close")
        self.end_headers()
        if mode == "none":
            return
        try:
            while piece := resp.read1(_CHUNK):  # what has arrived, never the whole body
                self.wfile.write(
                    b"%x\r\n%s\r\n" % (len(piece), piece) if mode == "chunked" else piece
                )
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # cut the client off too: it sees a short body
            return
        if mode == "length" and resp.length:
            self.close_connection = True  # upstream sent less than it promised
        elif mode == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    # -- https: CONNECT tunnels -----------------------------------------------------------

    def do_CONNECT(self) -> None:
        proxy = self.server.proxy
        try:
            parts = urllib.parse.urlsplit(f"//{self.path}")
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or port is None:
            return self._error(400, "CONNECT needs host:port")
        address = self._checked_address(host, port)
        if address is None:
            return None
        try:
            upstream = socket.create_connection((address, port), timeout=proxy.timeout)
        except TimeoutError:
            return self._error(504, f"{host}: no connection within {proxy.timeout:g}s")
        except OSError as e:
            return self._error(502, f"{host}: {type(e).__name__}: {e}")
        with upstream:
            self.send_response_only(200, "Connection Established")
            self.end_headers()
            self.close_connection = True
            # Bytes the client sent right after its CONNECT may sit in rfile's buffer, where
            # the selector cannot see them: take them without blocking, send them on first.
            self.connection.setblocking(False)
            early = self.rfile.read(len(self.rfile.peek(_CHUNK)))
            self.connection.settimeout(proxy.timeout)
            if early:
                upstream.sendall(early)
            _tunnel(self.connection, upstream, proxy.timeout)
        return None


def _tunnel(a: socket.socket, b: socket.socket, idle: float) -> None:
    """Copy bytes both ways, a chunk at a time, until a side closes or both idle too long."""
    with selectors.DefaultSelector() as sel:  # epoll: no FD_SETSIZE limit as with select
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while events := sel.select(idle):
                for key, _ in events:
                    data = key.fileobj.recv(_CHUNK)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return


class GuardedProxy:
    """A guarded forward proxy on 127.0.0.1 (a free port), serving from daemon threads.

    Starts on construction; ``stop()`` (or leaving the ``with`` block) stops it and drops
    open connections. ``refused`` counts refusals, ``refusals`` lists (host, reason) and
    ``errors`` lists unexpected handler exceptions, for tests and the job's log.
    """

    def __init__(
        self,
        guard: AddressGuard,
        resolver: Resolver = system_resolver,
        timeout: float = 10.0,
        user_agent: str | None = None,
    ) -> None:
        self.guard = guard
        self.resolver = resolver
        self.timeout = timeout
        self.user_agent = user_agent
        self.refused = 0
        self.refusals: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.connections = OpenConnections()
        self._server = _Server(self)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"guarded-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self.connections.shutdown_all()  # wake handlers blocked on a client read or in a tunnel
        self._thread.join()

    def __enter__(self) -> GuardedProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _note_refusal(self, host: str, reason: str) -> None:
        log.info("proxy refused %s: %s", host, reason)
        with self._lock:
            self.refused += 1
            self.refusals.append((host, reason))

    def _note_error(self, exc: BaseException | None) -> None:
        log.error("proxy handler failed", exc_info=exc)
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")
