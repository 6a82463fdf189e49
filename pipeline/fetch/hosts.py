"""Per-host politeness: a cap on simultaneous requests, a delay between their starts, and a
"not before" time a host sets by asking us to back off (429/503, Retry-After)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _HostState:
    __slots__ = ("active", "next_start", "not_before")

    def __init__(self) -> None:
        self.active = 0
        self.next_start = 0.0
        self.not_before = 0.0


class HostLimiter:
    """Blocks a request until its host has a free slot, its politeness delay has passed and
    no back-off it asked for is running.

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
                start_at = max(state.next_start, state.not_before)
                if state.active < self.max_connections and now >= start_at:
                    break
                # A full host wakes on a release; a free one when its wait is over (a later
                # defer() can only push that time back, which the loop then sees).
                wait = None if state.active >= self.max_connections else start_at - now
                self._cond.wait(wait)
            state.active += 1
            state.next_start = max(now, state.next_start) + self.delay
        try:
            yield
        finally:
            with self._cond:
                state.active -= 1
                self._cond.notify_all()

    def defer(self, host: str, seconds: float) -> None:
        """No request to ``host`` starts in the next ``seconds`` (requests already started
        are not affected). Call it while holding the host's slot, so that no other request
        slips in between the answer that asked for it and this call."""
        with self._cond:
            state = self._hosts.setdefault(host, _HostState())
            state.not_before = max(state.not_before, time.monotonic() + max(0.0, seconds))
