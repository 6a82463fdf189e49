"""(image URL, caption) candidates from one HTML document, parsed with selectolax (lexbor).

Every ``<img>`` seen ends either as a candidate or counted under a skip reason, so the
extraction funnel adds up: ``extract.images = extract.candidates + sum(extract.skip.*)``.

The caption is the first usable text in ``ExtractConfig.caption_sources`` order (default:
``alt``, then the ``<figcaption>`` of the enclosing ``<figure>``, then ``title``). The
image URL is ``src``, resolved against the page URL and its ``<base href>``; ``srcset`` is
read only when ``src`` is missing (its largest candidate), and lazy-loading attributes
(``data-src`` ...) only when ``src`` is missing or a ``data:`` placeholder, because a
``data:`` URL is never worth fetching: it is counted under ``data_url``, not emitted.

Why lexbor: it is a complete HTML5 parser (malformed markup parses as a browser would)
and parses a typical 50 KB page in well under a millisecond.
"""

from __future__ import annotations

import codecs
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.curate.records import Candidate, CaptionSource, SourceKind
from pipeline.stats.counters import Counters

CAPTION_SOURCES = (
    CaptionSource.ALT.value,
    CaptionSource.FIGCAPTION.value,
    CaptionSource.TITLE.value,
)
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")


class SkipReason:
    """Why an ``<img>`` gave no candidate (counted as ``extract.skip.<reason>``)."""

    NO_TEXT = "no_text"  # none of the caption sources has non-blank text
    NO_SRC = "no_src"  # no src, srcset or lazy-loading attribute with a URL
    DATA_URL = "data_url"  # the only URL is inline data: never fetched, never a candidate
    BAD_SCHEME = "bad_scheme"  # javascript:, blob:, about:, ftp: ...
    INVALID_URL = "invalid_url"  # cannot be parsed or resolved (bad port, no host ...)
    URL_TOO_LONG = "url_too_long"


@dataclass(frozen=True)
class ExtractConfig:
    """How candidates are read from HTML (and from WARC/WAT files and crawled pages)."""

    # Order of preference; a subset restricts the texts used (e.g. ("alt",) as LAION).
    caption_sources: tuple[str, ...] = CAPTION_SOURCES
    # Read when src is missing or a data: placeholder (lazy loading scripts swap them in).
    lazy_src_attributes: tuple[str, ...] = ("data-src", "data-lazy-src", "data-original")
    max_url_length: int = 2048  # longer URLs are mostly inline data or tracking blobs
    max_html_bytes: int = 5_000_000  # larger documents are parsed up to this many bytes

    def __post_init__(self) -> None:
        from pipeline.config import ConfigError

        unknown = [s for s in self.caption_sources if s not in CAPTION_SOURCES]
        if unknown or not self.caption_sources:
            raise ConfigError(
                f"caption_sources must be a non-empty subset of {', '.join(CAPTION_SOURCES)}, "
                f"got {self.caption_sources!r}"
            )
        if self.max_url_length <= 0 or self.max_html_bytes <= 0:
            raise ConfigError("max_url_length and max_html_bytes must be positive")


# ---- decoding -------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
# The WHATWG Encoding Standard's labels, as browsers read them, each with the Python codec
# that decodes what browsers decode for it: the legacy labels name supersets in a browser
# (Shift_JIS is windows-31j, gb2312 and GBK decode as gb18030, euc-kr is windows-949,
# big5 is Big5-HKSCS, iso-8859-1 and ascii are windows-1252, iso-8859-9 is windows-1254,
# tis-620 is windows-874), and pages labelled so use the extra characters (Python's
# narrow shift_jis or gb2312 would give U+FFFD for them). A label outside the standard is
# unknown, as in a browser ("zlib" or "rot13" are Python codecs, not encodings); the
# standard's "replacement" labels (iso-2022-kr, hz-gb-2312 ...) and x-user-defined too.
_WHATWG_LABELS: dict[str, str] = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "cp866": "866 cp866 csibm866 ibm866",
    "iso8859_2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 "
    "iso_8859-2:1987 l2 latin2",
    "iso8859_3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 "
    "iso_8859-3:1988 l3 latin3",
    "iso8859_4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 "
    "iso_8859-4:1988 l4 latin4",
    "iso8859_5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 "
    "iso_8859-5 iso_8859-5:1988",
    "iso8859_6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 "
    "iso-8859-6 iso-8859-6-e iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 "
    "iso_8859-6:1987",
    "iso8859_7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 "
    "iso8859-7 iso88597 iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso8859_8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 "
    "iso8859-8 iso88598 iso_8859-8 iso_8859-8:1988 visual csiso88598i iso-8859-8-i logical",
    "iso8859_10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso8859_13": "iso-8859-13 iso8859-13 iso885913",
    "iso8859_14": "iso-8859-14 iso8859-14 iso885914",
    "iso8859_15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso8859_16": "iso-8859-16",
    "koi8_r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8_u": "koi8-ru koi8-u",
    "mac_roman": "csmacintosh mac macintosh x-mac-roman",
    "mac_cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "cp874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "cp1250": "cp1250 windows-1250 x-cp1250",
    "cp1251": "cp1251 windows-1251 x-cp1251",
    # latin-1 is no WHATWG label (a browser falls back to windows-1252 all the same)
    "cp1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 "
    "iso8859-1 iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 latin-1 us-ascii windows-1252 "
    "x-cp1252",
    "cp1253": "cp1253 windows-1253 x-cp1253",
    "cp1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 "
    "iso_8859-9:1989 l5 latin5 windows-1254 x-cp1254",
    "cp1255": "cp1255 windows-1255 x-cp1255",
    "cp1256": "cp1256 windows-1256 x-cp1256",
    "cp1257": "cp1257 windows-1257 x-cp1257",
    "cp1258": "cp1258 windows-1258 x-cp1258",
    "gb18030": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 "
    "x-gbk gb18030",
    "big5hkscs": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc_jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso2022_jp": "csiso2022jp iso-2022-jp",
    "cp932": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "cp949": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 "
    "ksc5601 ksc_5601 windows-949",
    "utf-16-be": "unicodefffe utf-16be",
    "utf-16-le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
}
_CODEC_OF_LABEL: dict[str, str] = {
    label: codec for codec, labels in _WHATWG_LABELS.items() for label in labels.split()
}


def charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    for part in content_type.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def _codec(label: str | None) -> str | None:
    """The Python codec a browser's decoding of a charset label amounts to; None when the
    label names no encoding of the WHATWG standard."""
    if not label:
        return None
    return _CODEC_OF_LABEL.get(label.strip().lower())


def decode_html(data: bytes, content_type: str | None = None) -> str:
    """Bytes to text as a browser would decide, without guessing libraries: BOM, then the
    HTTP charset, then ``<meta charset>`` in the first 4 KB, then UTF-8, then windows-1252.
    Never raises: undecodable bytes become U+FFFD (ftfy and the cleaner deal with the rest).
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", "replace")
    codec = _codec(charset_from_content_type(content_type))
    if codec is None:
        m = _META_CHARSET.search(data, 0, 4096)
        codec = _codec(m.group(1).decode("ascii", "replace")) if m else None
    if codec is not None and not codec.startswith("utf-16"):  # a utf-16 label on 8-bit text lies
        return data.decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def is_html_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in HTML_CONTENT_TYPES


_HAS_IMG = re.compile(rb"<img[\s/>]", re.I)


def may_have_images(data: bytes) -> bool:
    """A cheap byte scan: a page without ``<img`` is not worth parsing for candidates."""
    return _HAS_IMG.search(data) is not None


# ---- URLs -----------------------------------------------------------------------------

_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_SPACE = "".join(chr(c) for c in range(0x21))


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _checked(url: str) -> tuple[str | None, str | None]:
    """An absolute URL's validity: http(s), a host, a port that parses."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None, SkipReason.INVALID_URL
    if parts.scheme.lower() not in ("http", "https"):
        return None, SkipReason.BAD_SCHEME
    if not parts.hostname:
        return None, SkipReason.INVALID_URL
    if not url.startswith(("http:", "https:")):
        url = parts.scheme.lower() + url[len(parts.scheme) :]
    if not url.isascii() or " " in url:
        encoded = _encode_as_browser(parts)
        return (encoded, None) if encoded else (None, SkipReason.INVALID_URL)
    return url, None


class UrlResolver:
    """Resolves references against one base URL, as ``urljoin`` would, but without
    re-parsing the base for every reference: a page has dozens of images, and ``urljoin``
    was half of the extraction time. Root-relative and plain relative paths (most of
    them) are joined by concatenation; anything unusual (dot segments, a query or
    fragment only) goes through ``urljoin``. Backslashes before the query are slashes,
    as in a browser.
    """

    __slots__ = ("base", "directory", "origin", "scheme")

    def __init__(self, base: str) -> None:
        self.base = base
        parts = urllib.parse.urlsplit(base)
        self.scheme = parts.scheme.lower()
        self.origin = f"{self.scheme}://{parts.netloc}" if parts.netloc else ""
        path = parts.path or "/"
        self.directory = self.origin + path[: path.rfind("/") + 1]

    def resolve(self, ref: str) -> tuple[str | None, str | None]:
        """``ref`` as an absolute http(s) URL: (url, None), or (None, skip reason). As the
        WHATWG URL parser does, leading and trailing spaces and controls are stripped and
        tabs and newlines inside removed."""
        ref = ref.strip(_C0_SPACE)
        if "\t" in ref or "\n" in ref or "\r" in ref:
            ref = ref.translate(_TAB_NEWLINE)
        if not ref:
            return None, SkipReason.NO_SRC
        if ref[:5].lower() == "data:":
            return None, SkipReason.DATA_URL
        if "\\" in ref:
            ref = self._slashes(ref)
        first = ref[0]
        if first == "/":
            if ref[1:2] == "/":
                return _checked(f"{self.scheme}:{ref}")  # protocol-relative
            if self.origin and "/." not in ref and "\\" not in ref:
                return _checked_local(self.origin + ref)
        elif m := _SCHEME.match(ref):
            if ref[m.end() : m.end() + 2] == "//":
                return _checked(ref)
            # "mailto:x" or "http:a.jpg" (relative, oddly): urljoin knows these cases
        elif first not in "?#." and self.origin and "/." not in ref and "\\" not in ref:
            return _checked_local(self.directory + ref)
        try:
            return _checked(urllib.parse.urljoin(self.base, ref))
        except ValueError:
            return None, SkipReason.INVALID_URL

    def _slashes(self, ref: str) -> str:
        """WHATWG URL parsing for http(s): a backslash before the query is a ``/``
        (``images\\a.jpg``, ``\\img\\a.jpg``, ``http:\\\\host\\a.jpg``), as browsers
        request them; ``urljoin`` would keep it and the server see ``%5C``."""
        m = _SCHEME.match(ref)
        scheme = ref[: m.end() - 1].lower() if m else self.scheme
        if scheme not in ("http", "https"):
            return ref
        cut = len(ref)
        for mark in "?#":
            at = ref.find(mark)
            if 0 <= at < cut:
                cut = at
        return ref[:cut].replace("\\", "/") + ref[cut:]


def _checked_local(url: str) -> tuple[str | None, str | None]:
    """A URL on the base's (already valid) origin: only the encoding may need work."""
    if not url.isascii() or " " in url:
        return _checked(url)
    return url, None


def resolve_url(ref: str, base: str) -> tuple[str | None, str | None]:
    """``ref`` resolved against ``base`` (see ``UrlResolver.resolve``)."""
    return UrlResolver(base).resolve(ref)


def _encode_as_browser(parts: urllib.parse.SplitResult) -> str | None:
    """What a browser requests for a URL written with spaces or non-ASCII characters: the
    host in IDNA, the rest percent-encoded as UTF-8 (existing escapes left alone)."""
    netloc = parts.netloc
    host = parts.hostname or ""
    if not host.isascii():
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        netloc = netloc.replace(host, ascii_host) if host in netloc else ascii_host
    safe = "/%:@!$&'()*+,;=-._~?#[]"
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            netloc,
            urllib.parse.quote(parts.path, safe=safe),
            urllib.parse.quote(parts.query, safe=safe),
            urllib.parse.quote(parts.fragment, safe=safe),
        )
    )


def _srcset_candidates(value: str) -> list[tuple[str, float]]:
    """(url, rank) of each srcset entry, parsed as the HTML spec does (URLs may hold commas,
    descriptors follow whitespace). The rank is the density (1 when absent), or the width
    lifted above every density, so a width always wins (mixing both is invalid HTML)."""
    out: list[tuple[str, float]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and not value[i].isspace():
            i += 1
        url = value[start:i]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = i
            depth = 0
            while i < n:
                ch = value[i]
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth = max(0, depth - 1)
                elif ch == "," and depth == 0:
                    break
                i += 1
            descriptor = value[start:i].strip()
            i += 1
        if not url:
            continue
        size = 1.0
        kind = "x"
        for token in descriptor.split():
            unit, number = token[-1:].lower(), token[:-1]
            try:
                if unit == "w":
                    size, kind = float(number), "w"
                elif unit == "x":
                    size = float(number)
            except ValueError:
                continue
        out.append((url, size if kind == "x" else 1e6 + size))  # any width beats any density
    return out


def largest_srcset_url(value: str) -> str | None:
    """The candidate with the largest width (or density) of a srcset; None when empty."""
    candidates = _srcset_candidates(value)
    if not candidates:
        return None
    best = candidates[0]
    for c in candidates[1:]:
        if c[1] > best[1]:
            best = c
    return best[0]


def _collapse(text: str | None) -> str | None:
    """Whitespace collapsed, or None when nothing is left (blank text is not usable)."""
    if not text:
        return None
    text = " ".join(text.split())
    return text or None


def _image_url(
    attrs: Mapping[str, str | None],
    base: UrlResolver,
    config: ExtractConfig,
    counters: Counters,
) -> tuple[str | None, str | None]:
    src = (attrs.get("src") or "").strip(_C0_SPACE)
    is_placeholder = src[:5].lower() == "data:"
    if src and not is_placeholder:
        if len(src) > config.max_url_length:
            return None, SkipReason.URL_TOO_LONG
        return base.resolve(src)
    # No real src (missing, or a data: placeholder): a lazy-loading attribute, then the
    # largest srcset entry; a placeholder with neither is counted as data_url.
    for name in config.lazy_src_attributes:
        value = (attrs.get(name) or "").strip(_C0_SPACE)
        if value and value[:5].lower() != "data:":
            counters.add("extract.src.lazy")
            if len(value) > config.max_url_length:
                return None, SkipReason.URL_TOO_LONG
            return base.resolve(value)
    srcset = attrs.get("srcset")
    if srcset:
        best = largest_srcset_url(srcset)
        if best is not None:
            counters.add("extract.src.srcset")
            if len(best) > config.max_url_length:
                return None, SkipReason.URL_TOO_LONG
            return base.resolve(best)
    if is_placeholder:
        return None, SkipReason.DATA_URL
    return None, SkipReason.NO_SRC


def image_candidate(
    attrs: Mapping[str, str | None],
    base: UrlResolver,
    page_url: str,
    source: str,
    config: ExtractConfig,
    counters: Counters,
    figcaption: Callable[[], str | None] | None = None,
) -> Candidate | None:
    """The candidate of one image, or None with its skip reason counted. ``figcaption``
    gives the enclosing figure's caption, asked only when the earlier sources are blank.
    Shared by HTML pages and WAT link lists, so both count the same way."""
    counters.add("extract.images")
    caption: str | None = None
    caption_source = ""
    for name in config.caption_sources:
        if name == CaptionSource.FIGCAPTION:
            text = figcaption() if figcaption is not None else None
        else:
            text = _collapse(attrs.get(name))
        if text is not None:
            caption, caption_source = text, name
            break
    if caption is None:
        counters.add("extract.skip." + SkipReason.NO_TEXT)
        return None
    url, reason = _image_url(attrs, base, config, counters)
    if url is None:
        counters.add("extract.skip." + (reason or SkipReason.NO_SRC))
        return None
    counters.add("extract.candidates")
    counters.add("extract.caption." + caption_source)
    return Candidate(url, caption, caption_source, page_url, source)


# ---- the page -------------------------------------------------------------------------


class HtmlPage:
    """One parsed document: its base URL, image candidates, links and meta robots."""

    def __init__(
        self, document: str | bytes, page_url: str, content_type: str | None = None
    ) -> None:
        from selectolax.lexbor import LexborHTMLParser

        if isinstance(document, bytes | bytearray | memoryview):
            document = decode_html(bytes(document), content_type)
        self.page_url = page_url
        self.tree = LexborHTMLParser(document)
        self.base_url = self._base_url()
        self.resolver = UrlResolver(self.base_url)

    def _base_url(self) -> str:
        """The first ``<base href>`` resolved against the page URL (HTML: only the first
        counts); ignored when it does not resolve to an http(s) URL."""
        node = self.tree.css_first("base[href]")
        if node is not None:
            href = node.attributes.get("href")
            if href:
                url, _ = resolve_url(href, self.page_url)
                if url is not None:
                    return url
        return self.page_url

    def candidates(
        self,
        source: str = SourceKind.WARC.value,
        config: ExtractConfig | None = None,
        counters: Counters | None = None,
    ) -> list[Candidate]:
        """One candidate per ``<img>`` with a usable text and URL, in document order."""
        config = config or ExtractConfig()
        counters = counters if counters is not None else Counters()
        images = self.tree.css("img")
        if not images:
            return []
        want_fig = CaptionSource.FIGCAPTION.value in config.caption_sources
        has_figures = want_fig and self.tree.css_first("figure") is not None
        figure_text: dict[int, str | None] = {}
        out: list[Candidate] = []
        for img in images:
            figcaption = (
                (lambda img=img: self._figcaption(img, figure_text)) if has_figures else None
            )
            c = image_candidate(
                img.attributes, self.resolver, self.page_url, source, config, counters, figcaption
            )
            if c is not None:
                out.append(c)
        return out

    @staticmethod
    def _figcaption(img: Any, cache: dict[int, str | None]) -> str | None:
        """The text of the ``<figcaption>`` child of the nearest ``<figure>`` ancestor."""
        node = img.parent
        while node is not None and node.tag != "figure":
            node = node.parent
        if node is None:
            return None
        key = node.mem_id
        if key not in cache:
            text = None
            for child in node.iter():
                if child.tag == "figcaption":
                    text = _collapse(child.text(deep=True))
                    break
            cache[key] = text
        return cache[key]

    def links(self, follow_nofollow: bool = False) -> list[str]:
        """Absolute http(s) URLs of ``<a href>`` and ``<area href>``, fragments dropped,
        first occurrence order; ``rel=nofollow`` links are left out unless asked for."""
        seen: set[str] = set()
        out: list[str] = []
        resolver = self.resolver
        for node in self.tree.css("a[href], area[href]"):
            attrs = node.attributes
            if not follow_nofollow and "nofollow" in (attrs.get("rel") or "").lower().split():
                continue
            url, _ = resolver.resolve(attrs.get("href") or "")
            if url is None:
                continue
            url = urllib.parse.urldefrag(url)[0]
            if url not in seen:
                seen.add(url)
                out.append(url)
        return out

    def meta_robots(self, agents: Iterable[str] = ()) -> set[str]:
        """Directives of ``<meta name="robots">`` (and of the named agents), lowercased."""
        names = {"robots", *(a.lower() for a in agents)}
        out: set[str] = set()
        for node in self.tree.css("meta[name]"):
            attrs = node.attributes
            if (attrs.get("name") or "").strip().lower() in names:
                out.update(
                    d.strip().lower() for d in (attrs.get("content") or "").split(",") if d.strip()
                )
        return out


def extract_candidates(
    document: str | bytes,
    page_url: str,
    source: str = SourceKind.WARC.value,
    config: ExtractConfig | None = None,
    counters: Counters | None = None,
    content_type: str | None = None,
) -> list[Candidate]:
    """Candidates of one HTML document (see ``HtmlPage.candidates``). Bytes are decoded
    with ``decode_html``; documents over ``config.max_html_bytes`` are cut there."""
    config = config or ExtractConfig()
    if len(document) > config.max_html_bytes:
        document = document[: config.max_html_bytes]
        if counters is not None:
            counters.add("extract.html_cut")
    return HtmlPage(document, page_url, content_type).candidates(source, config, counters)
