"""The bounded crawl against the loopback synthweb (ground truth: ``Site.page_pairs``) and a
tiny loopback site of opt-outs: depth, page count and host bounds, robots.txt honoured."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from pipeline.config import ConfigError, FetchConfig
from pipeline.sources.crawl import CrawlConfig, Crawler, CrawlResult, crawl
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec

SPEC = SiteSpec(seed=5, n_images=30, n_hosts=2, n_pages=4)
FETCH = FetchConfig(allow_networks=("127.0.0.0/8",), timeout=5.0, retries=0)


@pytest.fixture(scope="module")
def web() -> Iterator[SynthWeb]:
    with SynthWeb(SPEC) as w:
        yield w


def _page_path(web: SynthWeb, url: str) -> tuple[int, str]:
    """(host index, path) of a synthweb URL."""
    for h in range(SPEC.n_hosts):
        base = web.base_url(h)
        if url.startswith(base + "/"):
            return h, url[len(base) :]
    raise AssertionError(f"not a synthweb URL: {url}")


def _truth(web: SynthWeb, host: int, path: str) -> list[tuple[str, str]]:
    if not path.startswith("/pages/"):
        return []  # the index page has links only
    page = int(path[len("/pages/") : -len(".html")])
    return [
        (p["url"], p["caption"]) for p in web.site.page_pairs(host, page, web.port) if p["caption"]
    ]


def _check_against_ground_truth(web: SynthWeb, result: CrawlResult) -> None:
    """Each visited page gave exactly its ground-truth pairs, in document order."""
    by_page: dict[str, list[tuple[str, str]]] = {}
    for c in result.candidates:
        assert c.source == "crawl"
        by_page.setdefault(c.page_url, []).append((c.url, c.caption))
    for visit in result.pages:
        assert visit.outcome == "html"
        host, path = _page_path(web, visit.final_url)
        assert by_page.get(visit.final_url, []) == _truth(web, host, path), path
    c = result.counters
    no_alt = sum(
        1
        for v in result.pages
        if "/pages/" in v.url
        for p in web.site.page_pairs(*_host_page(web, v.url), web.port)
        if p["caption"] is None
    )
    assert c["extract.skip.no_text"] == no_alt > 0
    assert c["extract.images"] == c["extract.candidates"] + c["extract.skip.no_text"]
    assert c["crawl.pages"] == c["crawl.pages.html"] + sum(c.with_prefix("crawl.skip.").values())


def _host_page(web: SynthWeb, url: str) -> tuple[int, int]:
    host, path = _page_path(web, url)
    return host, int(path[len("/pages/") : -len(".html")])


def _requested_pages(web: SynthWeb) -> set[tuple[int, str]]:
    return {(h, p) for _, h, p, _ in web.request_log if p != "/robots.txt"}


def test_crawl_of_one_host_equals_the_ground_truth(web: SynthWeb) -> None:
    web.clear_log()
    result = crawl([web.base_url(0) + "/pages/0.html"], CrawlConfig(max_depth=5), FETCH)
    pages = {_page_path(web, v.url) for v in result.pages}
    assert pages == {(0, "/")} | {(0, f"/pages/{p}.html") for p in range(SPEC.n_pages)}
    _check_against_ground_truth(web, result)
    # same host by default: the mirror links to host 1 are counted, never followed
    assert result.counters["crawl.links.off_host"] > 0
    assert _requested_pages(web) == pages  # HTML only: no image was requested
    assert web.hits("/robots.txt", 0) == 1  # asked once, cached
    assert web.hits("/robots.txt", 1) == 0


def test_crawl_across_hosts_when_allowed(web: SynthWeb) -> None:
    result = crawl(
        [web.base_url(0) + "/pages/0.html"], CrawlConfig(max_depth=5, same_host=False), FETCH
    )
    pages = {_page_path(web, v.url) for v in result.pages}
    assert {h for h, _ in pages} == {0, 1}
    assert len(pages) == SPEC.n_hosts * (SPEC.n_pages + 1)
    _check_against_ground_truth(web, result)


def test_depth_is_bounded_and_breadth_first(web: SynthWeb) -> None:
    seed = web.base_url(0) + "/pages/0.html"
    only_seed = crawl([seed], CrawlConfig(max_depth=0), FETCH)
    assert [v.url for v in only_seed.pages] == [seed]
    assert only_seed.counters["crawl.links.over_max_depth"] > 0
    one_hop = crawl([seed], CrawlConfig(max_depth=1), FETCH)
    # page 0 links to next (1), previous (3), host 1's mirror (off host) and the index
    assert [(_page_path(web, v.url)[1], v.depth) for v in one_hop.pages] == [
        ("/pages/0.html", 0),
        ("/pages/1.html", 1),
        (f"/pages/{SPEC.n_pages - 1}.html", 1),
        ("/", 1),
    ]
    _check_against_ground_truth(web, one_hop)


def test_page_count_is_bounded(web: SynthWeb) -> None:
    web.clear_log()
    result = crawl([web.base_url(0) + "/pages/0.html"], CrawlConfig(max_pages=2), FETCH)
    assert len(result.pages) == 2
    assert len(_requested_pages(web)) == 2
    assert result.counters["crawl.frontier.unvisited"] > 0
    _check_against_ground_truth(web, result)


def test_robots_txt_is_honoured_even_when_images_ignore_it(web: SynthWeb) -> None:
    web.clear_log()
    banned = web.base_url(1) + "/private/page.html"
    result = crawl(
        [banned, web.base_url(1) + "/pages/2.html"],
        CrawlConfig(max_depth=0),
        FetchConfig(allow_networks=("127.0.0.0/8",), respect_robots=False, retries=0),
    )
    assert [v.outcome for v in result.pages] == ["robots", "html"]
    assert web.hits("/private/page.html") == 0  # refused before any request
    assert result.counters["crawl.skip.robots"] == 1
    assert len(result.candidates) == len(_truth(web, 1, "/pages/2.html"))


def test_the_address_guard_applies_to_crawling(web: SynthWeb) -> None:
    result = crawl([web.base_url(0) + "/pages/0.html"], CrawlConfig(), FetchConfig(retries=0))
    assert [v.outcome for v in result.pages] == ["fetch_blocked_address"]
    assert result.candidates == []


def test_bad_seeds_are_counted_and_duplicates_visited_once(web: SynthWeb) -> None:
    seed = web.base_url(0) + "/pages/0.html"
    result = crawl(
        [
            "ftp://x/y",
            "not a url",
            seed,
            seed + "#frag",
            seed.upper().replace("/PAGES/0.HTML", "/pages/0.html"),
        ],
        CrawlConfig(max_depth=0),
        FETCH,
    )
    assert result.counters["crawl.seeds.invalid"] == 2
    assert len(result.pages) == 1


# ---- opt-outs on a hand-made loopback site ------------------------------------------------

ROBOTS = "User-agent: *\nDisallow: /secret/\n"
PAGES: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "/robots.txt": (200, "text/plain", ROBOTS, {}),
    "/": (
        200,
        "text/html",
        '<img src="/a.jpg" alt="front page image">'
        '<a href="/secret/s.html">s</a><a href="/noindex.html">n</a>'
        '<a href="/nofollow.html">f</a><a href="/header-noai.html">h</a>'
        '<a href="/photo.png">p</a><a href="/missing.html">m</a>'
        '<a href="/sponsored.html" rel="nofollow">x</a>',
        {},
    ),
    "/secret/s.html": (200, "text/html", '<img src="/s.jpg" alt="secret image">', {}),
    "/noindex.html": (
        200,
        "text/html",
        '<meta name="robots" content="noindex"><img src="/n.jpg" alt="not indexed">'
        '<a href="/deep.html">deep</a>',
        {},
    ),
    "/nofollow.html": (
        200,
        "text/html",
        '<meta name="robots" content="nofollow"><img src="/f.jpg" alt="followed no further">'
        '<a href="/deep.html">deep</a>',
        {},
    ),
    "/header-noai.html": (
        200,
        "text/html",
        '<img src="/h.jpg" alt="header opt out">',
        {"X-Robots-Tag": "noai"},
    ),
    "/photo.png": (200, "image/png", "\x89PNG not html", {}),
    "/sponsored.html": (200, "text/html", '<img src="/x.jpg" alt="sponsored">', {}),
    "/deep.html": (200, "text/html", '<img src="/d.jpg" alt="deep page">', {}),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        status, ctype, body, headers = PAGES.get(self.path, (404, "text/plain", "nope", {}))
        data = body.encode("latin-1")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def opt_out_site() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_opt_outs_nofollow_and_non_html(opt_out_site: http.server.ThreadingHTTPServer) -> None:
    origin = f"http://127.0.0.1:{opt_out_site.server_address[1]}"
    result = Crawler(CrawlConfig(max_depth=3), FETCH).crawl([origin + "/"])
    outcomes = {v.url[len(origin) :]: v.outcome for v in result.pages}
    assert outcomes == {
        "/": "html",
        "/secret/s.html": "robots",
        "/noindex.html": "opt_out",
        "/nofollow.html": "html",
        "/header-noai.html": "opt_out",
        "/photo.png": "not_html",
        "/missing.html": "fetch_http_error",
    }
    assert [c.caption for c in result.candidates] == ["front page image", "followed no further"]
    paths = opt_out_site.paths  # type: ignore[attr-defined]
    assert "/secret/s.html" not in paths
    assert "/deep.html" not in paths  # only linked from noindex and nofollow pages
    assert "/sponsored.html" not in paths  # rel=nofollow
    c = result.counters
    assert c["crawl.pages"] == c["crawl.pages.html"] + sum(c.with_prefix("crawl.skip.").values())


def test_crawl_config_is_checked() -> None:
    for bad in ({"max_depth": -1}, {"max_pages": 0}, {"threads": 0}):
        with pytest.raises(ConfigError):
            CrawlConfig(**bad)


def test_a_shared_fetcher_is_used_and_must_honour_robots(web: SynthWeb) -> None:
    from pipeline.fetch.client import Fetcher

    with pytest.raises(ConfigError, match="robots"):
        Crawler(fetcher=Fetcher(FETCH))
    import dataclasses

    fetcher = Fetcher(dataclasses.replace(FETCH, respect_robots=True))
    try:
        result = Crawler(CrawlConfig(max_depth=0), fetcher=fetcher).crawl(
            [web.base_url(0) + "/pages/1.html"]
        )
        assert [v.outcome for v in result.pages] == ["html"]
    finally:
        fetcher.close()
