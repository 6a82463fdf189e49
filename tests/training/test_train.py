"""End-to-end: the tiny model learns colours, resumes exactly, and writes its outputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.overlap import zeroshot
from pipeline.shards.reader import TrainSample
from tests.training.shardgen import COLOURS, eval_set, write_shards
from training import data, run
from training.models import build

# One thread: on a busy 2-core host, intra-op threads spin and run ~3x slower.
COMMON = ["--model", "tiny", "--batch-size", "32", "--threads", "1", "--shuffle-buffer", "200"]
COMMON += ["--log-every", "1"]  # a metrics line per step: the tests compare steps
# 128 px JPEGs: the tiny model (32 px input) has them decoded at half scale, 64 px.
IMAGE_SIZE, DRAFTED = 128, (64, 64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train") / "data"
    write_shards(root, n_shards=4, per_shard=100, seed=0, image_size=IMAGE_SIZE)
    return root


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_learns_colours_zero_shot(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: set[tuple[int, int]] = set()
    real_decode = data.decode_image

    def spy(sample: TrainSample, draft_side: int | None = None) -> Image.Image:
        img = real_decode(sample, draft_side)
        decoded.add(img.size)
        return img

    monkeypatch.setattr(data, "decode_image", spy)  # no workers: the stream runs here
    out = tmp_path / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON]
    argv += ["--steps", "150", "--lr", "2e-3", "--warmup", "10", "--seed", "1"]
    assert run.main(argv) == 0
    assert decoded == {DRAFTED}  # trained on JPEG draft decodes, 2x the model's input side
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 151))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(0 < r["logit_scale"] <= 100.0 + 1e-3 for r in rows)
    assert (out / "curves.png").stat().st_size > 0

    ckpt = torch.load(out / "checkpoints" / "step_00000150.pt", weights_only=True)
    model, _, preprocess, tokenizer = build("tiny")
    model.load_state_dict(ckpt["model"])
    images, labels = eval_set(200, image_size=IMAGE_SIZE)
    x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    classifier = zeroshot.class_embeddings(model, tokenizer, list(COLOURS))
    result = zeroshot.classify(model, x, labels, classifier)
    # Chance is 1/4 top-1; held-out images are drawn from seeds never trained on.
    assert result.top1 >= 0.7, result.top1
    assert result.top5 is None  # only 4 classes: top-5 would cover them all

    ids = [f"{i:05d}" for i in range(len(labels))]
    zeroshot.write_predictions(tmp_path / "preds.csv", ids, result.predictions)
    with (tmp_path / "preds.csv").open() as f:
        read = list(csv.DictReader(f))
    assert [r["id"] for r in read] == ids
    assert [int(r["prediction"]) for r in read] == result.predictions


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_matches_uninterrupted_run(shards: Path, tmp_path: Path, workers: int) -> None:
    base = ["--train-data", str(shards), *COMMON, "--steps", "16", "--workers", str(workers)]
    base += ["--lr", "1e-3", "--warmup", "4", "--seed", "3"]
    full = tmp_path / "full"
    assert run.main([*base, "--output", str(full), "--save-every", "8"]) == 0

    # The step-8 checkpoint was written mid-run; a new run resumes from it via 'latest'.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step_00000008.pt", resumed / "checkpoints")
    assert run.main([*base, "--output", str(resumed), "--resume", "latest"]) == 0

    a = {r["step"]: r["loss"] for r in _metrics(full)}
    b = {r["step"]: r["loss"] for r in _metrics(resumed)}
    assert sorted(b) == list(range(9, 17))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step


def test_siglip_loss_and_bf16_run(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "3"]
    assert run.main([*argv, "--loss", "siglip", "--precision", "bf16"]) == 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _metrics(out))


def test_nonfinite_loss_stops_with_step_and_batch(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def nan_loss(kind: str, rank: int = 0, world_size: int = 1) -> Callable[..., torch.Tensor]:
        return lambda img, txt, scale: (img * float("nan")).sum()

    monkeypatch.setattr(run, "make_loss", nan_loss)
    out = tmp_path / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "3"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "step 0: loss is nan on batch 0" in err
    assert not (out / "checkpoints").exists()


def test_config_file_supplies_options(shards: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    out = tmp_path / "run"
    options = {"train_data": str(shards), "output": str(out), "steps": 2, "log_every": 1}
    cfg.write_text(json.dumps(options))
    assert run.main(["--config", str(cfg), "--threads", "1"]) == 0
    assert len(_metrics(out)) == 2


def test_resume_latest_without_checkpoints_fails_clearly(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--train-data", str(shards), "--output", str(tmp_path / "run"), *COMMON]
    assert run.main([*argv, "--steps", "2", "--resume", "latest"]) == 2
    assert "--resume latest: no checkpoints in" in capsys.readouterr().err
