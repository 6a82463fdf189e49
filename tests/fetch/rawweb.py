"""A loopback server whose routes write raw response bytes: the malformed, slow and
half-honest answers a real web sends, which http.server's helpers refuse to produce."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Route = Callable[["RawHandler"], None]


class RawHandler(http.server.BaseHTTPRequestHandler):
    server: _RawServer

    def log_message(self, format: str, *args: object) -> None:
        pass

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
    ) -> None:
        """A whole response as raw bytes; a str header value is sent as latin-1."""
        head = f"HTTP/1.1 {code} X\r\n".encode()
        named = {k.lower() for k, _ in headers}
        if length and "content-length" not in named:
            headers = [*headers, ("Content-Length", str(len(body)))]
        for name, value in [*headers, ("Connection", "close")]:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            head += name.encode() + b": " + raw + b"\r\n"
        self.wfile.write(head + b"\r\n" + body)
        self.wfile.flush()


class _RawServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.log: list[tuple[float, str]] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RawHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks for the host's FQDN, a reverse DNS lookup.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(routes: dict[str, Route]) -> Iterator[_RawServer]:
    """Serve ``routes`` (path without query -> writer) on 127.0.0.1; 404 elsewhere."""
    server = _RawServer(routes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
