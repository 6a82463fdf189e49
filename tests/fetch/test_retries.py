"""Retries against the synthweb: exponential backoff with full jitter, Retry-After honoured
or refused when too long, redirects re-checked on every hop."""

from __future__ import annotations

import random

import pytest

from pipeline.config import FetchConfig
from pipeline.fetch.client import Fetcher
from pipeline.schema import Status
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec


@pytest.fixture(scope="module")
def web():
    with SynthWeb(SiteSpec(seed=2, n_images=2, n_hosts=3, n_pages=1, stall_seconds=5)) as server:
        yield server


def _url(web: SynthWeb, fault: str) -> str:
    return web.url_for(web.site.fault_entry(fault))


def _fetcher(sleep=None, **kw) -> Fetcher:
    fetcher = Fetcher(FetchConfig(allow_networks=("127.0.0.0/8",), **kw), rng=random.Random(0))
    if sleep is not None:
        fetcher.sleep = sleep  # record the waits instead of waiting (and of patching time)
    return fetcher


def test_backoff_doubles_with_full_jitter(web: SynthWeb) -> None:
    # A 503 also holds back its host for the backoff (slept for real by the next request:
    # only this URL's own wait is recorded), so the times are small.
    sleeps: list[float] = []
    result = _fetcher(sleeps.append, retries=4, backoff_base=0.1, backoff_max=0.5).fetch(
        _url(web, "always_503")
    )
    assert (result.status, result.http_status, result.attempts) == (Status.HTTP_ERROR, 503, 5)
    assert len(sleeps) == 4
    caps = [0.1, 0.2, 0.4, 0.5]  # base * 2**n, capped at backoff_max
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 4  # jittered, not a fixed schedule


def test_retry_after_longer_than_allowed_gives_up(web: SynthWeb) -> None:
    web.reset_state()
    never = lambda s: pytest.fail(f"slept {s}s")  # noqa: E731
    result = _fetcher(never, retries=3, max_retry_after=0.5).fetch(_url(web, "rate_limited"))
    assert result.status is Status.HTTP_ERROR and result.http_status == 429
    assert "Retry-After 1s exceeds max_retry_after" in result.error_message
    assert result.attempts == 1


def test_retry_after_is_waited_exactly(web: SynthWeb) -> None:
    sleeps: list[float] = []
    web.reset_state()
    result = _fetcher(sleeps.append, retries=2).fetch(_url(web, "rate_limited"))
    assert result.ok and result.attempts == 2
    assert sleeps == [1.0]


def test_timeouts_are_not_retried(web: SynthWeb) -> None:
    result = _fetcher(retries=3, timeout=0.5).fetch(_url(web, "stall"))
    assert result.status is Status.TIMEOUT and result.attempts == 1


def test_redirect_limit(web: SynthWeb) -> None:
    chain = _url(web, "redirect_chain")  # three hops
    assert _fetcher(max_redirects=3).fetch(chain).ok
    short = _fetcher(max_redirects=2).fetch(chain)
    assert short.status is Status.TOO_MANY_REDIRECTS


def test_every_hop_is_checked_by_the_guard(web: SynthWeb) -> None:
    # 127.0.0.2 and .3 are hops of the chain: allowing only .1 refuses the second hop.
    result = Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",))).fetch(
        _url(web, "redirect_chain")
    )
    assert result.status is Status.BLOCKED_ADDRESS
    assert "127.0.0." in result.error_message
    private = _fetcher().fetch(_url(web, "redirect_private"))
    assert private.status is Status.BLOCKED_ADDRESS
    assert "10.255.255.1 is a private address" in private.error_message
