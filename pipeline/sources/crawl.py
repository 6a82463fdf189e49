"""A bounded crawl from seed pages: candidates from every HTML page reached.

Breadth first, level by level: the seeds are depth 0, links found on a depth-d page are
depth d+1, and pages deeper than ``max_depth`` are not fetched. At most ``max_pages``
URLs are taken from the frontier, in discovery order. Links are followed on the seeds'
hosts only unless ``same_host`` is off. Pages are fetched by the project's ``Fetcher``,
so the address guard, per-host connection cap and delay, retries and byte cap of
``FetchConfig`` apply; robots.txt is always honoured for pages (whatever
``respect_robots`` says for images), and so are ``X-Robots-Tag`` and
``<meta name="robots">`` opt-outs (``noindex``, ``noai`` ...: no candidates) and
``nofollow`` (no links). Only HTML is parsed; images are never fetched here.

Each level is fetched by a thread pool and processed in discovery order, so a crawl of
an unchanged site yields the same candidates in the same order every time.

Counters, under ``crawl.``, add up: ``crawl.pages = crawl.pages.html + sum(crawl.skip.*)``.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.config import ConfigError, FetchConfig
from pipeline.curate.dedup_candidates import normalize_url
from pipeline.curate.records import Candidate, SourceKind
from pipeline.fetch.client import Fetcher, FetchResult
from pipeline.schema import Status
from pipeline.sources.html import ExtractConfig, HtmlPage, is_html_content_type
from pipeline.stats.counters import Counters


@dataclass(frozen=True)
class CrawlConfig:
    max_depth: int = 2  # link hops from a seed
    max_pages: int = 100  # URLs visited (fetched, or refused by robots.txt), seeds included
    same_host: bool = True  # follow links only to the seeds' hosts (host and port)
    threads: int = 4  # pages fetched at once; per-host limits of FetchConfig still apply
    follow_nofollow: bool = False  # also follow rel="nofollow" links

    def __post_init__(self) -> None:
        if self.max_depth < 0:
            raise ConfigError(f"max_depth must be >= 0, got {self.max_depth}")
        if self.max_pages <= 0:
            raise ConfigError(f"max_pages must be positive, got {self.max_pages}")
        if self.threads <= 0:
            raise ConfigError(f"threads must be positive, got {self.threads}")


class CrawlSkip:
    """Why a visited URL gave no page to extract from (``crawl.skip.<reason>``)."""

    ROBOTS = "robots"  # robots.txt disallows it: never requested
    OPT_OUT = "opt_out"  # X-Robots-Tag or <meta name=robots> opts out (noindex, noai ...)
    NOT_HTML = "not_html"
    FETCH = "fetch_"  # + the fetch status: fetch_http_error, fetch_timeout ...


@dataclass
class PageVisit:
    """One URL taken from the frontier and what became of it."""

    url: str
    depth: int
    outcome: str  # "html", or a CrawlSkip reason
    final_url: str | None = None
    error: str | None = None
    candidates: int = 0
    links: int = 0


@dataclass
class CrawlResult:
    candidates: list[Candidate] = field(default_factory=list)
    pages: list[PageVisit] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)


def _host_key(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def is_robots_refusal(result: FetchResult) -> bool:
    """The fetcher reports a robots.txt refusal as opt_out with this message (and never
    sends the request); an X-Robots-Tag refusal is opt_out with another message."""
    return result.status is Status.OPT_OUT and (result.error_message or "").startswith("robots.txt")


def _looks_like_html(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


class Crawler:
    """Holds the configs and a Fetcher (made here, or shared with the caller)."""

    def __init__(
        self,
        config: CrawlConfig | None = None,
        fetch: FetchConfig | None = None,
        extract: ExtractConfig | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        if fetcher is not None and not fetcher.config.respect_robots:
            raise ConfigError("a crawl honours robots.txt: share a Fetcher with respect_robots on")
        self.config = config or CrawlConfig()
        fetch = fetch or FetchConfig()
        # robots.txt is not optional for pages we crawl ourselves.
        self.fetch_config = dataclasses.replace(fetch, respect_robots=True)
        self.extract = extract or ExtractConfig()
        self._fetcher = fetcher
        self._opt_out = {d.lower() for d in self.fetch_config.opt_out_directives}
        self._agent = self.fetch_config.user_agent.split("/", 1)[0].strip()

    def crawl(self, seeds: Iterable[str]) -> CrawlResult:
        result = CrawlResult()
        count = result.counters.add
        frontier: list[tuple[str, int]] = []
        seen: set[str] = set()
        for seed in seeds:
            url = normalize_url(seed, ())
            if url is None:
                count("crawl.seeds.invalid")
                continue
            if url not in seen:
                seen.add(url)
                frontier.append((url, 0))
        hosts = {_host_key(u) for u, _ in frontier}
        fetcher = self._fetcher or Fetcher(self.fetch_config)
        budget = self.config.max_pages
        unvisited = 0
        try:
            with ThreadPoolExecutor(self.config.threads, thread_name_prefix="crawl") as pool:
                while frontier and budget > 0:
                    level, rest = frontier[:budget], frontier[budget:]
                    unvisited += len(rest)
                    budget -= len(level)
                    fetched = pool.map(lambda item: fetcher.fetch(item[0]), level)
                    frontier = []
                    for (url, depth), fetch_result in zip(level, fetched, strict=True):
                        links = self._visit(url, depth, fetch_result, result)
                        if links and depth >= self.config.max_depth:
                            count("crawl.links.over_max_depth", len(links))
                            continue
                        for link in links:
                            self._enqueue(link, depth + 1, hosts, seen, frontier, result.counters)
        finally:
            if self._fetcher is None:
                fetcher.close()
        count("crawl.frontier.unvisited", unvisited + len(frontier))
        return result

    def _enqueue(
        self,
        link: str,
        depth: int,
        hosts: set[str],
        seen: set[str],
        frontier: list[tuple[str, int]],
        counters: Counters,
    ) -> None:
        url = normalize_url(link, ())
        if url is None or url in seen:
            return
        if self.config.same_host and _host_key(url) not in hosts:
            counters.add("crawl.links.off_host")
            return
        seen.add(url)
        frontier.append((url, depth))

    def _visit(self, url: str, depth: int, fetched: FetchResult, result: CrawlResult) -> list[str]:
        """Record one visit; returns the links to follow from it."""
        count = result.counters.add
        count("crawl.pages")
        visit = PageVisit(url, depth, "", fetched.final_url or url, fetched.error_message)
        result.pages.append(visit)
        if not fetched.ok:
            if is_robots_refusal(fetched):
                visit.outcome = CrawlSkip.ROBOTS
            elif fetched.status is Status.OPT_OUT:
                visit.outcome = CrawlSkip.OPT_OUT
            else:
                visit.outcome = CrawlSkip.FETCH + fetched.status.value
            count("crawl.skip." + visit.outcome)
            return []
        data = fetched.data or b""
        if not (
            is_html_content_type(fetched.content_type)
            or (not fetched.content_type and _looks_like_html(data))
        ):
            visit.outcome = CrawlSkip.NOT_HTML
            count("crawl.skip." + visit.outcome)
            return []
        if len(data) > self.extract.max_html_bytes:
            data = data[: self.extract.max_html_bytes]
            count("extract.html_cut")
        page_url = visit.final_url or url
        page = HtmlPage(data, page_url, fetched.content_type)
        directives = page.meta_robots([self._agent])
        if "none" in directives:
            directives |= {"noindex", "nofollow"}
        if directives & self._opt_out:
            visit.outcome = CrawlSkip.OPT_OUT
            count("crawl.skip." + visit.outcome)
            return []  # an opted-out page gives nothing, not even links to follow
        visit.outcome = "html"
        count("crawl.pages.html")
        found = page.candidates(SourceKind.CRAWL.value, self.extract, result.counters)
        visit.candidates = len(found)
        result.candidates.extend(found)
        if "nofollow" in directives:
            return []
        links = page.links(follow_nofollow=self.config.follow_nofollow)
        visit.links = len(links)
        count("crawl.links", len(links))
        return links


def crawl(
    seeds: Iterable[str],
    config: CrawlConfig | None = None,
    fetch: FetchConfig | None = None,
    extract: ExtractConfig | None = None,
) -> CrawlResult:
    """Crawl from ``seeds`` (see the module docstring) and return candidates, visits and
    counters."""
    return Crawler(config, fetch, extract).crawl(seeds)
