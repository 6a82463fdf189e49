"""A lean server for throughput benchmarks: the site's normal images only, from memory.

The fault server (``server.SynthWeb``) is built on http.server and spends ~0.6 ms of CPU
per request in Python; on a 2-core machine that is CPU the downloaders under test do not
get, and a real remote web server costs the downloader nothing. This one answers from
pre-built responses (status line, headers and body in one buffer) on asyncio, so the
benchmark measures the downloaders, not the server. It serves the same bytes at the same
URLs as ``SynthWeb`` for every entry without a fault, plus robots.txt; anything else 404.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline.synthweb.site import ROBOTS_TXT, Site

_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n"
)
_MAX_HEAD = 64 * 1024


def _response(body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nServer: synthweb-static/1.0\r\n\r\n"
    )
    return head.encode("ascii") + body


def build_responses(site: Site, workers: int = 4) -> dict[int, dict[bytes, bytes]]:
    """host index -> path -> complete response, for every normal entry and robots.txt."""
    normal = [e for e in site.entries if e.fault is None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bodies = list(pool.map(site.payload, normal))
    routes: dict[int, dict[bytes, bytes]] = {h: {} for h in range(site.spec.n_hosts)}
    robots = _response(ROBOTS_TXT.encode(), "text/plain; charset=utf-8")
    for h in routes:
        routes[h][b"/robots.txt"] = robots
    for entry, body in zip(normal, bodies, strict=True):
        routes[entry.host_index][entry.path.encode()] = _response(body, site.content_type(entry))
    return routes


class _Http(asyncio.Protocol):
    """HTTP/1.1 GET with keep-alive; honours ``Connection: close`` (urllib sends it)."""

    def __init__(self, routes: dict[bytes, bytes]) -> None:
        self.routes = routes
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            self.transport.write(self.routes.get(path, _NOT_FOUND))
            if b"connection: close" in head.lower():
                self.transport.close()
                return


async def _serve(
    routes: dict[int, dict[bytes, bytes]], addresses: Sequence[str], port: int
) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for h, address in enumerate(addresses):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        servers.append(
            await loop.create_server(lambda h=h: _Http(routes[h]), sock=sock, backlog=1024)
        )
    await asyncio.gather(*(s.serve_forever() for s in servers))


def serve_static(site: Site, port: int, on_ready: callable | None = None) -> None:  # type: ignore[valid-type]
    """Serve until interrupted. ``on_ready`` is called once every socket listens."""
    for address in site.addresses:
        if not address.startswith("127."):
            raise ValueError(f"synthweb only listens on loopback addresses, got {address!r}")
    routes = build_responses(site)

    async def main() -> None:
        task = asyncio.create_task(_serve(routes, site.addresses, port))
        await asyncio.sleep(0.05)
        if task.done():
            task.result()  # a bind error surfaces here
        if on_ready is not None:
            on_ready()
        await task

    asyncio.run(main())
