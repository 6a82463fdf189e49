"""Checkpoints of training.run: atomic saves, the newest one of a run, the RNG states
of every generator the run draws from, and weights saved from a compiled module."""

from __future__ import annotations

import os
import random
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.optim import load_optimizer_state


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: none to find, not a file, unreadable."""


@dataclass(frozen=True)
class Position:
    """Where a run stands: the next optimizer step, the next global batch of the stream
    (step x --accum-freq, unless the batch size or accumulation changed on a resume),
    the steps skipped for a non-finite loss, and the batches in one epoch when saved."""

    step: int
    batch: int
    skipped_steps: int = 0
    batches_per_epoch: int | None = None
    # The epoch of ``batch``: readers per rank it is dealt to, and per rank the samples
    # each reader had taken of it (undecodable ones too); None: not recorded.
    readers_per_rank: int | None = None
    reader_offsets: list[list[int]] | None = None
    world_size: int | None = None
    dealing: str | None = None  # DataPlan.digest(): the shards and counts the epochs deal


def checkpoint_state(
    model: Any,
    optimizer: Any,
    scaler: Any,
    position: Position,
    accum: int,
    schedule: dict[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resumed run needs, as types ``torch.load(weights_only=True)`` reads:
    weights, optimizer (and amp scaler) state, RNG states and the data position."""
    per_epoch = max(1, (position.batches_per_epoch or 1) // accum)  # optimizer steps
    state: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": "cosine", "step": position.step, **schedule},
        "rng": rng_state(),
        # The next global batch fixes the data; the epoch is said for people.
        "data": {
            "next_batch": position.batch,
            "next_step": position.step,
            "accum_freq": accum,
            "epoch": position.step // per_epoch,
            "step_in_epoch": position.step % per_epoch,
            "batches_per_epoch": position.batches_per_epoch,
            "readers_per_rank": position.readers_per_rank,
            "reader_offsets": position.reader_offsets,
            "world_size": position.world_size,
            "dealing": position.dealing,
        },
        "skipped_steps": position.skipped_steps,
        **extra,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def restore(
    path: Path,
    model: Any,
    optimizer: Any,
    scaler: Any,
    cuda_device: int | None = None,
    model_config: dict[str, Any] | None = None,
) -> Position:
    """Loads a checkpoint into ``model``, ``optimizer`` and ``scaler`` (keeping the
    optimizer's own kernels) and the RNG states; returns where the run stood.
    ``model_config``: the architecture ``model`` was built from, which must be the one the
    checkpoint records (a model config file edited since fails here, by name)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = ckpt.get("model_config")
    if model_config is not None and saved is not None and saved != model_config:
        changed = sorted(_differences(saved, model_config))
        raise CheckpointError(
            f"--resume {path}: the model config changed since this checkpoint was written "
            f"({', '.join(changed[:5])}); resume with the config it records, or start a "
            "new run"
        )
    model.load_state_dict(strip_compile_prefix(ckpt["model"]))
    load_optimizer_state(optimizer, ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    elif scaler is not None:
        print(f"training.run: {path} has no amp scaler state: a fresh one", file=sys.stderr)
    set_rng_state(ckpt["rng"], cuda_device)
    data = ckpt["data"]
    return Position(
        # Checkpoints from before --accum-freq hold next_batch alone: the two were equal.
        step=data.get("next_step", data["next_batch"]),
        batch=data["next_batch"],  # the data continue where they stopped
        skipped_steps=ckpt.get("skipped_steps", 0),
        batches_per_epoch=data.get("batches_per_epoch"),
        readers_per_rank=data.get("readers_per_rank"),
        reader_offsets=data.get("reader_offsets"),
        world_size=data.get("world_size"),
        dealing=data.get("dealing"),
    )


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    """The dotted keys at which two JSON-like dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if a == b else [where or "(root)"]


def list_checkpoints(output: Path) -> list[Path]:
    """A run folder's checkpoints, oldest first (the names sort by step)."""
    return sorted((output / "checkpoints").glob("step_*.pt"))


def find_latest(output: Path) -> Path:
    ckpts = list_checkpoints(output)
    if not ckpts:
        raise CheckpointError(
            f"--resume latest: no checkpoints in {output / 'checkpoints'} (--resume auto "
            "starts a new run when there is none)"
        )
    return ckpts[-1]


def resolve_resume(resume: str, output: Path) -> Path | None:
    """``--resume``'s checkpoint: ``latest``, the run's newest (there must be one);
    ``auto``, the newest or None, a new run (preemptible jobs, a workflow's reruns); or a
    checkpoint file."""
    if resume == "latest":
        return find_latest(output)
    if resume == "auto":
        ckpts = list_checkpoints(output)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(
            f"--resume {resume}: no such checkpoint file (give a checkpoint's path, latest or auto)"
        )
    return path


@dataclass(frozen=True)
class Recorded:
    """What a checkpoint says of its run: the options it was started with, its model's
    name and the next step."""

    options: dict[str, Any]
    model: str | None
    step: int
    loss: float | None = None  # the last step's loss (the global batch's)
    data_counts: dict[str, int] | None = None  # the stream's counts so far, all ranks


def recorded(path: Path) -> Recorded:
    """A checkpoint's ``Recorded``, read without loading its tensors (memory-mapped)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        data = ckpt["data"]
        step = int(data.get("next_step", data["next_batch"]))
    except Exception as e:  # a torn or foreign file: torch raises many types
        raise CheckpointError(f"--resume {path}: not a readable checkpoint ({e})") from None
    options = dict(ckpt.get("args", {}))
    return Recorded(
        options,
        ckpt.get("model_name", options.get("model")),
        step,
        ckpt.get("last_loss"),
        ckpt.get("data_counts"),
    )


def remove_stale_temps(folder: Path) -> list[Path]:
    """Removes the temporary files of saves that were killed mid-write (a run folder
    holds one run, and it is starting: no save of it is under way); returns them."""
    stale = sorted(folder.glob(".step_*.pt.*.tmp")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Temp file in the same folder, then rename: a killed save never leaves a torn file,
    and a failed one leaves no temp file. Written by ``torch.save`` straight to disk (a
    ViT-B-32 state with AdamW is ~1.8 GB: not held twice in memory)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """Every generator the run draws from, as types ``torch.load(weights_only=True)`` reads."""
    import numpy as np
    import torch

    # numpy's state tuple holds an ndarray: stored as plain ints and floats instead.
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "numpy": {
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], cuda_device: int | None = None) -> None:
    """Restores what ``rng_state`` saved. ``cuda_device``: restore only this device, from
    the saver's first device (DDP ranks seed and draw alike, one device each)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "numpy" in state:  # checkpoints from before numpy's state was saved lack it
        n = state["numpy"]
        keys = np.array(n["keys"], dtype=np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if cuda_device is None:
            torch.cuda.set_rng_state_all(saved[: torch.cuda.device_count()])
        elif saved:
            torch.cuda.set_rng_state(saved[0], cuda_device)
    elif "cuda" in state:
        print("training.run: checkpoint has CUDA RNG states; no CUDA here", file=sys.stderr)


def strip_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Weights saved from a torch.compile'd module carry ``_orig_mod.``: drop it."""
    prefix = "_orig_mod."
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}
