"""The borderline contact sheet: frames coloured by the threshold, a legend for them, ids
that keep their distinguishing end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.overlap import report
from pipeline.overlap.report import CLEAN_FRAME, OVERLAP_FRAME, Pair, contact_sheet


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "PNG")
    return buf.getvalue()


def _has(region: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((region.reshape(-1, 3) == colour).all(axis=1).any())


def test_frames_follow_the_threshold_and_the_legend_names_them(tmp_path: Path) -> None:
    pairs = [
        Pair(
            "a" * 40 + "-above",
            "k" * 50 + "-1",
            0.91,
            Image.new("RGB", (30, 30), "blue"),
            _png((0, 200, 0)),
        ),
        Pair("below", "k2", 0.42, None, None),  # an unreadable eval image: a blank cell
    ]
    path = tmp_path / "sheet.png"
    side = 64
    contact_sheet(pairs, 0.9, "cifar10", path, side=side)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    header, cells = pixels[:44], pixels[44:]
    assert _has(header, OVERLAP_FRAME) and _has(header, CLEAN_FRAME)  # the legend
    cell_w = 2 * side + 12
    first, second = cells[:, 4 : 4 + cell_w], cells[:, 4 + cell_w : 4 + 2 * cell_w]
    assert _has(first, OVERLAP_FRAME) and not _has(first, CLEAN_FRAME)
    assert _has(second, CLEAN_FRAME) and not _has(second, OVERLAP_FRAME)
    assert _has(first, (0, 0, 255)) and _has(first, (0, 200, 0))  # both images pasted


def test_long_ids_keep_their_end_and_say_they_were_cut() -> None:
    assert report._tail("short", 28) == "short"
    cut = report._tail("imagenet/n01440764/ILSVRC2012_val_00000293.JPEG", 28)
    assert len(cut) == 28 and cut.startswith("...") and cut.endswith("00000293.JPEG")
