"""The overlap search on Spark: one task per training shard, a tree reduce of the answers.

Each task embeds its shard and searches it against every eval item (the eval index is
broadcast once per executor); answers merge by keeping the best k per eval item under a
total order, so the result equals the local run's whatever the task order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.overlap.detectors import Detector
from pipeline.overlap.search import EvalIndex, SearchResult, search_shard


def search_spark(
    shards: Sequence[str],
    index: EvalIndex,
    detector: Detector,
    top_k: int,
    max_matches: int,
    spark: Any = None,
) -> SearchResult:
    from pipeline.spark.session import get_session

    spark = spark or get_session("wit-builder-overlap")
    sc = spark.sparkContext
    if not shards:
        return SearchResult.empty(len(index), top_k, max_matches)
    shared = sc.broadcast((index, detector))
    tasks = list(enumerate(shards))

    def run(task: tuple[int, str]) -> SearchResult:
        import faiss

        faiss.omp_set_num_threads(1)  # Spark runs one task per core already
        idx, det = shared.value
        return search_shard(task[0], task[1], idx, det, top_k, max_matches)

    try:
        rdd = sc.parallelize(tasks, numSlices=len(tasks))
        return rdd.map(run).treeReduce(lambda a, b: a + b)
    finally:
        shared.unpersist()
