"""python -m bench.overlap_embed: what an embedding detector costs per training image.

The overlap stage embeds every training image once. For the two embedding detectors
(an open_clip image tower, `embedding:open_clip:CONFIG:CKPT`, here ViT-B-32 at 224 px;
and a TorchScript copy-detection model, `torchscript:PATH`, here a ResNet-50 with a
512-d head at 288 px, SSCD's architecture) this measures, on the stored 256 px JPEGs the
download engine writes:

- end to end: ``embed_bytes_batch`` (decode, resize/crop, normalize, forward, L2 norm),
  the call the search makes per shard;
- the host side alone (decode + preprocess) on one thread and on the detector's
  ``embed_workers`` threads, and the model alone (forward on an already-built batch), so
  a reader can see which one limits.

Weights are random (no download); the cost of a forward pass does not depend on them.
Prints a table and writes bench/results/overlap_embed[-DEVICE].json. Median of repeats.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.detectors import decode_for_hash, make_detector
from pipeline.synthweb.images import render_image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
VIT_B_32 = REPO / "training" / "model_configs" / "ViT-B-32.json"


def _stored(seed: int) -> bytes:
    img, _ = render_image(seed, 320, 240)
    img.thumbnail((256, 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return runs


def _models(tmp: Path) -> dict[str, str]:
    """Detector specs with random weights, written offline into tmp."""
    import open_clip
    import torch
    import torchvision

    torch.manual_seed(0)
    open_clip.add_model_config(VIT_B_32)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    ckpt = tmp / "vit-b-32.pt"
    torch.save({"model": clip.state_dict()}, ckpt)
    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Linear(2048, 512)
    ts = tmp / "resnet50-512.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(ts))
    return {
        "open_clip ViT-B-32, 224 px": f"embedding:open_clip:{VIT_B_32}:{ckpt}",
        "torchscript ResNet-50 (SSCD-sized), 288 px": f"torchscript:{ts}",
    }


def bench_detector(name: str, spec: str, blobs: Sequence[bytes], args: argparse.Namespace) -> dict:
    import torch

    det = make_detector(
        OverlapConfig(
            detector=spec,
            embed_batch=args.batch,
            embed_device=args.device,
            embed_workers=args.workers,
        )
    )
    det.embed_bytes_batch(blobs[: args.batch])  # warm-up: lazy init, allocator, cudnn autotune
    n = len(blobs)
    total = _timed(lambda: det.embed_bytes_batch(blobs), args.repeats)

    # The parts, through the detector's own preprocess and model (private on purpose: this
    # is the split the public call hides).
    def prepare(b: bytes) -> object:
        return det._preprocess(decode_for_hash(b, 0).convert("RGB"))

    def host() -> list:
        return [prepare(b) for b in blobs]

    host_runs = _timed(host, args.repeats)
    threads_runs = _timed(lambda: list(det._prepared_batches(blobs, prepare)), args.repeats)
    batch = torch.stack(host()[: args.batch]).to(det._device_obj)

    def forward() -> None:
        with torch.inference_mode():
            for _ in range(max(1, n // args.batch)):
                det._model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()

    fwd_runs = _timed(forward, args.repeats)
    fwd_n = max(1, n // args.batch) * args.batch
    return {
        "detector": name,
        "spec_kind": spec.split(":")[0],
        "dim": det.dim,
        "device": str(det._device_obj),
        "images": n,
        "batch": args.batch,
        "end_to_end_images_per_s": n / statistics.median(total),
        "host_images_per_s_one_core": n / statistics.median(host_runs),
        "host_threads": det.workers,
        "host_images_per_s_threads": n / statistics.median(threads_runs),
        "model_images_per_s": fwd_n / statistics.median(fwd_runs),
        "runs_s": {
            "end_to_end": total,
            "host": host_runs,
            "host_threads": threads_runs,
            "model": fwd_runs,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overlap_embed", description=__doc__.split("\n")[0]
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="embed_workers (0: one per core)")
    args = p.parse_args(argv)
    import torch

    blobs = [_stored(800_000 + i) for i in range(args.images)]
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_before": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["detectors"] = [
            bench_detector(name, spec, blobs, args) for name, spec in _models(Path(tmp)).items()
        ]
    results["machine"]["load_after"] = os.getloadavg()
    print(
        f"| detector ({args.device}) | end to end | host, 1 thread | host, N threads | model only |"
    )
    print("|---|---:|---:|---:|---:|")
    for d in results["detectors"]:
        print(
            f"| {d['detector']} | {d['end_to_end_images_per_s']:,.0f} images/s "
            f"| {d['host_images_per_s_one_core']:,.0f} images/s "
            f"| {d['host_images_per_s_threads']:,.0f} images/s ({d['host_threads']}) "
            f"| {d['model_images_per_s']:,.0f} images/s |"
        )
        hours = 400e6 / d["end_to_end_images_per_s"] / 3600
        print(f"  400M training images at this rate: {hours:,.0f} hours on this {args.device}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
    out = RESULTS / f"overlap_embed{suffix}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
