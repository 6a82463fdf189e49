"""python -m training.gpu_check --help: a whole description, and every flag says what it
does and its default; its synthetic shards are reused only when made with the same
settings."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from training.gpu_check import (
    DESCRIPTION,
    SHARDS_MANIFEST,
    ShardsError,
    build_parser,
    main,
    make_shards,
)


def test_help_describes_the_check_in_whole_sentences(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m training.gpu_check ")
    assert " ".join(DESCRIPTION.split()) in out
    assert DESCRIPTION.endswith(".") and "samples/s" in DESCRIPTION and "bottleneck" in DESCRIPTION


def test_every_flag_has_help_with_its_default() -> None:
    options = [a for a in build_parser()._actions if not isinstance(a, argparse._HelpAction)]
    assert {a.dest for a in options} >= {"steps", "batch_size", "workers", "precision"}
    for action in options:
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help"
        assert "(default: " in action.help, f"{flag}: help names no default"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in action.help, flag


# ---------------------------------------------------------------------------------------------
# The synthetic shards: reused only when made with the same settings


def _shard_images(root: Path) -> dict[str, list[tuple[int, int]]]:
    """Per tar in ROOT/shards: the sizes of its images."""
    out = {}
    for tar in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            out[tar.name] = [
                Image.open(io.BytesIO(t.extractfile(m).read())).size  # type: ignore[union-attr]
                for m in t.getmembers()
                if m.name.endswith(".jpg")
            ]
    return out


def test_shards_are_made_again_when_count_size_or_per_shard_change(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert make_shards(root, 2, 3, 16) == "made"
    assert _shard_images(root) == {"00000.tar": [(16, 16)] * 3, "00001.tar": [(16, 16)] * 3}
    first = (root / "shards" / "00000.tar").stat().st_mtime_ns

    assert make_shards(root, 2, 3, 16) == "reused"
    assert (root / "shards" / "00000.tar").stat().st_mtime_ns == first

    # More images per shard: the old shards (3 images) must not be reused.
    assert make_shards(root, 2, 5, 16) == "remade"
    assert _shard_images(root) == {"00000.tar": [(16, 16)] * 5, "00001.tar": [(16, 16)] * 5}
    # Another image size, same count and per-shard.
    assert make_shards(root, 2, 5, 24) == "remade"
    assert _shard_images(root) == {"00000.tar": [(24, 24)] * 5, "00001.tar": [(24, 24)] * 5}
    # Fewer shards: the extra one must go, or the trainer reads it too.
    assert make_shards(root, 1, 5, 24) == "remade"
    assert _shard_images(root) == {"00000.tar": [(24, 24)] * 5}
    assert sorted(p.name for p in (root / "ledger").iterdir()) == ["00000.parquet"]
    recorded = json.loads((root / SHARDS_MANIFEST).read_text())
    assert recorded["shards"] == 1 and recorded["per_shard"] == 5 and recorded["image_size"] == 24


def test_shards_are_deterministic_and_an_interrupted_set_is_completed(tmp_path: Path) -> None:
    make_shards(tmp_path / "a", 2, 3, 16)
    make_shards(tmp_path / "b", 2, 3, 16)
    for name in ("00000.tar", "00001.tar"):
        a = (tmp_path / "a" / "shards" / name).read_bytes()
        assert a == (tmp_path / "b" / "shards" / name).read_bytes()
    # A run killed after its first shard: the same settings finish the set.
    (tmp_path / "b" / "shards" / "00001_stats.json").unlink()
    assert make_shards(tmp_path / "b", 2, 3, 16) == "completed"
    assert _shard_images(tmp_path / "b") == _shard_images(tmp_path / "a")


def test_a_folder_not_made_here_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "00000.tar").write_bytes(b"someone's data")
    with pytest.raises(
        ShardsError, match=re.escape(f"{root} holds files but no {SHARDS_MANIFEST}")
    ):
        make_shards(root, 1, 2, 16)
    assert (root / "shards" / "00000.tar").read_bytes() == b"someone's data"
    assert sorted(p.name for p in root.rglob("*")) == ["00000.tar", "shards"]


def test_cli_refuses_a_foreign_folder_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    code = main(["--workdir", str(tmp_path), "--shards", "1", "--per-shard", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'data'} holds files")
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


def test_the_check_trains_with_its_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # What the check asks training.run for; the run itself needs a GPU (make gpu-check).
    import torch

    from training import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    asked: list[list[str]] = []
    monkeypatch.setattr(run, "main", lambda argv: asked.append(argv) or 3)
    argv = ["--workdir", str(tmp_path), "--shards", "1", "--per-shard", "2", "--image-size", "16"]
    assert main([*argv, "--compile", "--accum-freq", "2", "--steps", "7"]) == 3
    (train_argv,) = asked
    flags = dict(zip(train_argv[::2], train_argv[1::2], strict=False))
    assert flags["--steps"] == "7" and flags["--model"] == "ViT-B-32"
    assert "--compile" in train_argv
    assert train_argv[train_argv.index("--accum-freq") + 1] == "2"
    assert main(argv) == 3 and "--accum-freq" not in asked[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine .ci/gpu runs in whole")
def test_gpu_script_refuses_a_machine_without_cuda_before_writing_anything(
    tmp_path: Path,
) -> None:
    script = Path(__file__).resolve().parents[2] / ".ci" / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CI_WORKDIR": str(tmp_path / "work")}
    done = subprocess.run(
        [str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "error: no CUDA device: .ci/gpu runs on a GPU machine" in done.stderr
    assert not (tmp_path / "work").exists()  # no shards made, no run started
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "device.txt"]
