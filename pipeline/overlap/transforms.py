"""Synthetic copies of an image: the transformations of CLIP's duplicate-detector training.

CLIP appendix C trained its detector to match an image with "a synthetic transformation of
itself": random crop and zoom, aspect-ratio distortion, down- and up-scaling, small
rotations, JPEG compression, HSV jitter, random interpolation. Calibration plants such
copies among the training images; the benchmark scores held-out ones. Every copy ends as
a JPEG file, as a downloaded training image would.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.overlap.detectors import to_8bit

_FILTERS = (
    Image.Resampling.NEAREST,
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
    Image.Resampling.BOX,
    Image.Resampling.HAMMING,
)


TRANSFORMS: tuple[str, ...] = ("crop", "aspect", "rescale", "rotate", "hsv", "jpeg")


@dataclass(frozen=True)
class TransformSpec:
    """How strong each transformation may be; each enabled one is applied with probability
    ``p``. Random interpolation is part of every resize."""

    p: float = 0.5
    enabled: tuple[str, ...] = TRANSFORMS
    min_crop_area: float = 0.6  # share of the area kept by a crop, before zooming back
    max_aspect: float = 1.3  # one side stretched by up to this factor
    min_scale: float = 0.3  # down-scaled to this share of the side, then up again
    max_rotation: float = 8.0  # degrees either way
    jpeg_quality: tuple[int, int] = (30, 95)
    max_hue_shift: float = 0.05  # share of the hue circle
    max_sv_scale: float = 0.3  # saturation and value scaled by 1 +- this


def transform(img: Image.Image, rng: random.Random, spec: TransformSpec | None = None) -> bytes:
    """A random transformed copy of ``img`` as JPEG bytes; the same rng state gives the same copy."""
    spec = spec or TransformSpec()
    img = to_8bit(img).convert("RGB")
    w, h = img.size

    def resample() -> Image.Resampling:
        return rng.choice(_FILTERS)

    def apply(name: str) -> bool:
        return rng.random() < spec.p and name in spec.enabled

    if apply("crop"):  # crop, then zoom back to the original size
        area = rng.uniform(spec.min_crop_area, 1.0)
        ratio = rng.uniform(0.8, 1.25)
        cw = max(1, min(w, round(w * (area * ratio) ** 0.5)))
        ch = max(1, min(h, round(h * (area / ratio) ** 0.5)))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).resize((w, h), resample())
    if apply("aspect"):  # aspect-ratio distortion
        f = rng.uniform(1.0, spec.max_aspect)
        size = (max(1, round(w * f)), h) if rng.random() < 0.5 else (w, max(1, round(h * f)))
        img = img.resize(size, resample())
    if apply("rescale"):  # down- then up-scaling
        s = rng.uniform(spec.min_scale, 0.9)
        small = (max(1, round(img.width * s)), max(1, round(img.height * s)))
        img = img.resize(small, resample()).resize(img.size, resample())
    if apply("rotate"):  # small rotation, corners filled with the mean colour
        angle = rng.uniform(-spec.max_rotation, spec.max_rotation)
        fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0))
        img = img.rotate(angle, resample=rng.choice(_FILTERS[:3]), fillcolor=fill)
    if apply("hsv"):
        img = _hsv_jitter(img, rng, spec)
    # Every copy is stored as a JPEG: a random quality, or the download engine's default 95.
    quality = rng.randint(*spec.jpeg_quality) if apply("jpeg") else 95
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _hsv_jitter(img: Image.Image, rng: random.Random, spec: TransformSpec) -> Image.Image:
    hsv = np.asarray(img.convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 255 * rng.uniform(-spec.max_hue_shift, spec.max_hue_shift)) % 256
    for c in (1, 2):
        hsv[..., c] *= rng.uniform(1 - spec.max_sv_scale, 1 + spec.max_sv_scale)
    out = np.clip(hsv, 0, 255).astype(np.uint8)
    return Image.frombytes("HSV", img.size, out.tobytes()).convert("RGB")
