"""The embedding detectors through the rest of the stage: calibration and the Spark search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, run_overlap
from tests.overlap.test_embedding_detectors import data, scripted  # noqa: F401 (fixtures)

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def _job(root: Path, train: Path, out: Path, model: Path, **kw: object) -> OverlapJob:
    config = OverlapConfig(
        detector=f"torchscript:{model}",
        embed_size=32,
        embed_batch=16,
        calibration_items=20,
        contact_pairs=4,
        processes=1,
        **kw,  # type: ignore[arg-type]
    )
    return OverlapJob(
        evals=(parse_eval_spec(f"cifar10:{root / 'cifar'}"),),
        train=(train,),
        out=out,
        config=config,
        predictions={"cifar10": root / "pred.csv"},
    )


def test_calibration_with_an_embedding_detector_finds_the_planted_copies(
    scripted: Path,  # noqa: F811
    data: tuple[Path, Path, dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    root, train, planted = data
    report = run_overlap(_job(root, train, tmp_path / "out", scripted), log=lambda _: None)
    entry = report.per_set["cifar10"]
    # A threshold was calibrated on planted transformations (not given): a similarity in (0, 1].
    assert not math.isnan(entry["threshold"]) and 0 < entry["threshold"] <= 1
    curve = pq.read_table(tmp_path / "out" / "cifar10" / "calibration.parquet").to_pylist()
    assert curve and {"threshold", "precision", "recall"} <= set(curve[0])
    # Exact copies score ~1, above any calibrated threshold: every planted copy is Overlap.
    splits = {
        r["id"]: r for r in pq.read_table(tmp_path / "out/cifar10/splits.parquet").to_pylist()
    }
    for item, key in planted.items():
        assert splits[item]["split"] == "overlap" and splits[item]["train_key"] == key
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["cifar10"]["threshold"] == pytest.approx(entry["threshold"])
    assert saved["cifar10"]["detector"].startswith("torchscript(")


def test_spark_search_with_an_embedding_detector_matches_local(
    spark,
    scripted: Path,  # noqa: F811
    data: tuple[Path, Path, dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    root, train, _ = data
    local = run_overlap(
        _job(root, train, tmp_path / "local", scripted, threshold=0.95), log=lambda _: None
    )
    on_spark = run_overlap(
        _job(root, train, tmp_path / "spark", scripted, threshold=0.95, spark=True),
        log=lambda _: None,
    )
    for f in ("splits.parquet", "neighbours.parquet"):
        a = pq.read_table(tmp_path / "local" / "cifar10" / f)
        b = pq.read_table(tmp_path / "spark" / "cifar10" / f)
        assert a.num_rows > 0
        # Same neighbours and splits; scores agree to float32 rounding across processes.
        assert a.drop_columns(["score"]).equals(b.drop_columns(["score"])), f
        assert a.column("score").to_pylist() == pytest.approx(
            b.column("score").to_pylist(), abs=1e-5
        )
    assert local.per_set["cifar10"]["n_overlap"] == on_spark.per_set["cifar10"]["n_overlap"] == 3


def test_threaded_preprocessing_gives_the_same_vectors_in_order(
    scripted: Path,  # noqa: F811
) -> None:
    from pipeline.overlap.detectors import TorchScriptDetector
    from tests.overlap.layouts import field_image, png

    blobs = [png(field_image(60 + i, (40 + i, 30))) for i in range(9)]
    blobs[4] = b"not an image"
    one = TorchScriptDetector(scripted, size=32, batch_size=2, device="cpu", workers=1)
    many = TorchScriptDetector(scripted, size=32, batch_size=2, device="cpu", workers=3)
    a, b = one.embed_bytes_batch(blobs), many.embed_bytes_batch(blobs)
    assert many._threads is not None and one._threads is None  # the pool was used
    assert a[4] is None and b[4] is None
    for i in (0, 1, 2, 3, 5, 6, 7, 8):
        np.testing.assert_allclose(a[i], b[i], atol=1e-6)
        if i:  # distinct images, distinct vectors: an order mix-up would show
            assert float(a[i] @ a[0]) < 0.9999
