"""The training options beyond the loop: epochs, amp, gradient checkpointing, compile,
non-finite steps (stop, skip), resampling, RNG states, TensorBoard, pinned memory, the
AdamW kernels, threads, logging cadence, config."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.shardgen import write_shards
from training import checkpoints, gpu_check, optim, run
from training.data import ShardStream, plan_data

# One thread: on a busy 2-core host, intra-op threads spin and run ~3x slower.
COMMON = ["--model", "tiny", "--batch-size", "16", "--threads", "1", "--shuffle-buffer", "50"]
COMMON += ["--lr", "1e-3", "--warmup", "2", "--seed", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("options") / "data"
    write_shards(root, n_shards=4, per_shard=24, seed=1)  # 96 samples: 6 steps of 16
    return root


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run_dir: Path, step: int) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value: the run gets the option's default."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _resume_copy(src: Path, step: int, dst: Path) -> None:
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "checkpoints" / f"step_{step:08d}.pt", dst / "checkpoints")


def test_epochs_set_the_step_count_and_resume_mid_epoch(shards: Path, tmp_path: Path) -> None:
    base = ["--train-data", str(shards), *COMMON, "--epochs", "2", "--workers", "2"]
    full = tmp_path / "full"
    assert run.main([*base, "--output", str(full), "--save-every", "3"]) == 0
    rows = _metrics(full)
    assert [r["step"] for r in rows] == list(range(1, 13))  # 2 x 96 // 16
    assert [r["epoch"] for r in rows] == [0] * 6 + [1] * 6
    assert all(r["data_time"] <= r["step_time"] for r in rows)
    summary = json.loads((full / "summary.json").read_text())
    assert (summary["steps"], summary["epochs"]) == (12, 2.0)
    data = _ckpt(full, 9)["data"]
    offsets = data.pop("reader_offsets")
    assert len(data.pop("dealing")) == 16  # the digest of the shards, counts, exclusions
    assert data == {
        "next_batch": 9,
        "next_step": 9,
        "accum_freq": 1,
        "epoch": 1,
        "step_in_epoch": 3,
        "batches_per_epoch": 6,
        "readers_per_rank": 2,
        "world_size": 1,
    }
    assert offsets == [[32, 16]]  # epoch 1's batches 6 and 8 came from reader 0, 7 from 1

    # Step 9 is odd: the DataLoader's worker 0 must play reader 1 after the resume.
    resumed = tmp_path / "resumed"
    _resume_copy(full, 9, resumed)
    assert run.main([*base, "--output", str(resumed), "--resume", "latest"]) == 0
    a = {r["step"]: r["loss"] for r in rows}
    b = {r["step"]: r["loss"] for r in _metrics(resumed)}
    assert sorted(b) == [10, 11, 12]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step


def test_steps_and_epochs_exclude_each_other(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "r")]
    with pytest.raises(SystemExit):
        run.parse_args([*argv, "--steps", "3", "--epochs", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 3, "epochs": 1}))
    with pytest.raises(SystemExit):
        run.parse_args([*argv, "--config", str(cfg)])
    assert "'steps' and 'epochs' exclude each other" in capsys.readouterr().err
    cfg.write_text(json.dumps({"steps": 3}))
    args = run.parse_args([*argv, "--config", str(cfg), "--epochs", "2"])
    assert (args.steps, args.epochs) == (None, 2)  # the command line wins over the file
    assert run.parse_args(argv).steps == run.DEFAULT_STEPS
    # An epoch needs one global batch: 96 samples cannot fill a batch of 128.
    code = run.main([*argv, "--epochs", "1", "--batch-size", "128", "--threads", "1"])
    assert code == 2
    assert "fewer than one global batch" in capsys.readouterr().err


def test_amp_on_cpu_keeps_its_scaler_across_a_resume(shards: Path, tmp_path: Path) -> None:
    # torch 2.14 runs float16 autocast and GradScaler("cpu") on the CPU: tested here.
    base = ["--train-data", str(shards), *COMMON, "--steps", "6", "--precision", "amp"]
    full = tmp_path / "full"
    assert run.main([*base, "--output", str(full), "--save-every", "3"]) == 0
    rows = _metrics(full)
    assert all(np.isfinite(r["loss"]) and r["grad_scale"] > 0 for r in rows)
    scaler = _ckpt(full, 6)["scaler"]
    assert scaler["_growth_tracker"] == 6  # six unscaled-finite steps in a row

    resumed = tmp_path / "resumed"
    _resume_copy(full, 3, resumed)
    assert run.main([*base, "--output", str(resumed), "--resume", "latest"]) == 0
    # A fresh scaler would count 3 here: the state came back from the checkpoint.
    assert _ckpt(resumed, 6)["scaler"] == scaler
    a = {r["step"]: r["loss"] for r in rows}
    for r in _metrics(resumed):
        assert r["loss"] == pytest.approx(a[r["step"]], rel=1e-3), r["step"]


def test_grad_checkpointing_recomputes_and_keeps_the_loss(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip.transformer

    calls = []
    real = open_clip.transformer.checkpoint

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counting)
    base = ["--train-data", str(shards), *COMMON, "--steps", "3"]
    assert run.main([*base, "--output", str(tmp_path / "plain")]) == 0
    assert calls == []
    assert run.main([*base, "--output", str(tmp_path / "ckpt"), "--grad-checkpointing"]) == 0
    assert len(calls) >= 3 * 4  # 2 image + 2 text blocks per step
    plain = [r["loss"] for r in _metrics(tmp_path / "plain")]
    recomputed = [r["loss"] for r in _metrics(tmp_path / "ckpt")]
    assert recomputed == pytest.approx(plain, rel=1e-4)


def test_compiled_run_checkpoint_resumes_uncompiled(shards: Path, tmp_path: Path) -> None:
    import torch._dynamo

    # aot_eager traces with dynamo and AOTAutograd as inductor does, without the C++ build
    # that makes inductor's first compile take over a minute on a small CPU.
    base = ["--train-data", str(shards), *COMMON, "--steps", "4"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = tmp_path / "compiled"
    argv = [*base, "--output", str(compiled), "--save-every", "2"]
    assert run.main([*argv, "--compile", "--compile-backend", "aot_eager"]) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    torch._dynamo.reset()
    weights = _ckpt(compiled, 2)["model"]
    assert not any(k.startswith("_orig_mod.") for k in weights)

    plain = tmp_path / "plain"
    assert run.main([*base, "--output", str(plain)]) == 0
    a = [r["loss"] for r in _metrics(compiled)]
    assert a == pytest.approx([r["loss"] for r in _metrics(plain)], rel=1e-3)

    resumed = tmp_path / "resumed"
    _resume_copy(compiled, 2, resumed)
    assert run.main([*base, "--output", str(resumed), "--resume", "latest"]) == 0
    assert [r["loss"] for r in _metrics(resumed)] == pytest.approx(a[2:], rel=1e-3)


def test_compile_backend_missing_fails_clearly(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch._inductor.cpp_builder

    argv = ["--train-data", str(shards), "--output", str(tmp_path / "r"), *COMMON, "--compile"]
    assert run.main([*argv, "--compile-backend", "nope"]) == 2
    assert "--compile-backend nope: unknown" in capsys.readouterr().err

    def no_compiler() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "inductor on CPU needs a C++ compiler" in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # failed before training


def _loss_nan_on(calls: set[int] | None, made: list[int] | None = None) -> Callable[..., Any]:
    """make_loss whose real loss turns NaN on the given call numbers (all when None);
    ``made`` collects the call numbers, one per forward pass."""
    real_make = run.make_loss

    def make(kind: str, rank: int = 0, world_size: int = 1) -> Callable[..., torch.Tensor]:
        real = real_make(kind, rank, world_size)
        count = iter(range(10**6))

        def loss(*a: Any) -> torch.Tensor:
            value = real(*a)
            n = next(count)
            if made is not None:
                made.append(n)
            return value * float("nan") if calls is None or n in calls else value

        return loss

    return make


def test_on_nan_skip_drops_the_update_and_counts_it(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--train-data", str(shards), *COMMON, "--steps", "4"]
    clean = tmp_path / "clean"
    assert run.main([*base, "--output", str(clean)]) == 0

    monkeypatch.setattr(run, "make_loss", _loss_nan_on({1}))
    out = tmp_path / "skip"
    assert run.main([*base, "--output", str(out), "--on-nan", "skip"]) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["loss"] is None and rows[1]["skipped"] is True
    assert [r["nan_skips"] for r in rows] == [0, 1, 1, 1]
    assert rows[0]["loss"] == pytest.approx(_metrics(clean)[0]["loss"], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 1
    ckpt = _ckpt(out, 4)
    assert ckpt["skipped_steps"] == 1
    adam_steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {3.0}  # 4 steps, one update dropped
    assert (out / "curves.png").stat().st_size > 0  # the null loss plots as a gap


def test_on_nan_skip_stops_after_max_skips_in_a_row(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(run, "make_loss", _loss_nan_on(None))
    out = tmp_path / "r"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "6"]
    assert run.main([*argv, "--on-nan", "skip", "--max-nan-skips", "2"]) == 2
    err = capsys.readouterr().err
    assert "step 2: loss is nan" in err
    assert "3 non-finite losses in a row, more than --max-nan-skips 2" in err
    assert [r["nan_skips"] for r in _metrics(out)] == [1, 2]


@pytest.mark.parametrize("nan_call", [2, 3])
def test_on_nan_stop_reads_the_check_a_step_late_and_never_saves_the_update(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    nan_call: int,
) -> None:
    # No metrics line before the end: only the checkpoints at steps 2, 4, 6 force a read.
    made: list[int] = []
    monkeypatch.setattr(run, "make_loss", _loss_nan_on({nan_call}, made))
    out = tmp_path / "r"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "6"]
    assert run.main([*argv, "--save-every", "2", "--log-every", "100"]) == 2
    assert f"step {nan_call}: loss is nan on batch {nan_call} (rank 0" in capsys.readouterr().err
    # Step 2's NaN is read after step 3 is queued; step 3's before step 4's checkpoint.
    assert len(made) == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert all(torch.isfinite(w).all() for w in _ckpt(out, 2)["model"].values())
    assert (out / "metrics.jsonl").read_text() == ""


def test_default_log_every_writes_a_line_per_10_steps_with_mean_times(
    shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "12"]
    assert run.main(_without(argv, "--log-every")) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [10, 12]  # every 10th step and the last
    assert all(0 < r["data_time"] <= r["step_time"] for r in rows)
    assert all(r["samples_per_s"] == pytest.approx(16 / r["step_time"]) for r in rows)
    full = tmp_path / "full"
    assert run.main([*argv, "--output", str(full)]) == 0  # --log-every 1: same losses
    every = {r["step"]: r["loss"] for r in _metrics(full)}
    assert [r["loss"] for r in rows] == pytest.approx([every[10], every[12]], rel=1e-6)
    assert json.loads((out / "summary.json").read_text())["loss"] == rows[-1]["loss"]


def _first_group(ckpt: dict[str, Any]) -> dict[str, Any]:
    return ckpt["optimizer"]["param_groups"][0]


def test_fused_adamw_matches_the_default_and_resumes_across_kernels(
    shards: Path, tmp_path: Path
) -> None:
    base = ["--train-data", str(shards), *COMMON, "--steps", "6", "--save-every", "3"]
    plain = tmp_path / "plain"
    assert run.main([*base, "--output", str(plain), "--optimizer-impl", "default"]) == 0
    fused = tmp_path / "fused"
    assert run.main([*base, "--output", str(fused)]) == 0  # fused is the default
    assert json.loads((fused / "summary.json").read_text())["optimizer_impl"] == "fused"
    assert (_first_group(_ckpt(plain, 3))["fused"], _first_group(_ckpt(fused, 3))["fused"]) == (
        None,
        True,
    )
    a = [r["loss"] for r in _metrics(plain)]
    assert [r["loss"] for r in _metrics(fused)] == pytest.approx(a, rel=1e-5)

    # A checkpoint written by torch's default AdamW (as every run before fused was) resumes
    # fused: same state keys; the kernels stay the ones asked for, not the saved flags.
    resumed = tmp_path / "resumed"
    _resume_copy(plain, 3, resumed)
    assert run.main([*base, "--output", str(resumed), "--resume", "latest"]) == 0
    assert [r["loss"] for r in _metrics(resumed)] == pytest.approx(a[3:], rel=1e-5)
    end = _ckpt(resumed, 6)
    assert _first_group(end)["fused"] is True
    assert {float(s["step"]) for s in end["optimizer"]["state"].values()} == {6.0}
    # And back: a fused checkpoint resumes with torch's default kernels.
    back = tmp_path / "back"
    _resume_copy(fused, 3, back)
    argv = [*base, "--output", str(back), "--resume", "latest", "--optimizer-impl", "default"]
    assert run.main(argv) == 0
    assert [r["loss"] for r in _metrics(back)] == pytest.approx(a[3:], rel=1e-5)
    assert _first_group(_ckpt(back, 6))["fused"] is None


def test_fused_adamw_falls_back_where_the_device_has_none() -> None:
    model = torch.nn.Linear(3, 2)
    args = run.parse_args(["--train-data", "d", "--output", "o"])
    optimizer, impl = optim.make_optimizer(model, args, torch.device("meta"))
    assert impl == f"default (no fused AdamW for meta in torch {torch.__version__})"
    assert all(g["fused"] is None and g["foreach"] is None for g in optimizer.param_groups)
    args.optimizer_impl = "foreach"
    optimizer, impl = optim.make_optimizer(model, args, torch.device("cpu"))
    assert impl == "foreach" and optimizer.param_groups[0]["foreach"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="step placement differs on CUDA only")
def test_adamw_state_moves_to_where_the_kernels_keep_it_on_cuda() -> None:
    model = torch.nn.Linear(3, 2).cuda()

    def stepped(**kernels: Any) -> torch.optim.Optimizer:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **kernels)
        model(torch.ones(1, 3, device="cuda")).sum().backward()
        optimizer.step()
        return optimizer

    unfused, fused = stepped(), stepped(fused=True)
    into_fused = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    optim.load_optimizer_state(into_fused, unfused.state_dict())
    assert all(s["step"].is_cuda for s in into_fused.state.values())
    into_fused.step()  # the fused kernel takes the CPU-saved step counts once moved
    into_plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optim.load_optimizer_state(into_plain, fused.state_dict())
    assert all(not s["step"].is_cuda for s in into_plain.state.values())
    assert into_plain.param_groups[0]["fused"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CPU path runs in every run")
def test_loss_check_reads_a_cuda_flag_without_a_sync() -> None:
    batch = {"batch": 7, "keys": ["a", "b"]}
    ok = run.LossCheck(torch.tensor(1.5, device="cuda"), 7, batch, rank=0)
    bad = run.LossCheck(torch.tensor(float("inf"), device="cuda"), 7, batch, rank=0)
    assert ok.finite() is True and bad.finite() is False
    assert bad.where() == "step 7: loss is inf on batch 7 (rank 0, keys a..b)"


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """A run sets torch's process-wide thread count: put the test process's back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_threads_follow_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run.default_threads(cores=2, ranks_on_host=1, workers=2) == 1  # never 0
    assert run.default_threads(cores=16, ranks_on_host=2, workers=2) == 6
    assert run.default_threads(cores=8, ranks_on_host=1, workers=0) == 8
    assert run.default_threads(cores=8, ranks_on_host=4, workers=3) == 1
    monkeypatch.setattr(run, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert run.choose_threads(3, "cpu", 2, 1) == (3, "--threads")
    assert run.choose_threads(0, "cuda", 2, 1) == (None, "torch's default on cuda")
    assert run.choose_threads(0, "cpu", 2, 1)[0] == 14
    assert run.choose_threads(0, "cpu", 2, 4)[0] == 2  # no launcher count: all ranks here
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's ranks on this host
    threads, why = run.choose_threads(0, "cpu", 2, 4)
    assert (threads, why) == (6, "auto: 16 core(s) // 2 rank(s) here - 2 worker(s)")
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.undo()
        assert run.available_cores() == len(os.sched_getaffinity(0))


def test_threads_set_in_the_run(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    restore_threads: None,
) -> None:
    monkeypatch.setattr(run, "available_cores", lambda: 3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    argv = ["--train-data", str(shards), *COMMON, "--steps", "1"]
    assert run.main([*_without(argv, "--threads"), "--output", str(tmp_path / "auto")]) == 0
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["threads"] == 3
    assert "3 torch thread(s) (auto: 3 core(s) // 1 rank(s) here - 0 worker(s))" in (
        capsys.readouterr().err
    )
    assert run.main([*argv, "--output", str(tmp_path / "set"), "--threads", "2"]) == 0
    assert json.loads((tmp_path / "set" / "summary.json").read_text())["threads"] == 2


def test_one_shard_for_two_readers_with_and_without_resample(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=1, per_shard=40, seed=2)
    argv = ["--train-data", str(tmp_path / "d"), *COMMON, "--steps", "4", "--workers", "2"]
    assert run.main([*argv, "--output", str(tmp_path / "r"), "--resample"]) == 0
    assert [r["step"] for r in _metrics(tmp_path / "r")] == [1, 2, 3, 4]
    # Without --resample the two readers share the shard, each its half.
    assert run.main([*argv, "--output", str(tmp_path / "shared")]) == 0
    assert [r["step"] for r in _metrics(tmp_path / "shared")] == [1, 2, 3, 4]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    checkpoints.save_checkpoint(tmp_path / "c.pt", {"rng": checkpoints.rng_state()})
    before = (torch.rand(3), random.random(), np.random.rand(3))
    state = torch.load(tmp_path / "c.pt", weights_only=True)["rng"]
    assert ("cuda" in state) == torch.cuda.is_available()
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    checkpoints.set_rng_state(state)
    after = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert np.array_equal(before[2], after[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA RNG needs CUDA (CPU path above)")
def test_cuda_rng_state_round_trips(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(1)
    checkpoints.save_checkpoint(tmp_path / "c.pt", {"rng": checkpoints.rng_state()})
    before = torch.rand(4, device="cuda")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["rng"]
    assert len(state["cuda"]) == torch.cuda.device_count()
    torch.cuda.manual_seed_all(9)
    checkpoints.set_rng_state(state)
    assert torch.equal(before, torch.rand(4, device="cuda"))
    torch.cuda.manual_seed_all(9)
    checkpoints.set_rng_state(state, cuda_device=0)  # a DDP rank restores its own device
    assert torch.equal(before, torch.rand(4, device="cuda"))


def test_tensorboard_missing_names_the_package(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "r"), *COMMON]
    assert run.main([*argv, "--steps", "2", "--tensorboard"]) == 2
    assert "--tensorboard needs the 'tensorboard' package: pip install tensorboard" in (
        capsys.readouterr().err
    )


def test_tensorboard_event_files_hold_the_metrics(shards: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "3"]
    assert run.main([*argv, "--tensorboard"]) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/data_time", "train/step_time", "train/epoch"} <= tags
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in _metrics(out)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_loader_pins_memory_only_for_cuda(shards: Path) -> None:
    stream = ShardStream(plan_data(str(shards)), 4, lambda img: img, list)
    assert run.make_loader(stream, 0, torch.device("cuda", 0)).pin_memory is True
    assert run.make_loader(stream, 0, torch.device("cpu")).pin_memory is False


def test_every_new_option_from_config_and_help(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    options = {
        "train_data": "d",
        "output": "o",
        "epochs": 3,
        "precision": "amp",
        "grad_checkpointing": True,
        "compile": True,
        "compile_backend": "aot_eager",
        "on_nan": "skip",
        "max_nan_skips": 4,
        "resample": True,
        "tensorboard": True,
        "optimizer_impl": "foreach",
        "threads": 3,
        "log_every": 5,
        "accum_freq": 4,
        "grad_clip_norm": 1.0,
        "beta1": 0.8,
        "beta2": 0.95,
        "eps": 1e-7,
    }
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(options))
    args = vars(run.parse_args(["--config", str(cfg)]))
    assert {k: args[k] for k in options} == options
    assert args["steps"] is None
    # Flags beat the file, booleans included.
    args = run.parse_args(["--config", str(cfg), "--no-compile", "--precision", "bf16"])
    assert (args.compile, args.precision) == (False, "bf16")
    cfg.write_text(json.dumps({**options, "precision": "fp16"}))
    with pytest.raises(SystemExit):
        run.parse_args(["--config", str(cfg)])
    assert "precision='fp16', not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--epochs", "amp", "--grad-checkpointing", "--compile", "--compile-backend"):
        assert flag in text
    for flag in ("--on-nan", "--max-nan-skips", "--resample", "--tensorboard"):
        assert flag in text
    for flag in ("--optimizer-impl", "--threads", "--log-every", "at most one step after"):
        assert flag in text
    for flag in ("--accum-freq", "--grad-clip-norm", "--beta1", "--beta2", "--eps"):
        assert flag in text
    assert run.parse_args(["--train-data", "d", "--output", "o"]).log_every == 10
    cfg.write_text(json.dumps({**options, "optimizer_impl": "adam"}))
    with pytest.raises(SystemExit):
        run.parse_args(["--config", str(cfg)])
    assert "optimizer_impl='adam', not one of" in capsys.readouterr().err


def test_gpu_check_summary_says_whether_the_loader_is_the_bottleneck() -> None:
    def rows(data_time: float) -> list[dict[str, Any]]:
        return [
            {"step": s, "loss": 1.0, "samples_per_s": 100.0, "data_time": data_time,
             "step_time": 0.5}
            for s in range(1, 41)
        ]  # fmt: skip

    fed = gpu_check.summarize(rows(0.01), steps=40)
    assert fed["median_data_time_s"] == 0.01 and fed["median_step_time_s"] == 0.5
    assert fed["median_samples_per_s"] == 100.0 and fed["steady_steps"] == 30
    assert fed["loader_bound"] is False
    assert gpu_check.summarize(rows(0.3), steps=40)["loader_bound"] is True


def test_resume_with_other_workers_and_undecodable_images_trains_the_same_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Every 5th image is undecodable: batches take the next sample instead, so readers
    # run ahead of batch x batch size; the checkpoint records how far each got. Resumed
    # mid-epoch with another --workers, the epoch ends as it was dealt: the same losses.
    data = tmp_path / "data"
    write_shards(data, n_shards=4, per_shard=24, seed=2, corrupt_every=5)
    base = ["--train-data", str(data), *_without(COMMON, "--batch-size"), "--batch-size", "8"]
    base += ["--steps", "8"]
    full = tmp_path / "full"
    assert run.main([*base, "--output", str(full), "--workers", "2", "--save-every", "3"]) == 0
    assert _ckpt(full, 3)["data"]["next_batch"] == 3
    summary = json.loads((full / "summary.json").read_text())
    assert summary["data_corrupt_image"] > 0
    losses = {r["step"]: r["loss"] for r in _metrics(full)}
    for workers in ("3", "0"):
        resumed = tmp_path / f"resumed{workers}"
        _resume_copy(full, 3, resumed)
        argv = ["--output", str(resumed), "--resume", "latest", "--threads", "1"]
        assert run.main([*argv, "--workers", workers]) == 0
        got = {r["step"]: r["loss"] for r in _metrics(resumed)}
        assert sorted(got) == list(range(4, 9))
        for step, loss in got.items():
            assert loss == pytest.approx(losses[step], rel=1e-4, abs=1e-5), (workers, step)
    assert "dealt to 2 reader(s) per rank when it began" in capsys.readouterr().err
