"""--accum-freq (the contrastive loss over several micro-batches, GradCache), AdamW's betas
and epsilon, and --grad-clip-norm."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.reference import full_batch_losses
from tests.training.shardgen import write_shards
from training import optim, run
from training.data import ShardStream, plan_data
from training.models import build, input_side

COMMON = ["--model", "tiny", "--threads", "1", "--shuffle-buffer", "20", "--seed", "3"]
COMMON += ["--lr", "1e-3", "--warmup", "1", "--log-every", "1", "--weight-decay", "0.2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("accum") / "data"
    write_shards(root, n_shards=2, per_shard=40, seed=2)
    return root


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _batch(n: int, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    words = ["red", "green", "blue", "square", "circle", "small", "large", "over", "a"]
    captions = [" ".join(words[int(i)] for i in torch.randint(0, 9, (5,), generator=g))]
    captions += [f"{c} {k}" for k in range(n - 1) for c in captions[:1]]
    return torch.randn(n, 3, 32, 32, generator=g), tokenizer(captions)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_accumulated_gradients_equal_the_full_batch_gradients(kind: str) -> None:
    torch.manual_seed(0)
    model, _, _, tokenizer = build("tiny")
    if kind == "siglip":
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    loss_of = run.bind_loss(kind, run.make_loss(kind), model)  # as training.run calls it

    images, texts = _batch(12, tokenizer)
    out = model(images, texts)
    full_loss = loss_of(out["image_features"], out["text_features"], out["logit_scale"], True)
    full_loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    inputs = [(images[i : i + 4], texts[i : i + 4]) for i in range(0, 12, 4)]
    with torch.no_grad():
        cached = [model(i, t) for i, t in inputs]
        cached_loss = loss_of(
            torch.cat([c["image_features"] for c in cached]),
            torch.cat([c["text_features"] for c in cached]),
            cached[-1]["logit_scale"],
            True,
        )
    passes: list[float] = []

    def backward(loss: torch.Tensor) -> None:
        passes.append(loss.item())
        loss.backward()

    unsynced: list[int] = []

    def no_sync() -> Any:  # DDP's: these passes skip the all-reduce
        unsynced.append(len(passes))
        return contextlib.nullcontext()

    optim.accumulate_gradients(model, inputs, cached, loss_of, backward, no_sync, _autocast)
    assert unsynced == [0, 1]  # every pass but the last; the last all-reduces the sum
    assert cached_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert passes == pytest.approx([full_loss.item()] * 3, rel=1e-5)  # each pass: the full loss
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == full.keys()
    for name, grad in full.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-6), name
    # The temperature (and SigLIP's bias) once, not once per micro-batch (open_clip: 3x).
    assert full["logit_scale"].abs() > 0
    assert got["logit_scale"] == pytest.approx(full["logit_scale"].item(), rel=1e-4)


def _autocast() -> Any:
    return contextlib.nullcontext()


def _reference_losses(spec: str, batch: int, accum: int, steps: int) -> list[float]:
    """One process, one full-batch step over each run of ``accum`` consecutive batches."""
    torch.manual_seed(3)
    random.seed(3)
    model, preprocess, _, tokenizer = build("tiny")
    args = run.parse_args(["--train-data", spec, "--output", "unused", *COMMON])
    optimizer, _ = optim.make_optimizer(model, args, torch.device("cpu"))
    stream = iter(
        ShardStream(
            plan_data(spec),
            batch,
            preprocess,
            tokenizer,
            seed=3,
            shuffle_buffer=20,
            draft_side=2 * input_side(model),
        )
    )
    return full_batch_losses(
        model, optimizer, lambda: [next(stream) for _ in range(accum)], steps, lr=1e-3, warmup=1
    )


def test_run_with_accumulation_trains_as_the_full_batch_and_resumes(
    shards: Path, tmp_path: Path
) -> None:
    base = ["--train-data", str(shards), *COMMON, "--batch-size", "8", "--accum-freq", "2"]
    full = tmp_path / "full"
    assert run.main([*base, "--steps", "4", "--save-every", "2", "--output", str(full)]) == 0
    rows = _metrics(full)
    expected = _reference_losses(str(shards), batch=8, accum=2, steps=4)
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-4)
    assert len({r["loss"] for r in rows}) == 4  # the weights moved
    data = torch.load(full / "checkpoints" / "step_00000002.pt", weights_only=True)["data"]
    assert (data["next_step"], data["next_batch"], data["accum_freq"]) == (2, 4, 2)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step_00000002.pt", resumed / "checkpoints")
    assert run.main([*base, "--steps", "4", "--resume", "latest", "--output", str(resumed)]) == 0
    again = _metrics(resumed)
    assert [r["step"] for r in again] == [3, 4]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows[2:]], rel=1e-4)


def test_epochs_count_optimizer_steps_of_all_micro_batches(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    argv = ["--train-data", str(shards), *COMMON, "--batch-size", "8", "--accum-freq", "3"]
    assert run.main([*argv, "--epochs", "1", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 80 // (8 * 3)  # 3 steps of 24 samples; 8 left over
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    code = run.main([*argv, "--batch-size", "32", "--epochs", "1", "--output", str(out) + "2"])
    assert code == 2  # 32 x 3 > 80 samples: not one optimizer step's worth


def test_adamw_betas_and_epsilon_follow_clip_unless_given() -> None:
    from open_clip.modified_resnet import ModifiedResNet

    args = run.parse_args(["--train-data", "d", "--output", "o"])
    vit, _, _, _ = build("tiny")
    assert optim.adam_params(args, vit.visual) == ((0.9, 0.98), 1e-6)
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, heads=1, image_size=32, width=8)
    assert optim.adam_params(args, resnet) == ((0.9, 0.999), 1e-8)
    args = run.parse_args(
        ["--train-data", "d", "--output", "o", "--beta2", "0.95", "--eps", "1e-7"]
    )
    optimizer, _ = optim.make_optimizer(vit, args, torch.device("cpu"))
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.9, 0.95), 1e-7)}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--accum-freq", "0"], "--accum-freq must be at least 1"),
        (["--grad-clip-norm", "-1"], "--grad-clip-norm must be at least 0"),
        (["--beta2", "1"], "--beta2 must be in [0, 1)"),
        (["--eps", "0"], "--eps must be above 0"),
    ],
)
def test_bad_optimizer_options_fail_with_the_flag_named(
    flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--train-data", "d", "--output", "o", *flags])
    assert message in capsys.readouterr().err


def test_grad_clip_norm_records_the_norm_and_bounds_the_update(
    shards: Path, tmp_path: Path
) -> None:
    base = ["--train-data", str(shards), *COMMON, "--batch-size", "8", "--steps", "2"]
    base += ["--weight-decay", "0", "--save-every", "1"]

    def moved(extra: list[str], name: str) -> tuple[float, list[dict[str, Any]]]:
        out = tmp_path / name
        assert run.main([*base, *extra, "--output", str(out)]) == 0
        ckpt = [
            torch.load(out / "checkpoints" / f"step_{s:08d}.pt", weights_only=True)["model"]
            for s in (1, 2)
        ]
        # The second update (the first is lr x sign(g) in Adam, whatever the scale).
        change = max((ckpt[1][k] - ckpt[0][k]).abs().max().item() for k in ckpt[0])
        return change, _metrics(out)

    free, free_rows = moved([], "free")
    clipped, rows = moved(["--grad-clip-norm", "1e-9"], "clipped")
    assert "grad_norm" not in free_rows[0]
    assert all(r["grad_norm"] > 1e-9 for r in rows)  # the norm before clipping
    assert clipped < free / 10
