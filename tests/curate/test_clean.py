"""Caption cleaning: repairs, and every drop reason with the captions that earn it."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.curate.clean import CaptionCleaner, CleanConfig, clean_text, guess_language
from pipeline.curate.records import Candidate


def _cand(caption: str | None) -> Candidate:
    return Candidate("http://127.0.0.1/a.jpg", caption, "alt", None, "warc")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a   red\n\tcircle  ", "a red circle"),
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("caf\u00c3\u00a9 au lait", "caf\u00e9 au lait"),  # UTF-8 read as latin-1
        ("cafe\u0301", "caf\u00e9"),  # NFC
        ("zero\u200bwidth\u00a0space", "zerowidth space"),
        ("bell\x07 and\x00 nul", "bell and nul"),
        ("", ""),
        (None, ""),
    ],
)
def test_repairs(raw: str | None, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # "&word" without ";" stays as written (HTML5 leaves it literal in an attribute)
        ("Rules&regulations for kids", "Rules&regulations for kids"),
        ("Laptops&notebooks on sale", "Laptops&notebooks on sale"),
        ("Dates&times table", "Dates&times table"),
        ("Terms &section 5", "Terms &section 5"),
        ("Caf\u00e9 &not here", "Caf\u00e9 &not here"),  # the ftfy (non-ASCII) path too
        ("fish &chips;", "fish &chips;"),  # not an entity name
        # complete entities are unescaped, once
        ("Tom &amp;amp; Jerry", "Tom &amp; Jerry"),
        ("Caf&eacute; &amp;lt;b&amp;gt;", "Caf\u00e9 &lt;b&gt;"),
        ("caf&#233; &#xE9;t&#XE9; &reg;", "caf\u00e9 \u00e9t\u00e9 \u00ae"),
    ],
)
def test_only_complete_entities_are_unescaped_and_only_once(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


CASES: dict[str | None, list[str]] = {
    None: [
        "a red circle on a blue background",
        "Company logo",  # one content word saves it
        "a photo of a dog",
        "Eiffel Tower at night",
        "Tom & Jerry",
        "The 2024 Olympic Games opening",
    ],
    "empty": ["   ", "\u200b"],
    "too_short": ["logo", "cat", "a b"],
    "too_long": ["word " * 250],
    "no_letters": ["12345", "2021-06-01", "-----", "!!! ???"],
    "url_like": ["http://example.com/a.jpg", "www.example.com", "https://t.co/xyz"],
    "file_name": [
        "IMG_1234.jpg",
        "IMG_1234",
        "DSC0001",
        "DSC_0001.JPG",
        "DSCN4567",
        "P1010001",
        "PXL_20210101_123456789",
        "IMG-20200101-WA0001",
        "Screenshot 2021-01-01 at 10.00.00",
        "holiday photo.png",
        "banner_home-v2.webp",
        "a3f9c2d1e4b5a6c7d8e9",
        "123e4567-e89b-12d3-a456-426614174000",
    ],
    "boilerplate": [
        "image",
        "Image 3 of 5",
        "photo",
        "Picture",
        "thumbnail",
        "click here",
        "Read more",
        "no image available",
        "placeholder image",
        "untitled",
        "spacer gif",
        "the logo",
    ],
}


@pytest.mark.parametrize(("reason", "caption"), [(r, c) for r, cs in CASES.items() for c in cs])
def test_drop_reasons(reason: str | None, caption: str) -> None:
    step = CaptionCleaner()
    assert step.reason(clean_text(caption)) == reason


def test_step_counts_every_record_once_and_rewrites_kept_captions() -> None:
    captions = [c for cs in CASES.values() for c in cs] + [None]
    step = CaptionCleaner()
    kept = list(step(_cand(c) for c in captions))
    assert [c.caption for c in kept] == [clean_text(c) for c in CASES[None]]
    counts = step.counters
    assert counts["clean.in"] == len(captions)
    assert counts["clean.kept"] == len(CASES[None])
    drops = counts.with_prefix("clean.drop.")
    assert drops["empty"] == len(CASES["empty"]) + 1  # the None caption
    assert {k: v for k, v in drops.items() if k != "empty"} == {
        r: len(cs) for r, cs in CASES.items() if r not in (None, "empty")
    }
    assert counts["clean.in"] == counts["clean.kept"] + sum(drops.values())


def test_emit_dropped_keeps_every_row_with_its_reason_and_passes_earlier_drops() -> None:
    earlier = _cand("already gone").drop("duplicate_url")
    rows = [_cand("a fine caption"), _cand("IMG_0001.jpg"), earlier]
    out = list(CaptionCleaner(emit_dropped=True)(rows))
    assert [(c.status, c.reason) for c in out] == [
        ("kept", None),
        ("dropped", "file_name"),
        ("dropped", "duplicate_url"),
    ]
    assert list(CaptionCleaner()([earlier])) == []


def test_thresholds_and_switches_are_configurable() -> None:
    step = CaptionCleaner(
        CleanConfig(min_chars=2, max_chars=10, drop_file_names=False, drop_urls=False)
    )
    assert step.reason("cat") is None
    assert step.reason("a long caption here") == "too_long"
    assert step.reason("sunset.jpg") is None
    step = CaptionCleaner(CleanConfig(boilerplate_words=("widget",)))
    assert step.reason("the widget") == "boilerplate"
    assert step.reason("image") is None
    with pytest.raises(ConfigError):
        CleanConfig(min_chars=10, max_chars=5)
    with pytest.raises(ConfigError):
        CleanConfig(languages=("xx",))


SENTENCES = {
    "en": ["a dog running on the beach", "Old wooden bridge over the river"],
    "de": ["Ein Hund läuft am Strand", "Alte Holzbrücke über den Fluss"],
    "fr": ["Un chien qui court sur la plage", "Vieux pont en bois sur la rivière"],
    "es": ["Un perro corriendo en la playa", "Viejo puente de madera sobre el río"],
    "ru": ["Собака бежит по пляжу"],
    "ja": ["浜辺を走る犬"],
    "zh": ["在海滩上奔跑的狗"],
    "ko": ["해변을 달리는 개"],
    "el": ["Ένας σκύλος τρέχει στην παραλία"],
}


def test_language_guess_on_plain_sentences() -> None:
    for lang, texts in SENTENCES.items():
        for text in texts:
            assert guess_language(text) == lang, text
    assert guess_language("12345 !!!") is None


def test_language_filter() -> None:
    step = CaptionCleaner(CleanConfig(languages=("en",)))
    assert step.reason("a dog running on the beach") is None
    assert step.reason("Ein Hund läuft am Strand") == "wrong_language"
    assert step.reason("浜辺を走る犬") == "wrong_language"
    both = CaptionCleaner(CleanConfig(languages=("en", "de")))
    assert both.reason("Ein Hund läuft am Strand") is None
    strict = CaptionCleaner(CleanConfig(languages=("en",), keep_unknown_language=False))
    assert strict.reason("Xqzv Wbrt Klmn") == "wrong_language"  # no known word: unknown
    lenient = CaptionCleaner(CleanConfig(languages=("en",)))
    assert lenient.reason("Xqzv Wbrt Klmn") is None
