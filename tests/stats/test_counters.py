from __future__ import annotations

from pipeline.stats.counters import Counters, format_table


def test_counters_add_and_sum() -> None:
    a = Counters()
    a.add("status.success", 3)
    b = Counters.from_dict({"status.success": 2, "status.timeout": 1})
    total = sum([a, b], Counters())
    assert total.to_dict() == {"status.success": 5, "status.timeout": 1}
    assert sum([a, b]).to_dict() == total.to_dict()
    assert total.with_prefix("status.") == {"success": 5, "timeout": 1}
    assert a["status.success"] == 3  # merging leaves the parts unchanged
    assert total["missing"] == 0


def test_table_shows_shares() -> None:
    text = format_table([("success", 3), ("timeout", 1)], 4, "status")
    assert "75.0%" in text and "25.0%" in text and "total" in text
