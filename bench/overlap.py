"""python -m bench.overlap: the overlap search and the phash detector, measured.

1. Search throughput: training images per second through ``search_codes`` (the unit a
   worker or Spark task runs per shard: FAISS flat search, top k, threshold matches)
   against 10k and 50k eval items, for 512-bit binary codes (phash+dhash, 16x16) and
   512-d float vectors (an embedding detector's), shards of 10k training codes.
2. FAISS ``IndexFlatIP`` search against numpy's sgemm on the same shapes in the same run:
   GFLOP/s = 2 x queries x base x d / seconds (FAISS also selects the top k).
3. Peak memory for 1M training vectors: a subprocess streams 100 shards of 10k codes
   through search_codes and the merge; memory should stay at one shard plus the eval index.
4. Detector cost: decode + phash of 256 px JPEGs (the download engine's output), one core.
5. Detector quality: the threshold is calibrated as a run does (planted copies of one set
   of images), then recall and precision are measured on held-out images and held-out
   transformations (another seed) hidden among distractors; also the best recall at
   precision 0.99 on the held-out set itself, and recall per transformation. Sources:
   Fashion-MNIST from Debian's dataset-fashion-mnist when installed, and synthweb's
   photo-like renders.

Prints a markdown table and writes bench/results/overlap.json. Timings on these machines
vary by up to 5x between runs: compare within one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.overlap.calibrate import calibrate, choose_threshold, pr_curve
from pipeline.overlap.detectors import PHashDetector
from pipeline.overlap.evalsets import (
    DEBIAN_FASHION_MNIST,
    ArrayImages,
    EvalSet,
    EvalSpec,
    load_eval_set,
)
from pipeline.overlap.search import EvalIndex, SearchResult, knn, search_codes
from pipeline.overlap.transforms import TRANSFORMS, TransformSpec, transform
from pipeline.synthweb.images import render_image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARD = 10_000
BITS = 512  # phash + dhash at 16x16, the default detector
DIM = 512  # a CLIP ViT-B/32 or SSCD-sized embedding


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _rand_index(kind: str, n_eval: int, seed: int) -> EvalIndex:
    rng = np.random.default_rng(seed)
    if kind == "binary":
        codes = rng.integers(0, 256, (n_eval, BITS // 8), dtype=np.uint8)
        dim = BITS
    else:
        codes = rng.normal(size=(n_eval, DIM)).astype(np.float32)
        codes /= np.linalg.norm(codes, axis=1, keepdims=True)
        dim = DIM
    # 0.9: a calibrated-like threshold, so random pairs rarely match (as in real runs).
    return EvalIndex(kind, dim, codes, np.full(n_eval, 0.9, np.float32), np.ones(n_eval, bool))


def _rand_shard(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "binary":
        return rng.integers(0, 256, (SHARD, BITS // 8), dtype=np.uint8)
    x = rng.normal(size=(SHARD, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_search(kind: str, n_eval: int, repeats: int) -> dict:
    index = _rand_index(kind, n_eval, 0)
    rng = np.random.default_rng(1)
    keys = [str(i) for i in range(SHARD)]
    runs = []
    for r in range(repeats):
        shard = _rand_shard(kind, rng)
        t0 = time.perf_counter()
        search_codes(r, shard, np.arange(SHARD), keys, index, top_k=5, max_matches=100)
        runs.append(SHARD / (time.perf_counter() - t0))
    return {"kind": kind, "eval_items": n_eval, "images_per_s": _median(runs), "runs": runs}


def bench_gemm(nq: int, nb: int, d: int, repeats: int) -> dict:
    import faiss

    rng = np.random.default_rng(2)
    q = rng.normal(size=(nq, d)).astype(np.float32)
    b = rng.normal(size=(nb, d)).astype(np.float32)
    flops = 2.0 * nq * nb * d
    index = faiss.IndexFlatIP(d)
    index.add(b)
    f_runs, n_runs = [], []
    for r in range(repeats):
        order: list[tuple[str, Callable[[], object]]] = [
            ("faiss", lambda: index.search(q, 5)),
            ("numpy", lambda: q @ b.T),
        ]
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate who runs first
            t0 = time.perf_counter()
            fn()
            gflops = flops / (time.perf_counter() - t0) / 1e9
            (f_runs if name == "faiss" else n_runs).append(gflops)
    # Each repeat runs both back to back: the ratio of a pair is less exposed to the load
    # of this shared machine drifting than the ratio of two medians.
    ratios = [f / n for f, n in zip(f_runs, n_runs, strict=True)]
    return {
        "queries": nq, "base": nb, "d": d, "faiss_gflops": _median(f_runs),
        "numpy_gflops": _median(n_runs), "ratio": _median(ratios),
        "faiss_runs": f_runs, "numpy_runs": n_runs, "ratios": ratios,
    }  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over exec from the parent, so a child would report the benchmark's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_run(kind: str, n_eval: int, n_train: int) -> dict:
    """In its own process: stream n_train codes in shards through search and merge."""
    index = _rand_index(kind, n_eval, 0)
    rng = np.random.default_rng(3)
    keys = [str(i) for i in range(SHARD)]
    total = SearchResult.empty(n_eval, 5, 100)
    base_mb = _peak_rss_mb()
    t0 = time.perf_counter()
    after_first = 0.0
    for sid in range(n_train // SHARD):
        part = search_codes(sid, _rand_shard(kind, rng), np.arange(SHARD), keys, index, 5, 100)
        total = total + part
        if sid == 0:
            after_first = _peak_rss_mb()
    seconds = time.perf_counter() - t0
    peak_mb = _peak_rss_mb()
    return {
        "kind": kind, "eval_items": n_eval, "training_vectors": n_train,
        "peak_rss_mb": peak_mb, "rss_before_search_mb": base_mb,
        "peak_after_first_shard_mb": after_first, "seconds": seconds,
        "images_per_s": n_train / seconds,
    }  # fmt: skip


def bench_memory(kind: str, n_eval: int, n_train: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.overlap", "--memory-run", kind, str(n_eval), str(n_train)],
        cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _renders(seeds: Sequence[int]) -> list[Image.Image]:
    out = []
    for s in seeds:
        r = random.Random(s)
        w = r.choice((256, 320, 384, 480))
        h = int(w * r.uniform(0.6, 1.0))
        out.append(render_image(s, w, h)[0])
    return out


def _stored(img: Image.Image) -> bytes:
    """An image as the download engine stores it: long side 256, JPEG quality 95."""
    img = img.convert("RGB")
    img.thumbnail((256, 256), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def bench_embed(repeats: int) -> dict:
    det = PHashDetector()
    blobs = [_stored(im) for im in _renders(range(900_000, 900_300))]
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in blobs:
            det.embed_bytes(b)
        runs.append(len(blobs) / (time.perf_counter() - t0))
    return {"images_per_s_one_core": _median(runs), "runs": runs, "image": "256 px JPEG q95"}


def _codes(det: PHashDetector, images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([det.embed_image(im) for im in images])


def heldout_quality(
    name: str,
    cal_images: Sequence[Image.Image],
    held: Sequence[Image.Image],
    distractors: Sequence[bytes],
    seed: int,
) -> dict:
    """Calibrate on one image set as a run does, then score held-out images with held-out
    transformations: half of them get a copy hidden among the distractors."""
    det = PHashDetector()
    images = ArrayImages(np.stack([np.asarray(im) for im in cal_images]))
    n = len(images)
    ids = tuple(map(str, range(n)))
    s = EvalSet(name, "bench", Path("."), ids, np.zeros(n, np.int64), ("x",), images)
    codes = _codes(det, [images.image(i) for i in range(n)])
    cal = calibrate(s, codes, np.ones(n, bool), det, 0.99, n, seed)
    t = cal.threshold

    held_codes = _codes(det, held)
    rng = random.Random(f"heldout:{seed}")
    planted = np.array(sorted(rng.sample(range(len(held)), len(held) // 2)))

    def copies(spec: TransformSpec) -> np.ndarray:
        r = random.Random(f"copies:{seed}:{spec.enabled}")
        return np.stack([det.embed_bytes(transform(held[i], r, spec)) for i in planted])

    distractor_codes = np.stack([det.embed_bytes(b) for b in distractors])
    plant_codes = copies(TransformSpec())
    base = np.concatenate([distractor_codes, plant_codes])
    scores, pos = knn(base, held_codes, 2, "binary", det.dim)
    own_slot = np.full(len(held), -1)
    own_slot[planted] = len(distractor_codes) + np.arange(len(planted))
    own = np.full(len(held), -np.inf, np.float32)
    own[planted] = 1.0 - np.unpackbits(held_codes[planted] ^ plant_codes, axis=1).sum(1) / det.dim
    other = np.where(pos == own_slot[:, None], -np.inf, scores).max(axis=1)
    is_planted = np.zeros(len(held), bool)
    is_planted[planted] = True

    def at(threshold: float) -> tuple[float, float]:
        tp = int((own[planted] >= threshold).sum())
        # A false alarm: an item with no copy, or a planted one matched only to a stranger.
        fp = int((other[~is_planted] >= threshold).sum())
        fp += int(((own[planted] < threshold) & (other[planted] >= threshold)).sum())
        return tp / len(planted), (tp / (tp + fp) if tp + fp else 1.0)

    recall, precision = at(t)
    negatives = np.concatenate([other[~is_planted], other[planted][own[planted] < other[planted]]])
    th, tp, fp = pr_curve(own[planted], negatives)
    i, _ = choose_threshold(th, tp, fp, 0.99)
    per_transform = {}
    for tname in TRANSFORMS:
        c = copies(TransformSpec(p=1.0, enabled=(tname,)))
        sc = 1.0 - np.unpackbits(held_codes[planted] ^ c, axis=1).sum(1) / det.dim
        per_transform[tname] = float((sc >= t).mean())
    return {
        "source": name, "calibration_images": n, "heldout_images": len(held),
        "planted": len(planted), "distractors": len(distractors),
        "threshold": t, "calibration_recall": cal.recall, "calibration_precision": cal.precision,
        "heldout_recall": recall, "heldout_precision": precision,
        "heldout_best_recall_at_p99": float(tp[i] / len(planted)),
        "heldout_best_threshold": float(th[i]), "recall_per_transformation": per_transform,
    }  # fmt: skip


OPENCLIPART = Path("/usr/share/openclipart/svg")  # Debian openclipart-svg


def _render_svg(path: str) -> Image.Image | None:
    """One clip art rendered onto white at 128x96 (aspect kept, centred); None if it fails."""
    import cairosvg

    try:
        png = cairosvg.svg2png(url=path, output_width=128)
        img = Image.open(io.BytesIO(png))
        img.load()
    except Exception:  # malformed or unsupported SVGs exist in the collection
        return None
    img.thumbnail((128, 96))
    canvas = Image.new("RGB", (128, 96), "white")
    rgba = img.convert("RGBA")
    canvas.paste(rgba, ((128 - img.width) // 2, (96 - img.height) // 2), rgba)
    return canvas


def _openclipart(n: int, notes: list[str]) -> list[Image.Image]:
    """n distinct openclipart renders (a seeded sample of the collection), or [] if absent."""
    try:
        import cairosvg  # noqa: F401
    except ImportError:
        notes.append("openclipart renders skipped: cairosvg is not installed")
        return []
    if not OPENCLIPART.is_dir():
        notes.append(f"openclipart renders skipped: {OPENCLIPART} is absent (openclipart-svg)")
        return []
    paths = sorted(str(p) for p in OPENCLIPART.rglob("*.svg"))
    # The collection lists some files twice (a flat and a categorised copy): by name once.
    by_name = {Path(p).name: p for p in paths}
    paths = sorted(by_name.values())
    random.Random(0).shuffle(paths)
    out: list[Image.Image] = []
    kept = np.zeros((0, 32 * 32), np.float32)
    failed = similar = 0
    with cf.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for img in pool.map(_render_svg, paths[: int(n * 1.5) + 100], chunksize=16):
            if img is None or img.getextrema() == ((255, 255),) * 3:
                failed += 1  # unrenderable, or blank at this size
                continue
            # The collection holds the same drawing under several names and recoloured
            # variants: those would be copies the ground truth calls distinct. Drop any
            # render whose 32x32 grey thumbnail is within an RMS of 8/255 of one kept
            # (a pixel criterion, independent of the hashes being measured).
            thumb = np.asarray(img.convert("L").resize((32, 32)), np.float32).ravel()
            if len(kept) and float(np.sqrt(((kept - thumb) ** 2).mean(axis=1)).min()) < 8:
                similar += 1
                continue
            kept = np.vstack([kept, thumb])
            out.append(img)
            if len(out) == n:
                break
    notes.append(
        f"openclipart: {len(out)} renders from {len(by_name):,} distinct SVG names "
        f"({failed} failed or blank, {similar} dropped as near-copies of a kept render)"
    )
    return out if len(out) == n else []


def quality_sources(n_cal: int, n_held: int, n_distractors: int, notes: list[str]) -> list[dict]:
    out = []
    if DEBIAN_FASHION_MNIST.exists():
        fm = load_eval_set(EvalSpec("fashion-mnist", "fashion-mnist", DEBIAN_FASHION_MNIST))
        imgs = [fm.images.image(i) for i in range(min(len(fm), n_cal + n_held + n_distractors))]
        dis = [_stored(im) for im in imgs[n_cal + n_held :]]
        out.append(
            heldout_quality("fashion-mnist", imgs[:n_cal], imgs[n_cal : n_cal + n_held], dis, 0)
        )
    else:
        notes.append(
            f"Fashion-MNIST skipped: {DEBIAN_FASHION_MNIST} is absent (Debian package "
            "dataset-fashion-mnist not installed)"
        )
    clips = _openclipart(n_cal // 2 + n_held // 2 + n_distractors // 2, notes)
    if clips:
        a, b = n_cal // 2, n_cal // 2 + n_held // 2
        out.append(
            heldout_quality(
                "openclipart", clips[:a], clips[a:b], [_stored(im) for im in clips[b:]], 0
            )
        )
    # Eval-set sized images (ImageNet val is ~500x375, CIFAR 32x32): 128x96 here.
    cal = [im.convert("RGB").resize((128, 96)) for im in _renders(range(0, n_cal))]
    held = [
        im.convert("RGB").resize((128, 96)) for im in _renders(range(100_000, 100_000 + n_held))
    ]
    dis = [_stored(im) for im in _renders(range(200_000, 200_000 + n_distractors))]
    out.append(heldout_quality("renders", cal, held, dis, 0))
    return out


def table(results: dict) -> str:
    lines = ["| measure | value |", "|---|---:|"]
    for s in results["search"]:
        lines.append(
            f"| search, {s['kind']} ({BITS if s['kind'] == 'binary' else DIM}), {s['eval_items']:,} eval items "
            f"| {s['images_per_s']:,.0f} training images/s |"
        )
    for g in results["gemm"]:
        lines.append(
            f"| IndexFlatIP vs sgemm, {g['queries']:,} x {g['base']:,} x {g['d']} "
            f"| {g['faiss_gflops']:.0f} vs {g['numpy_gflops']:.0f} GFLOP/s ({100 * g['ratio']:.0f}%) |"
        )
    for m in results["memory"]:
        lines.append(
            f"| peak RSS, {m['training_vectors']:,} {m['kind']} training vectors vs {m['eval_items']:,} eval "
            f"| {m['peak_rss_mb']:.0f} MB (after 1 shard {m['peak_after_first_shard_mb']:.0f} MB) |"
        )
    e = results["embed"]
    lines.append(
        f"| phash+dhash 16x16, decode + hash, {e['image']} | {e['images_per_s_one_core']:,.0f} images/s per core |"
    )
    for q in results["quality"]:
        lines.append(
            f"| phash {q['source']}: held-out recall / precision at the calibrated threshold {q['threshold']:.3f} "
            f"| {q['heldout_recall']:.3f} / {q['heldout_precision']:.3f} |"
        )
        lines.append(
            f"| phash {q['source']}: best held-out recall at precision 0.99 | {q['heldout_best_recall_at_p99']:.3f} |"
        )
        per = ", ".join(f"{k} {v:.2f}" for k, v in q["recall_per_transformation"].items())
        lines.append(f"| phash {q['source']}: recall per transformation alone | {per} |")
    return "\n".join(lines)


def extrapolate(results: dict, n_train: float = 400e6, n_eval: int = 50_000) -> dict:
    """Core-hours for 400M training images against 50k eval items, from this run's rates."""
    cores = os.cpu_count() or 1
    embed = results["embed"]["images_per_s_one_core"]
    out = {"training_images": n_train, "eval_items": n_eval, "cores_measured": cores}
    out["embed_core_hours"] = n_train / embed / 3600
    for s in results["search"]:
        if s["eval_items"] == n_eval:
            # The search ran on every core of this machine: rate per core = rate / cores.
            out[f"search_{s['kind']}_core_hours"] = n_train / (s["images_per_s"] / cores) / 3600
    out["total_binary_core_hours"] = out["embed_core_hours"] + out.get(
        "search_binary_core_hours", 0.0
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument(
        "--memory-run", nargs=3, metavar=("KIND", "EVAL", "TRAIN"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.memory_run:
        kind, n_eval, n_train = args.memory_run
        print(json.dumps(memory_run(kind, int(n_eval), int(n_train))))
        return 0
    quick = args.quick
    notes: list[str] = []
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "notes": notes,
    }
    t0 = time.perf_counter()
    results["search"] = [
        bench_search(kind, n, args.repeats)
        for kind in ("binary", "float")
        for n in (10_000, 50_000)
    ]
    results["gemm"] = [bench_gemm(n, SHARD, DIM, args.repeats) for n in (10_000, 50_000)]
    n_train = 200_000 if quick else 1_000_000
    # Float against 1k eval items: memory is the point here, and 1M x 10k float pairs
    # would take minutes on two cores.
    results["memory"] = [
        bench_memory("binary", 50_000, n_train),
        bench_memory("float", 1_000, n_train),
    ]
    results["embed"] = bench_embed(args.repeats)
    sizes = (200, 200, 1000) if quick else (1000, 1000, 5000)
    results["quality"] = quality_sources(*sizes, notes)
    results["extrapolation"] = extrapolate(results)
    results["seconds"] = time.perf_counter() - t0
    results["machine"]["load_after"] = os.getloadavg()
    print(table(results))
    x = results["extrapolation"]
    print(
        f"\n400M training images vs 50k eval items: embedding {x['embed_core_hours']:,.0f} core-hours, "
        f"binary search {x.get('search_binary_core_hours', 0):,.0f} core-hours"
    )
    for n in notes:
        print(f"note: {n}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overlap.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
