"""Mergeable counters: each task counts its own, a reduce adds them up.

Ratios and rates are computed once, on merged counts, never averaged across tasks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Counters:
    """Named integer counts that add: ``a + b``; ``sum(parts, Counters())``."""

    counts: Counter = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def __add__(self, other: Counters) -> Counters:
        merged = Counter(self.counts)
        merged.update(other.counts)
        return Counters(merged)

    def __radd__(self, other: int | Counters) -> Counters:
        return self if other == 0 else self + other  # lets sum() start from 0

    def with_prefix(self, prefix: str) -> dict[str, int]:
        n = len(prefix)
        return {k[n:]: v for k, v in sorted(self.counts.items()) if k.startswith(prefix)}

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> Counters:
        return cls(Counter({k: int(v) for k, v in data.items()}))


def format_table(rows: Iterable[tuple[str, int]], total: int, title: str) -> str:
    """A plain-text table of counts with their share of ``total``."""
    rows = list(rows)
    width = max([len(title), *(len(r[0]) for r in rows)]) + 2
    lines = [f"{title:<{width}}{'count':>10}{'share':>9}", "-" * (width + 19)]
    for name, n in rows:
        share = f"{100.0 * n / total:.1f}%" if total else "-"
        lines.append(f"{name:<{width}}{n:>10,}{share:>9}")
    lines.append("-" * (width + 19))
    lines.append(f"{'total':<{width}}{total:>10,}")
    return "\n".join(lines)
