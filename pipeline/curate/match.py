"""Whole-token substring matching of captions against the query list (Aho-Corasick).

Two boundary rules, chosen by ``MatchConfig.boundary``:

``"metaclip"`` (default): MetaCLIP's rule, as its public ``substr_matching.py`` implements
it. The caption is padded with one space on each side, each of ``, . ; : ? ! ``` gets a
space on each side, and tab, newline and carriage return become spaces; an entry matches
when ``" " + entry + " "`` occurs in that string. So only spaces (or the seven wrapped
marks, or the caption's ends) delimit an entry: ``dog.`` and ``dog, cat`` match
``dog``; ``dog's``, ``(dog)``, ``"dog"`` and ``dog-friendly`` do not. Entries are used
as given (an entry holding a wrapped mark, such as ``u.s.``, can never match: MetaCLIP
behaves the same way), and runs of spaces are not collapsed.

``"alnum"``: an entry matches where it occurs in the caption with a non-alphanumeric
character (``str.isalnum`` false, so any unicode letter or digit counts as part of a
word) or an end of the caption on each side. Whitespace runs are collapsed to one space
in captions and entries first. ``dog's``, ``(dog)``, ``dog-friendly`` match ``dog``;
``café`` does not match ``caf``; ``.net`` matches in ``visit .net`` but not in
``asp.net``.

Either way ``lowercase`` (default) lowercases captions and entries, a departure from
MetaCLIP, whose Wikipedia unigrams kept every spelling ("Dog" and "dog"): our unigrams
come from wordfreq, which is lowercased, so the caption must be too. Entries that collide
once lowercased keep their own ids and all match together. Overlapping entries all match
(``hot dog`` yields ``hot``, ``dog`` and ``hot dog``), and an entry is reported once per
caption however often it occurs, as MetaCLIP does.

Both rules put the boundary into the automaton's keys, so the automaton only reports
whole-token occurrences: the cost per caption does not grow with the number of short
entries that occur inside words.

Spark: a ``Matcher`` pickles as its entry list and config (3.6 MB for the default
~290k-entry list) and rebuilds its automaton when unpickled (0.7-1.2 s for that list on
this 2-core machine; the built automaton would pickle to ~50 MB). Broadcast the
``Matcher`` (or the entry list): PySpark unpickles a broadcast value once per Python
worker and reuses workers, so each worker builds the automaton once, not once per task.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import ConfigError

BOUNDARIES = ("metaclip", "alnum")

# MetaCLIP's spacing: these marks get a space on each side, these controls become spaces.
_METACLIP_WRAP = (",", ".", ";", ":", "?", "!", "`")
_METACLIP_SPACE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})

# alnum rule: captions and entries are rewritten with a marker around every alphanumeric
# run, so a key "\0dog\0" can only meet a whole run. [^\W_] is exactly str.isalnum.
_MARK = "\x00"
_SEPARATORS = re.compile(r"([\W_]+)")
_ALNUM_RUN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class MatchConfig:
    boundary: str = "metaclip"  # "metaclip" (MetaCLIP's spacing rule) or "alnum"
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise ConfigError(
                f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}"
            )


def metaclip_spacing(text: str) -> str:
    """MetaCLIP's caption spacing (see the module docstring)."""
    spaced = f" {text} "
    for mark in _METACLIP_WRAP:
        if mark in spaced:
            spaced = spaced.replace(mark, f" {mark} ")
    return spaced.translate(_METACLIP_SPACE)


def _alnum_text(text: str) -> str:
    # Split keeps separators at odd positions: runs sit between markers; an empty first
    # or last run leaves a doubled marker at that end, which the edge checks rely on.
    return _MARK + _MARK.join(_SEPARATORS.split(" ".join(text.split()))) + _MARK


def _alnum_key(entry: str) -> str:
    return _ALNUM_RUN.sub(lambda m: _MARK + m.group() + _MARK, " ".join(entry.split()))


class Matcher:
    """Maps a caption to the sorted ids (positions in ``entries``) of the entries it holds.

    Pickles as ``(entries, config)`` and rebuilds the automaton on the other side.
    """

    def __init__(self, entries: Sequence[str], config: MatchConfig | None = None) -> None:
        import ahocorasick  # optional dependency (the spark extra), imported where used

        self.config = config or MatchConfig()
        self.entries: tuple[str, ...] = tuple(entries)
        self._alnum = self.config.boundary == "alnum"
        keys: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"entry {i} is not a string: {entry!r}")
            e = entry.lower() if self.config.lowercase else entry
            if not e.strip():
                continue  # an empty entry would match every caption
            key = _alnum_key(e) if self._alnum else f" {e} "
            keys.setdefault(key, []).append(i)
        # A key's value is its entry id, or -1-k for group k of ids that share the key
        # (spellings that collide once lowercased): a plain int keeps the per-occurrence
        # work in match() to one set insertion. An alnum key whose entry starts or ends
        # with a separator carries (value, check_left, check_right, length) instead: the
        # key cannot say "not preceded (followed) by an alnum run", so match() checks.
        self._groups: list[tuple[int, ...]] = []
        automaton = ahocorasick.Automaton()
        for key, ids in keys.items():
            value = ids[0]
            if len(ids) > 1:
                value = -1 - len(self._groups)
                self._groups.append(tuple(ids))
            if self._alnum and (key[0] != _MARK or key[-1] != _MARK):
                automaton.add_word(key, (value, key[0] != _MARK, key[-1] != _MARK, len(key)))
            else:
                automaton.add_word(key, value)
        automaton.make_automaton()
        self._automaton = automaton
        self.n_keys = len(keys)

    def __len__(self) -> int:
        return len(self.entries)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Matcher, (self.entries, self.config))

    @property
    def fingerprint(self) -> str:
        """Stable id of (entries, config): a cache key for a rebuilt automaton."""
        h = hashlib.sha256(f"{self.config.boundary}|{self.config.lowercase}".encode())
        for entry in self.entries:
            h.update(b"\x1e" + entry.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]

    def match(self, caption: str | None) -> list[int]:
        """Sorted, unique ids of the entries the caption matches ([] for None or empty)."""
        if not caption:
            return []
        text = caption.lower() if self.config.lowercase else caption
        if not self._alnum:
            found = {v for _, v in self._automaton.iter(metaclip_spacing(text))}
        else:
            found = set()
            spaced = _alnum_text(text)
            for end, v in self._automaton.iter(spaced):
                if v.__class__ is int:
                    found.add(v)
                    continue
                v, check_left, check_right, size = v
                if check_left:
                    start = end - size + 1
                    # A marker before the match closes an alnum run, unless it is the
                    # doubled marker of an empty first run (caption starts with a separator).
                    if spaced[start - 1] == _MARK and not (
                        start >= 2 and spaced[start - 2] == _MARK
                    ):
                        continue
                if check_right and spaced[end + 1] == _MARK and spaced[end + 1 :] != _MARK * 2:
                    continue
                found.add(v)
        if self._groups and found and min(found) < 0:
            groups = self._groups
            found = {i for v in found for i in (groups[-1 - v] if v < 0 else (v,))}
        return sorted(found)

    def match_many(self, captions: Iterable[str | None]) -> list[list[int]]:
        match = self.match
        return [match(c) for c in captions]

    def match_arrow(
        self, captions: pa.Array | pa.ChunkedArray | Sequence[str | None]
    ) -> pa.ListArray:
        """Matched ids of every caption as one ``list<int32>`` array (nulls match nothing)."""
        if isinstance(captions, pa.ChunkedArray | pa.Array):
            captions = captions.to_pylist()
        match = self.match
        offsets = [0]
        values: list[int] = []
        extend, append = values.extend, offsets.append
        for caption in captions:
            extend(match(caption))
            append(len(values))
        return pa.ListArray.from_arrays(
            pa.array(np.asarray(offsets, dtype=np.int32)),
            pa.array(np.asarray(values, dtype=np.int32)),
        )


MATCHED_TYPE = pa.list_(pa.int32())


def add_matches(
    data: pa.Table | pa.RecordBatch,
    matcher: Matcher,
    caption_col: str = "caption",
    out_col: str = "matched",
) -> pa.Table | pa.RecordBatch:
    """``data`` with a ``list<int32>`` column of matched entry ids appended.

    Works on a RecordBatch as well, so a Spark ``mapInArrow`` can call it per batch.
    """
    if caption_col not in data.schema.names:
        raise KeyError(f"no column {caption_col!r}; columns: {', '.join(data.schema.names)}")
    matched = matcher.match_arrow(data.column(caption_col))
    return data.append_column(pa.field(out_col, MATCHED_TYPE), matched)
