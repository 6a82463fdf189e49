"""The funnel: how many candidates survive each stage, and why the others did not.

Every stage keeps ``count`` of what entered it minus its drops, each drop counted under a
reason; ``Funnel.check`` refuses a funnel that does not add up, so a stage that loses
rows silently is a bug that fails the job, not a number nobody notices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stage:
    name: str
    count: int  # what is left after this stage
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


@dataclass
class Funnel:
    start_name: str
    start: int
    stages: list[Stage] = field(default_factory=list)

    def add(self, name: str, drops: dict[str, int]) -> Stage:
        drops = {k: int(v) for k, v in sorted(drops.items(), key=lambda kv: -kv[1]) if v}
        stage = Stage(name, self.last - sum(drops.values()), drops)
        self.stages.append(stage)
        return stage

    @property
    def last(self) -> int:
        return self.stages[-1].count if self.stages else self.start

    def check(self, stage_totals: dict[str, int] | None = None) -> None:
        """Every stage's count is what entered minus its drops, never negative; and, when
        given, equals the independently counted total of that stage."""
        entered = self.start
        for s in self.stages:
            if s.count != entered - s.dropped or s.count < 0:
                raise AssertionError(
                    f"funnel stage {s.name!r} does not add up: {entered} - {s.dropped} != {s.count}"
                )
            if stage_totals and s.name in stage_totals and stage_totals[s.name] != s.count:
                raise AssertionError(
                    f"funnel stage {s.name!r} says {s.count}, the data says {stage_totals[s.name]}"
                )
            entered = s.count

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": {"name": self.start_name, "count": self.start},
            "stages": [{"name": s.name, "count": s.count, "drops": s.drops} for s in self.stages],
        }

    def markdown(self) -> str:
        lines = [
            "| stage | left | share of start | dropped here (by reason) |",
            "|---|---:|---:|---|",
        ]
        lines.append(f"| {self.start_name} | {self.start:,} | 100.0% | |")
        for s in self.stages:
            share = f"{100.0 * s.count / self.start:.1f}%" if self.start else "-"
            reasons = ", ".join(f"{k} {v:,}" for k, v in s.drops.items())
            lines.append(f"| {s.name} | {s.count:,} | {share} | {reasons} |")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """A horizontal bar per stage: what is left, on a log scale when counts span decades."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [self.start_name] + [s.name for s in self.stages]
        counts = [self.start] + [s.count for s in self.stages]
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.2))
        bars = ax.barh(range(len(names)), counts, color="#4C72B0")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        if min(counts) > 0 and max(counts) > 100 * min(counts):
            ax.set_xscale("log")
        for bar, c in zip(bars, counts, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {c:,}",
                va="center",
                fontsize=9,
            )
        ax.set_xlabel("candidates left")
        ax.set_title("WIT build funnel")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
