"""Where things live in an output directory (the img2dataset layout, plus our ledger).

DIR/shards/NNNNN.tar           {key}.jpg|webp|png, {key}.txt, {key}.json
DIR/shards/NNNNN.parquet       one row per input row of the shard (all statuses)
DIR/shards/NNNNN_stats.json    written last: the shard's commit marker
DIR/ledger/NNNNN.parquet       one row per input row: the accounting record
DIR/_plan/                     the shard plan: which input rows go to which shard
DIR/stats.json                 merged counts of all committed shards
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

SHARD_DIGITS = 5


def key_digits(samples_per_shard: int) -> int:
    """Digits for a sample's index within its shard: 4 by default, so keys have 9 digits."""
    return max(4, len(str(samples_per_shard - 1)))


def make_key(shard_id: int, index_in_shard: int, samples_per_shard: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}{index_in_shard:0{key_digits(samples_per_shard)}d}"


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledger"

    @property
    def plan_dir(self) -> Path:
        return self.root / "_plan"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "_tmp"

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    def name(self, shard_id: int) -> str:
        return f"{shard_id:0{SHARD_DIGITS}d}"

    def tar(self, shard_id: int) -> Path:
        return self.shards_dir / f"{self.name(shard_id)}.tar"

    def parquet(self, shard_id: int) -> Path:
        return self.shards_dir / f"{self.name(shard_id)}.parquet"

    def shard_stats(self, shard_id: int) -> Path:
        return self.shards_dir / f"{self.name(shard_id)}_stats.json"

    def ledger(self, shard_id: int) -> Path:
        return self.ledger_dir / f"{self.name(shard_id)}.parquet"

    def plan_part(self, shard_id: int) -> Path:
        return self.plan_dir / f"{self.name(shard_id)}.parquet"

    def is_committed(self, shard_id: int) -> bool:
        return self.shard_stats(shard_id).is_file() and self.ledger(shard_id).is_file()

    def remove_leftovers(self) -> None:
        """What a killed run left half-written: the shard writers' temp folder, the hidden
        temp files of atomic writes (``.NAME.HEX.tmp``) and the plan's part files being
        written. Only while holding the output's run lock: a live writer's are its own."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        leftovers = [*self.plan_dir.glob("*.tmp")]
        for folder in (self.root, self.shards_dir, self.ledger_dir, self.plan_dir):
            leftovers += folder.glob(".*.tmp")
        for path in leftovers:
            path.unlink(missing_ok=True)

    def make_dirs(self) -> None:
        for d in (self.shards_dir, self.ledger_dir, self.plan_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
