"""make gpu-check: train ViT-B-32 for a few hundred steps on one GPU from synthetic shards,
then print samples/s, peak GPU memory, and the median data and step times (and with --out
write them to gpu_check.json): a data time near the step time means the loader is the
bottleneck.

The shards are generated here (photo-like images with captions, the synthweb's
generator), so the check needs no data and no network.
"""

from __future__ import annotations

import argparse
import hashlib
import io
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


# What make_shards records next to the shards it writes. Bump SHARDS_FORMAT when what a
# shard holds changes (members, metadata, encoding); a change of the image generator
# itself shows in the fingerprint of the first sample.
SHARDS_MANIFEST = "synthetic_shards.json"
SHARDS_FORMAT = 1
JPEG_QUALITY = 90


class ShardsError(Exception):
    """The shard folder holds data that make_shards did not write: it is left alone."""


def _sample(index: int, size: int) -> tuple[bytes, str]:
    from pipeline.synthweb.images import render_image

    img, caption = render_image(index, size, size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), caption


def shards_settings(n_shards: int, per_shard: int, size: int) -> dict[str, Any]:
    """What the shards are made with: reused only when every field is the same."""
    image, caption = _sample(0, size)
    fingerprint = hashlib.sha256(image + b"\0" + caption.encode("utf-8")).hexdigest()
    return {
        "format": SHARDS_FORMAT,
        "shards": n_shards,
        "per_shard": per_shard,
        "image_size": size,
        "jpeg_quality": JPEG_QUALITY,
        "sample0_sha256": fingerprint,
    }


def _describe(settings: dict[str, Any]) -> str:
    if not settings:
        return "an unreadable record"
    return (
        f"{settings.get('shards')} x {settings.get('per_shard')} images of "
        f"{settings.get('image_size')} px (format {settings.get('format')}, "
        f"sample 0 {str(settings.get('sample0_sha256'))[:12]})"
    )


def make_shards(root: Path, n_shards: int, per_shard: int, size: int) -> str:
    """Our shard layout (tar + Parquet + ledger + stats), written as the engine writes it.

    ``ROOT/synthetic_shards.json`` records the settings (count, images per shard, image
    size, format, and a fingerprint of the generator's first sample). Shards made with the
    same settings are reused (and an interrupted run is completed); shards made with other
    settings are deleted and made again, so the data is always what the flags say. A
    folder that holds files but no record is not ours to delete: ``ShardsError``.
    Generation is deterministic: the same settings give byte-identical shards.
    Returns "made", "reused", "completed" (reused, missing shards made) or "remade".
    """
    from pipeline.shards.atomic import write_text_atomic
    from pipeline.shards.layout import OutputLayout, make_key
    from pipeline.shards.writer import ShardWriter

    layout = OutputLayout(root)
    manifest = root / SHARDS_MANIFEST
    want = shards_settings(n_shards, per_shard, size)
    outcome = "made"
    if manifest.is_file():
        try:
            have = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = {}
        if not isinstance(have, dict):
            have = {}
        if have == want:
            outcome = "reused"
        else:
            print(
                f"{root}: shards were made as {_describe(have)}, now {_describe(want)}: "
                "making them again",
                file=sys.stderr,
                flush=True,
            )
            for d in (layout.shards_dir, layout.ledger_dir, layout.plan_dir, layout.tmp_dir):
                shutil.rmtree(d, ignore_errors=True)
            layout.stats_path.unlink(missing_ok=True)
            manifest.unlink()
            outcome = "remade"
    elif root.exists() and any(root.iterdir()):
        raise ShardsError(
            f"{root} holds files but no {SHARDS_MANIFEST}: not shards made here with known "
            f"settings (or made before they were recorded); remove it or choose another "
            f"folder to make {_describe(want)}"
        )
    if outcome != "reused":
        write_text_atomic(manifest, json.dumps(want, indent=2, sort_keys=True) + "\n")
    layout.make_dirs()
    for sid in range(n_shards):
        if layout.is_committed(sid):
            continue
        if outcome == "reused":
            outcome = "completed"
        writer = ShardWriter(layout, sid)
        rows = []
        for i in range(per_shard):
            image, caption = _sample(sid * per_shard + i, size)
            key = make_key(sid, i, per_shard)
            meta = {
                "key": key,
                "caption": caption,
                "status": "success",
                "width": size,
                "height": size,
            }
            writer.add(key, "jpg", image, caption, meta)
            rows.append({"key": key, "shard": sid, "row_index": sid * per_shard + i, "url": None,
                         "caption": caption, "status": "success", "width": size, "height": size})  # fmt: skip
        stats = {"shard": sid, "count": per_shard, "successes": per_shard, "failed_to_download": 0,
                 "failed_to_resize": 0, "status_dict": {"success": per_shard}, "bytes_downloaded": 0,
                 "bytes_written": writer.bytes_written}  # fmt: skip
        writer.commit(rows, rows, stats)
    return outcome


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
        "there are reused when made with the same --shards, --per-shard and --image-size, "
        "and made again otherwise (default: data/gpu-check)",
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
    p.add_argument(
        "--accum-freq",
        type=int,
        default=1,
        help="micro-batches of --batch-size per step, training.run's --accum-freq (default: 1)",
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
    try:
        outcome = make_shards(work / "data", args.shards, args.per_shard, args.image_size)
    except ShardsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"shards: {args.shards} x {args.per_shard} images of {args.image_size} px, {outcome} "
        f"in {time.perf_counter() - t0:.0f}s",
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
    if args.accum_freq != 1:
        argv += ["--accum-freq", str(args.accum_freq)]
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
        "accum_freq": args.accum_freq,
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
