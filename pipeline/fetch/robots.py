"""robots.txt: fetched once per host, kept in memory and on disk, answered per URL.

RFC 9309 rules: a 4xx answer (except 429) means no rules (allow all); a 5xx, a 429 or an
unreachable host means complete disallow; rules are cached up to 24 hours. An unreachable
verdict is kept only briefly (``UNREACHABLE_MAX_AGE_S``): it is a guess standing in for
rules we could not read, and a blip must not refuse a host for a day. The disk copy lets
every process of a run, and a resumed run, share one fetch per host.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import urllib.robotparser
from collections.abc import Callable
from pathlib import Path

from pipeline.shards.atomic import write_text_atomic

MAX_ROBOTS_BYTES = 512_000
MAX_AGE_S = 24 * 3600
UNREACHABLE_MAX_AGE_S = 600.0
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
_CLOCK_SKEW_S = 300.0  # a saved fetched_at later than now by more than this is not trusted


class RobotsRules:
    """The parsed rules of one host. ``unreachable`` says why robots.txt could not be read
    (its rules are then "disallow all"); None when they are the host's own (or none)."""

    def __init__(
        self, text: str, unreachable: str | None = None, fetched_at: float | None = None
    ) -> None:
        self.text = text
        self.unreachable = unreachable
        self.fetched_at = time.time() if fetched_at is None else fetched_at
        self._parser = urllib.robotparser.RobotFileParser()
        self._parser.parse(text.splitlines())

    @classmethod
    def unreachable_because(cls, why: str) -> RobotsRules:
        return cls(_DISALLOW_ALL, unreachable=why)

    def allows(self, agent: str, url: str) -> bool:
        return self._parser.can_fetch(agent, url)


def rules_from_answer(http_status: int | None, body: bytes | None) -> RobotsRules:
    """The rules a final answer stands for, per RFC 9309 (``body``: a complete 200 body)."""
    if http_status == 200:
        return RobotsRules((body or b"")[:MAX_ROBOTS_BYTES].decode("utf-8", "replace"))
    if http_status is not None and 400 <= http_status < 500 and http_status != 429:
        return RobotsRules("")  # unavailable: no restrictions
    why = f"HTTP {http_status}" if http_status is not None else "no answer"
    return RobotsRules.unreachable_because(why)  # unreachable: assume complete disallow


class RobotsCache:
    """Thread-safe per-origin cache; concurrent askers for one origin wait for one fetch."""

    def __init__(
        self,
        directory: str | Path | None = None,
        unreachable_max_age: float = UNREACHABLE_MAX_AGE_S,
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.unreachable_max_age = unreachable_max_age
        self._rules: dict[str, RobotsRules] = {}
        self._lock = threading.Lock()
        self._origin_locks: dict[str, threading.Lock] = {}
        self.fetches = 0

    def _fresh(self, rules: RobotsRules) -> bool:
        max_age = self.unreachable_max_age if rules.unreachable else MAX_AGE_S
        return time.time() - rules.fetched_at <= max_age

    def _path(self, origin: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / (re.sub(r"[^A-Za-z0-9.-]+", "_", origin) + ".json")

    def _load(self, origin: str) -> RobotsRules | None:
        """The rules saved on disk, or None when there are none usable: a damaged, hand-edited
        or stale file is treated as absent, and robots.txt is fetched again."""
        path = self._path(origin)
        if path is None or not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(saved, dict):
            return None
        text = saved.get("rules")
        unreachable = saved.get("unreachable")
        fetched_at = saved.get("fetched_at", 0)
        if (
            not isinstance(text, str)
            or not (unreachable is None or isinstance(unreachable, str))
            or isinstance(fetched_at, bool)
            or not isinstance(fetched_at, int | float)
            or not math.isfinite(fetched_at)
            or fetched_at > time.time() + _CLOCK_SKEW_S  # a copy from the future: not trusted
        ):
            return None
        if "unreachable" not in saved and text == _DISALLOW_ALL:
            # Written before verdicts were marked: most likely an unreachable one.
            unreachable = "not readable in an earlier run"
        rules = RobotsRules(text, unreachable, float(fetched_at))
        return rules if self._fresh(rules) else None

    def _save(self, origin: str, rules: RobotsRules) -> None:
        path = self._path(origin)
        if path is None:
            return
        saved = {
            "origin": origin,
            "fetched_at": rules.fetched_at,
            "rules": rules.text,
            "unreachable": rules.unreachable,
        }
        # A cache: a copy lost in a crash is fetched again, so no fsync; one that cannot be
        # written (a full disk, a path taken by a file) leaves the rules in memory only.
        with contextlib.suppress(OSError):
            write_text_atomic(path, json.dumps(saved), fsync=False)

    def get(
        self,
        origin: str,
        fetch: Callable[[], RobotsRules | tuple[int | None, bytes | None]],
    ) -> RobotsRules:
        """The rules for ``origin``. ``fetch`` returns the rules it read, or a final answer
        as (HTTP status or None, complete body), read per ``rules_from_answer``."""
        with self._lock:
            rules = self._rules.get(origin)
            if rules is not None and self._fresh(rules):
                return rules
            origin_lock = self._origin_locks.setdefault(origin, threading.Lock())
        with origin_lock:
            with self._lock:
                rules = self._rules.get(origin)
            if rules is None or not self._fresh(rules):
                rules = self._load(origin)
                if rules is None:
                    self.fetches += 1
                    answer = fetch()
                    rules = (
                        answer if isinstance(answer, RobotsRules) else rules_from_answer(*answer)
                    )
                    self._save(origin, rules)
                with self._lock:
                    self._rules[origin] = rules
            return rules
