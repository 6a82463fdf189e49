"""Deterministic photo-like test images and their captions, made locally.

Tests and benchmarks need many distinct images with realistic encoded sizes and a caption
that really describes them, without downloading anything. An image here is a vertical
two-colour gradient (sky over ground) with a low-frequency texture, one to three flat
shapes in named colours, and mild high-frequency grain so JPEG files weigh what photos
weigh (roughly 1-2 bits per pixel).

Speed matters more than beauty: the scene is drawn at a long side of at most 384 px,
upscaled by Pillow in C, and the grain is a fixed tile pasted and added in C, so a
3000x2000 image renders in well under 0.1 s. The scene (and so the caption) depends only
on the seed, drawn with ``random.Random.random`` whose sequence Python guarantees across
versions; the pixels additionally depend on Pillow's resampling, pinned in pyproject.
"""

from __future__ import annotations

import functools
import io
import math
import random
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# Colours a caption can name: the words a CLIP-style text encoder should tie to pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 80, 200),
    "yellow": (240, 210, 40),
    "orange": (245, 135, 25),
    "purple": (128, 55, 170),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "pink": (240, 130, 180),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "stripe", "ring", "diamond")
# Encoded formats and what a server says they are.
FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "gif")
CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
}
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_QUALITY = 85
WEBP_QUALITY = 80

_DRAW_LONG_SIDE = 384  # the scene is drawn this big, then upscaled
_GRAIN_TILE = 512
_GRAIN_AMPLITUDE = 12  # +-12 levels: visible grain, photo-like JPEG sizes
_SIZE_WORDS: tuple[tuple[str, float, float], ...] = (
    # (adjective in the caption, min and max radius as a fraction of the short side)
    ("small", 0.08, 0.14),
    ("", 0.15, 0.24),
    ("large", 0.27, 0.38),
)


@dataclass(frozen=True)
class Shape:
    """One drawn shape, in coordinates relative to the image (0..1 on each axis)."""

    kind: str
    colour: str
    size_word: str
    cx: float
    cy: float
    radius: float  # fraction of the short side
    vertical: bool  # stripes only


@dataclass(frozen=True)
class Scene:
    """Everything an image shows, decided by the seed alone (the caption needs no pixels)."""

    top: str
    bottom: str
    shapes: tuple[Shape, ...]
    texture_seed: int
    grain_dx: int
    grain_dy: int

    @property
    def caption(self) -> str:
        """English description: 'a red circle and a small blue square over a green and ...'."""
        phrases = [_shape_phrase(s) for s in self.shapes]
        if len(phrases) == 1:
            things = phrases[0]
        else:
            things = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{things} over {_article(self.top)} {self.top} and {self.bottom} gradient"


def _pick(r: random.Random, seq: tuple[str, ...] | list[str]) -> str:
    """Choose with ``random()`` only, the one method whose sequence Python keeps stable."""
    return seq[min(int(r.random() * len(seq)), len(seq) - 1)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape_phrase(s: Shape) -> str:
    orientation = ("vertical" if s.vertical else "horizontal") if s.kind == "stripe" else ""
    words = [w for w in (s.size_word, orientation, s.colour, s.kind) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def make_scene(seed: int) -> Scene:
    """Decide the scene for a seed: cheap, so a site can caption thousands of images."""
    r = random.Random(seed)
    names = list(COLOURS)
    top = _pick(r, names)
    bottom = _pick(r, [n for n in names if n != top])
    n_shapes = 1 + int(r.random() * 3)
    shapes: list[Shape] = []
    for _ in range(n_shapes):
        kind = _pick(r, SHAPES)
        # A shape the same colour as the background behind it would be invisible.
        colour = _pick(r, [n for n in names if n not in (top, bottom)])
        size_word, lo, hi = _SIZE_WORDS[min(int(r.random() * 3), 2)]
        shapes.append(
            Shape(
                kind=kind,
                colour=colour,
                size_word=size_word,
                cx=0.15 + 0.7 * r.random(),
                cy=0.15 + 0.7 * r.random(),
                radius=lo + (hi - lo) * r.random(),
                vertical=r.random() < 0.5,
            )
        )
    return Scene(
        top=top,
        bottom=bottom,
        shapes=tuple(shapes),
        texture_seed=int(r.random() * 2**31),
        grain_dx=int(r.random() * _GRAIN_TILE),
        grain_dy=int(r.random() * _GRAIN_TILE),
    )


def caption_for(seed: int) -> str:
    """The caption of ``render_image(seed, ...)`` without rendering it."""
    return make_scene(seed).caption


@functools.cache
def _grain_tile() -> Image.Image:
    """A fixed tile of uniform grain in 0..2A, built on first use (never at import)."""
    rng = np.random.default_rng(20240601)
    a = rng.integers(0, 2 * _GRAIN_AMPLITUDE + 1, (_GRAIN_TILE, _GRAIN_TILE, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, w: int, h: int) -> None:
    rad = max(1.0, s.radius * min(w, h))
    cx, cy = s.cx * w, s.cy * h
    fill = COLOURS[s.colour]
    if s.kind == "circle":
        draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
    elif s.kind == "square":
        draw.rectangle([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
    elif s.kind == "triangle":
        draw.polygon(
            [(cx, cy - rad), (cx + rad, cy + rad * 0.8), (cx - rad, cy + rad * 0.8)], fill=fill
        )
    elif s.kind == "diamond":
        draw.polygon([(cx, cy - rad), (cx + rad, cy), (cx, cy + rad), (cx - rad, cy)], fill=fill)
    elif s.kind == "ring":
        width = max(1, round(rad * 0.35))
        draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], outline=fill, width=width)
    elif s.kind == "stripe":
        half = max(1.0, rad * 0.35)
        if s.vertical:
            draw.rectangle([cx - half, 0, cx + half, h], fill=fill)
        else:
            draw.rectangle([0, cy - half, w, cy + half], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {s.kind!r}")


def render_scene(scene: Scene, width: int, height: int) -> Image.Image:
    """Draw a scene at width x height (RGB)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = min(1.0, _DRAW_LONG_SIDE / max(width, height))
    sw, sh = max(1, round(width * scale)), max(1, round(height * scale))

    t = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None]
    top = np.asarray(COLOURS[scene.top], np.float32)
    bottom = np.asarray(COLOURS[scene.bottom], np.float32)
    rows = top * (1.0 - t) + bottom * t  # (sh, 3)
    canvas = np.broadcast_to(rows[:, None, :], (sh, sw, 3))
    img = Image.fromarray(np.ascontiguousarray(canvas).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        _draw_shape(draw, s, sw, sh)

    # Low-frequency texture (clouds, grass): coarse noise, smoothly upscaled, on everything.
    rng = np.random.default_rng(scene.texture_seed)
    coarse = rng.normal(0.0, 9.0, (max(1, sh // 8) + 1, max(1, sw // 8) + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, "F").resize((sw, sh), Image.Resampling.BICUBIC))
    arr = np.asarray(img, dtype=np.float32) + texture[:, :, None]
    # Keep a margin so the grain below never clips (it is added as 0..2A minus A).
    np.clip(arr, _GRAIN_AMPLITUDE, 255 - _GRAIN_AMPLITUDE, out=arr)
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if (sw, sh) != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)

    tile = _grain_tile()
    grain = Image.new("RGB", (width, height))
    for y in range(-scene.grain_dy, height, _GRAIN_TILE):
        for x in range(-scene.grain_dx, width, _GRAIN_TILE):
            grain.paste(tile, (x, y))
    return ImageChops.add(img, grain, 1.0, -_GRAIN_AMPLITUDE)


def render_image(seed: int, width: int, height: int) -> tuple[Image.Image, str]:
    """A deterministic photo-like RGB image of width x height and its English caption."""
    scene = make_scene(seed)
    return render_scene(scene, width, height), scene.caption


def encode(img: Image.Image, fmt: str) -> bytes:
    """Encode to JPEG (quality 85), PNG, WebP (quality 80) or GIF (64-colour palette)."""
    key = fmt.lower()
    key = "jpeg" if key == "jpg" else key
    buf = io.BytesIO()
    if key == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif key == "png":
        img.save(buf, "PNG")
    elif key == "webp":
        img.convert("RGB").save(buf, "WEBP", quality=WEBP_QUALITY, method=4)
    elif key == "gif":
        pal = img.convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        pal.save(buf, "GIF")
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return buf.getvalue()


def corrupt_jpeg(data: bytes, seed: int, keep: float = 0.3) -> bytes:
    """A JPEG with its header intact and its pixel data destroyed.

    Keeps the markers up to the scan and the first ``keep`` of the entropy-coded data,
    then a second SOI marker (fatal to libjpeg in the middle of a scan), filler bytes
    without 0xFF (so no accidental end-of-image marker) up to the original length, and an
    EOI. ``Image.open`` reads the header fine; ``load()`` raises OSError ("broken data
    stream"), unless a caller sets ``ImageFile.LOAD_TRUNCATED_IMAGES``.
    """
    sos = data.find(b"\xff\xda")
    if not data.startswith(b"\xff\xd8") or sos < 0:
        raise ValueError("not a baseline JPEG with a scan")
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    cut = scan + int((len(data) - scan) * keep)
    rng = np.random.default_rng(seed)
    filler = rng.integers(0, 255, max(0, len(data) - cut - 4), dtype=np.uint8).tobytes()
    return data[:cut] + b"\xff\xd8" + filler + b"\xff\xd9"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def png_bomb(width: int, height: int, rows: int = 4) -> bytes:
    """A tiny grayscale PNG whose header declares width x height pixels.

    Only ``rows`` zero rows are compressed into the IDAT, so the file is a few hundred
    bytes: a decoder that trusts the header would allocate width*height bytes and then
    find the data truncated. Refusing it from the header is the point of the test.
    """
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    raw = bytes((width + 1) * rows)  # filter byte 0 + zero pixels, per row
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def pad_png(data: bytes, total_size: int) -> bytes:
    """A still-valid PNG grown to ``total_size`` bytes by a private ancillary chunk.

    The chunk type ``syPd`` is ancillary (lowercase first letter), so decoders skip it;
    it goes right after IHDR. This makes a file over any byte cap in milliseconds, where
    a genuinely huge image would take seconds to encode.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    ihdr_end = len(PNG_SIGNATURE) + 8 + int.from_bytes(data[8:12], "big") + 4
    pad = total_size - len(data) - 12
    if pad < 0:
        raise ValueError(f"PNG is already {len(data)} bytes, over {total_size}")
    return data[:ihdr_end] + _png_chunk(b"syPd", bytes(pad)) + data[ihdr_end:]


def fit_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Shrink (never grow) width x height so the long side is at most ``long_side``."""
    m = max(width, height)
    if m <= long_side:
        return width, height
    f = long_side / m
    return max(1, math.floor(width * f + 0.5)), max(1, math.floor(height * f + 0.5))
