"""training.run --check: the options, model config and eval sets, checked without the
training data (a workflow runs it before the data is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training import run


def _eval_set(root: Path) -> Path:
    for c, colour in (("red", (220, 30, 30)), ("blue", (30, 50, 220))):
        (root / c).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (16, 16), colour).save(root / c / f"{j}.png")
    return root


def test_check_passes_without_the_training_data_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    evals = _eval_set(tmp_path / "eval")
    out = tmp_path / "run"
    argv = ["--check", "--train-data", str(tmp_path / "not-built"), "--output", str(out)]
    argv += ["--zeroshot", f"colours=imagefolder:{evals}"]
    argv += ["--exclude", str(tmp_path / "not-made-yet.parquet")]
    assert run.main(argv) == 0
    assert capsys.readouterr().out == (
        "check: ok: model tiny; zero-shot sets: colours (6 items); held-out pairs: 0\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "ViT-H-99"], "--model ViT-H-99: no config"),
        (["--zeroshot", "imagefolder:/no/such/folder"], "does not exist"),
        (["--val-data", "/no/such/shards"], "/no/such/shards"),
    ],
)
def test_check_fails_as_the_run_would(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--check", "--train-data", "x", "--output", str(tmp_path / "run"), *flags]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("training.run: ") and message in err
    assert not (tmp_path / "run").exists()


def test_check_needs_neither_the_data_nor_the_run_folder_and_finds_sets_by_root(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _eval_set(tmp_path / "evals" / "imagefolder")
    # A bare NAME is looked up under --eval-root, as pipeline.overlap does.
    assert run.main(["--check", "--zeroshot", "imagefolder"]) == 2
    assert "--eval-root" in capsys.readouterr().err
    argv = ["--check", "--zeroshot", "imagefolder", "--eval-root", str(tmp_path / "evals")]
    assert run.main(argv) == 0
    assert "zero-shot sets: imagefolder (6 items)" in capsys.readouterr().out


def test_help_shows_every_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (
        ("--model MODEL", "tiny"),
        ("--batch-size BATCH_SIZE", "32"),
        ("--lr LR", "0.0005"),
        ("--warmup WARMUP", "10"),
        ("--workers WORKERS", "0"),
        ("--save-every SAVE_EVERY", "0"),
    ):
        help_of = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in help_of, (flag, help_of)
