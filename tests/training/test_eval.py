"""Evaluation in training.run: zero-shot on the overlap registry's eval sets, predictions
the overlap tool reads back, prompt templates, and retrieval recall@K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.overlap.__main__ import main as overlap_main
from pipeline.overlap.evalsets import load_eval_set, parse_eval_spec
from pipeline.overlap.predictions import read_predictions
from pipeline.overlap.templates import IMAGENET_TEMPLATES, read_templates, templates_for
from tests.training.shardgen import imagefolder, write_shards
from training import evaluate, run

COMMON = ["--model", "tiny", "--batch-size", "32", "--threads", "1", "--shuffle-buffer", "200"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    base = tmp_path_factory.mktemp("eval")
    shards = base / "data"
    write_shards(shards, n_shards=4, per_shard=100, seed=0)
    val = base / "val"
    write_shards(val, n_shards=1, per_shard=40, seed=99)
    folder = imagefolder(base / "shapes", per_class=25)
    templates = base / "templates.txt"
    templates.write_text("a photo of a {}.\n\nsomething {} coloured\n")
    out = base / "run"
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON]
    argv += ["--steps", "120", "--lr", "2e-3", "--warmup", "10", "--seed", "1"]
    argv += ["--zeroshot", f"imagefolder:{folder}", "--zeroshot", f"second=imagefolder:{folder}"]
    argv += ["--templates", str(templates), "--val-data", str(val), "--eval-every", "60"]
    assert run.main(argv) == 0
    return out, folder, templates, val


def test_zeroshot_after_training_beats_chance_and_predictions_round_trip(
    trained: tuple[Path, Path, Path, Path],
) -> None:
    out, folder, _, _ = trained
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["step"] == 120
    assert set(result["zeroshot"]) == {"imagefolder", "second"}
    zs = result["zeroshot"]["imagefolder"]
    assert zs["items"] == 100 and zs["classes"] == 4
    assert zs["templates"] == 2  # the --templates file, not the built-in set
    assert zs["top1"] > 0.5, zs  # chance is 0.25
    assert zs["top5"] is None  # 4 classes: top-5 would cover them all
    eval_set = load_eval_set(parse_eval_spec(f"imagefolder:{folder}"))
    for name in ("imagefolder", "second"):
        preds = read_predictions(out / "predictions" / f"{name}.parquet", eval_set)
        acc = float((preds == eval_set.labels).mean())
        assert acc == pytest.approx(result["zeroshot"][name]["top1"])
    # --eval-every 60: one row mid-run and one at the end.
    rows = [json.loads(line) for line in (out / "zeroshot.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [60, 120]


def test_overlap_checkpoint_predictions_equal_training_zeroshot(
    trained: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """pipeline.overlap --checkpoint computes what training.run --zeroshot wrote, for the
    same checkpoint, eval set and templates: one implementation."""
    out, folder, templates, _ = trained
    report_dir = tmp_path / "report"
    argv = ["--eval", f"imagefolder:{folder}", "--train", str(out.parent / "data")]
    argv += ["--out", str(report_dir), "--threshold", "0.9", "--contact-pairs", "0"]
    argv += ["--processes", "1", "--checkpoint", str(out / "checkpoints" / "step_00000120.pt")]
    argv += ["--templates", str(templates)]  # no --model-config: the checkpoint records it
    assert overlap_main(argv) == 0
    eval_set = load_eval_set(parse_eval_spec(f"imagefolder:{folder}"))
    ours = read_predictions(report_dir / "imagefolder" / "predictions.parquet", eval_set)
    theirs = read_predictions(out / "predictions" / "imagefolder.parquet", eval_set)
    np.testing.assert_array_equal(ours, theirs)
    report = json.loads((report_dir / "report.json").read_text())["imagefolder"]
    zs = json.loads((out / "zeroshot.json").read_text())["zeroshot"]["imagefolder"]
    assert report["acc_all"] == pytest.approx(float((ours == eval_set.labels).mean()))
    assert report["zeroshot"]["top1"] == pytest.approx(zs["top1"])
    assert report["zeroshot"]["top5"] is zs["top5"] is None
    assert report["zeroshot"]["templates"] == zs["templates"] == 2
    assert report["zeroshot"]["step"] == 120
    assert report["zeroshot"]["model_config"].endswith("(recorded)")


def test_retrieval_recall_logged_and_monotone(trained: tuple[Path, Path, Path, Path]) -> None:
    out = trained[0]
    r = json.loads((out / "zeroshot.json").read_text())["retrieval"]
    assert r["pairs"] == 40
    for d in ("image_to_text", "text_to_image"):
        vals = [r[f"{d}_R@{k}"] for k in (1, 5, 10)]
        assert vals == sorted(vals)
        assert 0.0 <= vals[0] <= vals[-1] <= 1.0
    # Chance R@10 over 40 pairs is 0.25; captions name only the colour, so image->text has
    # ~10 equally right captions per image and text->image is the informative direction.
    assert r["text_to_image_R@10"] > 0.4, r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["retrieval"] == r


def test_recall_at_k_exact_chunked() -> None:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    # Trivially separable: each text equals its image.
    r = evaluate.recall_at_k(img, img.clone(), chunk=7)
    assert all(
        r[f"{d}_R@{k}"] == 1.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    )
    # Random texts: monotone in K, and matches the unchunked computation.
    txt = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    a = evaluate.recall_at_k(img, txt, chunk=7)
    b = evaluate.recall_at_k(img, txt, chunk=1000)
    assert a == b
    for d in ("image_to_text", "text_to_image"):
        assert a[f"{d}_R@1"] <= a[f"{d}_R@5"] <= a[f"{d}_R@10"]
    # A constant model ties everything: expected recall under random tie-breaking is K/N.
    flat = evaluate.recall_at_k(img[:1].expand(50, -1), img[:1].expand(50, -1), chunk=7)
    assert flat["image_to_text_R@1"] == pytest.approx(1 / 50)
    assert flat["text_to_image_R@10"] == pytest.approx(10 / 50)
    # Features equal up to float32 rounding (what one model gives for duplicates on
    # another GEMM path) still tie: bitwise comparison scored these 0.009 and 0.125.
    near = img[:1] + 3e-8 * torch.randn(50, 16, generator=g)
    r = evaluate.recall_at_k(near, near.clone(), chunk=7)
    assert r["image_to_text_R@1"] == pytest.approx(1 / 50)
    assert r["text_to_image_R@10"] == pytest.approx(10 / 50)
    sims = img @ txt.T
    top1 = (sims.argmax(dim=1) == torch.arange(50)).float().mean().item()
    assert a["image_to_text_R@1"] == pytest.approx(top1)


def test_builtin_templates() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert templates_for("imagenet") == IMAGENET_TEMPLATES
    assert templates_for("mnist") == ('a photo of the number: "{}".',)
    for kind in ("cifar10", "cifar100", "fashion-mnist", "stl10", "imagefolder", "wds"):
        assert templates_for(kind) and all("{}" in t for t in templates_for(kind))


def test_bad_templates_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(ValueError, match="line 2 'no placeholder here' needs exactly one"):
        read_templates(bad)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchset", "--zeroshot 'nosuchset': expected NAME, NAME:PATH"),
        ("imagefolder:{missing}", "does not exist"),
    ],
)
def test_bad_eval_spec_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, message: str
) -> None:
    shards = tmp_path / "data"
    write_shards(shards, n_shards=1, per_shard=8)
    out = tmp_path / "run"
    spec = spec.format(missing=tmp_path / "missing")
    argv = ["--train-data", str(shards), "--output", str(out), *COMMON, "--steps", "2"]
    assert run.main([*argv, "--batch-size", "4", "--zeroshot", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("training.run: ") and message in err[0], err
    assert not (out / "checkpoints").exists()


def test_an_undecodable_held_out_image_is_skipped_and_counted(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", n_shards=1, per_shard=16)
    write_shards(tmp_path / "val", n_shards=1, per_shard=6, seed=7, corrupt_every=4)
    out = tmp_path / "run"
    argv = ["--train-data", str(tmp_path / "data"), "--output", str(out), *COMMON]
    argv += ["--batch-size", "8", "--steps", "1", "--val-data", str(tmp_path / "val")]
    assert run.main(argv) == 0
    retrieval = json.loads((out / "summary.json").read_text())["retrieval"]
    assert (retrieval["pairs"], retrieval["undecodable"]) == (4, 2)
