"""--checkpoint: zero-shot predictions of a training checkpoint stand in for --predictions.

The checkpoint here is a tiny open_clip model saved in training.run's format (random
weights: what matters is that its predictions drive the accuracies exactly as a
predictions file would). tests/training/test_eval.py checks them against training.run's own.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.overlap.__main__ import main
from pipeline.overlap.evalsets import load_eval_set, parse_eval_spec
from pipeline.overlap.predictions import read_predictions
from pipeline.overlap.templates import CIFAR_TEMPLATES
from tests.overlap.layouts import (
    field_image,
    png,
    write_cifar10,
    write_imagefolder,
    write_train_dir,
)

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

N_EVAL = 30
DUPS = (1, 4, 8, 13, 21)
NAME = "tiny-zeroshot-test"
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _training_checkpoint(model: object, step: int, **extra: object) -> dict[str, object]:
    """The keys training.run's save_checkpoint writes."""
    return {
        "model": model.state_dict(),  # type: ignore[attr-defined]
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"kind": "cosine", "step": step, "warmup": 1},
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
        "data": {"next_batch": step},
        "args": {"model": NAME, "batch_size": 4, "steps": step},
        "model_name": NAME,
        **extra,
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    cfg = root / f"{NAME}.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model(NAME, pretrained=None)
    torch.save(_training_checkpoint(model, 7), root / "step_00000007.pt")
    torch.save(_training_checkpoint(model, 7, model_config=TINY), root / "with_config.pt")
    images, _ = write_cifar10(root / "cifar", N_EVAL, seed=11)
    distractors = [png(field_image(9_000 + i, (40, 32))) for i in range(20)]
    copies = [png(Image.fromarray(images[i])) for i in DUPS]
    write_train_dir(root / "train", distractors[:10] + copies + distractors[10:], 9)
    return {
        "root": root,
        "config": cfg,
        "checkpoint": root / "step_00000007.pt",
        "with_config": root / "with_config.pt",
        "cifar": root / "cifar",
        "train": root / "train",
    }


def _argv(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--eval", f"cifar10:{files['cifar']}", "--train", str(files["train"]), "--out", str(out),
        "--threshold", "0.9", "--contact-pairs", "0", "--processes", "1", *extra,
    ]  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def with_checkpoint(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    argv = _argv(files, out, "--checkpoint", str(files["checkpoint"]))
    assert main([*argv, "--model-config", str(files["config"])]) == 0
    return out


def test_checkpoint_predictions_give_the_accuracies(
    files: dict[str, Path], with_checkpoint: Path
) -> None:
    out = with_checkpoint
    eval_set = load_eval_set(parse_eval_spec(f"cifar10:{files['cifar']}"))
    table = pq.read_table(out / "cifar10" / "predictions.parquet").to_pylist()
    assert [r["id"] for r in table] == list(eval_set.ids)
    for r in table:
        assert 0 <= r["prediction"] < 10 and len(r["top5"]) == 5 == len(set(r["top5"]))
        assert r["top5"][0] == r["prediction"]
    # The file is a --predictions file: read back, it gives report.json's accuracy.
    preds = read_predictions(out / "cifar10" / "predictions.parquet", eval_set)
    report = json.loads((out / "report.json").read_text())["cifar10"]
    assert report["acc_all"] == pytest.approx(float((preds == eval_set.labels).mean()))
    zs = report["zeroshot"]
    assert zs["top1"] == pytest.approx(report["acc_all"])
    top5 = np.array([r["top5"] for r in table])
    assert zs["top5"] == pytest.approx(float((top5 == eval_set.labels[:, None]).any(1).mean()))
    assert zs["checkpoint"] == str(files["checkpoint"])
    assert zs["model"] == f"open_clip({NAME}, step_00000007.pt)"
    assert zs["model_config"] == str(files["config"]) and zs["step"] == 7
    assert zs["templates"] == len(CIFAR_TEMPLATES)  # cifar10's built-in set
    splits = pq.read_table(out / "cifar10" / "splits.parquet").to_pylist()
    assert [s["prediction"] for s in splits] == preds.tolist()
    assert {s["id"] for s in splits if s["split"] == "overlap"} == {str(i) for i in DUPS}
    run = json.loads((out / "run.json").read_text())
    assert run["zeroshot"]["checkpoint"] == str(files["checkpoint"])
    assert run["eval_sets"]["cifar10"]["predictions"].endswith("cifar10/predictions.parquet")
    assert "zero-shot predictions of open_clip(" in (out / "report.md").read_text()


def test_same_numbers_as_the_predictions_file_given_with_predictions(
    files: dict[str, Path], with_checkpoint: Path, tmp_path: Path
) -> None:
    pred_file = tmp_path / "p.parquet"
    pred_file.write_bytes((with_checkpoint / "cifar10" / "predictions.parquet").read_bytes())
    assert main([*_argv(files, tmp_path / "out"), "--predictions", str(pred_file)]) == 0
    a = json.loads((with_checkpoint / "report.json").read_text())["cifar10"]
    b = json.loads((tmp_path / "out" / "report.json").read_text())["cifar10"]
    a.pop("zeroshot")
    assert a == b


def test_a_checkpoint_recording_its_config_needs_no_model_config(
    files: dict[str, Path], with_checkpoint: Path, tmp_path: Path
) -> None:
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {}.\n")
    argv = _argv(files, tmp_path / "out", "--checkpoint", str(files["with_config"]))
    assert main([*argv, "--templates", str(tpl), "--zeroshot-batch", "7"]) == 0
    zs = json.loads((tmp_path / "out" / "report.json").read_text())["cifar10"]["zeroshot"]
    assert zs["model_config"].endswith("with_config.pt (recorded)") and zs["templates"] == 1
    # Built-in templates: same weights as the other checkpoint, so the same predictions.
    assert main([*argv, "--out", str(tmp_path / "out2")]) == 0
    a = pq.read_table(with_checkpoint / "cifar10" / "predictions.parquet")
    b = pq.read_table(tmp_path / "out2" / "cifar10" / "predictions.parquet")
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()


def _bad_files(files: dict[str, Path], tmp: Path) -> None:
    (tmp / "garbage.pt").write_bytes(b"not a torch file at all")
    torch.save({"epoch": 3, "losses": [1.0, 0.5]}, tmp / "other.pt")
    (tmp / "small.json").write_text(json.dumps({**TINY, "embed_dim": 16}))
    deep = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": 3}}
    (tmp / "deep.json").write_text(json.dumps(deep))
    (tmp / "notcfg.json").write_text(json.dumps({"layers": 2}))
    hf = {**TINY, "text_cfg": {**TINY["text_cfg"], "hf_model_name": "bert-base-uncased"}}
    (tmp / "hf.json").write_text(json.dumps(hf))
    (tmp / "t.txt").write_text("a photo of a {}.\nno placeholder\n")


CASES: list[tuple[str, list[str], str]] = [
    (
        "not a torch file",
        ["--checkpoint", "{tmp}/garbage.pt", "--model-config", "{cfg}"],
        r"^error: checkpoint .*garbage\.pt: cannot read it \(torch\.load, weights_only=True\)",
    ),
    (
        "not a training checkpoint",
        ["--checkpoint", "{tmp}/other.pt", "--model-config", "{cfg}"],
        r"^error: --checkpoint .*other\.pt: not a training checkpoint: expected training\.run's "
        r"\{'model': state_dict, \.\.\.\}.*found a dict with keys epoch, losses$",
    ),
    (
        "no config recorded",
        ["--checkpoint", "{ckpt}"],
        rf"records model '{NAME}' but not its config: give --model-config CONFIG\.json; "
        rf"training\.run's config for it is training/model_configs/{NAME}\.json$",
    ),
    (
        "config does not fit the weights",
        ["--checkpoint", "{ckpt}", "--model-config", "{tmp}/small.json"],
        r"^error: checkpoint .*step_00000007\.pt does not fit the model config .*small\.json: "
        r"2 of another shape \(checkpoint vs model: text_projection 32x32 vs 32x16, "
        r"visual\.proj 32x32 vs 32x16\); give the --model-config it was trained with "
        rf"\(training\.run's for model '{NAME}': training/model_configs/{NAME}\.json\)$",
    ),
    (
        # torch's own message names every one of the missing keys: kilobytes of them
        "config with more layers than the weights",
        ["--checkpoint", "{ckpt_cfg}", "--model-config", "{tmp}/deep.json"],
        r"^error: checkpoint .*with_config\.pt does not fit the model config .*deep\.json: "
        r"24 missing key\(s\) \(visual\.transformer\.resblocks\.1\.ln_1\.weight, "
        r"visual\.transformer\.resblocks\.1\.ln_1\.bias, "
        r"visual\.transformer\.resblocks\.1\.attn\.in_proj_weight, \.\.\. 21 more\); "
        r"give the --model-config it was trained with, or leave --model-config out to use "
        r"the one recorded in the checkpoint$",
    ),
    (
        "model config missing",
        ["--checkpoint", "{ckpt}", "--model-config", "{tmp}/none.json"],
        r"^error: --model-config .*none\.json: no such file$",
    ),
    (
        "not a model config",
        ["--checkpoint", "{ckpt}", "--model-config", "{tmp}/notcfg.json"],
        r"notcfg\.json: not an open_clip model config: needs embed_dim, vision_cfg and text_cfg",
    ),
    (
        "config needing a download",
        ["--checkpoint", "{ckpt}", "--model-config", "{tmp}/hf.json"],
        r"text_cfg\.hf_model_name='bert-base-uncased' needs a Hugging Face download",
    ),
    (
        "bad templates",
        ["--checkpoint", "{ckpt}", "--model-config", "{cfg}", "--templates", "{tmp}/t.txt"],
        r"--templates .*t\.txt: line 2 'no placeholder' needs exactly one \{\}",
    ),
    (
        "bad batch",
        ["--checkpoint", "{ckpt}", "--model-config", "{cfg}", "--zeroshot-batch", "0"],
        r"zeroshot_batch must be >= 1, got 0",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_checkpoint_problems_are_one_clear_line(
    case: str,
    args: list[str],
    message: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _bad_files(files, tmp_path)
    subst = {"{tmp}": str(tmp_path), "{cfg}": str(files["config"])}
    subst["{ckpt}"] = str(files["checkpoint"])
    subst["{ckpt_cfg}"] = str(files["with_config"])
    argv = []
    for a in args:
        for k, v in subst.items():
            a = a.replace(k, v)
        argv.append(a)
    code, out, err = _run(_argv(files, tmp_path / "out", *argv), capsys)
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    words = err
    for path in (*subst.values(), str(files["root"])):
        words = words.replace(path, "P")
    assert len(words) < 500, err  # readable: a few names, not every key
    assert re.search(message, err.strip()), err
    assert out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["torch", "open_clip"])
def test_missing_torch_or_open_clip_is_one_clear_line(
    module: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    argv = ["--checkpoint", str(files["checkpoint"]), "--model-config", str(files["config"])]
    code, _, err = _run(_argv(files, tmp_path / "out", *argv), capsys)
    assert code == 2
    name = "torch" if module == "torch" else "open_clip_torch"
    assert err == f"error: --checkpoint needs {name}, which is not installed " + (
        "(pip install 'wit-builder[train]')\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--checkpoint", str(files["checkpoint"]), "--model-config", str(files["config"])]
    code, _, err = _run(_argv(files, tmp_path / "out", *argv, "--zeroshot-device", "cuda"), capsys)
    assert code == 2 and err == "error: zeroshot_device cuda: CUDA is not available here\n"


def test_an_undecodable_eval_image_has_no_prediction_and_counts_wrong(
    files: dict[str, Path], tmp_path: Path
) -> None:
    pets = tmp_path / "pets"
    write_imagefolder(pets, ["cat", "dog"], per_class=3, seed=5)
    (pets / "dog" / "001.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    argv = ["--eval", f"imagefolder:{pets}", "--train", str(files["train"]), "--out", str(out)]
    argv += ["--threshold", "0.9", "--contact-pairs", "0", "--processes", "1"]
    argv += ["--checkpoint", str(files["with_config"])]
    assert main(argv) == 0
    rows = {
        r["id"]: r for r in pq.read_table(out / "imagefolder" / "predictions.parquet").to_pylist()
    }
    assert rows["dog/001.png"]["prediction"] is None and rows["dog/001.png"]["top5"] is None
    assert all(r["prediction"] in (0, 1) for k, r in rows.items() if k != "dog/001.png")
    labels = {k: 0 if k.startswith("cat/") else 1 for k in rows}
    right = sum(r["prediction"] == labels[k] for k, r in rows.items())
    report = json.loads((out / "report.json").read_text())["imagefolder"]
    assert report["acc_all"] == pytest.approx(right / 6)
    assert report["zeroshot"]["undecodable"] == 1
    assert "1 eval image(s) could not be decoded for zero-shot" in (out / "report.md").read_text()
