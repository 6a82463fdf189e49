"""The client connections a loopback server's handler threads hold open.

``socketserver``'s ``shutdown()`` stops accepting but leaves each handler blocked in its
own read (a keep-alive client, a stalled upstream, a tunnel) until a timeout. Both of our
servers (the guarded proxy and the synthweb) register each connection while a handler
serves it and, on stop, shut every one down, which wakes its handler at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class OpenConnections:
    """A thread-safe set of the sockets handlers are serving."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)

    def discard(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def shutdown_all(self) -> None:
        """Shut down both directions of every open connection (a handler blocked on one
        wakes with EOF or an error); one the client already closed is skipped."""
        with self._lock:
            conns = list(self._open)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
