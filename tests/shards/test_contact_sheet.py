from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from pipeline.shards.contact_sheet import caption_lines, contact_sheet
from pipeline.synthweb.images import render_image


def test_contact_sheet_draws_images_and_skips_bad_ones(tmp_path: Path) -> None:
    samples = []
    for seed in range(5):
        img, caption = render_image(seed, 300, 200)
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        samples.append((buf.getvalue(), caption))
    samples.insert(2, (b"broken", "never drawn"))
    drawn = contact_sheet(samples, tmp_path / "sheet.png", n=4, cols=2, thumb=100, title="demo")
    assert drawn == 4
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (2 * 110 + 10, 28 + 2 * (100 + 52 + 10) + 10)
        # the first cell holds an image, not the white background
        assert sheet.crop((10, 38, 110, 138)).convert("L").getextrema() != (255, 255)


def test_a_caption_cut_short_says_so() -> None:
    assert caption_lines("a red circle", width=20) == ["a red circle"]
    long = "a dark blue square over an orange and brown gradient at dusk"
    lines = caption_lines(long, width=14)
    assert len(lines) == 3 and lines[-1].endswith(" ...")
    shown = " ".join(lines).removesuffix(" ...").split()
    assert shown == long.split()[: len(shown)] and len(shown) < len(long.split())
