"""python -m bench.train: our trainer vs open_clip's own, same shards, model, cores, one run.

Shards are generated first (not timed): photo-like images with captions (the synthweb's
renderer, as ``training.gpu_check`` writes them), our layout, 256 px JPEGs as the download
engine stores them. Each repeat then runs, in alternating order, with the same model
(``training/model_configs/tiny.json``), batch size, data workers, step count, lr schedule
and seed, each in a single process on the CPU:

- ``python -m training.run`` (ours), and
- ``open_clip_train.main`` (open_clip 3.3.0's trainer) through ``bench._open_clip_run``,
  with webdataset 0.2.86 from ``bench/.openclip-deps`` shadowing the venv's (it breaks on
  0.2.90+); ``--train-num-samples`` = steps x batch, one epoch.

Throughput is steady-state, from the per-step timings each trainer logs (ours:
``metrics.jsonl``'s samples/s and data_time; open_clip: the "Train Epoch" lines of its
out.log, logging every step): samples of steps after the first ``--skip`` divided by the
sum of their step times. Both clocks run from the end of one step to the end of the next,
so data waits, logging and the optimizer are all inside. Start-up (imports, model build,
worker start, shuffle buffer fill) is the process's wall time less all of its step times.

Then, to see whether the loader can be the bottleneck: each loader alone (our
``training.data`` stream in a DataLoader, open_clip's ``get_wds_dataset``), no model, with
the same workers and in the main process (0 workers: one core's rate), against the
model's own rate (forward + loss + backward + AdamW on synthetic batches in memory), with
torch's default AdamW (both trainers use it) and with the fused one.

Every process runs with OMP_NUM_THREADS=1 by default (``--threads``): on 2 cores, torch's
default of two intra-op threads next to the data workers (or anyone else's work) makes the
threads wait on each other at every barrier whenever a core is taken: ~390 samples/s
against ~640 with one thread for our trainer, and model steps up to 20x slower under a
neighbour's load. Our trainer is also given ``--threads`` with the same count (with
``--threads 0``, torch's default as a bare process reports it): on the CPU its own default
picks threads from the cores and data workers and does not read OMP_NUM_THREADS, so without
the flag the two trainers could run with different thread counts. Median of repeats; prints
a table and writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEPS = REPO / "bench" / ".openclip-deps"
WEBDATASET_PIN = "0.2.86"
INSTALL = (
    f".venv/bin/python -m pip install --no-deps --target bench/.openclip-deps "
    f"'webdataset=={WEBDATASET_PIN}'"
)
# A step's line in open_clip's out.log (log_every_n_steps=1: one line per step).
_OPEN_CLIP_STEP = re.compile(
    r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?\] Data \(t\): ([\d.]+) Batch \(t\): [\d.]+, ([\d.e+]+)/s"
)


def check_deps() -> None:
    init = DEPS / "webdataset" / "__init__.py"
    if not init.is_file() or f'__version__ = "{WEBDATASET_PIN}"' not in init.read_text():
        raise SystemExit(
            f"bench.train: open_clip's trainer needs webdataset {WEBDATASET_PIN} in {DEPS}: "
            f"run `make bench-train`, or `{INSTALL}`"
        )


def _env(open_clip: bool, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    path = [str(DEPS), str(REPO)] if open_clip else [str(REPO)]
    env.update(PYTHONPATH=os.pathsep.join(path), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run(cmd: list[str], env: dict[str, str], what: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and the workers it reaped, stdout)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return wall, cpu, done.stdout


def make_data(root: Path, shards: int, per_shard: int, size: int) -> tuple[str, str]:
    """Our layout under ``root``; returns (our --train-data, open_clip's brace pattern)."""
    from training.gpu_check import make_shards

    make_shards(root, shards, per_shard, size)
    return str(root), str(root / "shards" / f"{{00000..{shards - 1:05d}}}.tar")


def steady(step_s: list[float], data_s: list[float], batch: int, skip: int) -> dict[str, Any]:
    """Throughput of the steps after ``skip``: samples over the sum of their times."""
    s, d = step_s[skip:], data_s[skip:]
    return {
        "samples_per_s": batch * len(s) / sum(s),
        "median_step_samples_per_s": batch / statistics.median(s),
        "data_share": sum(d) / sum(s),
        "steps_timed": len(s),
        "slowest_step_s": max(s),
    }


def torch_default_threads(a: argparse.Namespace) -> int:
    """Intra-op threads torch picks by itself in the trainers' environment."""
    cmd = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    _, _, out = _run(cmd, _env(False, a.threads), "torch thread count")
    return int(out.strip())


# The same AdamW for both: each trainer's default depends on the model (ours reads the
# image tower, open_clip the name), so they are spelled out. Speed does not depend on them.
ADAM = ["--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6"]


def run_ours(
    data: str, out: Path, a: argparse.Namespace, seed: int, threads: int
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "training.run", "--train-data", data, "--output", str(out),
        "--model", a.model, "--batch-size", str(a.batch_size), "--steps", str(a.steps),
        "--workers", str(a.workers), "--lr", "5e-4", "--warmup", "10", "--weight-decay", "0.2",
        "--precision", "fp32", "--log-every", "1", "--seed", str(seed), *ADAM,
        "--threads", str(threads),  # open_clip's count (OMP_NUM_THREADS): ours' auto ignores it
    ]  # fmt: skip
    wall, cpu, _ = _run(cmd, _env(False, a.threads), "training.run")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    step_s = [r.get("step_time") or a.batch_size / r["samples_per_s"] for r in rows]
    data_s = [r["data_time"] for r in rows]
    return _trainer_result(wall, cpu, step_s, data_s, a)


def run_open_clip(pattern: str, logs: Path, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench._open_clip_run", "train", "--train-data", pattern,
        "--train-num-samples", str(a.steps * a.batch_size), "--dataset-type", "webdataset",
        "--model", a.model, "--batch-size", str(a.batch_size), "--workers", str(a.workers),
        "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--lr", "5e-4",
        "--warmup", "10", "--wd", "0.2", "--log-every-n-steps", "1", "--report-to", "",
        "--logs", str(logs), "--name", "run", "--seed", str(seed), *ADAM,
    ]  # fmt: skip
    wall, cpu, _ = _run(cmd, _env(True, a.threads), "open_clip_train.main")
    step_s, data_s = [], []
    for line in (logs / "run" / "out.log").read_text().splitlines():
        m = _OPEN_CLIP_STEP.search(line)
        if m:
            step_s.append(a.batch_size / float(m.group(3)))  # 6 digits; Batch (t) has 3 decimals
            data_s.append(float(m.group(2)))
    return _trainer_result(wall, cpu, step_s, data_s, a)


def _trainer_result(
    wall: float, cpu: float, step_s: list[float], data_s: list[float], a: argparse.Namespace
) -> dict[str, Any]:
    if len(step_s) != a.steps:
        raise RuntimeError(f"expected {a.steps} logged steps, found {len(step_s)}")
    return {
        **steady(step_s, data_s, a.batch_size, a.skip),
        "wall_s": wall,
        "cpu_s": cpu,  # whole run, start-up included: main process and data workers
        "startup_s": wall - sum(step_s),
        "step_s": step_s,
        "data_s": data_s,
    }


def run_loader(kind: str, settings: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    module = "bench._open_clip_run" if kind == "open_clip" else "bench._train_probe"
    cmd = [sys.executable, "-m", module, "loader", json.dumps(settings)]
    _, _, out = _run(cmd, _env(kind == "open_clip", a.threads), f"{kind} loader")
    r = json.loads(out.strip().splitlines()[-1])
    stamps, sizes = r["stamps"], r["sizes"]
    k = a.loader_skip
    if len(stamps) <= k + 1:
        raise RuntimeError(f"{kind} loader gave {len(stamps)} batches, needs > {k + 1}")
    return {
        "samples_per_s": sum(sizes[k + 1 :]) / (stamps[-1] - stamps[k]),
        "first_batch_s": stamps[0] - r["start"],
        "batches": len(stamps),
    }


def run_model(settings: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench._train_probe", "model", json.dumps(settings)]
    _, _, out = _run(cmd, _env(False, a.threads), "model probe")
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "samples_per_s": a.batch_size * len(r["step_s"]) / sum(r["step_s"]),
        "phases_ms": {k: 1e3 * statistics.median(v) for k, v in r["phases_s"].items()},
        "torch_threads": r["threads"],
    }


def _runs(xs: list[float]) -> str:
    return ", ".join(f"{x:.0f}" for x in xs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a training/model_configs name (default: tiny)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default: 32)")
    p.add_argument("--steps", type=int, default=200, help="steps per trainer run (default: 200)")
    p.add_argument("--skip", type=int, default=20, help="first steps left out (default: 20)")
    p.add_argument("--workers", type=int, default=2, help="data workers, both (default: 2)")
    p.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS, all processes (0: torch's default)"
    )
    p.add_argument("--repeats", type=int, default=3, help="repeats; medians reported (default: 3)")
    p.add_argument("--shards", type=int, default=8, help="shards generated (default: 8)")
    p.add_argument("--image-size", type=int, default=256, help="stored JPEG side (default: 256)")
    p.add_argument("--loader-batches", type=int, default=60, help="batches per loader probe")
    p.add_argument("--loader-skip", type=int, default=10, help="loader batches left out")
    p.add_argument("--model-steps", type=int, default=40, help="timed steps of the model probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(RESULTS / "train.json"))
    a = p.parse_args(argv)
    if a.skip >= a.steps or a.shards < max(1, a.workers):
        p.error("--skip must be below --steps, and --shards at least --workers")
    check_deps()
    load_start = os.getloadavg()  # other work on the machine skews timings: recorded
    ours_threads = a.threads or torch_default_threads(a)

    # Enough samples that open_clip's single epoch never runs dry on any worker, and that
    # ours never reaches an epoch's end (a new shuffle buffer fill) inside the timed steps.
    needed = max(a.steps, a.loader_batches) * a.batch_size
    per_shard = math.ceil(1.25 * needed / a.shards) + 2 * a.batch_size
    w = a.workers
    rows = {
        "ours": "trainer: `training.run` (ours)",
        "open_clip": "trainer: `open_clip_train.main` 3.3.0",
        "loader_ours": f"loader alone: ours (`training.data`), {w} workers",
        "loader_open_clip": f"loader alone: open_clip `get_wds_dataset`, {w} workers",
        "loader_ours_0": "loader alone: ours, in process (one core)",
        "loader_open_clip_0": "loader alone: open_clip, in process (one core)",
        "loader_float": f"loader alone: ours, float32 normalized in the workers, {w} workers",
        "loader_float_0": "loader alone: ours, float32 normalized in the workers, in process",
        "model": "model alone: forward + loss + backward + AdamW (torch default)",
        "model_fused": "model alone, AdamW(fused=True)",
    }
    clocks: dict[str, list[dict[str, Any]]] = {k: [] for k in rows}
    loads: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        ours_data, pattern = make_data(tmp / "data", a.shards, per_shard, a.image_size)
        print(f"{a.shards} shards x {per_shard} samples ({a.image_size} px JPEG) in "
              f"{time.perf_counter() - t0:.0f} s; model {a.model}, batch {a.batch_size}, "
              f"{a.steps} steps ({a.skip} left out), {w} workers, "
              f"threads {a.threads or 'default'}", flush=True)  # fmt: skip
        for rep in range(a.repeats):
            seed = a.seed + rep
            order = ["ours", "open_clip"] if rep % 2 == 0 else ["open_clip", "ours"]
            for tool in order:
                loads.append(os.getloadavg())
                if tool == "ours":
                    r = run_ours(ours_data, tmp / f"ours-{rep}", a, seed, ours_threads)
                else:
                    r = run_open_clip(pattern, tmp / f"open_clip-{rep}", a, seed)
                clocks[tool].append(r)
                print(f"  repeat {rep + 1} {tool:<10} {r['samples_per_s']:7.1f} samples/s steady "
                      f"(data {100 * r['data_share']:4.1f}% of step time, start-up "
                      f"{r['startup_s']:4.1f} s, wall {r['wall_s']:5.1f} s)", flush=True)  # fmt: skip
            for workers in (w, 0):
                # "float": ours as before the uint8 hand-over (the workers convert and
                # normalize each image, float32 crosses to the main process).
                for kind in [*order, "float"]:
                    settings = {
                        "train_data": pattern if kind == "open_clip" else ours_data,
                        "model": a.model, "batch_size": a.batch_size, "workers": workers,
                        "batches": a.loader_batches, "seed": seed, "shuffle_buffer": 1000,
                        "float_in_workers": kind == "float",
                    }  # fmt: skip
                    r = run_loader("open_clip" if kind == "open_clip" else "ours", settings, a)
                    clocks[f"loader_{kind}{'' if workers == w else '_0'}"].append(r)
                    print(f"  repeat {rep + 1} loader {kind:<10} {workers} workers "
                          f"{r['samples_per_s']:7.1f} samples/s", flush=True)  # fmt: skip
            for fused in (False, True):
                settings = {"model": a.model, "batch_size": a.batch_size, "seed": seed,
                            "warmup": 5, "steps": a.model_steps, "fused": fused}  # fmt: skip
                r = run_model(settings, a)
                clocks["model_fused" if fused else "model"].append(r)
                print(f"  repeat {rep + 1} model alone{' (fused AdamW)' if fused else ''} "
                      f"{r['samples_per_s']:7.1f} samples/s ({r['torch_threads']} thread(s); ms: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in r["phases_ms"].items()) + ")",
                      flush=True)  # fmt: skip

    rate = {k: [r["samples_per_s"] for r in v] for k, v in clocks.items()}
    med = {k: statistics.median(v) for k, v in rate.items()}
    paired = [o / t for o, t in zip(rate["ours"], rate["open_clip"], strict=True)]

    def trainer_median(key: str) -> dict[str, float]:
        runs = clocks[key]
        return {
            f: statistics.median(r[f] for r in runs)
            for f in ("median_step_samples_per_s", "data_share", "startup_s", "wall_s", "cpu_s")
        }

    trainers = {k: trainer_median(k) for k in ("ours", "open_clip")}
    phases = {
        m: {k: statistics.median(r["phases_ms"][k] for r in clocks[m]) for k in clocks[m][0]["phases_ms"]}
        for m in ("model", "model_fused")
    }  # fmt: skip
    print(f"\nmodel {a.model}, batch {a.batch_size}, {w} workers, {a.steps} steps (first "
          f"{a.skip} left out), OMP_NUM_THREADS={a.threads or 'default'}, median of "
          f"{a.repeats} repeats\n")  # fmt: skip
    print("| measure | samples/s (median) | runs |")
    print("|---|---:|---|")
    for key, label in rows.items():
        print(f"| {label} | {med[key]:,.0f} | {_runs(rate[key])} |")
    print(
        "\n| trainer | per-step median, samples/s | data wait | start-up + teardown s "
        "| whole run: wall s / CPU s |"
    )
    print("|---|---:|---:|---:|---|")
    for key in ("ours", "open_clip"):
        t = trainers[key]
        print(f"| {key} | {t['median_step_samples_per_s']:,.0f} | {100 * t['data_share']:.1f}% "
              f"| {t['startup_s']:.1f} | {t['wall_s']:.1f} / {t['cpu_s']:.1f} |")  # fmt: skip
    print(f"\nratio ours / open_clip: {med['ours'] / med['open_clip']:.2f}x of medians, "
          f"paired per repeat {', '.join(f'{x:.2f}' for x in paired)}")  # fmt: skip
    for m in ("model", "model_fused"):
        print(f"{rows[m]}, ms per step (median): "
              + ", ".join(f"{k} {v:.1f}" for k, v in phases[m].items()))  # fmt: skip
    print(f"loader alone ({w} workers) / model alone: ours {med['loader_ours'] / med['model']:.1f}x, "
          f"open_clip {med['loader_open_clip'] / med['model']:.1f}x; with fused AdamW: ours "
          f"{med['loader_ours'] / med['model_fused']:.1f}x, open_clip "
          f"{med['loader_open_clip'] / med['model_fused']:.1f}x")  # fmt: skip
    uint8 = {k: [o / f for o, f in zip(rate[f"loader_ours{k}"], rate[f"loader_float{k}"],
                                     strict=True)] for k in ("", "_0")}  # fmt: skip
    print(f"loader alone, uint8 hand-over / float32 in the workers, paired per repeat: {w} "
          f"workers {', '.join(f'{x:.2f}' for x in uint8[''])}; in process "
          f"{', '.join(f'{x:.2f}' for x in uint8['_0'])}")  # fmt: skip

    out = {
        "command": ("python -m bench.train " + " ".join(argv or [])).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_before_each_trainer_run": loads,
            "loadavg_end": os.getloadavg(),
        },
        "settings": {**vars(a), "samples_per_shard": per_shard, "ours_threads": ours_threads},
        "webdataset_for_open_clip": WEBDATASET_PIN,
        "measure": "steady state: samples of steps after --skip / sum of their logged step times",
        "median_samples_per_s": med,
        "samples_per_s_all_runs": rate,
        "ratio_ours_to_open_clip": med["ours"] / med["open_clip"],
        "ratio_ours_to_open_clip_paired": paired,
        "ratio_loader_uint8_to_float_paired": uint8,
        "trainers_median": trainers,
        "model_phases_ms_median": phases,
        "runs": clocks,
    }
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
