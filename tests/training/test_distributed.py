"""torchrun with 2 CPU processes (gloo): the loss matches one process on the same global
batch, step by step, so gathering features and averaging gradients lose nothing; a NaN on
one rank stops both at the same step."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.reference import full_batch_losses
from tests.training.shardgen import write_shards
from training import optim, run
from training.data import ShardStream, plan_data
from training.models import build

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH, SEED, LR, WARMUP = 3, 8, 5, 1e-3, 1


def _reference_losses(spec: str, accum: int = 1) -> list[float]:
    """One process, each step on rank 0's batches + rank 1's batches (``accum`` each), as
    torchrun splits them."""
    torch.manual_seed(SEED)
    random.seed(SEED)
    model, preprocess, _, tokenizer = build("tiny")
    args = run.parse_args(["--train-data", spec, "--output", "unused", "--weight-decay", "0.2"])
    args.lr = LR
    optimizer, _ = optim.make_optimizer(model, args, torch.device("cpu"))  # the run's AdamW
    streams = [
        iter(
            ShardStream(
                plan_data(spec, rank=r, world_size=2), BATCH, preprocess, tokenizer, seed=SEED
            )
        )
        for r in (0, 1)
    ]
    return full_batch_losses(
        model,
        optimizer,
        lambda: [next(s) for s in streams for _ in range(accum)],
        STEPS,
        lr=LR,
        warmup=WARMUP,
    )


def _torchrun(
    entry: list[str], spec: str, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [*entry, "--train-data", spec, "--output", str(out), "--log-every", "1"]
    cmd += ["--steps", str(STEPS), "--batch-size", str(BATCH), "--seed", str(SEED)]
    cmd += ["--lr", str(LR), "--warmup", str(WARMUP), "--threads", "1", "--weight-decay", "0.2"]
    cmd += extra
    # CPU ranks even on a GPU machine: two ranks would need two GPUs there.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "CUDA_VISIBLE_DEVICES": "",
    }
    # A rank left waiting in a collective would hang: the timeout fails the test instead.
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=4, per_shard=30)
    spec = str(tmp_path / "d")
    out = tmp_path / "run"
    proc = _torchrun(["-m", "training.run"], spec, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 alone writes
    expected = _reference_losses(spec)
    got = [r["loss"] for r in rows]
    assert got == pytest.approx(expected, rel=1e-4), (got, expected)
    assert len(set(got)) == STEPS  # the weights moved: gradients were synced, not just loss
    assert (out / "checkpoints" / f"step_{STEPS:08d}.pt").is_file()


def test_undecodable_images_on_two_ranks_keep_batches_equal_and_are_counted(
    tmp_path: Path,
) -> None:
    # Ranks all-gather features of equal batches: each fills its batch past the bad
    # images (every 4th here) instead of sending a short one, and the counts in the
    # summary are both ranks'.
    write_shards(tmp_path / "d", n_shards=2, per_shard=40, corrupt_every=4)
    spec = str(tmp_path / "d")
    out = tmp_path / "run"
    proc = _torchrun(["-m", "training.run"], spec, out, "--shuffle-buffer", "1000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert got == pytest.approx(_reference_losses(spec), rel=1e-4), got
    summary = json.loads((out / "summary.json").read_text())
    # Each rank reads its shard's 40 samples into the shuffle buffer (10 truncated).
    assert summary["data_samples"] == 80
    assert 2 <= summary["data_corrupt_image"] <= 20


def test_two_gloo_processes_accumulating_match_one_process(tmp_path: Path) -> None:
    # 2 ranks x 2 micro-batches of 8: every step's loss is over all 32 samples, and one
    # all-reduce (the last pass's) sums the gradients of all four micro-batches.
    write_shards(tmp_path / "d", n_shards=4, per_shard=30)
    spec = str(tmp_path / "d")
    out = tmp_path / "run"
    proc = _torchrun(["-m", "training.run"], spec, out, "--accum-freq", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    expected = _reference_losses(spec, accum=2)
    assert got == pytest.approx(expected, rel=1e-4), (got, expected)
    assert len(set(got)) == STEPS


# training.run whose loss turns NaN on rank 1 alone at step 1 (the second forward pass).
_NAN_ON_RANK_1 = """
import sys
from training import run

real_make = run.make_loss

def make(kind, rank=0, world_size=1):
    real, calls = real_make(kind, rank, world_size), iter(range(10**6))
    def loss(*a):
        value = real(*a)
        return value * float("nan") if next(calls) == 1 and rank == 1 else value
    return loss

run.make_loss = make
sys.exit(run.main())
"""


def test_nan_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    # The check reads the loss averaged over ranks: rank 0's own loss stays finite, yet it
    # stops at the same step as rank 1, so neither waits for the other in a collective.
    # --log-every 10: no line before the end, so the check is read a step late.
    write_shards(tmp_path / "d", n_shards=4, per_shard=30)
    script = tmp_path / "nan_run.py"
    script.write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    proc = _torchrun([str(script)], str(tmp_path / "d"), out, "--log-every", "10")
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"step 1: loss is nan on batch 1 (rank {rank}," in proc.stderr, proc.stderr[-3000:]
    assert not (out / "checkpoints").exists()
