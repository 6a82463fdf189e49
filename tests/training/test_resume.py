"""A run folder holds one run: a new run there is refused, a resumed one takes the options
it was started with (flags override them), its logs hold each step once, and what cannot
be resumed fails in one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.training.shardgen import imagefolder, write_shards
from training import run

COMMON = ["--threads", "1", "--shuffle-buffer", "20", "--log-every", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "data"
    write_shards(root, n_shards=2, per_shard=20, seed=0)
    return root


@pytest.fixture(scope="module")
def started(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-step run with exclusions, a zero-shot set and a non-default batch size and lr,
    checkpointed every 2 steps."""
    root = tmp_path_factory.mktemp("started")
    keys = [f"{i:09d}" for i in range(40)]  # write_shards numbers keys from 000000000
    exclude = root / "exclude.parquet"
    pq.write_table(pa.table({"key": keys[:5]}), exclude)
    evals = imagefolder(root / "shapes", per_class=2)
    out = root / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--model", "tiny"]
    argv += ["--batch-size", "8", "--lr", "1e-3", "--steps", "4", "--save-every", "2"]
    argv += ["--exclude", str(exclude), "--zeroshot", f"imagefolder:{evals}"]
    assert run.main(argv) == 0
    return {"out": out, "exclude": exclude, "evals": evals, "argv": argv}


def _resume_at(started: dict, step: int, dst: Path) -> Path:
    """dst as a copy of the run killed right after its checkpoint at ``step``, its metrics
    holding the steps logged after that checkpoint too."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(started["out"] / "checkpoints" / f"step_{step:08d}.pt", dst / "checkpoints")
    shutil.copy(started["out"] / "metrics.jsonl", dst)
    return dst


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_into_a_run_folder_is_refused(
    started: dict, capsys: pytest.CaptureFixture
) -> None:
    before = sorted(p.name for p in (started["out"] / "checkpoints").iterdir())
    assert run.main([*started["argv"], "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"training.run: --output {started['out']} already holds a run (checkpoints up to "
        "step_00000004.pt): --resume latest continues it, or give another --output"
    ]
    assert sorted(p.name for p in (started["out"] / "checkpoints").iterdir()) == before
    assert _steps(started["out"]) == [1, 2, 3, 4]  # its logs untouched


def test_resume_takes_the_runs_options_and_drops_the_lines_logged_after_its_checkpoint(
    started: dict, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _resume_at(started, 2, tmp_path / "run")
    assert _steps(out) == [1, 2, 3, 4]
    # Only the folder and --resume: model, batch size, lr, steps, exclusions and zero-shot
    # sets come from the checkpoint.
    assert run.main(["--output", str(out), "--resume", "latest", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl: 2 line(s) past step 2 dropped" in err
    assert _steps(out) == [1, 2, 3, 4]  # each step once, in order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["exclude_keys"] == 5 and summary["data_excluded"] >= 5
    assert set(summary["zeroshot"]) == {"imagefolder"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(
        run.lr_at(3, 1e-3, run.DEFAULTS["warmup"], 4)
    )  # the run's lr, not the default 5e-4
    ckpt = torch.load(out / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert ckpt["args"]["batch_size"] == 8 and ckpt["args"]["exclude"] == [str(started["exclude"])]
    # The same losses as the run that was never interrupted.
    first = [json.loads(x) for x in (started["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows[2:]] == pytest.approx([r["loss"] for r in first[2:]])


def test_flags_given_again_override_the_runs_options(started: dict, tmp_path: Path) -> None:
    out = _resume_at(started, 4, tmp_path / "run")
    argv = ["--output", str(out), "--resume", "latest", "--threads", "1", "--steps", "6"]
    assert run.main([*argv, "--lr", "2e-3"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["lr"] == pytest.approx(run.lr_at(5, 2e-3, run.DEFAULTS["warmup"], 6))


def test_resume_auto_starts_a_new_run_or_continues_one(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--batch-size", "8"]
    assert run.main([*argv, "--steps", "2", "--resume", "auto"]) == 0
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'}: a new run" in (
        capsys.readouterr().err
    )
    assert run.main([*argv, "--steps", "3", "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert _steps(out) == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] is not None and summary["data_samples"] > 0
    # Rerun as it stands (a workflow's retry after success): nothing left to train, and
    # the finished run's summary stands.
    assert run.main([*argv, "--steps", "3", "--resume", "auto"]) == 0
    assert "already at step 3: nothing to train" in capsys.readouterr().err
    assert _steps(out) == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text()) == summary
    # Without a summary (the run died in its final evaluation): the checkpoint's loss.
    (out / "summary.json").unlink()
    assert run.main([*argv, "--steps", "3", "--resume", "auto"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["loss"] == pytest.approx(summary["loss"])
    assert again["data_samples"] == summary["data_samples"]  # the run's, from the checkpoint


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--steps", "2"],
            "the run is at step 4, past the 2 steps asked for; give more --steps",
        ),
        (["--model", "ViT-B-32"], "holds a tiny model; drop --model to resume it"),
    ],
)
def test_what_cannot_resume_fails_in_one_line(
    started: dict, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    out = _resume_at(started, 4, tmp_path / "run")
    assert run.main(["--output", str(out), "--resume", "latest", *COMMON, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("training.run: ") and message in err[0], err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004.pt"]


@pytest.mark.parametrize(
    ("resume", "message"),
    [
        ("latest", "--resume latest: no checkpoints in"),
        ("last", "--resume last: no such checkpoint file (give a checkpoint's path, latest"),
    ],
)
def test_a_missing_checkpoint_fails_in_one_line(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, resume: str, message: str
) -> None:
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "run"), *COMMON]
    assert run.main([*argv, "--resume", resume]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_changed_model_config_is_named_on_resume(
    started: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _resume_at(started, 4, tmp_path / "run")
    path = out / "checkpoints" / "step_00000004.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["vision_cfg"]["width"] += 1  # as if the JSON was edited since
    torch.save(ckpt, path)
    assert run.main(["--output", str(out), "--resume", "latest", *COMMON, "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "the model config changed since this checkpoint was written (vision_cfg.width)" in err


def test_a_step_larger_than_the_data_is_refused(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "run"), *COMMON]
    assert run.main([*argv, "--batch-size", "32", "--accum-freq", "2", "--steps", "1"]) == 2
    assert (
        "a step takes 64 samples (32 x 2 micro-batch(es) x 1 rank(s)), more than the 40 in "
        "the shards: a batch would hold samples twice" in capsys.readouterr().err
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_torn_metrics_line_and_a_killed_saves_temp_file_do_not_stop_a_resume(
    started: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _resume_at(started, 4, tmp_path / "run")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # the disk filled up mid-line
    tmp = out / "checkpoints" / ".step_00000005.pt.4242.0badf00d.tmp"  # a save killed
    tmp.write_bytes(b"x" * 100)
    assert run.main(["--output", str(out), "--resume", "latest", *COMMON, "--steps", "5"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl: 1 line(s) past step 4 dropped" in err
    assert "removed 1 temporary file(s) of a checkpoint save that was killed" in err
    assert _steps(out) == [1, 2, 3, 4, 5]
    assert not tmp.exists()


def test_an_output_that_is_a_file_fails_in_one_line(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "file"), *COMMON]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"training.run: --output {tmp_path / 'file'}: a file is there, not a run folder"]


def _resume_copy(src: Path, step: int, dst: Path) -> Path:
    """dst holding only src's checkpoint at ``step`` (a run killed right after saving it)."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "checkpoints" / f"step_{step:08d}.pt", dst / "checkpoints")
    return dst


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_a_second_resume_in_the_same_epoch_trains_the_same_batches(
    shards: Path, tmp_path: Path
) -> None:
    # 40 samples in batches of 4 over 3 readers: one 10-step epoch. Resumed at step 4, the
    # run saves at step 6 before reader 0 has made a batch: that save must record reader 0
    # where the resume left it, or the second resume re-trains its first samples.
    argv = ["--train-data", str(shards), *COMMON, "--model", "tiny", "--batch-size", "4"]
    argv += ["--steps", "10", "--save-every", "2", "--workers", "3", "--lr", "1e-3"]
    full = tmp_path / "full"
    assert run.main([*argv, "--output", str(full)]) == 0
    once = _resume_copy(full, 4, tmp_path / "once")
    assert run.main([*argv, "--output", str(once), "--resume", "latest"]) == 0
    ckpt = torch.load(once / "checkpoints" / "step_00000006.pt", weights_only=True)
    offsets = ckpt["data"]["reader_offsets"][0]
    assert offsets[0] == 8  # reader 0's two batches before step 4, none since
    twice = _resume_copy(once, 6, tmp_path / "twice")
    assert run.main([*argv, "--output", str(twice), "--resume", "latest"]) == 0
    expected = _losses(full)
    got = _losses(twice)
    assert sorted(got) == list(range(7, 11))
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step


def test_a_mid_epoch_checkpoint_without_reader_offsets_resumes_with_a_warning(
    started: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # As the code before per-reader offsets wrote it: the data position has no readers,
    # offsets or world size. Its dealing (whole shards per worker) cannot be reproduced.
    out = _resume_at(started, 2, tmp_path / "run")
    path = out / "checkpoints" / "step_00000002.pt"
    ckpt = torch.load(path, weights_only=True)
    for name in ("readers_per_rank", "reader_offsets", "world_size"):
        del ckpt["data"][name]
    torch.save(ckpt, path)
    assert run.main(["--output", str(out), "--resume", "latest", *COMMON]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if "without per-reader data offsets" in line]
    assert len(warned) == 1 and warned[0].startswith("training.run: "), err
    assert "some samples of this epoch repeat" in warned[0]
    assert _steps(out) == [1, 2, 3, 4]
    # A changed batch size as well: the ranks it was written on are unknown, not "None".
    out = _resume_at(started, 2, tmp_path / "run2")
    path = out / "checkpoints" / "step_00000002.pt"
    torch.save(ckpt, path)
    argv = ["--output", str(out), "--resume", "latest", *COMMON, "--batch-size", "4"]
    assert run.main(argv) == 0
    err = capsys.readouterr().err
    assert "None" not in err
    assert "written with 5 batches per epoch, now 10 on 1 rank(s)" in err, err


def test_a_resume_with_other_exclusions_says_the_data_order_differs(
    started: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Reader offsets count the samples the exclusions leave: with other exclusions they
    # point elsewhere. The checkpoint records what its dealing depended on.
    out = _resume_at(started, 2, tmp_path / "run")
    fewer = tmp_path / "exclude.parquet"
    pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(3)]}), fewer)
    argv = ["--output", str(out), "--resume", "latest", *COMMON, "--exclude", str(fewer)]
    assert run.main(argv) == 0
    err = capsys.readouterr().err
    assert "--exclude, batch size, --accum-freq or ranks changed): the data order differs" in err
    # The same exclusions: no such line.
    out = _resume_at(started, 2, tmp_path / "same")
    assert run.main(["--output", str(out), "--resume", "latest", *COMMON]) == 0
    assert "the data order differs" not in capsys.readouterr().err
