"""URL normalization and candidate deduplication (on the URL, or on the URL and caption).

The normalized URL stands for every spelling of the same resource, so the dedup key is
exact and the downloader fetches each image once. Normalization is conservative: every
rewrite below yields a URL that any server answers the same way (RFC 3986 section 6.2.2
syntax normalization, the default port, the fragment that is never sent) except dropping
tracking parameters, which by design do not change the resource. The query keeps its
order: some servers read it positionally.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.curate.records import Candidate, CandidateFilter, DropReason

# Query parameters that only track the visitor (Google, Meta, Microsoft, Mailchimp, HubSpot,
# Marketo, Instagram, Yandex, TikTok, Twitter, LinkedIn); a trailing * matches a prefix.
TRACKING_PARAMS: tuple[str, ...] = (
    "utm_*",
    "fbclid",
    "gclid",
    "gclsrc",
    "dclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "mc_cid",
    "mc_eid",
    "_ga",
    "_gl",
    "_hsenc",
    "_hsmi",
    "mkt_tok",
    "igshid",
    "yclid",
    "ttclid",
    "twclid",
    "li_fat_id",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
_C0_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")


def _pct(m: re.Match[str]) -> str:
    ch = chr(int(m.group(1), 16))
    return ch if ch in _UNRESERVED else "%" + m.group(1).upper()


def _normalize_encoding(part: str, safe: str) -> str:
    """Decode escapes of unreserved characters, upper-case the others, and escape what
    must be escaped (spaces, non-ASCII as UTF-8, a ``%`` that starts no escape)."""
    if "%" in part:
        part = _STRAY_PCT.sub("%25", part)
        part = _PCT.sub(_pct, part)
    if part.isascii() and not any(c in part for c in ' "<>\\^`{|}'):
        return part
    return urllib.parse.quote(part, safe=safe)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/b/../c/./d`` is ``/a/c/d``."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def _tracking(name: str, params: tuple[str, ...]) -> bool:
    name = urllib.parse.unquote_plus(name).lower()
    for p in params:
        if p.endswith("*"):
            if name.startswith(p[:-1]):
                return True
        elif name == p:
            return True
    return False


def normalize_url(url: str | None, drop_params: tuple[str, ...] = TRACKING_PARAMS) -> str | None:
    """The canonical spelling of an http(s) URL, or None when it is not a fetchable one.

    Scheme and host lower-cased, international host names in IDNA, a trailing dot of the
    host removed, the default port removed, dot segments resolved, percent-encoding
    normalized, an empty path made ``/``, tracking parameters and the fragment dropped.
    """
    if not url:
        return None
    url = url.strip(_C0_SPACE).translate(_TAB_NEWLINE)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    netloc = f"{userinfo}@{host}" if userinfo else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = remove_dot_segments(_normalize_encoding(parts.path, _PATH_SAFE)) or "/"
    query = ""
    if parts.query:
        kept = [
            _normalize_encoding(p, _QUERY_SAFE)
            for p in parts.query.split("&")
            if p and not (drop_params and _tracking(p.partition("=")[0], drop_params))
        ]
        query = "&".join(kept)
    return urllib.parse.urlunsplit((scheme, netloc, path, query, ""))


def caption_key(caption: str | None) -> str:
    """Captions that differ only in case or spacing are the same caption."""
    return " ".join((caption or "").casefold().split())


def _digest(text: str) -> bytes:
    # 16-byte keys: a seen-set of 100M candidates stays a few GB, collisions stay at ~2^-64.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


DEDUP_KEYS = ("url", "url_caption")


@dataclass(frozen=True)
class CandidateDedupConfig:
    # "url": one candidate per normalized URL (the first seen wins); "url_caption": one per
    # (normalized URL, caption), so an image keeps each distinct caption it was found with.
    key: str = "url"
    drop_params: tuple[str, ...] = TRACKING_PARAMS
    rewrite_urls: bool = True  # replace candidate.url with its normalized form

    def __post_init__(self) -> None:
        from pipeline.config import ConfigError

        if self.key not in DEDUP_KEYS:
            raise ConfigError(f"key must be one of {', '.join(DEDUP_KEYS)}, got {self.key!r}")


class CandidateDeduplicator(CandidateFilter):
    """Drops repeated candidates within one stream: ``duplicate_pair`` when the same URL
    came with the same caption before, ``duplicate_url`` when it came with another caption
    (key "url" only); ``unfetchable_url`` when the URL has no normalized http(s) form.

    Holds a seen-set of digests: across Spark partitions, route candidates by
    ``dedup_key`` first so that each key's copies meet in one task.
    """

    name = "dedup"

    def __init__(
        self, config: CandidateDedupConfig | None = None, emit_dropped: bool = False
    ) -> None:
        super().__init__(emit_dropped)
        self.config = config or CandidateDedupConfig()
        self._urls: set[bytes] = set()
        self._pairs: set[bytes] = set()

    def check(self, candidate: Candidate) -> str | None:
        url = normalize_url(candidate.url, self.config.drop_params)
        if url is None:
            return DropReason.UNFETCHABLE_URL
        if self.config.rewrite_urls:
            candidate.url = url
        pair = _digest(url + "\x00" + caption_key(candidate.caption))
        if pair in self._pairs:
            return DropReason.DUPLICATE_PAIR
        self._pairs.add(pair)
        if self.config.key == "url":
            digest = _digest(url)
            if digest in self._urls:
                return DropReason.DUPLICATE_URL
            self._urls.add(digest)
        return None


def dedup_key(candidate: Candidate, config: CandidateDedupConfig | None = None) -> str | None:
    """The key two candidates share when one is a duplicate of the other (None: invalid URL)."""
    config = config or CandidateDedupConfig()
    url = normalize_url(candidate.url, config.drop_params)
    if url is None or config.key == "url":
        return url
    return url + "\x00" + caption_key(candidate.caption)


def dedup_candidates(
    records: Iterable[Candidate], config: CandidateDedupConfig | None = None
) -> tuple[list[Candidate], CandidateDeduplicator]:
    """Convenience: the kept candidates of an in-memory list, and the step (its counters)."""
    step = CandidateDeduplicator(config)
    return list(step(records)), step
