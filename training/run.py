"""python -m training.run: train a contrastive dual encoder (open_clip) on our shards.

The loop is ours so that it fixes what open_clip's trainer users hit: the sample count
comes from the shards, bad data fails before workers start, checkpoints are atomic and
hold the RNG states and data position (a resumed run continues mid-epoch), and a
non-finite loss stops with the step and batch named.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.overlap.evalsets import EvalSetError
from training.data import ShardStream, TrainDataError, load_exclusions, plan_data
from training.evaluate import Evaluator
from training.models import ModelConfigError, available_models, build
from training.templates import TemplatesError


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and batch."""


DEFAULTS: dict[str, Any] = {
    "model": "tiny",
    "batch_size": 32,
    "steps": 100,
    "lr": 5e-4,
    "warmup": 10,
    "weight_decay": 0.2,
    "precision": "fp32",
    "loss": "clip",
    "workers": 0,
    "save_every": 0,
    "seed": 0,
    "shuffle_buffer": 1000,
    "log_every": 1,
    "threads": 0,
    "eval_every": 0,
    "val_max": 0,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__)
    p.add_argument("--config", help="JSON file of option defaults (keys as the flags, _ for -)")
    p.add_argument("--train-data", help="shard folder, .tar, or brace pattern; '::' joins")
    p.add_argument("--output", help="run folder: checkpoints/, metrics.jsonl, curves.png")
    p.add_argument("--model", help=f"one of training/model_configs: {available_models()}")
    p.add_argument("--batch-size", type=int, help="samples per step (per process)")
    p.add_argument("--steps", type=int, help="optimizer steps in total")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay")
    p.add_argument("--weight-decay", type=float, help="AdamW decay (not on gains/biases/scale)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--loss", choices=["clip", "siglip"], help="softmax (clip) or sigmoid")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (0 = in process)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only the end)")
    p.add_argument("--resume", help="checkpoint path, or 'latest' in OUTPUT/checkpoints")
    p.add_argument("--exclude", help="Parquet with a 'key' column: samples never trained on")
    p.add_argument("--seed", type=int, help="seed for init, shuffling and augmentation")
    p.add_argument("--shuffle-buffer", type=int, help="samples held for shuffling per worker")
    p.add_argument("--log-every", type=int, help="metrics.jsonl line every N steps")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (0: torch's default); 1 on busy hosts"
    )
    p.add_argument(
        "--zeroshot",
        action="append",
        metavar="EVAL",
        help="zero-shot eval set, repeatable: NAME or NAME:PATH as pipeline.overlap --eval "
        "takes them; writes OUTPUT/zeroshot.json and OUTPUT/predictions/NAME.csv",
    )
    p.add_argument("--templates", help="prompt templates, one per line with {} (all sets)")
    p.add_argument("--val-data", help="held-out shards for image-text retrieval recall@1/5/10")
    p.add_argument("--val-max", type=int, help="at most N held-out pairs (0: all)")
    p.add_argument(
        "--eval-every", type=int, help="also evaluate every N steps (0: only at the end)"
    )
    defaults = dict(DEFAULTS)
    if known.config:
        cfg = json.loads(Path(known.config).read_text())
        unknown = set(cfg) - {a.dest for a in p._actions}
        if unknown:
            p.error(f"--config {known.config}: unknown keys {sorted(unknown)}")
        defaults.update(cfg)
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    if not args.train_data or not args.output:
        p.error("--train-data and --output are required (on the command line or in --config)")
    return args


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on gains, biases, embeddings' scale or the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        exclude = exclude or "logit_scale" in name or "logit_bias" in name
        (no_decay if exclude else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr


def find_latest(output: Path) -> Path:
    ckpts = sorted((output / "checkpoints").glob("step_*.pt"))
    if not ckpts:
        raise FileNotFoundError(f"--resume latest: no checkpoints in {output / 'checkpoints'}")
    return ckpts[-1]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Temp file in the same folder, then rename: a killed save never leaves a torn file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    import torch

    # Python's state is a tuple of ints: loadable with weights_only=True, unlike numpy's.
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))


def make_loss(kind: str, rank: int = 0, world_size: int = 1) -> Any:
    from open_clip.loss import ClipLoss, SigLipLoss

    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    # local_loss + gather_with_grad: the exact full-batch gradient once ranks > 1.
    return ClipLoss(
        local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size
    )


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

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("loss", "lr", "logit_scale"), strict=True):
        ax.plot(steps, [r[key] for r in rows])
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
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    is_main = rank == 0  # only rank 0 writes files; every rank computes
    output = Path(args.output)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
    if args.threads:
        # Oversubscribed cores make intra-op threads spin: one thread is ~3x faster there.
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    # Data problems are found before the model is built: failing fast costs nothing.
    exclude = load_exclusions(args.exclude) if args.exclude else frozenset()
    plan = plan_data(args.train_data, rank=rank, world_size=world_size, workers=args.workers)
    # Eval sets and templates are checked now too, not after hours of training.
    evaluator = Evaluator.from_args(
        args.zeroshot or [], args.templates, args.val_data, args.val_max
    )
    model, preprocess_train, preprocess_val, tokenizer = build(args.model, args.precision)
    # One GPU per process under torchrun (LOCAL_RANK); the CPU when there is none.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    loss_fn = make_loss(args.loss, rank, world_size)
    if args.loss == "siglip":
        # SigLIP wants its own bias and a scale starting at log(10) (Zhai et al.).
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0, device=device))
        model.logit_scale.data.fill_(math.log(10))
        optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)

    start = 0
    if args.resume:
        path = find_latest(output) if args.resume == "latest" else Path(args.resume)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start = ckpt["data"]["next_batch"]
        print(f"resumed from {path} at step {start}", file=sys.stderr)

    stream = ShardStream(
        plan,
        args.batch_size,
        preprocess_train,
        tokenizer,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        exclude=exclude,
        start_batch=start,
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=args.workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    # Same init on every rank (same seed); DDP also broadcasts rank 0's weights.
    net = model
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    max_scale = math.log(100)
    worker_stats: dict[int, dict[str, int]] = {}
    metrics_path = output / "metrics.jsonl"
    model.train()
    step = start
    last_loss = float("nan")
    it = iter(loader)
    bar = tqdm(total=args.steps, initial=start, desc="train", disable=None if is_main else True)
    with metrics_path.open("a") if is_main else open(os.devnull, "w") as metrics:
        t_last = time.perf_counter()
        while step < args.steps:
            batch = next(it)
            t_data = time.perf_counter() - t_last
            worker_stats[batch["worker"]] = batch["stats"]
            lr = lr_at(step, args.lr, args.warmup, args.steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images = batch["images"].to(device, non_blocking=True)
            texts = batch["texts"].to(device, non_blocking=True)
            bf16 = args.precision == "bf16"
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(images, texts)
                if args.loss == "siglip":
                    loss = loss_fn(
                        out["image_features"],
                        out["text_features"],
                        out["logit_scale"],
                        model.logit_bias,
                    )
                else:
                    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            # The global batch's loss: local-loss halves averaged over ranks. Every rank
            # checks the same reduced value, so all stop together instead of hanging.
            reported = loss.detach().float().clone()
            if world_size > 1:
                dist.all_reduce(reported)
                reported /= world_size
            if not torch.isfinite(reported):
                raise NonFiniteLossError(
                    f"step {step}: loss is {reported.item()} on batch {batch['batch']} "
                    f"(rank {rank}, "
                    f"(keys {batch['keys'][0]}..{batch['keys'][-1]}); lower --lr or check data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                # Clamped as in CLIP: an unbounded scale makes the softmax overflow.
                model.logit_scale.clamp_(0, max_scale)
            step += 1
            last_loss = reported.item()
            dt = time.perf_counter() - t_last
            t_last = time.perf_counter()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if step % args.log_every == 0 or step == args.steps:
                row = {
                    "step": step,
                    "loss": last_loss,
                    "lr": lr,
                    "logit_scale": model.logit_scale.exp().item(),
                    "samples_per_s": len(batch["keys"]) / dt,
                    "data_time": t_data,
                }
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if (
                is_main
                and evaluator
                and args.eval_every
                and step % args.eval_every == 0
                and step != args.steps
            ):
                # Only rank 0 evaluates; other ranks wait for it at the next collective.
                ev = evaluator.run(model, preprocess_val, tokenizer, device)
                with (output / "zeroshot.jsonl").open("a") as f:
                    f.write(json.dumps({"step": step, **ev}) + "\n")
            save_now = step == args.steps or (args.save_every and step % args.save_every == 0)
            if is_main and save_now:
                save_checkpoint(
                    output / "checkpoints" / f"step_{step:08d}.pt",
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": {"kind": "cosine", "step": step, "warmup": args.warmup},
                        "rng": rng_state(),
                        "data": {"next_batch": step},
                        "args": {k: v for k, v in vars(args).items() if k != "resume"},
                        "model_name": args.model,
                    },
                )
    bar.close()
    if not is_main:
        return {"steps": step, "loss": last_loss, "rank": rank}
    write_curves(metrics_path, output / "curves.png")
    # Each worker reports its cumulative counts; the sum is the whole stream's.
    data_counts: dict[str, int] = {}
    for s in worker_stats.values():
        for k, v in s.items():
            data_counts[f"data_{k}"] = data_counts.get(f"data_{k}", 0) + v
    summary = {"steps": step, "loss": last_loss, "samples_in_shards": plan.samples}
    if evaluator:
        ev = evaluator.run(
            model, preprocess_val, tokenizer, device, predictions_dir=output / "predictions"
        )
        ev = {"step": step, **ev}
        _write_json(output / "zeroshot.json", ev)
        if args.eval_every:
            with (output / "zeroshot.jsonl").open("a") as f:
                f.write(json.dumps(ev) + "\n")
        summary["zeroshot"] = {k: v["top1"] for k, v in ev["zeroshot"].items()}
        if "retrieval" in ev:
            summary["retrieval"] = ev["retrieval"]
    summary.update(data_counts)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = train(args)
    except (
        TrainDataError,
        ModelConfigError,
        FileNotFoundError,
        NonFiniteLossError,
        EvalSetError,
        TemplatesError,
    ) as e:
        print(f"training.run: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
