"""A loopback server whose routes write raw response bytes: the malformed, slow and
half-honest answers a real web sends, which http.server's helpers refuse to produce."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Route = Callable[["RawHandler"], None]


class RawHandler(http.server.BaseHTTPRequestHandler):
    server: _RawServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.log.append((time.monotonic(), self.path))
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        route = self.server.routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                self.answer(404, [], b"not here")
            else:
                route(self)
        except OSError:
            pass  # the client gave up (a deadline): nothing to do

    def hit_count(self) -> int:
        """How many requests this path had, this one included."""
        with self.server.lock:
            return self.server.hits[self.path]

    def answer(
        self,
        code: int,
        headers: list[tuple[str, str | bytes]],
        body: bytes = b"",
        *,
        length: bool = True,
        keep_alive: bool = False,
        extra: bytes = b"",
    ) -> None:
        """A whole response as raw bytes; a str header value is sent as latin-1.
        ``keep_alive``: the connection stays open for the next request; ``extra``: bytes
        sent after the body, which no request asked for."""
        head = f"HTTP/1.1 {code} X\r\n".encode()
        named = {k.lower() for k, _ in headers}
        if length and "content-length" not in named:
            headers = [*headers, ("Content-Length", str(len(body)))]
        if keep_alive:
            self.close_connection = False
        else:
            headers = [*headers, ("Connection", "close")]
        for name, value in headers:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            head += name.encode() + b": " + raw + b"\r\n"
        self.wfile.write(head + b"\r\n" + body + extra)
        self.wfile.flush()


class _RawServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.connections = 0
        self.scheme = "https" if tls else "http"
        self.log: list[tuple[float, str]] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RawHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that refused our certificate: expected in the TLS tests

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks for the host's FQDN, a reverse DNS lookup.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> Iterator[_RawServer]:
    """Serve ``routes`` (path without query -> writer) on 127.0.0.1; 404 elsewhere.
    ``tls``: a server context, to serve HTTPS."""
    server = _RawServer(routes, tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
