"""Whole-token matching: both boundary rules on hand-picked cases and against a brute-force
reference on random captions."""

from __future__ import annotations

import pickle
import random
import re

import pyarrow as pa
import pytest

from pipeline.config import ConfigError
from pipeline.curate.match import MatchConfig, Matcher, add_matches, metaclip_spacing

ENTRIES = [
    "dog",
    "hot dog",
    "hot",
    "dogs",
    "caf",
    "café",
    "new york",
    "york",
    "dog's",
    "s",
    "u.s.",
    ".net",
    "c++",
    "rock-n-roll",
    "straße",
]


def matched(matcher: Matcher, caption: str | None) -> set[str]:
    return {matcher.entries[i] for i in matcher.match(caption)}


# MetaCLIP's rule: only spaces, the caption's ends and , . ; : ? ! ` delimit an entry.
METACLIP_CASES = [
    ("Hot dog.", {"hot", "dog", "hot dog"}),  # overlapping entries all match; case folded
    ("a dog, a cat; a dog!", {"dog"}),  # wrapped marks delimit; reported once
    ("dogs", {"dogs"}),  # "dog" is a prefix of a word, not a token
    ("dog's bowl", {"dog's"}),  # an apostrophe is not a boundary
    ("(dog)", set()),  # nor are brackets
    ('"dog"', set()),  # nor quotes
    ("dog-friendly", set()),  # nor hyphens
    ("rock-n-roll", {"rock-n-roll"}),
    ("a café in town", {"café"}),  # unicode letters are part of the word
    ("a cafe", set()),
    ("STRASSE straße", {"straße"}),  # lower(), not casefold(): ß stays ß
    ("New York", {"new york", "york"}),
    ("new  york", {"york"}),  # runs of spaces are not collapsed
    ("new\tyork", {"new york", "york"}),  # tab, newline, CR become spaces
    ("the U.S. army", {"s"}),  # "." is wrapped: "u.s." can never match, "s" does
    ("visit .net", set()),
    ("c++ code", {"c++"}),
    ("dog", {"dog"}),  # the caption's ends are boundaries
    ("", set()),
]

# The alnum rule: any non-alphanumeric character (or an end) delimits an entry.
ALNUM_CASES = [
    ("Hot dog.", {"hot", "dog", "hot dog"}),
    ("dogs", {"dogs"}),
    ("dog's bowl", {"dog", "dog's", "s"}),  # the apostrophe delimits "dog" and "s"
    ("(dog)", {"dog"}),
    ('"dog"', {"dog"}),
    ("dog-friendly", {"dog"}),
    ("rock-n-roll", {"rock-n-roll"}),
    ("a café in town", {"café"}),  # é is a letter: "caf" does not match
    ("cafébar", set()),
    ("new  york", {"new york", "york"}),  # whitespace runs are collapsed
    ("new\nyork", {"new york", "york"}),
    ("new-york", {"york"}),  # a hyphen is not a space: "new york" needs the space
    ("the U.S. army", {"u.s.", "s"}),
    ("U.S.A.", {"s"}),  # "u.s." is followed by a letter
    ("visit .net now", {".net"}),  # an entry starting with a separator, after a space
    ("asp.net", set()),  # ... but not after a letter
    (".net", {".net"}),  # ... or at the start
    ("c++ code", {"c++"}),
    ("c++", {"c++"}),
    ("c++x", set()),  # an entry ending with a separator needs a non-alnum after it
    ("dog_house", {"dog"}),  # "_" is not alphanumeric (str.isalnum), unlike in \\w
    ("dog2", set()),  # digits are alphanumeric
    ("", set()),
]


@pytest.fixture(scope="module")
def metaclip() -> Matcher:
    return Matcher(ENTRIES, MatchConfig(boundary="metaclip"))


@pytest.fixture(scope="module")
def alnum() -> Matcher:
    return Matcher(ENTRIES, MatchConfig(boundary="alnum"))


@pytest.mark.parametrize(("caption", "expected"), METACLIP_CASES)
def test_metaclip_boundaries(metaclip: Matcher, caption: str, expected: set[str]) -> None:
    assert matched(metaclip, caption) == expected


@pytest.mark.parametrize(("caption", "expected"), ALNUM_CASES)
def test_alnum_boundaries(alnum: Matcher, caption: str, expected: set[str]) -> None:
    assert matched(alnum, caption) == expected


def test_metaclip_spacing_is_metaclips() -> None:
    assert metaclip_spacing("a,b.c\td") == " a , b . c d "
    assert metaclip_spacing("why?!") == " why ?  !  "


def test_ids_are_sorted_unique_positions() -> None:
    m = Matcher(["b", "a", "b a"])
    assert m.match("b a b a") == [0, 1, 2]
    assert m.match(None) == []


def test_case() -> None:
    folded = Matcher(["Dog", "dog", "NYC"])
    assert folded.match("DOG at nyc") == [0, 1, 2]  # spellings that collide keep their ids
    exact = Matcher(["Dog", "dog", "NYC"], MatchConfig(lowercase=False))
    assert exact.match("Dog in NYC") == [0, 2]
    assert exact.match("dog") == [1]


def test_blank_entries_never_match() -> None:
    m = Matcher(["", "  ", "dog"], MatchConfig(boundary="alnum"))
    assert m.match("a dog") == [2]
    assert Matcher(["", "dog"]).match("a  dog") == [1]


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="boundary"):
        MatchConfig(boundary="words")


def _reference_alnum(entries: list[str], caption: str) -> list[int]:
    text = " ".join(caption.lower().split())
    out = []
    for i, e in enumerate(entries):
        e = " ".join(e.lower().split())
        if re.search(r"(?<![^\W_])" + re.escape(e) + r"(?![^\W_])", text):
            out.append(i)
    return out


def _reference_metaclip(entries: list[str], caption: str) -> list[int]:
    text = metaclip_spacing(caption.lower())
    return [i for i, e in enumerate(entries) if f" {e.lower()} " in text]


def test_against_brute_force() -> None:
    """Random captions over a small alphabet hit every kind of edge."""
    rng = random.Random(7)
    alphabet = "ab é1_.'-,!\t  "
    entries = sorted({"".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(300)})
    entries = [e for e in entries if e.strip()]
    captions = ["".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(1500)]
    for boundary, reference in (("alnum", _reference_alnum), ("metaclip", _reference_metaclip)):
        m = Matcher(entries, MatchConfig(boundary=boundary))
        for c in captions:
            assert m.match(c) == reference(entries, c), (boundary, c)


@pytest.mark.parametrize("boundary", ["metaclip", "alnum"])
def test_pickles_as_entries_and_rebuilds(boundary: str) -> None:
    m = Matcher([f"word{i}" for i in range(2000)] + ["hot dog"], MatchConfig(boundary=boundary))
    data = pickle.dumps(m)
    assert len(data) < 40_000  # the entry list, not the automaton
    clone = pickle.loads(data)
    assert clone.config == m.config and clone.fingerprint == m.fingerprint
    assert clone.match("hot dog and word7, word1999") == m.match("hot dog and word7, word1999")


def test_fingerprint_depends_on_entries_and_config() -> None:
    assert Matcher(["a", "b"]).fingerprint == Matcher(("a", "b")).fingerprint
    assert Matcher(["a", "b"]).fingerprint != Matcher(["b", "a"]).fingerprint
    assert Matcher(["a"]).fingerprint != Matcher(["a"], MatchConfig(boundary="alnum")).fingerprint


def test_add_matches_on_table_and_batch() -> None:
    m = Matcher(["dog", "cat"])
    table = pa.table({"url": ["u1", "u2", "u3"], "caption": ["a dog", None, "cat dog"]})
    out = add_matches(table, m)
    assert out.column("matched").to_pylist() == [[0], [], [0, 1]]
    assert out.schema.field("matched").type == pa.list_(pa.int32())
    batch = add_matches(table.to_batches()[0].slice(1), m, out_col="ids")
    assert batch.column("ids").to_pylist() == [[], [0, 1]]
    with pytest.raises(KeyError, match="text"):
        add_matches(table, m, caption_col="text")
