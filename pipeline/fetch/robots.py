"""robots.txt: fetched once per host, kept in memory and on disk, answered per URL.

RFC 9309 rules: a 4xx answer means no rules (allow all); a 5xx or an unreachable host
means complete disallow; rules are cached up to 24 hours. The disk copy lets every
process of a run, and a resumed run, share one fetch per host.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.robotparser
from collections.abc import Callable
from pathlib import Path

from pipeline.shards.atomic import write_text_atomic

MAX_ROBOTS_BYTES = 512_000
MAX_AGE_S = 24 * 3600
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"


class RobotsRules:
    """The parsed rules of one host."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._parser = urllib.robotparser.RobotFileParser()
        self._parser.parse(text.splitlines())

    def allows(self, agent: str, url: str) -> bool:
        return self._parser.can_fetch(agent, url)


def rules_from_answer(http_status: int | None, body: bytes | None) -> str:
    """The rules text an answer stands for, per RFC 9309."""
    if http_status == 200:
        return (body or b"")[:MAX_ROBOTS_BYTES].decode("utf-8", "replace")
    if http_status is not None and 400 <= http_status < 500:
        return ""  # unavailable: no restrictions
    return _DISALLOW_ALL  # unreachable: assume complete disallow


class RobotsCache:
    """Thread-safe per-origin cache; concurrent askers for one origin wait for one fetch."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self._rules: dict[str, RobotsRules] = {}
        self._lock = threading.Lock()
        self._origin_locks: dict[str, threading.Lock] = {}
        self.fetches = 0

    def _path(self, origin: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / (re.sub(r"[^A-Za-z0-9.-]+", "_", origin) + ".json")

    def _load(self, origin: str) -> RobotsRules | None:
        path = self._path(origin)
        if path is None or not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if time.time() - saved.get("fetched_at", 0) > MAX_AGE_S:
            return None
        return RobotsRules(saved["rules"])

    def _save(self, origin: str, rules: RobotsRules) -> None:
        path = self._path(origin)
        if path is None:
            return
        saved = {"origin": origin, "fetched_at": time.time(), "rules": rules.text}
        # A cache: a copy lost in a crash is fetched again, so no fsync.
        write_text_atomic(path, json.dumps(saved), fsync=False)

    def get(self, origin: str, fetch: Callable[[], tuple[int | None, bytes | None]]) -> RobotsRules:
        """The rules for ``origin``; ``fetch`` returns (HTTP status or None, body)."""
        with self._lock:
            rules = self._rules.get(origin)
            if rules is not None:
                return rules
            origin_lock = self._origin_locks.setdefault(origin, threading.Lock())
        with origin_lock:
            with self._lock:
                rules = self._rules.get(origin)
            if rules is None:
                rules = self._load(origin)
                if rules is None:
                    self.fetches += 1
                    rules = RobotsRules(rules_from_answer(*fetch()))
                    self._save(origin, rules)
                with self._lock:
                    self._rules[origin] = rules
            return rules
