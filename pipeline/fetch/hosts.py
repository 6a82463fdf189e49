"""Per-host politeness: a cap on simultaneous requests and a delay between their starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _HostState:
    __slots__ = ("active", "next_start")

    def __init__(self) -> None:
        self.active = 0
        self.next_start = 0.0


class HostLimiter:
    """Blocks a request until its host has a free slot and its politeness delay has passed.

    Thread-safe. One limiter is shared by the fetch threads of a process.
    """

    def __init__(self, max_connections: int, delay: float) -> None:
        self.max_connections = max_connections
        self.delay = delay
        self._cond = threading.Condition()
        self._hosts: dict[str, _HostState] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._cond:
            state = self._hosts.setdefault(host, _HostState())
            while True:
                now = time.monotonic()
                if state.active < self.max_connections and now >= state.next_start:
                    break
                wait = None if state.active >= self.max_connections else state.next_start - now
                self._cond.wait(wait)
            state.active += 1
            state.next_start = max(now, state.next_start) + self.delay
        try:
            yield
        finally:
            with self._cond:
                state.active -= 1
                self._cond.notify_all()
