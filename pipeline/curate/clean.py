"""Caption cleaning: repair and normalize the text, then drop captions that say nothing.

Repair: complete HTML entities (``&amp;``, ``&#233;``: ending in ``;``) unescaped once
(alt text is sometimes escaped twice; ``&word`` without ``;`` stays literal, as HTML5
leaves it in an attribute), mojibake and other encoding accidents fixed by ftfy, Unicode NFC, invisible characters removed, whitespace
collapsed. Then, in this order, each drop counted under its reason:

=================  ==========================================================================
reason             what
=================  ==========================================================================
empty              nothing left after repair
too_short          fewer than ``min_chars`` characters (5, as LAION)
too_long           more than ``max_chars`` (a paragraph, not a caption)
no_letters         no letter at all ("12345", "----", "2021-06-01")
url_like           a URL standing in for a caption
file_name          a file name: ``IMG_1234.jpg``, ``DSC0001``, ``photo.png``, a hex digest
boilerplate        only words like image, photo, logo, icon, thumbnail, click here ...
wrong_language     a language filter is set and the caption is guessed to be in another
=================  ==========================================================================

The language guess is a small heuristic, not a detector (none is installed): the writing
system decides where it is unambiguous (Hangul, kana, Han, Greek, Hebrew, Thai ...);
otherwise the script's candidate languages (``RIVAL_LANGUAGES`` plus the wanted ones)
score the caption's words by their Zipf frequency in the word lists of the wordfreq
package (already a dependency for query lists), and the best score wins. It is right for
ordinary sentences and phrases of common words (all 75 of a small hand-written set in 7
Latin-script languages); a caption of names only may come out unknown or wrong, and
unknown is kept by default.
"""

from __future__ import annotations

import functools
import html
import html.entities
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.curate.records import Candidate, CandidateFilter, DropReason

# Words that describe the image as a file or a page element, never its content. A caption
# made of these (and filler words) only is boilerplate; one content word saves it.
BOILERPLATE_WORDS: tuple[str, ...] = (
    # the image itself
    "image", "images", "img", "photo", "photos", "photograph", "picture", "pictures", "pic",
    "pics", "graphic", "graphics", "illustration", "logo", "logos", "icon", "icons",
    "thumbnail", "thumbnails", "thumb", "banner", "spacer", "pixel", "untitled",
    "placeholder", "avatar", "default", "blank", "transparent", "gif", "jpg", "jpeg",
    "png", "svg", "webp", "null", "undefined", "none", "alt", "text", "caption",
    "foto", "fotos", "bild", "bilder", "imagen", "imagem", "immagine", "afbeelding",
    # page furniture and calls to action
    "click", "here", "read", "more", "view", "larger", "enlarge", "zoom", "full", "size",
    "loading", "button", "arrow", "bullet", "home", "next", "previous", "prev", "back",
    "top", "close", "menu", "search", "share", "download", "page", "link", "advertisement",
    "ad", "ads", "sponsored",
)  # fmt: skip
FILLER_WORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "for",
        "to",
        "in",
        "on",
        "at",
        "by",
        "with",
        "and",
        "or",
        "no",
        "not",
        "available",
        "this",
        "that",
        "is",
        "here",
        "your",
        "my",
        "our",
        "see",
    ]
)
_IMAGE_EXT = r"(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|svg|heic|heif|avif|ico|raw|cr2|nef|dng)"
_FILE_NAME = re.compile(
    r"""^(?:
        \S(?:.{0,120}?)\."""
    + _IMAGE_EXT
    + r"""          # anything ending in an image extension
      | (?:img|dsc[nf]?|dcim|pxl|mvimg|vid|gopr|sam|wp|p|scan|image|photo|pic|picture)
        [\s_-]*\d[\d\s_.-]*(?:-?wa\d+)?(?:\s*\(\d+\))?      # camera and phone names
      | screen\s?shot\b.*\d.*                               # Screenshot 2021-01-01 at 10.00.00
      | [0-9a-f]{16,}                                       # a digest
      | [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}  # a UUID
    )$""",
    re.I | re.X,
)
_URL_LIKE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S*$", re.I)
_WORD = re.compile(r"[^\W\d_]+")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad\u200e\u200f"), None)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ENTITY = re.compile(r"&(?:#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{0,31});")


@dataclass(frozen=True)
class CleanConfig:
    min_chars: int = 5  # LAION dropped alt texts under 5 characters
    max_chars: int = 1000
    fix_text: bool = True  # ftfy: mojibake, control characters, HTML entities
    boilerplate_words: tuple[str, ...] = BOILERPLATE_WORDS
    drop_file_names: bool = True
    drop_urls: bool = True
    languages: tuple[str, ...] = ()  # wordfreq codes, e.g. ("en",); empty: no filter
    keep_unknown_language: bool = True  # a caption the heuristic cannot place is kept

    def __post_init__(self) -> None:
        from pipeline.config import ConfigError

        if self.min_chars < 0:
            raise ConfigError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < max(1, self.min_chars):
            raise ConfigError(f"max_chars must be >= min_chars and positive, got {self.max_chars}")
        unknown = [lang for lang in self.languages if lang not in SUPPORTED_LANGUAGES]
        if unknown:
            raise ConfigError(
                f"languages: {', '.join(unknown)} not supported; choose from "
                f"{', '.join(sorted(SUPPORTED_LANGUAGES))}"
            )


def _entity(m: re.Match[str]) -> str:
    ref = m.group()
    if ref[1] == "#":
        return html.unescape(ref)  # a complete numeric reference: no prefix matching
    return html.entities.html5.get(ref[1:], ref)  # "amp;": only the whole name counts


def unescape_entities(text: str) -> str:
    """One pass over complete character references (``&amp;``, ``&eacute;``, ``&#233;``,
    ``&#xE9;``: a name or number ending in ``;``). ``html.unescape`` would also decode
    the legacy names that need no ``;`` (``&reg``, ``&not``, ``&times``, ``&sect``), so
    that ``Rules&regulations`` became ``Rules®ulations``; HTML5 leaves those literal in
    an attribute, and so does this. Once only: ``&amp;lt;`` is ``&lt;``, not ``<``."""
    return _ENTITY.sub(_entity, text) if "&" in text else text


def clean_text(text: str | None, fix_text: bool = True) -> str:
    """The repaired caption: entities, encoding accidents, NFC, invisibles, whitespace."""
    if not text:
        return ""
    text = unescape_entities(text)
    if text.isascii():
        if _CONTROLS.search(text):
            text = _CONTROLS.sub(" ", text)
    elif fix_text:
        import ftfy

        # Entities were unescaped above, once; ftfy would unescape again (until nothing
        # changes), turning a written "&amp;lt;" into "<".
        text = ftfy.fix_text(text, normalization="NFC", unescape_html=False)
        text = text.translate(_INVISIBLE)
    else:
        text = unicodedata.normalize("NFC", _CONTROLS.sub(" ", text)).translate(_INVISIBLE)
    return " ".join(text.split())


# ---- language ---------------------------------------------------------------------------

# Scripts whose letters name the language (or a small set to score among), by code point.
_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "latin"),
    (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0B80, 0x0BFF, "tamil"),
    (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "hangul"),
    (0x3040, 0x30FF, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xAC00, 0xD7AF, "hangul"),
)
# Languages each script is scored among with wordfreq's lists (one entry: decided at once).
SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "latin": (
        "en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "fi", "pl", "cs", "sk",
        "sl", "hu", "ro", "tr", "id", "ms", "ca", "lt", "lv", "vi", "fil", "sh", "is",
    ),
    "cyrillic": ("ru", "uk", "bg", "mk"),
    "arabic": ("ar", "fa", "ur"),
    "greek": ("el",),
    "hebrew": ("he",),
    "devanagari": ("hi",),
    "bengali": ("bn",),
    "tamil": ("ta",),
    "thai": ("th",),
    "hangul": ("ko",),
    "kana": ("ja",),
    "han": ("zh",),
}  # fmt: skip
# Scored unless a filter asks for another: large web languages with distinct word lists.
RIVAL_LANGUAGES: frozenset[str] = frozenset((
    "en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "fi", "pl", "cs", "hu", "ro", "tr",
    "id", "vi", "ru", "uk", "bg", "ar", "fa", "ur",
))  # fmt: skip
SUPPORTED_LANGUAGES: frozenset[str] = frozenset(
    lang for langs in SCRIPT_LANGUAGES.values() for lang in langs
)


@functools.cache
def _word_zipf(lang: str) -> dict[str, float]:
    """Zipf frequency (log10 per billion words) of the words of wordfreq's small list."""
    import wordfreq

    return {
        w: math.log10(f) + 9.0
        for w, f in wordfreq.get_frequency_dict(lang, wordlist="small").items()
    }


def _script(text: str) -> str | None:
    """The dominant script of the letters (kana wins over Han: Japanese mixes both)."""
    counts: dict[str, int] = {}
    for ch in text[:300]:
        if not ch.isalpha():
            continue
        cp = ord(ch)
        for lo, hi, name in _SCRIPT_RANGES:
            if lo <= cp <= hi:
                counts[name] = counts.get(name, 0) + 1
                break
    if not counts:
        return None
    if counts.get("kana"):
        return "kana"
    return max(counts, key=counts.__getitem__)


def guess_language(text: str, wanted: Iterable[str] = ()) -> str | None:
    """A wordfreq language code for ``text``, or None when the heuristic cannot tell.

    Within a script, the languages scored are ``RIVAL_LANGUAGES`` plus ``wanted``: the
    lists of smaller web languages are full of English (Tagalog's has "at" more often than
    English's), so scoring them by default would misplace short English captions.
    """
    script = _script(text)
    if script is None:
        return None
    in_script = SCRIPT_LANGUAGES.get(script, ())
    if len(in_script) == 1:
        return in_script[0]
    pool = RIVAL_LANGUAGES.union(wanted)
    words = _WORD.findall(text.casefold())
    best, best_score = None, 0.0
    for lang in in_script:
        if lang not in pool:
            continue
        table = _word_zipf(lang)
        score = sum(table.get(w, 0.0) for w in words)
        if score > best_score:
            best, best_score = lang, score
    return best


# ---- the step -----------------------------------------------------------------------------


class CaptionCleaner(CandidateFilter):
    """Repairs each caption in place and drops the ones that say nothing, with a reason."""

    name = "clean"

    def __init__(self, config: CleanConfig | None = None, emit_dropped: bool = False) -> None:
        super().__init__(emit_dropped)
        self.config = config or CleanConfig()
        self._boilerplate = frozenset(w.casefold() for w in self.config.boilerplate_words)
        self._languages = frozenset(self.config.languages)

    def check(self, candidate: Candidate) -> str | None:
        text = clean_text(candidate.caption, self.config.fix_text)
        candidate.caption = text
        return self.reason(text)

    def reason(self, text: str) -> str | None:
        """Why a repaired caption is dropped, or None to keep it."""
        cfg = self.config
        if not text:
            return DropReason.EMPTY
        if len(text) < cfg.min_chars:
            return DropReason.TOO_SHORT
        if len(text) > cfg.max_chars:
            return DropReason.TOO_LONG
        words = _WORD.findall(text.casefold())
        if not words:
            return DropReason.NO_LETTERS
        if cfg.drop_urls and _URL_LIKE.match(text):
            return DropReason.URL_LIKE
        if cfg.drop_file_names and _FILE_NAME.match(text):
            return DropReason.FILE_NAME
        if self._is_boilerplate(words):
            return DropReason.BOILERPLATE
        if self._languages:
            lang = guess_language(text, self._languages)
            if lang is None:
                if not cfg.keep_unknown_language:
                    return DropReason.WRONG_LANGUAGE
            elif lang not in self._languages:
                return DropReason.WRONG_LANGUAGE
        return None

    def _is_boilerplate(self, words: list[str]) -> bool:
        found = False
        for w in words:
            if w in self._boilerplate:
                found = True
            elif w not in FILLER_WORDS:
                return False
        return found
