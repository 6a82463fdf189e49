"""python -m bench.download: our engine vs img2dataset 1.47, same URLs, same cores, one run.

A synthweb server (its own process, images generated before timing) serves realistic
photo-like images (long side ~200-3000 px, mostly JPEG) on loopback hosts. Each repeat
runs both tools, in alternating order, with the same output settings (256 px keep_ratio,
JPEG quality 95), processes and threads, and times the whole command. A third figure is
the in-memory limit: our decode + resize + encode over the same bytes already in memory,
no network, no writing, on the same number of processes. Prints a table (median of
repeats, ratios) and writes bench/results/download.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }


def start_server(port: int, images: int, hosts: int, seed: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "pipeline.synthweb", "serve", "--port", str(port),
        "--images", str(images), "--hosts", str(hosts), "--seed", str(seed), "--static",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    line = proc.stdout.readline().strip()  # printed once every image is generated
    if not line.startswith("http://127."):
        proc.kill()
        raise RuntimeError(f"synthweb did not start: {line!r}")
    return proc


def write_urls(path: Path, port: int, images: int, hosts: int, seed: int) -> list[dict]:
    from pipeline.synthweb.site import Site, SiteSpec, default_addresses

    spec = SiteSpec(seed=seed, n_images=images, n_hosts=hosts)
    site = Site(spec, default_addresses(hosts))
    rows = [r for r in site.pair_rows(port) if r["fault"] is None]  # throughput, not faults
    pq.write_table(
        pa.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows]), path
    )
    return rows


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{done.stderr[-3000:]}")
    return elapsed


def count_success_ours(out: Path) -> int:
    return json.loads((out / "stats.json").read_text())["status_counts"].get("success", 0)


def count_success_img2dataset(out: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def _in_memory_worker(args: tuple[str, int, int, object, object]) -> tuple[float, float, int]:
    from pipeline.config import ImageConfig
    from pipeline.images.process import process_image

    blob_path, start, stop, barrier, _ = args
    blobs = json.loads(Path(blob_path).read_text())[start:stop]
    data = [bytes.fromhex(b) for b in blobs]
    cfg = ImageConfig(image_size=256, resize_mode="keep_ratio", encode_quality=95)
    barrier.wait()
    t0 = time.perf_counter()
    ok = sum(process_image(d, cfg).status == "success" for d in data)
    return t0, time.perf_counter(), ok


def in_memory_limit(payloads: list[bytes], processes: int, tmp: Path) -> float:
    """Images/s of decode+resize+encode alone, on ``processes`` processes started together."""
    blob = tmp / "payloads.json"
    blob.write_text(json.dumps([p.hex() for p in payloads]))
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        n = len(payloads)
        parts = [
            (str(blob), n * i // processes, n * (i + 1) // processes, barrier, None)
            for i in range(processes)
        ]
        with ctx.Pool(processes) as pool:
            results = pool.map(_in_memory_worker, parts)
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return sum(r[2] for r in results) / (end - start)


def fetch_payloads(rows: list[dict], limit: int) -> list[bytes]:
    out = []
    for r in rows[:limit]:
        with urllib.request.urlopen(r["url"], timeout=30) as resp:  # loopback only
            out.append(resp.read())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.download", description=__doc__.splitlines()[0]
    )
    p.add_argument("--images", type=int, default=3000, help="image URLs per run (default: 3000)")
    p.add_argument("--hosts", type=int, default=8, help="loopback hosts (default: 8)")
    p.add_argument(
        "--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)"
    )
    p.add_argument("--processes", type=int, default=2, help="processes for both tools (default: 2)")
    p.add_argument(
        "--threads", type=int, default=32, help="threads per process for both (default: 32)"
    )
    p.add_argument("--port", type=int, default=18765, help="synthweb port (default: 18765)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--in-memory-images", type=int, default=600, help="images for the in-memory limit"
    )
    args = p.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    server = start_server(args.port, args.images, args.hosts, args.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmpdir:
            tmp = Path(tmpdir)
            urls = tmp / "urls.parquet"
            rows = write_urls(urls, args.port, args.images, args.hosts, args.seed)
            n = len(rows)
            sps = max(1, -(-n // (2 * args.processes)))  # two shards per process for both tools
            print(
                f"{n} URLs on {args.hosts} loopback hosts; {args.processes} processes x {args.threads} threads"
            )
            ours: list[float] = []
            theirs: list[float] = []
            successes: dict[str, int] = {}
            for rep in range(args.repeats):
                order = ["ours", "img2dataset"] if rep % 2 == 0 else ["img2dataset", "ours"]
                for tool in order:
                    out = tmp / f"{tool}-{rep}"
                    if tool == "ours":
                        cmd = [
                            sys.executable, "-m", "pipeline.download", "--input", str(urls),
                            "--output", str(out), "--processes", str(args.processes),
                            "--threads", str(args.threads), "--samples-per-shard", str(sps),
                            "--image-size", "256", "--resize-mode", "keep_ratio",
                            "--encode-quality", "95", "--allow-networks", "127.0.0.0/8",
                            "--retries", "0", "--no-progress",
                        ]  # fmt: skip
                        seconds = timed(cmd)
                        successes[tool] = count_success_ours(out)
                        ours.append(n / seconds)
                    else:
                        settings = {
                            "input": str(urls), "output": str(out), "processes": args.processes,
                            "threads": args.threads, "image_size": 256, "resize_mode": "keep_ratio",
                            "encode_quality": 95, "samples_per_shard": sps,
                        }  # fmt: skip
                        seconds = timed(
                            [sys.executable, "-m", "bench._img2dataset_run", json.dumps(settings)]
                        )
                        successes[tool] = count_success_img2dataset(out)
                        theirs.append(n / seconds)
                    print(
                        f"  repeat {rep + 1} {tool:<12} {n / seconds:8.1f} images/s ({successes[tool]}/{n} ok)"
                    )
            payloads = fetch_payloads(rows, args.in_memory_images)
            limit_runs = [
                in_memory_limit(payloads, args.processes, tmp) for _ in range(args.repeats)
            ]
    finally:
        server.terminate()
        server.wait(timeout=30)

    med_ours, med_theirs, med_limit = (statistics.median(x) for x in (ours, theirs, limit_runs))
    sizes = sorted(len(b) for b in payloads)
    result = {
        "images": n,
        "hosts": args.hosts,
        "processes": args.processes,
        "threads": args.threads,
        "repeats": args.repeats,
        "median_payload_bytes": sizes[len(sizes) // 2],
        "ours_images_per_s": ours,
        "img2dataset_images_per_s": theirs,
        "in_memory_limit_images_per_s": limit_runs,
        "median_ours": med_ours,
        "median_img2dataset": med_theirs,
        "median_in_memory_limit": med_limit,
        "ratio_vs_img2dataset": med_ours / med_theirs,
        "share_of_in_memory_limit": med_ours / med_limit,
        "successes": successes,
    }
    (RESULTS / "download.json").write_text(json.dumps(result, indent=2))
    print()
    print("| measure | images/s (median) | runs |")
    print("|---|---:|---|")
    print(
        f"| wit-builder `pipeline.download` | {med_ours:,.0f} | {', '.join(f'{x:.0f}' for x in ours)} |"
    )
    print(f"| img2dataset 1.47 | {med_theirs:,.0f} | {', '.join(f'{x:.0f}' for x in theirs)} |")
    print(
        f"| in-memory limit (decode+resize+encode) | {med_limit:,.0f} | {', '.join(f'{x:.0f}' for x in limit_runs)} |"
    )
    print(f"\nratio vs img2dataset: {med_ours / med_theirs:.2f}x (target >= 1.5x)")
    print(f"share of in-memory limit: {100 * med_ours / med_limit:.0f}% (target >= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
