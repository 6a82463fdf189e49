"""make gpu-check: train ViT-B-32 for a few hundred steps on one GPU from synthetic shards,
then print samples/s, peak GPU memory, and the median data and step times (and with --out
write them to gpu_check.json): a data time near the step time means the loader is the
bottleneck.

The shards are generated here (photo-like images with captions, the synthweb's
generator), so the check needs no data and no network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Above this share of the step spent waiting for a batch, the GPU is starved by the loader.
LOADER_BOUND_SHARE = 0.1


def summarize(metrics: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Medians over the steady steps (warmup, compilation and worker start-up left out)."""
    steady = [m for m in metrics if m["step"] > min(50, steps // 4) and m.get("loss") is not None]
    steady = steady or metrics
    data_time = statistics.median(m["data_time"] for m in steady)
    step_time = statistics.median(m["step_time"] for m in steady)
    share = data_time / step_time if step_time > 0 else 0.0
    return {
        "median_samples_per_s": statistics.median(m["samples_per_s"] for m in steady),
        "median_step_time_s": step_time,
        "median_data_time_s": data_time,
        "data_time_share": share,
        "loader_bound": share > LOADER_BOUND_SHARE,
        "steady_steps": len(steady),
    }


def make_shards(root: Path, n_shards: int, per_shard: int, size: int) -> None:
    """Our shard layout (tar + Parquet + ledger + stats), written as the engine writes it."""
    import io

    from pipeline.shards.layout import OutputLayout, make_key
    from pipeline.shards.writer import ShardWriter
    from pipeline.synthweb.images import render_image

    layout = OutputLayout(root)
    layout.make_dirs()
    for sid in range(n_shards):
        if layout.is_committed(sid):
            continue
        writer = ShardWriter(layout, sid)
        rows = []
        for i in range(per_shard):
            img, caption = render_image(sid * per_shard + i, size, size)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            key = make_key(sid, i, per_shard)
            meta = {
                "key": key,
                "caption": caption,
                "status": "success",
                "width": size,
                "height": size,
            }
            writer.add(key, "jpg", buf.getvalue(), caption, meta)
            rows.append({"key": key, "shard": sid, "row_index": sid * per_shard + i, "url": None,
                         "caption": caption, "status": "success", "width": size, "height": size})  # fmt: skip
        stats = {"shard": sid, "count": per_shard, "successes": per_shard, "failed_to_download": 0,
                 "failed_to_resize": 0, "status_dict": {"success": per_shard}, "bytes_downloaded": 0,
                 "bytes_written": writer.bytes_written}  # fmt: skip
        writer.commit(rows, rows, stats)


DESCRIPTION = (
    "Train a model (ViT-B-32 by default) for a few hundred steps on one GPU from synthetic "
    "shards generated here, then print samples/s, peak GPU memory and the median data and "
    "step times: a data time near the step time means the loader is the bottleneck. Needs "
    "a CUDA device; no data and no network."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.gpu_check", description=DESCRIPTION)
    p.add_argument(
        "--workdir",
        default="data/gpu-check",
        help="where the shards (WORKDIR/data) and the run (WORKDIR/run) go; shards already "
        "there are reused (default: data/gpu-check)",
    )
    p.add_argument(
        "--model",
        default="ViT-B-32",
        help="model config name in training/model_configs/ (default: ViT-B-32)",
    )
    p.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per step (default: 256)")
    p.add_argument(
        "--precision",
        default="bf16",
        choices=["fp32", "bf16", "amp"],
        help="fp32, bf16, or amp (float16 autocast with a gradient scaler) (default: bf16)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (inductor) (default: off)"
    )
    p.add_argument(
        "--workers", type=int, default=8, help="DataLoader worker processes (default: 8)"
    )
    p.add_argument("--shards", type=int, default=16, help="synthetic shards (default: 16)")
    p.add_argument("--per-shard", type=int, default=1024, help="images per shard (default: 1024)")
    p.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="side of the square synthetic images, in pixels (default: 256)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="also write the results to OUT/gpu_check.json (default: printed only)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device: this check runs on a GPU machine", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    t0 = time.perf_counter()
    make_shards(work / "data", args.shards, args.per_shard, args.image_size)
    print(
        f"shards: {args.shards} x {args.per_shard} images in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )

    from training.run import main as train

    run_dir = work / "run"
    # A fresh run folder: metrics.jsonl appends, and a stale one would mix two checks.
    shutil.rmtree(run_dir, ignore_errors=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    argv = [
        "--train-data", str(work / "data"), "--output", str(run_dir), "--model", args.model,
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--precision", args.precision,
        "--workers", str(args.workers), "--save-every", str(args.steps), "--warmup", "20",
    ]  # fmt: skip
    if args.compile:
        argv.append("--compile")
    code = train(argv)
    wall = time.perf_counter() - t0
    if code:
        return code
    metrics = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": args.model,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "compile": args.compile,
        "workers": args.workers,
        "steps": args.steps,
        **summarize(metrics, args.steps),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "wall_s": wall,
        "first_loss": metrics[0].get("loss"),
        "last_loss": metrics[-1].get("loss"),
    }
    print(json.dumps(result, indent=2))
    verdict = "IS" if result["loader_bound"] else "is not"
    print(
        f"median step {result['median_step_time_s'] * 1000:.1f} ms, of which waiting for data "
        f"{result['median_data_time_s'] * 1000:.1f} ms ({result['data_time_share']:.0%}): "
        f"the loader {verdict} the bottleneck at --workers {args.workers}; "
        f"{result['median_samples_per_s']:.0f} samples/s"
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
