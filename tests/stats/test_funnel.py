from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stats.funnel import Funnel


def _funnel() -> Funnel:
    f = Funnel("candidates", 1000)
    f.add("cleaned", {"too_short": 100, "boilerplate": 50})
    f.add("matched", {"unmatched": 250})
    f.add("downloaded", {"http_error": 100, "timeout": 0})
    return f


def test_funnel_adds_up_and_renders(tmp_path: Path) -> None:
    f = _funnel()
    assert [s.count for s in f.stages] == [850, 600, 500]
    f.check({"matched": 600})
    md = f.markdown()
    assert "| cleaned | 850 | 85.0% | too_short 100, boilerplate 50 |" in md
    assert "timeout" not in md  # zero drops are not reasons
    f.plot(tmp_path / "funnel.png")
    assert (tmp_path / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_funnel_that_loses_rows_is_refused() -> None:
    f = _funnel()
    with pytest.raises(AssertionError, match="the data says 599"):
        f.check({"matched": 599})
    f.stages[1].count += 1
    with pytest.raises(AssertionError, match="does not add up"):
        f.check()
