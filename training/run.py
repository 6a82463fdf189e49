"""python -m training.run: train a contrastive dual encoder (open_clip) on our shards.

The loop is ours so that it fixes what open_clip's trainer users hit: the sample count
comes from the shards (so --epochs needs no sample count), bad data fails before workers
start, checkpoints are atomic and hold the RNG states, the AMP scaler and the data
position (a resumed run continues mid-epoch), and a non-finite loss stops with the step
and batch named, or with --on-nan skip drops that update.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.overlap.evalsets import EvalSetError
from pipeline.overlap.templates import TemplatesError
from pipeline.shards.atomic import write_text_atomic
from training.checkpoints import (
    CheckpointError,
    Position,
    Recorded,
    checkpoint_state,
    list_checkpoints,
    recorded,
    remove_stale_temps,
    resolve_resume,
    restore,
    save_checkpoint,
)
from training.data import (
    ShardStream,
    TrainDataError,
    load_exclusions,
    plan_data,
    split_preprocess,
    to_model_input,
)
from training.evaluate import Evaluator
from training.models import ModelConfigError, available_models, build, input_side, load_config
from training.optim import (
    accumulate_gradients,
    lr_at,
    make_optimizer,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and batch."""


class TrainOptionError(ValueError):
    """An option this machine cannot honour: a missing package or compiler backend."""


DEFAULTS: dict[str, Any] = {
    "model": "tiny",
    "batch_size": 32,
    "lr": 5e-4,
    "warmup": 10,
    "weight_decay": 0.2,
    "precision": "fp32",
    "loss": "clip",
    "workers": 0,
    "save_every": 0,
    "seed": 0,
    "shuffle_buffer": 1000,
    "log_every": 10,
    "threads": 0,
    "optimizer_impl": "fused",
    "eval_every": 0,
    "val_max": 0,
    "grad_checkpointing": False,
    "compile": False,
    "compile_backend": "inductor",
    "on_nan": "stop",
    "max_nan_skips": 10,
    "resample": False,
    "tensorboard": False,
    "accum_freq": 1,
    "grad_clip_norm": 0.0,
}
DEFAULT_STEPS = 100  # when neither --steps nor --epochs is given
# Options a resumed run does not take from its checkpoint: this machine's and this
# invocation's own, which do not change what is trained.
NOT_INHERITED = frozenset(
    {
        "config", "resume", "output", "check", "workers", "threads", "compile",
        "compile_backend", "optimizer_impl", "grad_checkpointing",
    }
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--steps")
    pre.add_argument("--epochs")
    pre.add_argument("--resume")
    pre.add_argument("--output")
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__)
    p.add_argument("--config", help="JSON file of option defaults (keys as the flags, _ for -)")
    p.add_argument("--train-data", help="shard folder, .tar, or brace pattern; '::' joins")
    p.add_argument("--output", help="run folder: checkpoints/, metrics.jsonl, curves.png")
    p.add_argument("--model", help=f"one of training/model_configs: {available_models()}")
    p.add_argument("--batch-size", type=int, help="samples per step (per process)")
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--steps", type=int, help=f"optimizer steps in total (default {DEFAULT_STEPS})"
    )
    length.add_argument(
        "--epochs",
        type=int,
        help="passes over the data instead of --steps: steps = epochs x (samples in the "
        "shards' stats // (batch size x ranks)); each epoch reshuffles with the seed",
    )
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay")
    p.add_argument("--weight-decay", type=float, help="AdamW decay (not on gains/biases/scale)")
    p.add_argument("--beta1", type=float, help="AdamW beta1 (default 0.9, as CLIP and open_clip)")
    p.add_argument(
        "--beta2",
        type=float,
        help="AdamW beta2 (default as CLIP's paper and open_clip: 0.98 for a ViT image tower, "
        "0.999 for a ResNet)",
    )
    p.add_argument(
        "--eps", type=float, help="AdamW epsilon (default 1e-6 for a ViT, 1e-8 for a ResNet)"
    )
    p.add_argument(
        "--grad-clip-norm",
        type=float,
        help="clip the gradients' global L2 norm to this (0, the default: no clipping); "
        "metrics.jsonl then records grad_norm, the norm before clipping",
    )
    p.add_argument(
        "--accum-freq",
        type=int,
        help="micro-batches per optimizer step (default 1): the contrastive loss is over all "
        "of them (--batch-size x K x ranks negatives) at one micro-batch's activation memory. "
        "Features are first computed without gradients, then each micro-batch is run again "
        "with them (GradCache, open_clip's --accum-freq): about 1.3x the compute per sample",
    )
    p.add_argument(
        "--optimizer-impl",
        choices=["fused", "foreach", "default"],
        help="AdamW's kernels: fused (default: one kernel per parameter group, CPU and CUDA; "
        "elsewhere torch's default, saying why), foreach (batched per operation) or default "
        "(torch's choice: foreach on CUDA, one tensor at a time on CPU). Same updates to "
        "float rounding; checkpoints resume across all three",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "amp"],
        help="bf16: bfloat16 autocast; amp: float16 autocast with a gradient scaler "
        "(CUDA, or CPU where torch supports it); weights stay fp32",
    )
    p.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute transformer activations in the backward pass: less memory, more compute",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model (checkpoints still hold the plain module's weights)",
    )
    p.add_argument(
        "--compile-backend",
        help="torch.compile backend (default inductor: needs a C++ compiler on CPU, "
        "triton on CUDA); aot_eager traces without generating code",
    )
    p.add_argument(
        "--on-nan",
        choices=["stop", "skip"],
        help="non-finite loss: stop the run (default) or skip that step's update. stop reads "
        "each step's loss check one step late, so a GPU never waits for it, and always before a "
        "metrics line, an evaluation or a checkpoint: the run stops at most one step after the "
        "first non-finite loss, naming that step and batch, and no checkpoint, evaluation or "
        "metrics line ever includes an update from a non-finite step (the weights in memory "
        "at the stop may). skip must decide before the update: it checks every step at once "
        "(a host sync per step on a GPU)",
    )
    p.add_argument(
        "--max-nan-skips",
        type=int,
        help="with --on-nan skip: stop after this many skipped steps in a row (default 10)",
    )
    p.add_argument("--loss", choices=["clip", "siglip"], help="softmax (clip) or sigmoid")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (0 = in process)")
    p.add_argument(
        "--resample",
        action=argparse.BooleanOptionalAction,
        help="each worker draws shards at random with replacement (seeded per rank, worker "
        "and epoch): works with fewer shards than ranks x workers",
    )
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only the end)")
    p.add_argument(
        "--resume",
        help="continue a run: a checkpoint's path, 'latest' (the newest in "
        "OUTPUT/checkpoints) or 'auto' (the newest if there is one, else a new run); the "
        "options the run was started with are the defaults, flags given again override them "
        "(except the machine's own: "
        f"{', '.join(sorted(NOT_INHERITED - {'config', 'resume', 'output', 'check'}))})",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="FILE",
        help="samples never trained on, repeatable: the overlap tool's decontaminate.parquet, "
        "the build's dedup/duplicates.parquet, or any Parquet file with a 'key' column",
    )
    p.add_argument("--seed", type=int, help="seed for init, shuffling and augmentation")
    p.add_argument("--shuffle-buffer", type=int, help="samples held for shuffling per worker")
    p.add_argument(
        "--log-every",
        type=int,
        help="a metrics.jsonl line and the progress bar's loss every N steps (default 10); "
        "its times are means over those steps. Reading the loss waits for the device",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads. 0 (default): on CPU, this host's cores (the affinity "
        "mask) // ranks on this host - --workers, at least 1, whatever OMP_NUM_THREADS says "
        "(torchrun sets it to 1 per rank); on a GPU torch's default. 1 on busy hosts",
    )
    p.add_argument(
        "--zeroshot",
        action="append",
        metavar="EVAL",
        help="zero-shot eval set, repeatable: NAME or NAME:PATH as pipeline.overlap --eval "
        "takes them; writes OUTPUT/zeroshot.json and OUTPUT/predictions/NAME.parquet",
    )
    p.add_argument("--templates", help="prompt templates, one per line with {} (all sets)")
    p.add_argument("--val-data", help="held-out shards for image-text retrieval recall@1/5/10")
    p.add_argument("--val-max", type=int, help="at most N held-out pairs (0: all)")
    p.add_argument(
        "--eval-root",
        help="folder holding the --zeroshot sets given by NAME alone (DIR/NAME), as "
        "pipeline.overlap's --eval-root",
    )
    p.add_argument(
        "--eval-every", type=int, help="also evaluate every N steps (0: only at the end)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the options, model config, eval sets, templates and held-out data, "
        "then exit without reading --train-data or --exclude (which may not exist yet): a "
        "workflow's first step",
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        help="also write scalars to OUTPUT/tensorboard (needs: pip install tensorboard)",
    )
    for action in p._actions:  # --help shows every default
        if action.dest in DEFAULTS and action.help and "default" not in action.help:
            action.help += f" (default: {DEFAULTS[action.dest]})"
    cfg: dict[str, Any] = {}
    if known.config:
        cfg = read_config(p, known.config)
        unknown = set(cfg) - {a.dest for a in p._actions if a.dest != "help"}
        if unknown:
            p.error(f"--config {known.config}: unknown keys {sorted(unknown)}")
        if cfg.get("steps") is not None and cfg.get("epochs") is not None:
            p.error(f"--config {known.config}: 'steps' and 'epochs' exclude each other")
        for action in p._actions:
            value = cfg.get(action.dest)
            if value is None:
                continue
            expected = config_type_error(action, value)
            if expected:
                p.error(f"--config {known.config}: {action.dest}={value!r}: expected {expected}")
            if action.type is float:
                cfg[action.dest] = float(value)  # as the flag gives it
            if action.choices and value not in action.choices:
                p.error(
                    f"--config {known.config}: {action.dest}={value!r}, "
                    f"not one of {list(action.choices)}"
                )
    # A resumed run's options are its defaults: a preempted job resumes with the same
    # command, and one resumed by hand need not repeat what it was started with (its
    # exclusions above all). The config file and the flags override them.
    output, resume = known.output or cfg.get("output"), known.resume or cfg.get("resume")
    checkpoint, run_was, inherited = None, None, {}
    if output and Path(output).exists() and not Path(output).is_dir():
        raise TrainOptionError(f"--output {output}: a file is there, not a run folder")
    if resume and not output:
        p.error("--resume needs --output, the run's folder")
    # Checkpoint problems are CheckpointError, one line from main(), not a usage error.
    if resume:
        checkpoint = resolve_resume(resume, Path(output))
    if checkpoint is not None:
        run_was = recorded(checkpoint)
        dests = {a.dest for a in p._actions} - NOT_INHERITED
        inherited = {k: v for k, v in run_was.options.items() if k in dests}
        if run_was.model is not None:
            inherited["model"] = run_was.model
    if not resume and output and (done := list_checkpoints(Path(output))):
        raise CheckpointError(
            f"--output {output} already holds a run (checkpoints up to {done[-1].name}): "
            "--resume latest continues it, or give another --output"
        )
    if cfg.get("steps") is not None or cfg.get("epochs") is not None:
        inherited.pop("steps", None)  # the file sets the run's length, whichever it names
        inherited.pop("epochs", None)
    defaults = {**DEFAULTS, **inherited, **cfg}
    # Repeatable options (--exclude, --zeroshot): one value or a list in the file, and
    # flags replace the file's list rather than add to it, as for every other option.
    lists = {a.dest for a in p._actions if isinstance(a, argparse._AppendAction)}
    from_file = {}
    for dest in lists & set(defaults):
        value = defaults.pop(dest)
        from_file[dest] = [value] if isinstance(value, str) else value
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    for dest, value in from_file.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    # The command line beats the config file: --epochs there drops the file's steps.
    if known.steps is not None:
        args.epochs = None
    elif known.epochs is not None:
        args.steps = None
    if args.steps is None and args.epochs is None:
        args.steps = DEFAULT_STEPS
    args.checkpoint = checkpoint  # what --resume names; None: a new run
    if run_was is not None:
        # (A --model with no config at all is said as such when the model is built.)
        if run_was.model not in (None, args.model) and args.model in available_models():
            raise CheckpointError(
                f"--model {args.model}: {checkpoint} holds a {run_was.model} model; drop "
                "--model to resume it, or start a new run in another --output"
            )
        if args.steps is not None and run_was.step > args.steps:
            raise CheckpointError(past_the_end(checkpoint, run_was.step, args.steps))
    if not args.check and (not args.train_data or not args.output):
        p.error("--train-data and --output are required (on the command line or in --config)")
    for name in ("steps", "epochs", "max_nan_skips", "batch_size", "log_every", "accum_freq"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if (args.threads or 0) < 0 or (args.workers or 0) < 0:
        p.error("--threads and --workers must be at least 0")
    for name in ("lr", "weight_decay", "warmup", "grad_clip_norm"):
        value = getattr(args, name)
        if value is not None and not value >= 0:  # NaN too
            p.error(f"--{name.replace('_', '-')} must be at least 0, not {value}")
    for name in ("beta1", "beta2"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < 1:
            p.error(f"--{name} must be in [0, 1), not {value}")
    if args.eps is not None and args.eps <= 0:
        p.error(f"--eps must be above 0, not {args.eps}")
    return args


def read_config(p: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The --config file's options: a JSON object, or one usage-error line."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        p.error(f"--config {path}: no such file")
    except OSError as e:
        p.error(f"--config {path}: cannot read it: {e.strerror or e}")
    except UnicodeDecodeError:
        p.error(f"--config {path}: not valid JSON: not UTF-8 text")
    except json.JSONDecodeError as e:
        p.error(f"--config {path}: not valid JSON: {e}")
    if not isinstance(cfg, dict):
        p.error(
            f"--config {path}: expected a JSON object of options (keys as the flags), "
            f"got {type(cfg).__name__}"
        )
    return cfg


def config_type_error(action: argparse.Action, value: Any) -> str | None:
    """What a --config value of this option must be, when ``value`` is not that; else None.

    JSON's true is no number (bool is an int in Python), and a string is no switch:
    "no" would turn --compile on."""
    if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(action, argparse._AppendAction):
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        return None if ok else "a string or a list of strings"
    if isinstance(value, bool):
        return {int: "an integer", float: "a number"}.get(action.type, "a string")
    if action.type is int:
        return None if isinstance(value, int) else "an integer"
    if action.type is float:
        return None if isinstance(value, int | float) else "a number"
    return None if isinstance(value, str) else "a string"


def default_threads(cores: int, ranks_on_host: int, workers: int) -> int:
    """Intra-op threads for one CPU rank: its share of the host's cores less one for each
    data worker (a process decoding full time), at least one. More threads than free cores
    make them wait on each other at every barrier: on 2 cores with 2 workers, torch's
    default of 2 ran at ~390 samples/s, 1 thread at ~640 (docs/BENCHMARKS.md, training loop)."""
    return max(1, cores // max(1, ranks_on_host) - workers)


def available_cores() -> int:
    """Cores this process may run on: its affinity mask (taskset, cgroup cpusets), which
    ``os.cpu_count`` ignores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(
    requested: int, device_type: str, workers: int, world_size: int
) -> tuple[int | None, str]:
    """(threads to set, or None to keep torch's, and why) for ``--threads requested``."""
    if requested:
        return requested, "--threads"
    if device_type != "cpu":
        return None, f"torch's default on {device_type}"
    # torchrun says how many ranks share this host; other launchers: assume all of them.
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    cores = available_cores()
    why = f"auto: {cores} core(s) // {ranks} rank(s) here - {workers} worker(s)"
    return default_threads(cores, ranks, workers), why


class LossCheck:
    """Whether one step's (global) loss was finite, readable later without a stall.

    On CUDA the flag is copied to pinned host memory behind the forward pass and an event
    marks the copy, so reading it a step later waits for that copy alone, long done by
    then, not for the work queued since (``bool(tensor)`` would wait for all of it). On
    the CPU the flag is ready as soon as it is computed."""

    def __init__(self, reported: Any, step: int, batch: dict[str, Any], rank: int) -> None:
        import torch

        self.reported = reported
        self.step, self.batch, self.rank = step, batch["batch"], rank
        self.keys = (batch["keys"][0], batch["keys"][-1])
        finite = torch.isfinite(reported)
        self._event: Any = None
        if finite.device.type == "cuda":
            self._flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self._flag.copy_(finite, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._flag = finite

    def finite(self) -> bool:
        if self._event is not None:
            self._event.synchronize()
        return bool(self._flag)

    def where(self) -> str:
        return (
            f"step {self.step}: loss is {self.reported.item()} on batch {self.batch} "
            f"(rank {self.rank}, keys {self.keys[0]}..{self.keys[1]})"
        )


class TimingWindow:
    """The steps since the last metrics line: a line's times are means over all of them,
    not just its own step (every step is counted in some line)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self, start: float | None = None) -> None:
        self.steps, self.samples, self.data_s = 0, 0, 0.0
        self.start = time.perf_counter() if start is None else start

    def add(self, samples: int, data_s: float) -> None:
        """One step ended now: its samples and the time it waited for the loader."""
        self.steps += 1
        self.samples += samples
        self.data_s += data_s
        self.end = time.perf_counter()

    def close(self) -> dict[str, float]:
        """samples/s, data_time and step_time over the window, then a new window."""
        elapsed = self.end - self.start
        means = {
            "samples_per_s": self.samples / elapsed,
            # Both means over the same steps: compare the two.
            "data_time": self.data_s / self.steps,
            "step_time": elapsed / self.steps,
        }
        self.restart(start=self.end)  # the next window starts where this one ended
        return means


def past_the_end(path: Path, step: int, total: int) -> str:
    return (
        f"--resume {path}: the run is at step {step}, past the {total} steps asked for; "
        "give more --steps (or --epochs), or start a new run in another --output"
    )


def drop_lines_after(path: Path, step: int) -> int:
    """Keeps the JSON lines of ``path`` whose step is at most ``step``; returns how many
    were dropped (a missing file: none)."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    # A torn line (a write cut short: disk full, a kill) is dropped with the rest.
    kept = [line for line in lines if (row := _json_row(line)) and row.get("step", 0) <= step]
    if len(kept) < len(lines):
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


def _json_row(line: str) -> dict[str, Any] | None:
    """One JSON-lines row, or None for a line that is not a JSON object (torn)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def stop_if_nonfinite(check: LossCheck) -> None:
    if not check.finite():
        raise NonFiniteLossError(f"{check.where()}; lower --lr or check data")


def check_compile_backend(backend: str, device: Any) -> None:
    """Fails before training when torch.compile's backend cannot run here."""
    import torch
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise TrainOptionError(
            f"--compile-backend {backend}: unknown; torch {torch.__version__} has {known}"
        )
    if backend != "inductor":
        return
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise TrainOptionError(
                "--compile: inductor on CUDA needs the 'triton' package (pip install "
                "triton), or pass --compile-backend aot_eager, or drop --compile"
            ) from None
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # torch raises its own error types for a missing compiler
        raise TrainOptionError(
            f"--compile: inductor on CPU needs a C++ compiler (g++ or $CXX): {e}; install "
            "one, pass --compile-backend aot_eager, or drop --compile"
        ) from None


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or a clear error: tensorboard is an optional package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainOptionError(
            "--tensorboard needs the 'tensorboard' package: pip install tensorboard"
        ) from None
    return SummaryWriter


def make_loader(stream: Any, workers: int, device: Any) -> Any:
    """Batches come already formed from the stream; pinned pages on CUDA let the copies
    to the GPU run non-blocking."""
    from torch.utils.data import DataLoader

    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )


def make_loaders(stream: Any, workers: int, device: Any) -> list[Any]:
    """The DataLoaders that serve ``stream`` in turn. A worker plays whole readers, so a
    stream resumed in an epoch dealt to a count of readers that ``workers`` does not divide
    ends that epoch with the most workers that divide it (at most ``workers``), then
    carries on with ``workers``."""
    import copy

    k = stream.start_readers
    if k % max(1, workers) == 0:
        return [make_loader(stream, workers, device)]
    fit = max(d for d in range(1, min(k, workers) + 1) if k % d == 0)
    epoch_end = (stream.start_batch // stream.epoch_batches + 1) * stream.epoch_batches
    first, rest = copy.copy(stream), copy.copy(stream)
    first.stop_batch = epoch_end
    rest.start_batch, rest.start_offsets, rest.start_readers = epoch_end, None, rest.readers
    return [make_loader(first, fit, device), make_loader(rest, workers, device)]


def make_loss(kind: str, rank: int = 0, world_size: int = 1) -> Any:
    from open_clip.loss import ClipLoss, SigLipLoss

    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    # local_loss + gather_with_grad: the exact full-batch gradient once ranks > 1.
    return ClipLoss(
        local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size
    )


def bind_loss(kind: str, loss_fn: Any, model: Any) -> Callable[[Any, Any, Any, bool], Any]:
    """``loss_fn`` as ``accumulate_gradients`` calls it: (image features, text features,
    logit scale, whether SigLIP's bias takes a gradient in this pass)."""

    def loss_of(image_features: Any, text_features: Any, scale: Any, bias_grad: bool) -> Any:
        if kind == "siglip":
            bias = model.logit_bias if bias_grad else model.logit_bias.detach()
            return loss_fn(image_features, text_features, scale, bias)
        return loss_fn(image_features, text_features, scale)

    return loss_of


def init_distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) for a plain process."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    # gloo on CPU: nccl needs a GPU per rank, and DDP with device_ids on CPU fails.
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def write_curves(metrics_path: Path, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        # Plotting is a convenience: a finished run must not fail over it at the very end.
        print("training.run: matplotlib not installed: no curves.png", file=sys.stderr)
        return
    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    rows = [r for line in metrics_path.read_text().splitlines() if (r := _json_row(line))]
    rows = [r for r in rows if isinstance(r.get("step"), int)]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("loss", "lr", "logit_scale"), strict=True):
        # A skipped step's loss is null: a gap in the curve.
        ax.plot(steps, [math.nan if r.get(key) is None else r[key] for r in rows])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch.distributed as dist

    rank, world_size = init_distributed()
    try:
        return _train(args, rank, world_size)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world_size: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    is_main = rank == 0  # only rank 0 writes files; every rank computes
    output = Path(args.output)
    if is_main:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file on the way, no permission
            raise TrainOptionError(f"--output {output}: cannot make the folder: {e}") from None
        removed = remove_stale_temps(output / "checkpoints")
        if removed:
            print(
                f"training.run: removed {len(removed)} temporary file(s) of a checkpoint save "
                f"that was killed ({removed[0].name}...)",
                file=sys.stderr,
            )
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    # One GPU per process under torchrun (LOCAL_RANK); the CPU when there is none.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    threads, threads_why = choose_threads(args.threads, device.type, args.workers, world_size)
    if threads is not None:
        # Oversubscribed cores make intra-op threads spin: one thread is ~3x faster there.
        torch.set_num_threads(threads)
    # Options this machine cannot honour fail before any data is read.
    writer_class = summary_writer_class() if args.tensorboard else None
    if args.compile:
        check_compile_backend(args.compile_backend, device)

    # Data problems are found before the model is built: failing fast costs nothing.
    plan = plan_data(
        args.train_data,
        rank=rank,
        world_size=world_size,
        workers=args.workers,
        resample=args.resample,
    )
    exclude = load_exclusions(args.exclude or [], plan.shards)
    samples_in_shards = plan.samples
    plan = plan.excluding(exclude)  # the epoch counts the samples left to train on
    dealing = plan.digest(exclude)  # recorded with every checkpoint: computed once
    accum = args.accum_freq
    per_epoch = plan.batches_per_epoch(args.batch_size) // accum  # optimizer steps
    if args.epochs:
        if per_epoch == 0:
            raise TrainDataError(
                f"--epochs {args.epochs}: {plan.samples} samples in the shards are fewer than "
                f"one global batch ({args.batch_size} x {accum} micro-batch(es) x "
                f"{world_size} rank(s)); use --steps"
            )
        total_steps = args.epochs * per_epoch
    else:
        total_steps = args.steps
    per_step = args.batch_size * accum * world_size
    if per_step > plan.samples:
        # The stream would refill the batch from another pass: the same image twice in one
        # contrastive batch, each the other's false negative.
        raise TrainDataError(
            f"a step takes {per_step} samples ({args.batch_size} x {accum} micro-batch(es) "
            f"x {world_size} rank(s)), more than the {plan.samples} in the shards: a batch "
            "would hold samples twice; lower --batch-size or train on more data"
        )
    per_epoch = max(1, per_epoch)
    # Eval sets and templates are checked now too, not after hours of training.
    evaluator = Evaluator.from_args(
        args.zeroshot or [], args.templates, args.val_data, args.val_max, args.eval_root
    )
    model_config = load_config(args.model)  # recorded in every checkpoint
    model, preprocess_train, preprocess_val, tokenizer = build(
        args.model, args.precision, grad_checkpointing=args.grad_checkpointing
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)
    loss_fn = make_loss(args.loss, rank, world_size)
    if args.loss == "siglip":
        # SigLIP wants its own bias and a scale starting at log(10) (Zhai et al.).
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0, device=device))
        model.logit_scale.data.fill_(math.log(10))
    # Built once every parameter exists (SigLIP's bias included).
    optimizer, optimizer_impl = make_optimizer(model, args, device)
    # fp16 needs its loss scaled so small gradients survive; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type) if args.precision == "amp" else None
    autocast_dtype = {"bf16": torch.bfloat16, "amp": torch.float16}.get(args.precision)

    start = 0  # the first optimizer step
    start_batch = 0  # the stream's first batch: start x accum, unless --accum-freq changed
    skipped = 0  # steps whose update was dropped for a non-finite loss (--on-nan skip)
    readers = max(1, args.workers)  # readers per rank of every epoch this run deals
    start_readers, start_offsets = readers, None  # ... and of the epoch it resumes in
    ran: Recorded | None = None  # what the checkpoint says of the run so far
    if args.checkpoint is not None:
        path = args.checkpoint
        position = restore(
            path, model, optimizer, scaler, device.index if world_size > 1 else None, model_config
        )
        start, start_batch, skipped = position.step, position.batch, position.skipped_steps
        ran = recorded(path)
        same_order = (
            position.batches_per_epoch in (None, per_epoch * accum)
            and position.world_size in (None, world_size)
            and position.dealing in (None, dealing)
        )
        mid_epoch = bool(start_batch % (per_epoch * accum))
        if not same_order:
            ranks = "" if position.world_size is None else f" on {position.world_size} rank(s)"
            print(
                f"training.run: {path} was written with {position.batches_per_epoch} batches "
                f"per epoch{ranks}, now {per_epoch * accum} on {world_size} rank(s) (data, "
                "--exclude, batch size, --accum-freq or ranks changed): the data order differs",
                file=sys.stderr,
            )
        elif mid_epoch and position.reader_offsets is None:
            # Written before the data position held reader offsets: that code dealt whole
            # shards per worker, which this one cannot reproduce.
            if is_main:
                print(
                    f"training.run: {path} was written mid-epoch by an older version, without "
                    "per-reader data offsets: the rest of this epoch is dealt anew, each reader "
                    "skipping the samples of its batches before the resume point, so some "
                    "samples of this epoch repeat and others are left out; the next epochs "
                    "are whole",
                    file=sys.stderr,
                )
        elif mid_epoch:
            # Mid-epoch: the epoch ends as it was dealt, whatever --workers is now.
            recorded_workers = ran.options.get("workers") or 0
            start_readers = position.readers_per_rank or max(1, recorded_workers)
            if position.reader_offsets is not None and rank < len(position.reader_offsets):
                start_offsets = dict(enumerate(position.reader_offsets[rank]))
        if start > total_steps:  # --epochs: known once the data is counted
            raise CheckpointError(past_the_end(path, start, total_steps))
        print(f"resumed from {path} at step {start}", file=sys.stderr)
        if start == total_steps and is_main:
            print(f"training.run: already at step {start}: nothing to train", file=sys.stderr)
    elif args.resume and is_main:
        print(
            f"training.run: --resume {args.resume}: no checkpoint in {output / 'checkpoints'}: "
            "a new run",
            file=sys.stderr,
        )
    if is_main:
        # Lines logged after the checkpoint (or by a run that saved none) are logged again
        # by this run: the logs hold each step once, in order.
        for log_name in ("metrics.jsonl", "zeroshot.jsonl"):
            dropped = drop_lines_after(output / log_name, start)
            if dropped:
                print(
                    f"training.run: {log_name}: {dropped} line(s) past step {start} dropped "
                    "(written after the last checkpoint)",
                    file=sys.stderr,
                )

    if is_main:  # said once every check has passed
        print(
            f"training.run: {plan.samples} samples in {len(plan.shards)} shard(s), "
            f"{per_epoch} steps per epoch, {total_steps} steps"
            + (f" of {accum} micro-batches" if accum > 1 else "")
            + f"; {torch.get_num_threads()} "
            f"torch thread(s) ({threads_why}), AdamW {optimizer_impl}"
            + (f"; {len(exclude):,} key(s) excluded (--exclude)" if args.exclude else ""),
            file=sys.stderr,
        )
        for note in (*plan.notes, *exclude.notes):
            print(f"training.run: {note}", file=sys.stderr)
    # Workers crop and resize and hand over uint8; the batch is normalized on the device.
    worker_transform, normalize = split_preprocess(preprocess_train)
    stream = ShardStream(
        plan,
        args.batch_size,
        worker_transform,
        tokenizer,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        exclude=exclude,
        start_batch=start_batch,
        epoch_batches=per_epoch * accum,
        # 2x: the crop (>= 90% of the area in open_clip's train preprocess) and the
        # antialiased downscale keep a margin of real pixels.
        draft_side=2 * input_side(model),
        readers=readers,
        start_readers=start_readers,
        start_offsets=start_offsets,
    )
    loaders = make_loaders(stream, args.workers, device)
    if len(loaders) > 1 and is_main:
        print(
            f"training.run: the epoch this run resumes in was dealt to {start_readers} "
            f"reader(s) per rank when it began (its --workers then): it ends "
            f"with {loaders[0].num_workers} worker(s), then --workers {args.workers}",
            file=sys.stderr,
        )
    # Same init on every rank (same seed); DDP also broadcasts rank 0's weights.
    net = model
    no_sync: Callable[[], Any] = contextlib.nullcontext
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        no_sync = net.no_sync
    if args.compile:
        # Compiled after DDP (torch's advice); `model` stays the plain module, so the
        # checkpoints hold its weights without the wrapper's `_orig_mod.` prefix.
        net = torch.compile(net, backend=args.compile_backend)
    max_scale = math.log(100)

    def autocast() -> Any:
        return torch.autocast(
            device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        )

    loss_of = bind_loss(args.loss, loss_fn, model)

    def backward(loss: Any) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    # Each worker's cumulative counts, as its latest batch brought them.
    worker_stats: dict[tuple[int, int], dict[str, int]] = {}
    # What each reader had taken of the epoch in progress (for the data position), from
    # where the stream starts: a reader that makes no batch before the next save is
    # recorded where it was resumed, not at the epoch's start.
    taken_epoch, taken_readers = stream.start_batch // stream.epoch_batches, start_readers
    taken: dict[int, int] = {
        r: stream.start_offset(r, taken_epoch, start_readers) for r in range(start_readers)
    }

    def batches() -> Any:
        for phase, loader in enumerate(loaders):
            for b in loader:
                b["worker"] = (phase, b["worker"])
                yield b

    metrics_path = output / "metrics.jsonl"
    writer = writer_class(log_dir=str(output / "tensorboard")) if writer_class and is_main else None
    try:
        model.train()
        step = start
        last_reported: Any = None  # the latest finite step's loss, read only when needed
        pending: LossCheck | None = None  # --on-nan stop: the step whose check is unread
        in_a_row = 0  # consecutive skipped steps
        window = TimingWindow()
        it = batches()
        bar = tqdm(
            total=total_steps, initial=start, desc="train", disable=None if is_main else True
        )
        with metrics_path.open("a") if is_main else open(os.devnull, "w") as metrics:
            window.restart()
            while step < total_steps:
                micro, t_data = [], 0.0
                for _ in range(accum):
                    t_fetch = time.perf_counter()
                    micro.append(next(it))
                    t_data += time.perf_counter() - t_fetch  # blocked on the loader alone
                for b in micro:
                    worker_stats[b["worker"]] = b["stats"]
                    if b["epoch"] != taken_epoch:
                        taken_epoch, taken = b["epoch"], {}
                    taken[b["reader"]] = b["taken"]
                    taken_readers = b["readers"]
                batch = micro[-1]
                lr = lr_at(step, args.lr, args.warmup, total_steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                inputs = [
                    (
                        to_model_input(b["images"], device, normalize),
                        b["texts"].to(device, non_blocking=True),
                    )
                    for b in micro
                ]
                cached: list[dict[str, Any]] | None = None
                if accum == 1:
                    with autocast():
                        out = net(*inputs[0])
                        loss = loss_of(
                            out["image_features"], out["text_features"], out["logit_scale"], True
                        )
                else:
                    # Features of every micro-batch, no graph kept: the loss of the whole
                    # batch, known (and checked) before any backward pass.
                    with torch.no_grad(), autocast():
                        cached = [net(images, texts) for images, texts in inputs]
                        loss = loss_of(
                            torch.cat([c["image_features"] for c in cached]),
                            torch.cat([c["text_features"] for c in cached]),
                            cached[-1]["logit_scale"],
                            True,
                        )
                # The global batch's loss: local-loss halves averaged over ranks. Every rank
                # checks the same reduced value at the same step, so all stop (or skip)
                # together and none waits forever in a collective.
                reported = loss.detach().float().clone()
                if world_size > 1:
                    dist.all_reduce(reported)
                    reported /= world_size
                named = (
                    micro[0]
                    if accum == 1
                    else {
                        "batch": f"{micro[0]['batch']}..{micro[-1]['batch']}",
                        "keys": [micro[0]["keys"][0], micro[-1]["keys"][-1]],
                    }
                )
                check = LossCheck(reported, step, named, rank)
                # stop: no host sync here; this step's check is read after the next step is
                # queued (or at the next line, evaluation or checkpoint, below).
                finite = check.finite() if args.on_nan == "skip" else True
                if not finite:
                    where = check.where()
                    in_a_row += 1
                    if in_a_row > args.max_nan_skips:
                        raise NonFiniteLossError(
                            f"{where}: {in_a_row} non-finite losses in a row, more than "
                            f"--max-nan-skips {args.max_nan_skips}; lower --lr or check data"
                        )
                    # Skip: no backward, no optimizer or scaler step; the batch is consumed.
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    print(f"training.run: {where}: update skipped", file=sys.stderr)
                else:
                    in_a_row = 0
                    optimizer.zero_grad(set_to_none=True)
                    if cached is None:
                        backward(loss)
                    else:
                        accumulate_gradients(
                            net, inputs, cached, loss_of, backward, no_sync, autocast
                        )
                    if args.grad_clip_norm:
                        if scaler is not None:
                            scaler.unscale_(optimizer)  # clip the true gradients
                        grad_norm = torch.nn.utils.clip_grad_norm_(
                            model.parameters(), args.grad_clip_norm
                        )
                    if scaler is not None:
                        scaler.step(optimizer)  # skipped by the scaler itself on inf grads
                        scaler.update()
                    else:
                        optimizer.step()
                    with torch.no_grad():
                        # Clamped as in CLIP: an unbounded scale makes the softmax overflow.
                        model.logit_scale.clamp_(0, max_scale)
                    last_reported = reported
                if args.on_nan == "stop":
                    # One step late: the previous step's forward finished long ago, so this
                    # read does not wait for the work just queued.
                    if pending is not None:
                        stop_if_nonfinite(pending)
                    pending = check
                step += 1
                log_now = not finite or step % args.log_every == 0 or step == total_steps
                eval_now = bool(
                    evaluator
                    and args.eval_every
                    and step % args.eval_every == 0
                    and step != total_steps
                )
                save_now = step == total_steps or (args.save_every and step % args.save_every == 0)
                if pending is not None and (log_now or eval_now or save_now):
                    # Before a line, an evaluation or a checkpoint reads the loss or the
                    # weights: none of them ever follows an update from a non-finite step.
                    # On every rank (the ranks that do not write decide alike: same value).
                    stop_if_nonfinite(pending)
                    pending = None
                row: dict[str, Any] = {}
                if log_now:
                    # The host syncs of this line, inside this step's time.
                    row = {
                        "step": step,
                        "epoch": batch["epoch"],
                        "loss": reported.item() if finite else None,  # JSON has no NaN
                        "lr": lr,
                        "logit_scale": model.logit_scale.exp().item(),
                    }
                    if scaler is not None:
                        row["grad_scale"] = scaler.get_scale()
                    if args.grad_clip_norm and finite:
                        row["grad_norm"] = grad_norm.item()
                window.add(sum(len(b["keys"]) for b in micro), t_data)
                bar.update(1)
                if log_now:
                    row.update(window.close())
                    row["nan_skips"] = skipped
                    if not finite:
                        row["skipped"] = True
                    else:
                        bar.set_postfix(loss=f"{row['loss']:.3f}")
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if writer is not None:
                        for key, value in row.items():
                            if isinstance(value, int | float) and key != "step":
                                writer.add_scalar(f"train/{key}", value, step)
                if is_main and eval_now:
                    # Only rank 0 evaluates; other ranks wait for it at the next collective.
                    ev = evaluator.run(model, preprocess_val, tokenizer, device)
                    with (output / "zeroshot.jsonl").open("a") as f:
                        f.write(json.dumps({"step": step, **ev}) + "\n")
                    _write_eval_scalars(writer, ev, step)
                if save_now:
                    next_batch = batch["batch"] + 1
                    in_epoch = next_batch // (per_epoch * accum) == taken_epoch
                    mine = [taken.get(r, 0) for r in range(taken_readers)] if in_epoch else []
                    # Every rank's reader offsets and counts, to rank 0 (all ranks save_now).
                    shared = gather_objects((mine, count_stream(worker_stats)), world_size)
                if is_main and save_now:
                    state = checkpoint_state(
                        model,
                        optimizer,
                        scaler,
                        Position(
                            step,
                            next_batch,
                            skipped,
                            per_epoch * accum,
                            taken_readers if in_epoch else readers,
                            [m for m, _ in shared] if in_epoch else None,
                            world_size,
                            dealing,
                        ),
                        accum=accum,
                        schedule={"warmup": args.warmup, "total": total_steps},
                        extra={
                            "args": {
                                k: v
                                for k, v in vars(args).items()
                                if k not in ("resume", "checkpoint")
                            },
                            "model_name": args.model,
                            "model_config": model_config,
                            "last_loss": (
                                float(last_reported.item())
                                if last_reported is not None
                                else ran.loss
                                if ran
                                else None
                            ),
                            "data_counts": add_counts(
                                ran.data_counts if ran else None, *(c for _, c in shared)
                            ),
                        },
                    )
                    save_checkpoint(output / "checkpoints" / f"step_{step:08d}.pt", state)
        bar.close()
        # The last step's loss; a rerun with nothing to train reports the checkpoint's.
        last_loss = (
            float(last_reported.item())
            if last_reported is not None
            else (ran.loss if ran is not None else None)
        )
        # The stream's counts: every rank's, and those of the run before its checkpoint.
        every_rank = gather_objects(count_stream(worker_stats), world_size)
        if not is_main:
            return {"steps": step, "loss": last_loss, "rank": rank}
        summary_path = output / "summary.json"
        if step == start and summary_path.is_file():
            # A rerun of a finished run (the DAG's --resume auto): its summary stands.
            print(f"training.run: {summary_path} kept: no step to train", file=sys.stderr)
            return json.loads(summary_path.read_text())
        write_curves(metrics_path, output / "curves.png")
        data_counts = {
            f"data_{k}": v
            for k, v in add_counts(ran.data_counts if ran else None, *every_rank).items()
        }
        if plan.empty_shards:
            data_counts["data_empty_shards"] = plan.empty_shards
        summary: dict[str, Any] = {
            "steps": step,
            "epochs": step / per_epoch,
            "loss": last_loss,
            "skipped_steps": skipped,
            "samples_in_shards": samples_in_shards,
            # Less the --exclude keys that name their shard: what an epoch counts.
            "samples_per_epoch": plan.samples,
            "threads": torch.get_num_threads(),
            "optimizer_impl": optimizer_impl,
            # Distinct exclusions (keys left out everywhere, plus (shard, key) pairs);
            # data_excluded counts the reads skipped.
            "exclude_keys": len(exclude),
        }
        if evaluator:
            ev = evaluator.run(
                model, preprocess_val, tokenizer, device, predictions_dir=output / "predictions"
            )
            ev = {"step": step, **ev}
            _write_json(output / "zeroshot.json", ev)
            if args.eval_every:
                with (output / "zeroshot.jsonl").open("a") as f:
                    f.write(json.dumps(ev) + "\n")
            _write_eval_scalars(writer, ev, step)
            summary["zeroshot"] = {k: v["top1"] for k, v in ev["zeroshot"].items()}
            if "retrieval" in ev:
                summary["retrieval"] = ev["retrieval"]
        summary.update(data_counts)
        _write_json(summary_path, summary)
        return summary
    finally:
        if writer is not None:
            writer.close()  # also on a crash: the events so far reach the disk


def count_stream(worker_stats: dict[Any, dict[str, int]]) -> dict[str, int]:
    """This rank's stream counts: each worker reports its cumulative counts; their sum."""
    return add_counts(None, *worker_stats.values())


def add_counts(first: dict[str, int] | None, *more: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = dict(first or {})
    for counts in more:
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """``obj`` of every rank, in rank order (a collective: every rank calls it)."""
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _write_eval_scalars(writer: Any, ev: dict[str, Any], step: int) -> None:
    if writer is None:
        return
    for name, result in ev.get("zeroshot", {}).items():
        writer.add_scalar(f"eval/{name}/top1", result["top1"], step)
    writer.flush()


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def check_options(args: argparse.Namespace) -> str:
    """What ``_train`` checks before reading any data, and needs no training data for."""
    import torch

    if args.tensorboard:
        summary_writer_class()
    if args.compile:
        check_compile_backend(
            args.compile_backend, torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
    load_config(args.model)
    evaluator = Evaluator.from_args(
        args.zeroshot or [], args.templates, args.val_data, args.val_max, args.eval_root
    )
    sets = ", ".join(f"{s.name} ({len(s):,} items)" for s in evaluator.sets) or "none"
    return (
        f"check: ok: model {args.model}; zero-shot sets: {sets}; held-out pairs: "
        f"{len(evaluator.pairs):,}"
    )


def one_line(error: BaseException) -> str:
    """An error's message; for one a DataLoader worker raised, the worker's own message
    without the traceback the DataLoader wraps it in."""
    text = str(error)
    if text.startswith("Caught ") and "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name = type(error).__name__
        return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.check:
            print(check_options(args))
            return 0
        summary = train(args)
    except (
        TrainDataError,
        ModelConfigError,
        FileNotFoundError,
        NonFiniteLossError,
        EvalSetError,
        TemplatesError,
        TrainOptionError,
        CheckpointError,
    ) as e:
        print(f"training.run: {one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
