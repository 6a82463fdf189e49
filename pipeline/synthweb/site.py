"""The generated website: which URLs exist, what each one does, and what the engine must say.

A ``Site`` is pure data computed from a ``SiteSpec``: image entries spread over a few
loopback hosts, HTML pages that reference them, and one entry for every fault a real web
throws at a downloader. Each entry carries the status the download engine must record for
it, so the site is its own ground truth: a test runs the engine over ``pair_rows`` and
compares statuses, nothing is hand-labelled.

Reference config
----------------
The expected statuses hold for the engine run with these settings (``REFERENCE_SETTINGS``,
flat keys named like the config fields; ``reference_config()`` builds the
``DownloadConfig``)::

    timeout          = 2.0          # seconds: connect, each read, whole transfer
    retries          = 2            # on connection errors, 429 and 5xx
    backoff_base     = 0.05         # seconds
    respect_robots   = true
    max_bytes        = 5_000_000
    max_image_pixels = 89_478_485   # Pillow's own default limit
    min_image_size   = 0
    max_redirects    = 5
    allow_networks   = ["127.0.0.0/8"]

Faults and expected statuses
----------------------------
======================  =====================================================  ==================
fault                   what the server does                                   expected status
======================  =====================================================  ==================
(none)                  200, a valid image                                     success
not_found               404                                                    http_error
server_error_then_ok    500 on the first request to the path, then 200         success
always_503              503 every time                                         http_error
rate_limited            429 with ``Retry-After: 1`` first, then 200            success
slow_drip               a 320x240 JPEG in 20 pieces over ``drip_seconds`` (1)  success
stall                   headers and a third of the body, then silence for      timeout
                        ``stall_seconds`` (30; ends at once on server stop)
truncated               Content-Length N, about N/2 bytes, connection closed   connection_error
content_length_short    Content-Length and body are the first 40% of a JPEG    decode_error
html_as_image           an HTML page sent as ``Content-Type: image/jpeg``      not_image
corrupt_jpeg            a JPEG whose header is intact and scan data destroyed  decode_error
bomb_png                a ~130-byte PNG declaring 12000x12000 (144 Mpx) gray   too_large
oversized               a valid 6 MB PNG with a truthful Content-Length        too_large
oversized_chunked       the same file, chunked, no Content-Length              too_large
redirect_chain          302, 301, 307 across hosts (the last relative), image  success
redirect_loop           302 between two paths forever                          too_many_redirects
redirect_private        302 to http://10.255.255.1:PORT/x.jpg (never contact)  blocked_address
noai                    a valid image with ``X-Robots-Tag: noai``              opt_out
robots_disallowed       a valid image under /private/, which robots.txt bans   opt_out
tiny                    a valid 16x16 image (too_small once min_image_size>16) success
not_image_text          an HTML page, honestly ``text/html``                   not_image
======================  =====================================================  ==================

The bomb declares 144 Mpx on purpose: over the 89.5 Mpx cap, but under Pillow's own
DecompressionBombError threshold (twice the cap), so ``Image.open`` succeeds with only a
warning and an engine that trusts Pillow instead of checking the header is caught.

Every host serves ``/robots.txt`` (``Disallow: /private/``), ``/`` (an index of pages)
and ``/pages/N.html``: ``<img alt>``, ``<figure>``/``<figcaption>``, images without alt,
relative, root-relative and absolute ``src``, a ``<base href>`` on page 1 and ``<a>``
links between pages and hosts.
"""

from __future__ import annotations

import html
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.schema import Status
from pipeline.synthweb import images

if TYPE_CHECKING:
    from pipeline.config import DownloadConfig

REFERENCE_SETTINGS: dict[str, Any] = {
    "timeout": 2.0,
    "retries": 2,
    "backoff_base": 0.05,
    "respect_robots": True,
    "max_bytes": 5_000_000,
    "max_image_pixels": 89_478_485,
    "min_image_size": 0,
    "max_redirects": 5,
    "allow_networks": ("127.0.0.0/8",),
}

EXPECTED_STATUS: dict[str | None, Status] = {
    None: Status.SUCCESS,
    "not_found": Status.HTTP_ERROR,
    "server_error_then_ok": Status.SUCCESS,
    "always_503": Status.HTTP_ERROR,
    "rate_limited": Status.SUCCESS,
    "slow_drip": Status.SUCCESS,
    "stall": Status.TIMEOUT,
    "truncated": Status.CONNECTION_ERROR,
    "content_length_short": Status.DECODE_ERROR,
    "html_as_image": Status.NOT_IMAGE,
    "corrupt_jpeg": Status.DECODE_ERROR,
    "bomb_png": Status.TOO_LARGE,
    "oversized": Status.TOO_LARGE,
    "oversized_chunked": Status.TOO_LARGE,
    "redirect_chain": Status.SUCCESS,
    "redirect_loop": Status.TOO_MANY_REDIRECTS,
    "redirect_private": Status.BLOCKED_ADDRESS,
    "noai": Status.OPT_OUT,
    "robots_disallowed": Status.OPT_OUT,
    "tiny": Status.SUCCESS,
    "not_image_text": Status.NOT_IMAGE,
}
FAULT_KINDS: tuple[str, ...] = tuple(k for k in EXPECTED_STATUS if k is not None)

# (format, width, height) of what a fault entry serves; 0x0 when it serves no image.
_FAULT_IMAGE: dict[str, tuple[str, int, int]] = {
    "not_found": ("jpeg", 0, 0),
    "server_error_then_ok": ("jpeg", 640, 480),
    "always_503": ("jpeg", 0, 0),
    "rate_limited": ("jpeg", 640, 480),
    "slow_drip": ("jpeg", 320, 240),
    "stall": ("jpeg", 640, 480),
    "truncated": ("jpeg", 640, 480),
    "content_length_short": ("jpeg", 640, 480),
    "html_as_image": ("html", 0, 0),
    "corrupt_jpeg": ("jpeg", 640, 480),
    "bomb_png": ("png", 12000, 12000),
    "oversized": ("png", 640, 480),
    "oversized_chunked": ("png", 640, 480),
    "redirect_chain": ("jpeg", 640, 480),
    "redirect_loop": ("jpeg", 0, 0),
    "redirect_private": ("jpeg", 0, 0),
    "noai": ("jpeg", 640, 480),
    "robots_disallowed": ("jpeg", 640, 480),
    "tiny": ("jpeg", 16, 16),
    "not_image_text": ("html", 0, 0),
}
OVERSIZED_BYTES = 6_000_000  # over REFERENCE_SETTINGS["max_bytes"] with room to spare
PRIVATE_REDIRECT_ADDRESS = "10.255.255.1"  # private, not loopback: the guard must refuse it
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
RETRY_AFTER_SECONDS = 1
TRUNCATED_FRACTION = 0.5
SHORT_LENGTH_FRACTION = 0.4
STALL_SENT_FRACTION = 1 / 3
DRIP_PIECES = 20

# Share of normal images per format, and the largest long side each format gets (PNG and
# GIF of noisy pixels grow fast; a normal image must stay under the 5 MB reference cap).
_FORMAT_SHARE: dict[str, float] = {"jpeg": 0.80, "png": 0.08, "webp": 0.08, "gif": 0.04}
_FORMAT_MAX_SIDE: dict[str, int] = {"jpeg": 1_000_000, "png": 1200, "webp": 2000, "gif": 800}
_ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16, 5 / 4)
_SIZE_MEDIAN = 800.0  # long side; with sigma 0.45 about 85% fall in 400..1500
_SIZE_SIGMA = 0.45


@dataclass(frozen=True)
class SiteSpec:
    """What to generate. Equal specs give byte-identical sites.

    ``n_images`` counts the image slots besides the one dedicated entry per fault kind,
    so a site has ``n_images + len(FAULT_KINDS)`` entries. With ``fault_every = k > 0``,
    every k-th slot also becomes a fault, cycling through ``FAULT_KINDS``, for
    benchmarks that want a steady share of bad URLs.
    """

    seed: int = 0
    n_images: int = 200
    n_hosts: int = 4
    n_pages: int = 20
    fault_every: int = 0
    min_size: int = 200  # long side of normal images, px
    max_size: int = 3000
    stall_seconds: float = 30.0
    drip_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.n_images < 0:
            raise ValueError(f"n_images must be >= 0, got {self.n_images}")
        if not 1 <= self.n_hosts <= 254:
            raise ValueError(f"n_hosts must be in 1..254 (127.0.0.1..254), got {self.n_hosts}")
        if self.n_pages < 1:
            raise ValueError(f"n_pages must be >= 1, got {self.n_pages}")
        if self.fault_every < 0:
            raise ValueError(f"fault_every must be >= 0, got {self.fault_every}")
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}"
            )
        if self.stall_seconds < 0 or self.drip_seconds < 0:
            raise ValueError("stall_seconds and drip_seconds must be >= 0")


@dataclass(frozen=True)
class ImageEntry:
    """One image URL of the site and its ground truth.

    ``width``/``height``/``format`` describe what the URL serves (for a redirect chain,
    its final image); they are 0 for URLs that never serve an image. ``seed`` renders the
    pixels and the caption.
    """

    id: int
    host_index: int
    path: str
    fault: str | None
    format: str
    width: int
    height: int
    caption: str
    expected_status: str
    seed: int


@dataclass(frozen=True)
class Route:
    """What one (host, path) does. ``kind`` is entry, redirect, final, page, index or robots.

    A redirect points at ``location`` (host_index, path) on the site, sent as a path only
    when ``relative``; or at ``external``, a URL template with ``{port}``.
    """

    kind: str
    entry: ImageEntry | None = None
    status: int = 200
    location: tuple[int, str] | None = None
    relative: bool = False
    external: str | None = None
    page: int = -1


@dataclass(frozen=True)
class PageImage:
    """One image reference on a page: how it is written and the caption a crawler should find.

    ``form`` is alt (``<img alt>``), figure (``<figcaption>``) or no_alt (no caption);
    ``src_style`` is root (``/img/..``), doc (``../img/..``), base (relative to the
    page's ``<base href>``) or absolute.
    """

    entry: ImageEntry
    form: str
    src_style: str

    @property
    def caption(self) -> str | None:
        return None if self.form == "no_alt" else self.entry.caption


def reference_flags() -> str:
    """``REFERENCE_SETTINGS`` as ``pipeline.download`` flags, every one spelled out so the
    command stays right whatever the engine's defaults become."""
    flags = []
    for key, value in REFERENCE_SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append(f"{flag} false")
        elif isinstance(value, tuple):
            flags.append(f"{flag} {','.join(value)}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def reference_config() -> DownloadConfig:
    """The DownloadConfig under which ``expected_status`` holds (see the module docstring)."""
    from pipeline.config import DownloadConfig, build_config

    return build_config(DownloadConfig, REFERENCE_SETTINGS)


def default_addresses(n_hosts: int) -> tuple[str, ...]:
    """Host k (0-based) is 127.0.0.(k+1): all loopback, no DNS, distinct per host."""
    return tuple(f"127.0.0.{k + 1}" for k in range(n_hosts))


def _mix_seed(site_seed: int, index: int) -> int:
    """Per-image seed: distinct per (site, index) and stable (no Python hash())."""
    return (site_seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) % (2**63)


def _choice_index(r: random.Random, weights: Sequence[float]) -> int:
    x = r.random() * sum(weights)
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(weights) - 1


def _shuffle(r: random.Random, items: list[str]) -> None:
    """Fisher-Yates on ``random()`` (``random.shuffle`` may change across Python versions)."""
    for i in range(len(items) - 1, 0, -1):
        j = min(int(r.random() * (i + 1)), i)
        items[i], items[j] = items[j], items[i]


def _normal_size(r: random.Random, spec: SiteSpec, fmt: str) -> tuple[int, int]:
    # Log-normal long side (Box-Muller on random(), stable across Python versions).
    u1, u2 = 1.0 - r.random(), r.random()
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    long_side = round(math.exp(math.log(_SIZE_MEDIAN) + _SIZE_SIGMA * z))
    long_side = min(max(long_side, spec.min_size), spec.max_size)
    long_side = min(long_side, max(_FORMAT_MAX_SIDE[fmt], spec.min_size))
    aspect = _ASPECTS[min(int(r.random() * len(_ASPECTS)), len(_ASPECTS) - 1)]
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def _format_plan(r: random.Random, n: int) -> list[str]:
    """Formats for n normal images: fixed shares, each present once n >= 4, shuffled."""
    counts = {f: round(n * s) for f, s in _FORMAT_SHARE.items() if f != "jpeg"}
    if n >= len(_FORMAT_SHARE):
        counts = {f: max(1, c) for f, c in counts.items()}
    plan = [f for f, c in counts.items() for _ in range(c)]
    plan = ["jpeg"] * max(0, n - len(plan)) + plan
    plan = plan[:n]
    _shuffle(r, plan)
    return plan


class Site:
    """The generated site for a spec: entries, routes, pages and payload bytes.

    Pure and deterministic: nothing here touches the network or renders an image until
    ``payload`` is called. The server caches payloads; this class does not.
    """

    def __init__(
        self, spec: SiteSpec | None = None, addresses: Sequence[str] | None = None
    ) -> None:
        self.spec = spec if spec is not None else SiteSpec()
        self.addresses: tuple[str, ...] = (
            tuple(addresses) if addresses is not None else default_addresses(self.spec.n_hosts)
        )
        if len(self.addresses) != self.spec.n_hosts:
            raise ValueError(f"{len(self.addresses)} addresses for {self.spec.n_hosts} hosts")
        self.entries: tuple[ImageEntry, ...] = self._build_entries()
        self._routes: dict[tuple[int, str], Route] = {}
        self._final: dict[int, tuple[int, str]] = {}
        self._pages: dict[tuple[int, int], list[PageImage]] = {}
        self._build_routes()
        self._build_pages()

    # -- construction -------------------------------------------------------------------

    def _build_entries(self) -> tuple[ImageEntry, ...]:
        spec = self.spec
        r = random.Random(spec.seed)
        n_faults = len(FAULT_KINDS)
        total = spec.n_images + n_faults
        # The dedicated fault entries are spread evenly, so any prefix has a few.
        dedicated = {
            round((k + 0.5) * total / n_faults - 0.5): kind for k, kind in enumerate(FAULT_KINDS)
        }
        kinds: list[str | None] = []
        slot = 0
        extra = 0
        for i in range(total):
            if i in dedicated:
                kinds.append(dedicated[i])
                continue
            slot += 1
            if spec.fault_every and slot % spec.fault_every == 0:
                kinds.append(FAULT_KINDS[extra % n_faults])
                extra += 1
            else:
                kinds.append(None)
        formats = iter(_format_plan(r, kinds.count(None)))
        host_weights = [1.0 / (k + 1) for k in range(spec.n_hosts)]  # skewed, like the web

        entries = []
        for i, kind in enumerate(kinds):
            host = _choice_index(r, host_weights)
            if kind is None:
                fmt = next(formats)
                w, h = _normal_size(r, spec, fmt)
            else:
                fmt, w, h = _FAULT_IMAGE[kind]
            seed = _mix_seed(spec.seed, i)
            ext = images.EXTENSIONS.get(fmt, "jpg")
            folder = "private" if kind == "robots_disallowed" else "img"
            entries.append(
                ImageEntry(
                    id=i,
                    host_index=host,
                    path=f"/{folder}/{i:05d}.{ext}",
                    fault=kind,
                    format=fmt,
                    width=w,
                    height=h,
                    caption=images.caption_for(seed),
                    expected_status=EXPECTED_STATUS[kind].value,
                    seed=seed,
                )
            )
        return tuple(entries)

    def _build_routes(self) -> None:
        n = self.spec.n_hosts
        add = self._routes.__setitem__
        for e in self.entries:
            a, b, c = e.host_index, (e.host_index + 1) % n, (e.host_index + 2) % n
            if e.fault == "redirect_chain":
                final = (c, f"/img/{e.id:05d}-final.jpg")
                add((a, e.path), Route("redirect", e, 302, (b, f"/r/{e.id}/1")))
                add((b, f"/r/{e.id}/1"), Route("redirect", e, 301, (c, f"/r/{e.id}/2")))
                add((c, f"/r/{e.id}/2"), Route("redirect", e, 307, final, relative=True))
                add(final, Route("final", e))
                self._final[e.id] = final
            elif e.fault == "redirect_loop":
                add((a, e.path), Route("redirect", e, 302, (b, f"/loop/{e.id}/1")))
                add((b, f"/loop/{e.id}/1"), Route("redirect", e, 302, (a, f"/loop/{e.id}/0")))
                add((a, f"/loop/{e.id}/0"), Route("redirect", e, 302, (b, f"/loop/{e.id}/1")))
            elif e.fault == "redirect_private":
                target = f"http://{PRIVATE_REDIRECT_ADDRESS}:{{port}}/x.jpg"
                add((a, e.path), Route("redirect", e, 302, external=target))
            else:
                add((a, e.path), Route("entry", e))
        for h in range(n):
            add((h, "/robots.txt"), Route("robots"))
            add((h, "/"), Route("index"))
            for p in range(self.spec.n_pages):
                add((h, f"/pages/{p}.html"), Route("page", page=p))

    @property
    def base_page(self) -> int:
        """The page number that carries a ``<base href>`` on every host."""
        return 1 if self.spec.n_pages > 1 else 0

    def _build_pages(self) -> None:
        spec = self.spec
        by_host: list[list[ImageEntry]] = [[] for _ in range(spec.n_hosts)]
        for e in self.entries:
            by_host[e.host_index].append(e)
        forms = ("alt", "figure", "alt", "no_alt")
        for h in range(spec.n_hosts):
            for p in range(spec.n_pages):
                styles = ("base",) if p == self.base_page else ("root", "absolute", "doc")
                own = by_host[h][p :: spec.n_pages]
                items = [
                    PageImage(e, forms[j % 4], styles[j % len(styles)]) for j, e in enumerate(own)
                ]
                self._pages[(h, p)] = items
        if spec.n_hosts > 1:
            # Each page also shows one image of the next host's same page, by absolute URL.
            for h in range(spec.n_hosts):
                for p in range(spec.n_pages):
                    other = by_host[(h + 1) % spec.n_hosts][p :: spec.n_pages]
                    if other:
                        self._pages[(h, p)].append(PageImage(other[0], "alt", "absolute"))

    # -- lookups ------------------------------------------------------------------------

    def entry(self, entry_id: int) -> ImageEntry:
        return self.entries[entry_id]

    def by_fault(self, fault: str | None) -> list[ImageEntry]:
        """All entries with this fault kind (None: the normal images)."""
        return [e for e in self.entries if e.fault == fault]

    def fault_entry(self, fault: str) -> ImageEntry:
        """The first entry of a fault kind (every kind has at least one)."""
        if fault not in EXPECTED_STATUS:
            raise KeyError(f"unknown fault kind {fault!r}")
        return next(e for e in self.entries if e.fault == fault)

    def route(self, host_index: int, path: str) -> Route | None:
        """What ``path`` (without query) does on host ``host_index``; None means 404."""
        return self._routes.get((host_index, path))

    def final_location(self, entry: ImageEntry) -> tuple[int, str] | None:
        """Where a redirect chain ends (host_index, path); None for other entries."""
        return self._final.get(entry.id)

    def origin(self, host_index: int, port: int) -> str:
        return f"http://{self.addresses[host_index]}:{port}"

    def url_for(self, entry: ImageEntry, port: int) -> str:
        return self.origin(entry.host_index, port) + entry.path

    def pair_rows(self, port: int) -> list[dict[str, Any]]:
        """Candidate rows, in entry order: url, caption, fault, expected_status, host.

        ``host`` is the host index, as in ``SynthWeb.request_log`` and ``hits``.
        """
        return [
            {
                "url": self.url_for(e, port),
                "caption": e.caption,
                "fault": e.fault,
                "expected_status": e.expected_status,
                "host": e.host_index,
            }
            for e in self.entries
        ]

    # -- bodies -------------------------------------------------------------------------

    def payload(self, entry: ImageEntry) -> bytes:
        """The complete body the URL's image response is cut from (empty if it has none).

        For a redirect chain, the final image. Rendering costs up to ~0.1 s for big images,
        so callers that repeat should cache (the server does).
        """
        kind = entry.fault
        if kind in ("html_as_image", "not_image_text"):
            return _html_doc(
                "Not an image",
                f"<p>This page sits at an image URL. It was supposed to show {html.escape(entry.caption)}.</p>"
                * 8,
            ).encode()
        if kind == "bomb_png":
            return images.png_bomb(entry.width, entry.height)
        if entry.width == 0:
            return b""
        img, _ = images.render_image(entry.seed, entry.width, entry.height)
        if kind in ("oversized", "oversized_chunked"):
            return images.pad_png(images.encode(img, "png"), OVERSIZED_BYTES)
        data = images.encode(img, entry.format)
        if kind == "corrupt_jpeg":
            return images.corrupt_jpeg(data, entry.seed)
        return data

    def content_type(self, entry: ImageEntry) -> str:
        """The Content-Type the server sends for the entry's body."""
        if entry.fault == "not_image_text":
            return "text/html; charset=utf-8"
        return images.CONTENT_TYPES.get(entry.format, "image/jpeg")

    # -- pages --------------------------------------------------------------------------

    def page_images(self, host_index: int, page: int) -> list[PageImage]:
        """The image references on /pages/{page}.html of a host, in document order."""
        return list(self._pages[(host_index, page)])

    def page_pairs(self, host_index: int, page: int, port: int) -> list[dict[str, Any]]:
        """What a crawler should extract from a page: absolute url, caption (None: no alt)."""
        return [
            {"url": self.url_for(pi.entry, port), "caption": pi.caption, "form": pi.form}
            for pi in self._pages[(host_index, page)]
        ]

    def _src(self, pi: PageImage, host_index: int, port: int) -> str:
        e = pi.entry
        if pi.src_style == "absolute" or e.host_index != host_index:
            return self.url_for(e, port)
        if pi.src_style == "root":
            return e.path
        if pi.src_style == "doc":
            return ".." + e.path  # the page lives under /pages/
        return e.path.lstrip("/")  # "base": relative to <base href="ORIGIN/">

    def render_page(self, host_index: int, page: int, port: int) -> str:
        """The HTML of /pages/{page}.html on a host."""
        n = self.spec.n_pages
        origin = self.origin(host_index, port)
        is_base = page == self.base_page
        parts: list[str] = [f"<h1>Gallery {page} on host {host_index}</h1>"]
        for pi in self._pages[(host_index, page)]:
            src = html.escape(self._src(pi, host_index, port))
            cap = html.escape(pi.entry.caption)
            if pi.form == "alt":
                parts.append(f'<p><img src="{src}" alt="{cap}" width="{pi.entry.width}"></p>')
            elif pi.form == "figure":
                parts.append(f'<figure><img src="{src}"><figcaption>{cap}</figcaption></figure>')
            else:
                parts.append(f'<div class="photo"><img src="{src}"></div>')
        # Links: relative, root-relative and cross-host absolute (crawl discovery).
        nxt, prev = (page + 1) % n, (page - 1) % n
        other = (host_index + 1) % self.spec.n_hosts
        rel_prefix = "pages/" if is_base else ""
        parts.append(
            "<nav>"
            f'<a href="{rel_prefix}{nxt}.html">next</a> '
            f'<a href="/pages/{prev}.html">previous</a> '
            f'<a href="{self.origin(other, port)}/pages/{page}.html">mirror</a> '
            f'<a href="/">index</a>'
            "</nav>"
        )
        head = f'<base href="{origin}/">' if is_base else ""
        return _html_doc(f"Gallery {page}", "\n".join(parts), head)

    def render_index(self, host_index: int) -> str:
        """The HTML of / on a host: links to every page."""
        links = "\n".join(
            f'<li><a href="/pages/{p}.html">Gallery {p}</a></li>' for p in range(self.spec.n_pages)
        )
        return _html_doc(f"Host {host_index}", f"<ul>\n{links}\n</ul>")


def _html_doc(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{head}</head>\n<body>\n{body}\n</body></html>\n"
    )
