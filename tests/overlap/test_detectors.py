"""The phash detector on images that are not 8-bit: 16-bit grey PNGs (scans, medical and
astronomy sets) and float TIFFs hash as their 8-bit copies do, not as a white image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.detectors import PHashDetector, to_8bit
from pipeline.overlap.evalsets import parse_eval_spec
from pipeline.overlap.run import OverlapJob, run_overlap
from tests.overlap.layouts import field_image, jpeg, png, write_train_dir


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _grey(seed: int) -> np.ndarray:
    return np.asarray(field_image(seed, grey=True))


@pytest.mark.parametrize(
    ("case", "deep"),
    [
        ("16-bit PNG", lambda g: _encoded(Image.fromarray(g.astype(np.uint16) * 257), "PNG")),
        ("32-bit integer TIFF", lambda g: _encoded(Image.fromarray(g.astype(np.int32) * 257), "TIFF")),
        ("float TIFF, 0-1", lambda g: _encoded(Image.fromarray(g.astype(np.float32) / 255), "TIFF")),
        ("float TIFF, 0-255", lambda g: _encoded(Image.fromarray(g.astype(np.float32)), "TIFF")),
    ],
)  # fmt: skip
def test_deep_images_hash_as_their_8_bit_copies(case: str, deep: object) -> None:
    det = PHashDetector()
    white = det.embed_image(Image.new("L", (64, 48), 255))
    for seed in (1, 2, 3):
        g = _grey(seed)
        data = deep(g)  # type: ignore[operator]
        assert Image.open(io.BytesIO(data)).mode in ("I;16", "I", "F"), case
        code = det.embed_bytes(data)
        assert code is not None
        assert np.array_equal(code, det.embed_bytes(png(Image.fromarray(g)))), case
        assert not np.array_equal(code, white), case


def test_to_8bit_keeps_the_top_8_bits_and_leaves_8_bit_images_alone() -> None:
    g = _grey(4)
    sixteen = Image.fromarray(g.astype(np.uint16) * 256 + 200)  # top 8 bits: g
    assert np.array_equal(np.asarray(to_8bit(sixteen)), g)
    rgb = field_image(5)
    assert to_8bit(rgb) is rgb


def test_a_16_bit_eval_set_finds_its_8_bit_training_copies(tmp_path: Path) -> None:
    evals = tmp_path / "deep"
    greys = {}
    for c in ("a", "b"):
        (evals / c).mkdir(parents=True)
        for j in range(4):
            g = _grey(700 + 10 * ord(c) + j)
            Image.fromarray(g.astype(np.uint16) * 257).save(evals / c / f"{j}.png")
            greys[f"{c}/{j}.png"] = g
    train = [
        jpeg(Image.fromarray(greys["a/0.png"]), 90),
        jpeg(Image.fromarray(greys["b/3.png"]), 90),
        jpeg(Image.new("RGB", (64, 48), "white")),
        *(jpeg(field_image(9_000 + i)) for i in range(5)),
    ]
    write_train_dir(tmp_path / "train", train, per_shard=4)
    job = OverlapJob(
        evals=(parse_eval_spec(f"imagefolder:{evals}"),),
        train=(tmp_path / "train",),
        out=tmp_path / "out",
        config=OverlapConfig(threshold=0.9, processes=1, contact_pairs=2),
    )
    run_overlap(job, log=lambda _: None)
    rows = pq.read_table(job.out / "imagefolder" / "splits.parquet").to_pylist()
    assert sorted(r["id"] for r in rows if r["split"] == "overlap") == ["a/0.png", "b/3.png"]
