"""Embedding detectors: a TorchScript model and an open_clip image tower, built offline."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.overlap.__main__ import main
from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.detectors import (
    DetectorError,
    OpenClipDetector,
    TorchScriptDetector,
    make_detector,
)
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, run_overlap
from tests.overlap.layouts import field_image, png, write_cifar10, write_train_dir

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

DUPS = (2, 9, 15)
N_EVAL = 24


class _Net(torch.nn.Module):
    """A random conv net; tanh keeps features centred so unrelated images score low."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.conv(x))
        y = torch.nn.functional.adaptive_avg_pool2d(y, 8)
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.script(_Net().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A cifar10 eval set and a training folder with exact (PNG) copies of DUPS."""
    root = tmp_path_factory.mktemp("emb")
    images, _ = write_cifar10(root / "cifar", N_EVAL, seed=3)
    distractors = [png(field_image(7_000 + i, (40, 32))) for i in range(30)]
    copies = [png(Image.fromarray(images[i])) for i in DUPS]
    keys = write_train_dir(root / "train", distractors[:12] + copies + distractors[12:], 10)
    planted = {str(i): keys[12 + j] for j, i in enumerate(DUPS)}
    (root / "pred.csv").write_text("id,prediction\n" + "".join(f"{i},0\n" for i in range(N_EVAL)))
    return root, root / "train", planted


def test_torchscript_search_finds_exact_copies_and_writes_splits(
    scripted: Path, data: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    root, train, planted = data
    config = OverlapConfig(
        detector=f"torchscript:{scripted}", embed_size=32, threshold=0.999, embed_batch=7
    )
    job = OverlapJob(
        evals=(parse_eval_spec(f"cifar10:{root / 'cifar'}"),),
        train=(train,),
        out=tmp_path / "out",
        config=config,
        predictions={"cifar10": root / "pred.csv"},
    )
    report = run_overlap(job, log=lambda _: None)
    splits = pq.read_table(report.out / "cifar10" / "splits.parquet").to_pylist()
    assert len(splits) == N_EVAL
    by_id = {r["id"]: r for r in splits}
    for item, key in planted.items():
        assert by_id[item]["train_key"] == key  # top-1 neighbour is the planted copy
        assert by_id[item]["score"] == pytest.approx(1.0, abs=1e-4)
        assert by_id[item]["split"] == "overlap"
    assert {r["id"] for r in splits if r["split"] == "overlap"} == set(planted)
    assert report.per_set["cifar10"]["detector"] == "torchscript(net.pt, crop 32)"
    assert (report.out / "decontaminate.parquet").exists()


def test_torchscript_embeddings_are_unit_vectors_and_the_detector_pickles(
    scripted: Path,
) -> None:
    det = TorchScriptDetector(scripted, size=32, resize="squash", batch_size=2, device="cpu")
    imgs = [field_image(i, (50, 30)) for i in range(5)]
    codes = det.embed_images(imgs)
    assert codes.shape == (5, 32) and codes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    # One at a time, batched, and after a pickle round trip (model reloaded): same vectors.
    np.testing.assert_allclose(det.embed_image(imgs[3]), codes[3], atol=1e-5)
    clone = pickle.loads(pickle.dumps(det))
    assert clone._model is None
    np.testing.assert_allclose(clone.embed_bytes(png(imgs[1])), codes[1], atol=1e-5)
    assert det.embed_bytes_batch([b"not an image", png(imgs[0])])[0] is None


def test_torchscript_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(DetectorError, match=r"not a TorchScript model"):
        make_detector(OverlapConfig(detector=f"torchscript:{bad}"))
    with pytest.raises(DetectorError, match=r"no such file"):
        make_detector(OverlapConfig(detector=f"torchscript:{tmp_path / 'none.pt'}"))


def test_cli_invalid_torchscript_file_is_one_line(
    data: tuple[Path, Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, train, _ = data
    bad = tmp_path / "sscd.pt"
    bad.write_bytes(b"\0" * 100)
    code = main(
        ["--eval", f"cifar10:{root / 'cifar'}", "--train", str(train), "--out",
         str(tmp_path / "out"), "--detector", f"torchscript:{bad}", "--threshold", "0.9"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: detector torchscript:"), err
    assert "not a TorchScript model" in err
    assert not (tmp_path / "out").exists()


TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    open_clip = pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("oc")
    cfg = root / "tiny-overlap-test.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-overlap-test", pretrained=None)
    wrapped, plain = root / "wrapped.pt", root / "plain.pt"
    torch.save({"model": model.state_dict(), "step": 3}, wrapped)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, plain)
    return cfg, wrapped, plain


def test_open_clip_detector_embeds_unit_vectors_and_copies_score_one(
    open_clip_files: tuple[Path, Path, Path],
) -> None:
    cfg, wrapped, plain = open_clip_files
    det = make_detector(OverlapConfig(detector=f"embedding:open_clip:{cfg}:{wrapped}"))
    assert isinstance(det, OpenClipDetector) and det.kind == "float" and det.dim == 24
    imgs = [field_image(40 + i, (48, 40)) for i in range(4)]
    codes = det.embed_bytes_batch([png(im) for im in imgs] + [png(imgs[2])])
    arr = np.stack([c for c in codes if c is not None])
    assert arr.shape == (5, 24)
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    assert float(arr[2] @ arr[4]) == pytest.approx(1.0, abs=1e-5)  # exact copy
    # A plain state dict with DataParallel's prefix loads to the same model.
    det2 = OpenClipDetector(cfg, plain, device="cpu")
    np.testing.assert_allclose(det2.embed_image(imgs[0]), arr[0], atol=1e-5)


def test_open_clip_detector_errors(
    open_clip_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cfg, wrapped, _ = open_clip_files
    with pytest.raises(DetectorError, match=r"checkpoint: no such file"):
        make_detector(OverlapConfig(detector=f"embedding:open_clip:{cfg}:{tmp_path / 'x.pt'}"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "embed_dim": 16}))
    with pytest.raises(DetectorError, match=r"does not fit the model config") as e:
        make_detector(OverlapConfig(detector=f"embedding:open_clip:{other}:{wrapped}"))
    assert str(e.value).endswith(
        f"{other}: 2 of another shape (checkpoint vs model: text_projection 32x24 vs 32x16, "
        "visual.proj 32x24 vs 32x16); give as CONFIG_JSON the model config it was trained with"
    )
    # Other layer counts: torch's message lists every key; this one counts them.
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({**TINY, "text_cfg": {**TINY["text_cfg"], "layers": 4}}))
    with pytest.raises(DetectorError) as e:
        make_detector(OverlapConfig(detector=f"embedding:open_clip:{deep}:{wrapped}"))
    words = str(e.value).replace(str(deep), "D").replace(str(wrapped), "C")
    assert "\n" not in words and len(words) < 350, words  # a few names, not all 36
    assert f"{deep}: 36 missing key(s) (transformer.resblocks.1.ln_1.weight, " in str(e.value)
    assert ", ... 33 more); give as CONFIG_JSON the model config" in str(e.value)
    with pytest.raises(DetectorError, match=r"expected embedding:open_clip:CONFIG_JSON:CHECKPOINT"):
        make_detector(OverlapConfig(detector=f"embedding:open_clip:{cfg}"))
