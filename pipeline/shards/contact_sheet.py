"""A contact sheet: sample images with their captions in one PNG, to look at a dataset."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def contact_sheet(
    samples: Iterable[tuple[bytes, str]],
    path: str | Path,
    n: int = 24,
    cols: int = 6,
    thumb: int = 180,
    title: str | None = None,
) -> int:
    """Draw up to ``n`` (image bytes, caption) pairs in a grid; returns how many were drawn.

    Undecodable images are skipped (the caller's data says why elsewhere).
    """
    font = ImageFont.load_default(size=12)
    cells: list[tuple[Image.Image, str]] = []
    for data, caption in samples:
        if len(cells) >= n:
            break
        try:
            with Image.open(io.BytesIO(data)) as img:
                im = img.convert("RGB")
        except Exception:  # a sheet is a view, not a validator
            continue
        im.thumbnail((thumb, thumb))
        cells.append((im, caption))
    rows = max(1, -(-len(cells) // cols))
    text_h = 52
    top = 28 if title else 0
    sheet = Image.new(
        "RGB", (cols * (thumb + 10) + 10, top + rows * (thumb + text_h + 10) + 10), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((10, 8), title, fill="black", font=font)
    for i, (im, caption) in enumerate(cells):
        x = 10 + (i % cols) * (thumb + 10)
        y = top + 10 + (i // cols) * (thumb + text_h + 10)
        sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        lines = caption_lines(caption, width=max(10, thumb // 7))
        for j, line in enumerate(lines):
            draw.text((x, y + thumb + 4 + 15 * j), line, fill="black", font=font)
    sheet.save(path, "PNG")
    return len(cells)


def caption_lines(caption: str, width: int, max_lines: int = 3) -> list[str]:
    """A caption wrapped to ``max_lines`` lines; one cut short ends with " ..." (ASCII: the
    default bitmap font has no ellipsis), so a reader knows there is more."""
    return textwrap.wrap(caption, width=width, max_lines=max_lines, placeholder=" ...")
