"""URL normalization cases and candidate dedup with reasons."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.curate.dedup_candidates import (
    CandidateDedupConfig,
    CandidateDeduplicator,
    dedup_candidates,
    dedup_key,
    normalize_url,
    remove_dot_segments,
)
from pipeline.curate.records import Candidate


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTP://Example.COM/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
        ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a.jpg#section", "http://example.com/a.jpg"),
        ("http://example.com/a.jpg?", "http://example.com/a.jpg"),
        ("http://example.com/%7Euser/%41.jpg", "http://example.com/~user/A.jpg"),
        ("http://example.com/a%2fb%2Fc.jpg", "http://example.com/a%2Fb%2Fc.jpg"),
        ("http://example.com/a b.jpg", "http://example.com/a%20b.jpg"),
        ("http://example.com/100%.jpg", "http://example.com/100%25.jpg"),
        ("http://example.com/caf\u00e9.jpg", "http://example.com/caf%C3%A9.jpg"),
        ("http://b\u00fccher.example/x", "http://xn--bcher-kva.example/x"),
        ("http://example.com./x", "http://example.com/x"),
        ("http://example.com/a/./b/../c.jpg", "http://example.com/a/c.jpg"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("http://user:pw@Example.com/x", "http://user:pw@example.com/x"),
        (" http://example.com/a\n.jpg ", "http://example.com/a.jpg"),
        (
            "http://example.com/a.jpg?utm_source=x&id=3&UTM_Campaign=y&fbclid=z&gclid=q&w=1",
            "http://example.com/a.jpg?id=3&w=1",
        ),
        ("http://example.com/a.jpg?b=2&a=1", "http://example.com/a.jpg?b=2&a=1"),  # order kept
        ("http://example.com/a.jpg?q=%7e&&x=a+b", "http://example.com/a.jpg?q=~&x=a+b"),
    ],
)
def test_normalize_url(url: str, normalized: str) -> None:
    assert normalize_url(url) == normalized
    assert normalize_url(normalized) == normalized  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "",
        None,
        "ftp://example.com/a",
        "data:image/png;base64,AA",
        "http://",
        "http://h:99999/",
        "/rel.jpg",
    ],
)
def test_unfetchable_urls_have_no_normal_form(url: str | None) -> None:
    assert normalize_url(url) is None


def test_dot_segments() -> None:
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/a/b/..") == "/a/"
    assert remove_dot_segments("/../x") == "/x"
    assert remove_dot_segments("/a/.b/c.") == "/a/.b/c."


def _c(url: str, caption: str) -> Candidate:
    return Candidate(url, caption, "alt", "http://p.test/", "warc")


ROWS = [
    _c("http://Example.com/a.jpg", "a red circle"),
    _c("http://example.com:80/a.jpg#x", "A red  circle"),  # same pair, other spelling
    _c("http://example.com/a.jpg?utm_source=feed", "a blue square"),  # same URL, new caption
    _c("http://example.com/b.jpg", "a red circle"),
    _c("javascript:void(0)", "not a url"),
]


def test_dedup_on_url_counts_pair_and_url_duplicates_apart() -> None:
    kept, step = dedup_candidates(ROWS)
    assert [(c.url, c.caption) for c in kept] == [
        ("http://example.com/a.jpg", "a red circle"),
        ("http://example.com/b.jpg", "a red circle"),
    ]
    assert step.counters.with_prefix("dedup.drop.") == {
        "duplicate_pair": 1,
        "duplicate_url": 1,
        "unfetchable_url": 1,
    }
    assert step.counters["dedup.in"] == len(ROWS)


def test_dedup_on_url_and_caption_keeps_each_caption_once() -> None:
    rows = [_c(r.url, r.caption) for r in ROWS]
    kept, step = dedup_candidates(rows, CandidateDedupConfig(key="url_caption"))
    assert [c.caption for c in kept] == ["a red circle", "a blue square", "a red circle"]
    assert step.counters.with_prefix("dedup.drop.") == {"duplicate_pair": 1, "unfetchable_url": 1}


def test_emit_dropped_and_url_rewriting() -> None:
    rows = [_c(r.url, r.caption) for r in ROWS]
    out = list(CandidateDeduplicator(emit_dropped=True)(rows))
    assert [c.reason for c in out] == [
        None,
        "duplicate_pair",
        "duplicate_url",
        None,
        "unfetchable_url",
    ]
    untouched = _c("HTTP://Example.com/a.jpg", "x y z w")
    list(CandidateDeduplicator(CandidateDedupConfig(rewrite_urls=False))([untouched]))
    assert untouched.url == "HTTP://Example.com/a.jpg"


def test_dedup_key_routes_copies_together() -> None:
    a, b = ROWS[0], ROWS[1]
    assert dedup_key(a) == dedup_key(b) == "http://example.com/a.jpg"
    by_pair = CandidateDedupConfig(key="url_caption")
    assert dedup_key(a, by_pair) == dedup_key(b, by_pair)
    assert dedup_key(a, by_pair) != dedup_key(ROWS[2], by_pair)
    assert dedup_key(ROWS[4]) is None
    with pytest.raises(ConfigError):
        CandidateDedupConfig(key="caption")
