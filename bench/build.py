"""python -m bench.build: the whole job end to end, native engine vs --engine img2dataset.

Both runs get the same pair list (the lean synthweb's images, its own process), the same
query list (built once, before timing), the same shard plan and settings, on local[2].
Each run is the whole `python jobs/build_wit.py` command (Spark start-up included); the
download stage's own time comes from each run's stats.json. Median of repeats, runs
alternating; prints a table and writes bench/results/build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.download import REPO, RESULTS, start_server, write_urls


def _job(pairs: Path, queries: Path, out: Path, engine: str, sps: int, threads: int) -> dict:
    cmd = [
        sys.executable, "jobs/build_wit.py", "--master", "local[2]", "--pairs", str(pairs),
        "--queries", str(queries), "--output", str(out), "--engine", engine,
        "--allow-networks", "127.0.0.0/8", "--samples-per-shard", str(sps), "--threads", str(threads),
        "--image-size", "256", "--resize-mode", "keep_ratio", "--encode-quality", "95", "--retries", "0",
    ]  # fmt: skip
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{engine} job failed:\n{done.stderr[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {
        "wall_s": wall,
        "download_s": stats["download"]["elapsed_s"],
        "successes": stats["download"]["successes"],
        "final": stats["dedup"]["final"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="image URLs (default: 2000)")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument(
        "--repeats", type=int, default=2, help="repeats; the median is reported (default: 2)"
    )
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--port", type=int, default=18766)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)

    from pipeline.curate.queries import QueryConfig, build_queries, save_queries

    RESULTS.mkdir(parents=True, exist_ok=True)
    server = start_server(args.port, args.images, args.hosts, args.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-build-") as tmpdir:
            tmp = Path(tmpdir)
            pairs = tmp / "pairs.parquet"
            rows = write_urls(pairs, args.port, args.images, args.hosts, args.seed)
            queries = tmp / "queries.parquet"
            save_queries(build_queries(QueryConfig()), queries)  # once, not timed
            sps = max(1, -(-len(rows) // 4))  # 4 shards: two per core
            runs: dict[str, list[dict]] = {"native": [], "img2dataset": []}
            for rep in range(args.repeats):
                order = ["native", "img2dataset"] if rep % 2 == 0 else ["img2dataset", "native"]
                for engine in order:
                    r = _job(pairs, queries, tmp / f"{engine}-{rep}", engine, sps, args.threads)
                    runs[engine].append(r)
                    print(f"  repeat {rep + 1} {engine:<12} job {r['wall_s']:6.1f}s  download {r['download_s']:6.1f}s  "
                          f"{r['successes']} images, {r['final']} final")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {
        e: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "download_s")}
        for e, rs in runs.items()
    }
    n = len(rows)
    result = {"images": n, "repeats": args.repeats, "runs": runs, "median": med,
              "download_ratio": med["img2dataset"]["download_s"] / med["native"]["download_s"],
              "job_ratio": med["img2dataset"]["wall_s"] / med["native"]["wall_s"]}  # fmt: skip
    (RESULTS / "build.json").write_text(json.dumps(result, indent=2))
    print()
    print("| engine | whole job s (median) | download stage s | download images/s |")
    print("|---|---:|---:|---:|")
    for e in ("native", "img2dataset"):
        print(
            f"| {e} | {med[e]['wall_s']:.1f} | {med[e]['download_s']:.1f} | {n / med[e]['download_s']:.0f} |"
        )
    print(
        f"\nnative is {result['download_ratio']:.2f}x faster in the download stage, {result['job_ratio']:.2f}x on the whole job"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
