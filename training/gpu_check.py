"""make gpu-check: train ViT-B-32 for a few hundred steps on one GPU from synthetic shards,
then print samples/s and peak GPU memory (and write them to gpu_check.json).

The shards are generated here (photo-like images with captions, the synthweb's
generator), so the check needs no data and no network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.gpu_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--workdir", default="data/gpu-check", help="where shards and the run go")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--out", default=None, help="also write gpu_check.json here")
    args = p.parse_args(argv)

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
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    code = train([
        "--train-data", str(work / "data"), "--output", str(run_dir), "--model", args.model,
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--precision", args.precision,
        "--workers", str(args.workers), "--save-every", str(args.steps), "--warmup", "20",
    ])  # fmt: skip
    wall = time.perf_counter() - t0
    if code:
        return code
    metrics = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    steady = [m for m in metrics if m.get("step", 0) > min(50, args.steps // 4)]
    rate_key = next(
        k for k in ("samples_per_s", "samples/s", "samples_per_second") if k in metrics[-1]
    )
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": args.model,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "steps": args.steps,
        "median_samples_per_s": statistics.median(m[rate_key] for m in steady),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "wall_s": wall,
        "first_loss": metrics[0].get("loss"),
        "last_loss": metrics[-1].get("loss"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
