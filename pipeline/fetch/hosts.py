"""Per-host politeness: a cap on simultaneous requests, a delay between their starts, and a
"not before" time a host sets by asking us to back off (429/503, Retry-After)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class HostBackingOff(Exception):
    """The host asked us to back off until ``until`` (time.monotonic()), longer than the
    caller was willing to wait: no request was made."""

    def __init__(self, host: str, until: float, reason: str, http_status: int | None) -> None:
        super().__init__(f"{host} backing off: {reason}")
        self.host = host
        self.until = until
        self.reason = reason
        self.http_status = http_status


class _HostState:
    __slots__ = ("active", "http_status", "next_start", "not_before", "reason")

    def __init__(self) -> None:
        self.active = 0
        self.next_start = 0.0
        self.not_before = 0.0
        self.reason = ""
        self.http_status: int | None = None


class HostLimiter:
    """Blocks a request until its host has a free slot, its politeness delay has passed and
    no back-off it asked for is running; a back-off longer than the caller's ``max_wait`` is
    raised as HostBackingOff instead, so that no thread is parked on one host while the
    other hosts' requests wait for a thread.

    Thread-safe. One limiter is shared by the fetch threads of a process.
    """

    def __init__(self, max_connections: int, delay: float) -> None:
        self.max_connections = max_connections
        self.delay = delay
        self._cond = threading.Condition()
        self._hosts: dict[str, _HostState] = {}

    @contextmanager
    def slot(self, host: str, max_wait: float = math.inf) -> Iterator[None]:
        with self._cond:
            state = self._hosts.setdefault(host, _HostState())
            while True:
                now = time.monotonic()
                if state.not_before - now > max_wait:
                    raise HostBackingOff(host, state.not_before, state.reason, state.http_status)
                start_at = max(state.next_start, state.not_before)
                if state.active < self.max_connections and now >= start_at:
                    break
                # A full host wakes on a release; a free one when its wait is over. A later
                # defer() wakes every waiter, which then sees the new time.
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

    def defer(
        self, host: str, seconds: float, reason: str = "", http_status: int | None = None
    ) -> None:
        """No request to ``host`` starts in the next ``seconds`` (requests already started
        are not affected); ``reason`` and ``http_status`` say why, to the requests refused.
        Call it while holding the host's slot, so that no other request slips in between
        the answer that asked for it and this call."""
        with self._cond:
            state = self._hosts.setdefault(host, _HostState())
            until = time.monotonic() + max(0.0, seconds)
            if until > state.not_before:
                state.not_before = until
                state.reason = reason
                state.http_status = http_status
            self._cond.notify_all()
