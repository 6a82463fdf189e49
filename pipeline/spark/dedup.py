"""The image dedup stage on Spark: one task per shard computes hashes; the driver groups.

At 400M images the hashes are 8 bytes each plus the key (~7 GB on the driver); a cluster
run would group by hash prefix in a shuffle instead (see the issue notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.dedup.images import DedupConfig


def dedup_on_spark(
    spark: Any, output: str | Path, n_shards: int, config: DedupConfig
) -> dict[str, int]:
    from pipeline.dedup.dataset import apply, shard_hashes
    from pipeline.dedup.images import duplicates_from_hashes

    root = str(output)
    sc = spark.sparkContext
    sc.setJobDescription(f"dedup: hash {n_shards} shards")
    hashes = (
        sc.parallelize(range(n_shards), max(1, n_shards))
        .flatMap(lambda s: shard_hashes(root, s))
        .collect()
    )
    duplicates, counts = duplicates_from_hashes(hashes, config)
    counts.update(apply(root, n_shards, duplicates))
    return counts
