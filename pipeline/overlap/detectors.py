"""Duplicate detectors: an image in, a code out; a similarity between codes.

``phash`` concatenates imagehash perceptual hashes into one binary code compared by
Hamming distance (FAISS binary index). Its similarity is ``1 - distance / bits``: 1 for
identical codes, about 0.5 for unrelated images. Embedding detectors (``embedding:...``,
``torchscript:PATH``) will give unit float vectors compared by inner product; they need
torch and the training stage, which this code base does not have yet.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image, ImageOps

from pipeline.overlap.config import OverlapConfig

# Pillow's own limit would warn on big images; the downloader already refused bombs.
_MAX_PIXELS = 89_478_485


class DetectorError(ValueError):
    """A detector that is unknown or cannot run here: the message says what is missing."""


class Detector(Protocol):
    kind: Literal["binary", "float"]

    @property
    def dim(self) -> int:
        """Bits of a binary code, or floats of a vector."""

    def describe(self) -> str: ...

    def embed_image(self, img: Image.Image) -> np.ndarray: ...

    def embed_bytes(self, data: bytes) -> np.ndarray | None:
        """The code of an encoded image, or None when it cannot be decoded."""


@dataclass(frozen=True)
class PHashDetector:
    hashes: tuple[str, ...] = ("phash", "dhash")
    hash_size: int = 16
    kind: Literal["binary", "float"] = "binary"

    @property
    def dim(self) -> int:
        return len(self.hashes) * self.hash_size**2

    def describe(self) -> str:
        return f"phash({'+'.join(self.hashes)}, {self.hash_size}x{self.hash_size})"

    def embed_image(self, img: Image.Image) -> np.ndarray:
        import imagehash

        grey = _grey(img)
        bits = []
        for name in self.hashes:
            if name == "phash":
                h = imagehash.phash(grey, self.hash_size)
            elif name == "dhash":
                h = imagehash.dhash(grey, self.hash_size)
            elif name == "dhash_vertical":
                h = imagehash.dhash_vertical(grey, self.hash_size)
            elif name == "average_hash":
                h = imagehash.average_hash(grey, self.hash_size)
            else:
                # A fixed wavelet scale: imagehash's default follows the image size, which
                # would make a copy's code depend on how big it was stored.
                h = imagehash.whash(grey, self.hash_size, image_scale=max(64, self.hash_size))
            bits.append(np.asarray(h.hash, dtype=bool).ravel())
        return np.packbits(np.concatenate(bits))

    def embed_bytes(self, data: bytes) -> np.ndarray | None:
        img = decode_for_hash(data, 64)
        return None if img is None else self.embed_image(img)


def _grey(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels hold arbitrary colours: flatten on white, as a browser shows them.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L")


def decode_for_hash(data: bytes, min_side: int) -> Image.Image | None:
    """Decode an image no bigger than needed (JPEG DCT scaling), upright (EXIF orientation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > _MAX_PIXELS:
                return None
            if img.format == "JPEG":
                img.draft("L", (min_side, min_side))
            img.load()
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return img
    except Exception:  # any decoder failure is a bad image, counted by the caller
        return None


def make_detector(config: OverlapConfig) -> PHashDetector:
    spec = config.detector
    if spec == "phash":
        return PHashDetector(tuple(config.hashes), config.hash_size)
    if spec.startswith("embedding:") or spec == "embedding":
        raise DetectorError(
            f"detector {spec}: not available yet: embedding detectors need torch (not installed) "
            "and the training stage's image encoder (training/, not written yet); use --detector phash"
        )
    if spec.startswith("torchscript:"):
        raise DetectorError(
            f"detector {spec}: not available yet: TorchScript detectors (e.g. SSCD) need torch, "
            "which is not installed; use --detector phash"
        )
    raise DetectorError(
        f"detector {spec!r}: unknown; available: phash (not yet: embedding:..., torchscript:PATH, "
        "and the learned detector of CLIP's appendix C)"
    )
