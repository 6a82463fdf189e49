"""Tiny learnable shards for the training tests: coloured shapes on noise, captions naming
the colour, written as img2dataset lays them out (tar + stats JSON at the top)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 50, 220),
    "yellow": (235, 220, 30),
}
SHAPES = ("square", "circle", "triangle")


def make_image(seed: int, colour: str, size: int = 32) -> bytes:
    r = random.Random(seed)
    base = r.randint(60, 160)
    img = Image.new("RGB", (size, size), (base, base, base))
    draw = ImageDraw.Draw(img)
    shape = r.choice(SHAPES)
    x0, y0 = r.randint(0, size // 3), r.randint(0, size // 3)
    x1, y1 = x0 + r.randint(size // 2, size - 4), y0 + r.randint(size // 2, size - 4)
    box = (x0, y0, min(x1, size - 1), min(y1, size - 1))
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
            fill=COLOURS[colour],
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(
    root: Path,
    n_shards: int,
    per_shard: int,
    seed: int = 0,
    corrupt_every: int = 0,
    write_stats: bool = True,
    image_size: int = 32,
    sizes: list[int] | None = None,
) -> list[str]:
    """Writes ``root/NNNNN.tar`` (+ stats JSON); returns every key written. ``sizes``:
    samples in each shard instead of ``per_shard`` (0: an empty tar, as img2dataset
    writes when every URL of a shard fails)."""
    root.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    names = list(COLOURS)
    keys: list[str] = []
    for sid in range(n_shards):
        n = sizes[sid] if sizes is not None else per_shard
        with tarfile.open(root / f"{sid:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(n):
                key = f"{sid:05d}{i:04d}"
                colour = r.choice(names)
                image = make_image(r.randrange(1 << 30), colour, image_size)
                if corrupt_every and i % corrupt_every == 0:
                    image = image[: len(image) // 3]  # truncated JPEG: decodes with an error
                caption = f"a photo of a {colour}."
                for ext, payload in (
                    ("jpg", image),
                    ("json", json.dumps({"key": key, "colour": colour}).encode()),
                    ("txt", caption.encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys.append(key)
        if write_stats:
            (root / f"{sid:05d}_stats.json").write_text(json.dumps({"successes": n}))
    return keys


def eval_set(n: int, seed: int = 12345, image_size: int = 32) -> tuple[list[bytes], list[int]]:
    """Held-out images (seeds disjoint from training) with their colour index."""
    r = random.Random(seed)
    names = list(COLOURS)
    images, labels = [], []
    for _ in range(n):
        c = r.randrange(len(names))
        images.append(make_image(r.randrange(1 << 30) + (1 << 31), names[c], image_size))
        labels.append(c)
    return images, labels


def imagefolder(root: Path, per_class: int, seed: int = 777) -> Path:
    """Class-folder tree of coloured shapes: root/<colour>/<n>.jpg, seeds unseen in training."""
    r = random.Random(seed)
    for colour in COLOURS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / colour / f"{i:03d}.jpg").write_bytes(
                make_image(r.randrange(1 << 30) + (1 << 31), colour)
            )
    return root
