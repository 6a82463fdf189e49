"""The candidate record: Arrow round trip, pair-list rows, and the step contract."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.curate.records import (
    CANDIDATE_SCHEMA,
    Candidate,
    candidate_from_pair_row,
    candidates_from_table,
    candidates_to_table,
)
from pipeline.schema import Status
from pipeline.sources.pairs import PairRow


def test_arrow_round_trip(tmp_path: Path) -> None:
    rows = [
        Candidate("http://a.test/1.jpg", "one", "alt", "http://a.test/", "warc"),
        Candidate("http://a.test/2.jpg", None, None, None, "pairs").drop("invalid_caption"),
    ]
    table = candidates_to_table(rows)
    assert table.schema == CANDIDATE_SCHEMA
    pq.write_table(table, tmp_path / "c.parquet")
    back = list(candidates_from_table(pq.read_table(tmp_path / "c.parquet")))
    assert back == rows
    assert candidates_to_table([]).num_rows == 0


def test_pair_rows_enter_the_funnel_with_their_status() -> None:
    good = candidate_from_pair_row(PairRow(0, "http://a.test/x.jpg", "a caption"))
    assert (good.source, good.caption_source, good.status) == ("pairs", "given", "kept")
    bad = candidate_from_pair_row(
        PairRow(1, None, None, Status.INVALID_ROW, "line 3: invalid JSON")
    )
    assert (bad.status, bad.reason) == ("dropped", "invalid_row")


def test_every_drop_reason_names_one_stage() -> None:
    # An enum silently makes a repeated value an alias: a reason shared by two stages (the
    # reader's invalid_url was also candidate dedup's) would count in the wrong stage.
    from pipeline.curate.dedup_candidates import CandidateDeduplicator
    from pipeline.curate.records import DropReason

    assert len({r.value for r in DropReason}) == len(DropReason.__members__)
    reader = {Status.INVALID_ROW, Status.INVALID_URL, Status.INVALID_CAPTION}
    step = CandidateDeduplicator(emit_dropped=True)
    dropped = list(step([Candidate("ftp://a.test/x.jpg", "a caption", "given", None, "pairs")]))
    assert dropped[0].reason == "unfetchable_url" and dropped[0].reason not in reader
