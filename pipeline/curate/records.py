"""Record types shared by the candidate stages (extract, clean, dedup) and their Arrow schema.

A ``Candidate`` is one (image URL, caption) pair found somewhere: in a WARC's HTML, a WAT's
link list, a crawled page or a pair list. It keeps the page it came from and which text
of the page became its caption, because both matter later (per-site caps, caption-source
statistics, provenance in the dataset card).

Stages never delete a candidate silently. A step either drops it and counts the drop
under a reason, or, when asked to keep dropped rows (``emit_dropped``), passes it on
with ``status = "dropped"`` and the reason set, so a funnel can be built from the rows
themselves. Reasons are unique across stages, so a reason alone names its stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.sources.pairs import PairRow


class SourceKind(StrEnum):
    """Where a candidate was found."""

    WARC = "warc"  # HTML of a WARC response record
    WAT = "wat"  # the Links of a WAT metadata record (no HTML at hand)
    CRAWL = "crawl"  # a page fetched by the bounded crawler
    PAIRS = "pairs"  # a row of a pair list (url, caption given)


class CaptionSource(StrEnum):
    """Which text of the page became the caption."""

    ALT = "alt"
    TITLE = "title"
    FIGCAPTION = "figcaption"
    GIVEN = "given"  # a pair list's caption column


class CandidateStatus(StrEnum):
    KEPT = "kept"
    DROPPED = "dropped"


class DropReason(StrEnum):
    """Why a candidate left the funnel. Each belongs to one stage (see the comments)."""

    # sources (a pair list row that could not be read, see pipeline.sources.pairs)
    INVALID_ROW = "invalid_row"
    INVALID_URL = "invalid_url"
    INVALID_CAPTION = "invalid_caption"
    # clean
    EMPTY = "empty"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    NO_LETTERS = "no_letters"
    BOILERPLATE = "boilerplate"
    FILE_NAME = "file_name"
    URL_LIKE = "url_like"
    WRONG_LANGUAGE = "wrong_language"
    # dedup_candidates (a URL with no normalized http(s) form: another scheme, no host,
    # a bad port; named apart from the sources' invalid_url, a missing or empty URL)
    UNFETCHABLE_URL = "unfetchable_url"
    DUPLICATE_URL = "duplicate_url"
    DUPLICATE_PAIR = "duplicate_pair"


@dataclass(slots=True)
class Candidate:
    """One (image URL, caption) pair and where it came from.

    ``url`` is absolute (resolved against the page and its ``<base>``) for every source
    but a pair list, whose URLs are taken as given and checked later.
    """

    url: str | None
    caption: str | None
    caption_source: str | None
    page_url: str | None
    source: str
    status: str = CandidateStatus.KEPT.value
    reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.status == CandidateStatus.KEPT

    def drop(self, reason: str) -> Candidate:
        """Mark as dropped (in place, returned for chaining)."""
        self.status = CandidateStatus.DROPPED.value
        self.reason = str(reason)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CANDIDATE_FIELDS}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Candidate:
        return cls(**{name: row.get(name) for name in CANDIDATE_FIELDS if name in row})


CANDIDATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Candidate))

CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("caption_source", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)


def candidates_to_table(candidates: Iterable[Candidate]) -> pa.Table:
    """Candidates as an Arrow table in ``CANDIDATE_SCHEMA`` (column-wise: no dict per row)."""
    columns: dict[str, list[Any]] = {name: [] for name in CANDIDATE_SCHEMA.names}
    appenders = [(columns[name].append, name) for name in CANDIDATE_SCHEMA.names]
    for c in candidates:
        for append, name in appenders:
            append(getattr(c, name))
    return pa.Table.from_pydict(columns, schema=CANDIDATE_SCHEMA)


def candidates_from_table(table: pa.Table) -> Iterator[Candidate]:
    """The inverse of ``candidates_to_table``; missing optional columns read as None."""
    names = [n for n in CANDIDATE_FIELDS if n in table.column_names]
    cols = [table.column(n).to_pylist() for n in names]
    for values in zip(*cols, strict=True):
        yield Candidate.from_dict(dict(zip(names, values, strict=True)))


def candidate_from_pair_row(row: PairRow) -> Candidate:
    """A pair-list row (``pipeline.sources.pairs.PairRow``) as a candidate.

    A row the reader already marked bad (unparseable, missing url or caption) becomes a
    dropped candidate with the same reason, so pair lists enter the funnel like any
    other source and every input row is accounted for.
    """
    c = Candidate(
        url=row.url,
        caption=row.caption,
        caption_source=CaptionSource.GIVEN.value,
        page_url=None,
        source=SourceKind.PAIRS.value,
    )
    if row.status is not None:
        c.drop(str(row.status))
    return c


class CandidateFilter:
    """A stage over candidates: takes an iterator of records, yields records, holds only its
    config and its counters (datatrove's ``BaseFilter``, STYLE principles 1 and 2).

    ``check`` keeps a record (returns None, possibly after rewriting it in place) or names
    the reason to drop it. Every record a stage sees is counted once, as
    ``<name>.in = <name>.kept + sum(<name>.drop.*)``. Records dropped by an earlier stage
    pass through uncounted when ``emit_dropped`` is set (so the last stage's output holds
    every candidate with its fate) and are left out otherwise.
    """

    name = "filter"

    def __init__(self, emit_dropped: bool = False) -> None:
        from pipeline.stats.counters import Counters

        self.emit_dropped = emit_dropped
        self.counters = Counters()

    def check(self, candidate: Candidate) -> str | None:
        raise NotImplementedError

    def __call__(self, records: Iterable[Candidate]) -> Iterator[Candidate]:
        add = self.counters.add
        seen, kept = f"{self.name}.in", f"{self.name}.kept"
        drop = f"{self.name}.drop."
        for c in records:
            if c.status != CandidateStatus.KEPT:
                if self.emit_dropped:
                    yield c
                continue
            add(seen)
            reason = self.check(c)
            if reason is None:
                add(kept)
                yield c
            else:
                add(drop + reason)
                if self.emit_dropped:
                    yield c.drop(reason)
