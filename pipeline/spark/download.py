"""The download stage on Spark: the engine's deterministic shard plan, one task per shard.

Each task runs ``engine.process_shard`` (plain Python, tested without Spark), which skips
a committed shard and commits atomically, so a retried or rerun task never duplicates a
sample. Speculative execution must stay off (Spark's default): two live attempts of one
shard would race on the same final names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.config import DownloadConfig


def _run_shard(shard_id: int, output: str, config: DownloadConfig) -> dict[str, Any]:
    from pipeline.engine import process_shard

    try:
        stats = process_shard(shard_id, output, config)
        return {"shard": shard_id, "ok": True, "skipped": bool(stats.get("skipped"))}
    except Exception as e:  # one shard's bug is reported, the other shards go on
        return {"shard": shard_id, "ok": False, "error": f"{type(e).__name__}: {e}"}


def download_on_spark(
    spark: Any,
    input_path: str,
    output: str | Path,
    config: DownloadConfig,
    stats_path: str | Path | None = None,
) -> dict[str, Any]:
    """Plan on the driver, download every pending shard in tasks, merge stats on the driver.

    Returns the merged stats (as ``engine.merge_stats``) plus this run's timing and any
    failed shards; also writes them to ``stats_path`` (default DIR/stats.json, as the
    download engine does; the build job, whose DIR/stats.json says its dataset is
    complete, gives another name).
    """
    from dataclasses import asdict

    from pipeline.engine import merge_stats, plan
    from pipeline.shards.layout import OutputLayout
    from pipeline.shards.writer import write_json_atomic

    root = str(output)
    layout = OutputLayout(Path(root))
    the_plan = plan(input_path, root, config)
    import shutil

    layout.remove_leftovers()  # what a killed run left half-written
    pending = [s for s in range(the_plan.n_shards) if not layout.is_committed(s)]
    before = merge_stats(layout, the_plan.n_shards)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    if pending:
        sc = spark.sparkContext
        sc.setJobDescription(f"download {len(pending)} shards")
        results = (
            sc.parallelize(pending, len(pending))
            .map(lambda sid: _run_shard(sid, root, config))
            .collect()
        )
    elapsed = time.perf_counter() - start
    shutil.rmtree(layout.tmp_dir, ignore_errors=True)  # emptied by every committed shard
    stats = merge_stats(layout, the_plan.n_shards)
    todo_rows = sum(the_plan.rows_per_shard[s] for s in pending)
    new_successes = stats["successes"] - before["successes"]
    stats.update(
        {
            "elapsed_s": round(elapsed, 3),
            "rows_this_run": todo_rows,
            "rows_per_second": round(todo_rows / elapsed, 2) if todo_rows and elapsed else None,
            "images_per_second": round(new_successes / elapsed, 2)
            if new_successes and elapsed
            else None,
            "failed_shards": {str(r["shard"]): r["error"] for r in results if not r["ok"]},
            "engine": "native",
            "config": asdict(config),
        }
    )
    write_json_atomic(Path(stats_path) if stats_path else layout.stats_path, stats)
    return stats
