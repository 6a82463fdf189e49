"""HTML extraction: every <img> is a candidate or a counted skip; URLs resolve as a browser
resolves them; captions come from alt, figcaption or title in that order."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.sources.html import (
    ExtractConfig,
    HtmlPage,
    UrlResolver,
    decode_html,
    extract_candidates,
    largest_srcset_url,
    may_have_images,
    resolve_url,
)
from pipeline.stats.counters import Counters

PAGE = "https://site.test/dir/page.html"


def _extract(doc: str | bytes, config: ExtractConfig | None = None, page: str = PAGE):
    counters = Counters()
    found = extract_candidates(doc, page, "crawl", config, counters)
    return [(c.url, c.caption, c.caption_source) for c in found], counters


def _funnel_adds_up(counters: Counters) -> None:
    skipped = sum(counters.with_prefix("extract.skip.").values())
    assert counters["extract.images"] == counters["extract.candidates"] + skipped


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("a.jpg", "https://site.test/dir/a.jpg"),
        ("../up/a.jpg", "https://site.test/up/a.jpg"),
        ("/root/a.jpg", "https://site.test/root/a.jpg"),
        ("//cdn.example.org/a.jpg", "https://cdn.example.org/a.jpg"),
        ("http://other.example/a.jpg", "http://other.example/a.jpg"),
        ("  a.jpg\n", "https://site.test/dir/a.jpg"),
        ("a\tb\n.jpg", "https://site.test/dir/ab.jpg"),
        ("?v=2", "https://site.test/dir/page.html?v=2"),
        ("a b.jpg", "https://site.test/dir/a%20b.jpg"),
        ("/caf\u00e9.jpg", "https://site.test/caf%C3%A9.jpg"),
    ],
)
def test_relative_absolute_and_protocol_relative_urls(src: str, expected: str) -> None:
    found, _ = _extract(f'<img src="{src}" alt="a caption">')
    assert found == [(expected, "a caption", "alt")]


def test_base_href_is_resolved_against_the_page_and_used_for_images_and_links() -> None:
    doc = (
        '<head><base href="/assets/"><base href="/ignored/"></head>'
        '<img src="a.jpg" alt="one"><img src="/b.jpg" alt="two"><a href="p.html">p</a>'
    )
    page = HtmlPage(doc, PAGE)
    assert page.base_url == "https://site.test/assets/"
    assert [c.url for c in page.candidates()] == [
        "https://site.test/assets/a.jpg",
        "https://site.test/b.jpg",
    ]
    assert page.links() == ["https://site.test/assets/p.html"]


def test_base_href_that_is_not_http_is_ignored() -> None:
    found, _ = _extract('<base href="javascript:void(0)"><img src="a.jpg" alt="one">')
    assert found == [("https://site.test/dir/a.jpg", "one", "alt")]


def test_caption_sources_in_order_and_figcaption_of_the_enclosing_figure() -> None:
    doc = """
    <figure><div><img src="1.jpg"></div><figcaption> A <b>bold</b>
      caption </figcaption></figure>
    <figure><img src="2.jpg" alt="own alt"><figcaption>not used</figcaption></figure>
    <figure><img src="3.jpg" title="a title"><figcaption>figure wins</figcaption></figure>
    <img src="4.jpg" title="  only   a title ">
    <img src="5.jpg" alt="   " title="blank alt falls through">
    <figure><img src="6.jpg"></figure>
    """
    found, counters = _extract(doc)
    assert found == [
        ("https://site.test/dir/1.jpg", "A bold caption", "figcaption"),
        ("https://site.test/dir/2.jpg", "own alt", "alt"),
        ("https://site.test/dir/3.jpg", "figure wins", "figcaption"),
        ("https://site.test/dir/4.jpg", "only a title", "title"),
        ("https://site.test/dir/5.jpg", "blank alt falls through", "title"),
    ]
    assert counters["extract.skip.no_text"] == 1
    assert counters.with_prefix("extract.caption.") == {"alt": 1, "figcaption": 2, "title": 2}
    _funnel_adds_up(counters)


def test_caption_sources_can_be_restricted() -> None:
    doc = '<img src="1.jpg" title="t1"><img src="2.jpg" alt="a2">'
    found, counters = _extract(doc, ExtractConfig(caption_sources=("alt",)))
    assert found == [("https://site.test/dir/2.jpg", "a2", "alt")]
    assert counters["extract.skip.no_text"] == 1
    with pytest.raises(ConfigError):
        ExtractConfig(caption_sources=("longdesc",))


def test_every_img_is_a_candidate_or_a_counted_skip() -> None:
    doc = """
    <img src="a.jpg" alt="kept">
    <img src="b.jpg">
    <img alt="no src at all">
    <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="inline data">
    <img src="javascript:void(0)" alt="script">
    <img src="http://host:99999/x.jpg" alt="bad port">
    <img src="http:///nohost.jpg" alt="no host">
    <img src="/{}" alt="long">
    """.format("x" * 3000)
    found, counters = _extract(doc)
    assert found == [("https://site.test/dir/a.jpg", "kept", "alt")]
    assert counters.with_prefix("extract.skip.") == {
        "bad_scheme": 1,
        "data_url": 1,
        "invalid_url": 2,
        "no_src": 1,
        "no_text": 1,
        "url_too_long": 1,
    }
    assert counters["extract.images"] == 8
    _funnel_adds_up(counters)


def test_srcset_only_when_src_is_missing_and_lazy_attributes_over_placeholders() -> None:
    doc = """
    <img src="src.jpg" srcset="big.jpg 2x" alt="src wins">
    <img srcset="s.jpg 480w, l.jpg 1080w, m.jpg 800w" alt="widest">
    <img srcset="one.jpg, two.jpg 2x" alt="densest">
    <img src="data:image/gif;base64,AAAA" data-src="/lazy.jpg" alt="lazy">
    <img src="data:image/gif;base64,AAAA" srcset="p.jpg 1x, q.jpg 3x" alt="placeholder">
    """
    found, counters = _extract(doc)
    assert [u for u, _, _ in found] == [
        "https://site.test/dir/src.jpg",
        "https://site.test/dir/l.jpg",
        "https://site.test/dir/two.jpg",
        "https://site.test/lazy.jpg",
        "https://site.test/dir/q.jpg",
    ]
    assert counters["extract.src.srcset"] == 3
    assert counters["extract.src.lazy"] == 1


def test_srcset_parsing_keeps_commas_inside_urls() -> None:
    assert largest_srcset_url("a.jpg?x=1,2 1x, b.jpg 2x") == "b.jpg"
    assert largest_srcset_url("only.jpg") == "only.jpg"
    assert largest_srcset_url("  ,  ") is None


def test_malformed_html_still_yields_what_a_browser_would_see() -> None:
    doc = (
        "<html><body><div><p>unclosed <img src=a.jpg alt=unquoted>"
        "<table><tr><td><img src='b.jpg' alt='in a table'></td></div>"
        '<img src="c.jpg" alt="x &amp; y &lt;3" <img src=d.jpg alt=\'no gt\'>'
        '</span></span><img src=e.jpg alt="e"><img src=f.jpg alt=\'cut at the end'
    )
    found, counters = _extract(doc)
    assert ("https://site.test/dir/a.jpg", "unquoted", "alt") in found
    assert ("https://site.test/dir/b.jpg", "in a table", "alt") in found
    assert ("https://site.test/dir/c.jpg", "x & y <3", "alt") in found
    assert ("https://site.test/dir/e.jpg", "e", "alt") in found
    _funnel_adds_up(counters)


def test_empty_and_binary_documents_do_not_raise() -> None:
    for doc in ("", b"", b"\x00\xff\xfe garbage \x89PNG", "<img", "<<<>>>"):
        found, counters = _extract(doc)
        assert found == []
        _funnel_adds_up(counters)


def test_decoding_follows_bom_http_charset_meta_then_utf8_then_cp1252() -> None:
    text = "<img src=a.jpg alt='caf\u00e9'>"
    assert decode_html(text.encode("utf-8")) == text
    assert decode_html(text.encode("cp1252")) == text  # not UTF-8: windows-1252
    assert decode_html(text.encode("latin-1"), "text/html; charset=ISO-8859-1") == text
    meta = "<meta charset='koi8-r'><img alt='\u043a\u043e\u0442'>"
    assert decode_html(meta.encode("koi8-r")) == meta
    assert decode_html(b"\xef\xbb\xbf" + text.encode()) == text
    assert decode_html(text.encode("utf-8"), "text/html; charset=no-such-codec") == text


@pytest.mark.parametrize(
    ("label", "caption", "encoding"),
    [
        # labels a browser reads as a superset; pages so labelled use its extra characters
        ("Shift_JIS", "\u732b\u306e\u5199\u771f\u2460", "cp932"),  # NEC circled digit
        ("sjis", "\u2170\u732b", "cp932"),  # small roman numeral (IBM extension)
        ("gb2312", "\u732b\u54aa \u9555", "gbk"),  # a GBK-only Han character
        ("GBK", "\u732b \u20ac", "gb18030"),
        ("euc-kr", "\uace0\uc591\uc774 \ub620\ubc29\uac01\ud558", "cp949"),  # UHC syllable
        ("big5", "\u7e8d\u8c93", "big5hkscs"),  # an HKSCS character
        ("iso-8859-9", "\u0130stanbul \u20ac", "cp1254"),  # the euro of windows-1254
        ("tis-620", "\u0e41\u0e21\u0e27 \u20ac", "cp874"),
        ("iso-8859-1", "caf\u00e9 \u2019s \u20ac", "cp1252"),
        ("us-ascii", "\u201ccaf\u00e9\u201d", "cp1252"),
    ],
)
def test_legacy_charset_labels_decode_as_a_browser_does(
    label: str, caption: str, encoding: str
) -> None:
    doc = f'<meta charset="{label}"><img src="a.jpg" alt="{caption}">'.encode(encoding)
    found, _ = _extract(doc)
    assert found == [("https://site.test/dir/a.jpg", caption, "alt")]
    http = f'<img src="a.jpg" alt="{caption}">'.encode(encoding)
    assert decode_html(http, f"text/html; charset={label}") == http.decode(encoding)


def test_a_label_that_is_no_encoding_is_ignored() -> None:
    # Python knows "zlib" and "rot13" as codecs, a browser as nothing: UTF-8 then.
    text = "<img src=a.jpg alt='caf\u00e9'>"
    for label in ("zlib", "rot13", "base64", "unicode_escape"):
        assert decode_html(text.encode(), f"text/html; charset={label}") == text
        assert (
            decode_html(f"<meta charset={label}>{text}".encode()) == f"<meta charset={label}>{text}"
        )


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("images\\photo.jpg", "https://site.test/dir/images/photo.jpg"),
        ("\\images\\photo.jpg", "https://site.test/images/photo.jpg"),
        ("\\\\cdn.example.org\\a.jpg", "https://cdn.example.org/a.jpg"),
        ("http:\\\\other.example\\x\\a.jpg", "http://other.example/x/a.jpg"),
        ("..\\up\\a.jpg", "https://site.test/up/a.jpg"),
        ("a.jpg?q=x\\y", "https://site.test/dir/a.jpg?q=x\\y"),  # not in the query
    ],
)
def test_backslashes_are_slashes_as_in_a_browser(src: str, expected: str) -> None:
    found, _ = _extract(f'<img src="{src}" alt="a caption">')
    assert found == [(expected, "a caption", "alt")]


def test_links_are_absolute_without_fragments_and_skip_nofollow() -> None:
    doc = """<a href="b.html#top">b</a><a href="b.html">again</a><a href="mailto:x@y">m</a>
    <a href="/c" rel="nofollow noopener">c</a><area href="https://o.test/d"><a>no href</a>"""
    page = HtmlPage(doc, PAGE)
    assert page.links() == ["https://site.test/dir/b.html", "https://o.test/d"]
    assert "https://site.test/c" in page.links(follow_nofollow=True)


def test_meta_robots_directives() -> None:
    doc = '<meta name="ROBOTS" content="NoIndex, nofollow"><meta name="wit-builder" content="noai">'
    assert HtmlPage(doc, PAGE).meta_robots(["wit-builder"]) == {"noindex", "nofollow", "noai"}


def test_resolve_url_reasons_and_byte_scan() -> None:
    assert resolve_url("data:,x", PAGE) == (None, "data_url")
    assert resolve_url("ftp://h/x", PAGE) == (None, "bad_scheme")
    assert resolve_url("", PAGE) == (None, "no_src")
    assert may_have_images(b"<p>x</p><IMG\nsrc=a>")
    assert not may_have_images(b"<p>image</p><imgx>")


def test_documents_over_the_cap_are_cut() -> None:
    doc = "<img src=a.jpg alt=first>" + "<p>filler</p>" * 1000 + "<img src=b.jpg alt=late>"
    found, counters = _extract(doc, ExtractConfig(max_html_bytes=200))
    assert [c for _, c, _ in found] == ["first"]
    assert counters["extract.html_cut"] == 1


def _reference_resolve(ref: str, base: str) -> str | None:
    """The plain urljoin path that UrlResolver's shortcuts must agree with."""
    import urllib.parse

    ref = ref.strip("".join(chr(c) for c in range(0x21)))
    ref = ref.replace("\t", "").replace("\n", "").replace("\r", "")
    if not ref or ref[:5].lower() == "data:":
        return None
    try:
        url = urllib.parse.urljoin(base, ref)
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or ref == "//":
        return None  # "//" has no host: urljoin returns the base, a browser fails it
    return parts.scheme + url[len(parts.scheme) :]  # urljoin keeps "HTTPS:" as written


@pytest.mark.parametrize(
    "base",
    [
        "https://site.test/dir/page.html?q=1#f",
        "http://site.test",
        "http://site.test:8080/a/b/",
        "https://user@site.test/x",
    ],
)
def test_url_resolver_shortcuts_agree_with_urljoin(base: str) -> None:
    refs = [
        "a.jpg", "/a.jpg", "//cdn.test/a.jpg", "http://o.test/a.jpg", "HTTPS://O.test/a",
        "../a.jpg", "./a.jpg", "a/./b.jpg", "a/../b.jpg", "/a/../b.jpg", "?x=1", "#frag",
        "a.jpg?x=1#y", ".hidden.jpg", "a:b.jpg", "mailto:x@y", "ftp://h/x", "//", "/",
        "a%20b.jpg", "http://h:8080/x", "http://h:bad/x", " /a.jpg ", "a\tb.jpg",
        "...", "a..b.jpg", "/..", "//h", "https:a.jpg",
    ]  # fmt: skip
    resolver = UrlResolver(base)
    for ref in refs:
        assert resolver.resolve(ref)[0] == _reference_resolve(ref, base), ref
