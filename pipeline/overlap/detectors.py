"""Duplicate detectors: an image in, a code out; a similarity between codes.

``phash`` concatenates imagehash perceptual hashes into one binary code compared by
Hamming distance (FAISS binary index). Its similarity is ``1 - distance / bits``: 1 for
identical codes, about 0.5 for unrelated images.

Embedding detectors give L2-normalized float vectors compared by inner product (FAISS
``IndexFlatIP``), so the similarity is a cosine, 1 for identical images:

- ``torchscript:PATH``: a TorchScript image model (e.g. an SSCD copy-detection model) taking
  a float batch [N, 3, S, S] normalized with ImageNet mean/std and returning [N, D]. Images
  are resized (short side ``embed_size``, then centre crop; or ``embed_resize = squash``:
  straight to ``embed_size`` x ``embed_size``, as SSCD's 320x320 descriptors).
- ``embedding:open_clip:CONFIG_JSON:CHECKPOINT``: the image tower of an open_clip model
  built offline from a model-config JSON and a checkpoint (``torch.save({'model':
  state_dict})``, ``{'state_dict': ...}`` or a plain state dict, read with
  ``weights_only=True``), with open_clip's own eval preprocessing (``clip_models``, shared
  with ``--checkpoint`` zero-shot predictions). Nothing is ever downloaded.

Both run batches of ``embed_batch`` images on ``embed_device`` (``auto``: CUDA when
available). Decoding and preprocessing run on ``embed_workers`` threads (Pillow and torch
release the GIL), a few batches ahead of the model: one thread decoding 256 px JPEGs feeds
a GPU only ~7% of what it can embed (docs/BENCHMARKS.md). torch and open_clip are imported only when such a detector is made. A
detector pickles without its model (Spark tasks, worker processes) and reloads it from its
files on first use.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

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


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16*, I) and float (F) images as 8-bit L; others unchanged.

    Pillow's own conversion clips such values at 255, which turns nearly every 16-bit image
    white. As ``pipeline.images.process`` does, 16-bit values keep their top 8 bits (an
    ``I`` image holding 8-bit values is kept as is); float values are taken as 0-1 when
    none exceeds 1, else as 0-255, else as 16-bit."""
    mode = img.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return img
    a = np.asarray(img)
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        top = a.max(initial=0.0)
        if top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a / 256.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    wide = np.clip(a.astype(np.int64), 0, 65535)
    if mode.startswith("I;16") or wide.max(initial=0) > 255:
        wide >>= 8
    return Image.fromarray(wide.astype(np.uint8))


def _grey(img: Image.Image) -> Image.Image:
    img = to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels hold arbitrary colours: flatten on white, as a browser shows them.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L")


def decode_for_hash(data: bytes, min_side: int) -> Image.Image | None:
    """Decode an image no bigger than needed (JPEG DCT scaling to at least ``min_side``, in
    grey; 0: full size, own colours), upright (EXIF orientation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > _MAX_PIXELS:
                return None
            if img.format == "JPEG" and min_side > 0:
                img.draft("L", (min_side, min_side))
            img.load()
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return img
    except Exception:  # any decoder failure is a bad image, counted by the caller
        return None


def png_bytes(img: Image.Image) -> bytes:
    """An image as PNG (lossless): how a decoded image reaches embed_many."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def code_layout(detector: Detector) -> tuple[int, type]:
    """(width, dtype) of one code: packed bits as uint8, or a float32 vector."""
    if detector.kind == "binary":
        return detector.dim // 8, np.uint8
    return detector.dim, np.float32


def stack_codes(detector: Detector, codes: Sequence[np.ndarray]) -> np.ndarray:
    """Codes as one (n, width) array in the detector's dtype; (0, width) for none."""
    width, dtype = code_layout(detector)
    return np.stack(codes).astype(dtype) if len(codes) else np.zeros((0, width), dtype)


def embed_many(detector: Detector, images: Sequence[bytes]) -> list[np.ndarray | None]:
    """Codes of encoded images, in batches where the detector can (embedding detectors)."""
    batch = getattr(detector, "embed_bytes_batch", None)
    if batch is not None:
        return batch(images)
    return [detector.embed_bytes(d) for d in images]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbeddingDetector:
    """A torch image model giving L2-normalized vectors; similarity is the inner product."""

    kind: Literal["binary", "float"] = "float"

    def __init__(
        self, source: str, batch_size: int = 64, device: str = "auto", workers: int = 0
    ) -> None:
        self.source = source
        self.batch_size = batch_size
        self.device_name = device
        self.workers = workers or os.cpu_count() or 1
        self._threads: ThreadPoolExecutor | None = None
        self._model: Any = None
        self._preprocess: Callable[[Image.Image], Any] | None = None
        self._dim = 0
        self._load()  # fail now, with one clear error, rather than inside a worker

    # -- loading -------------------------------------------------------------------------
    def _device(self) -> Any:
        from pipeline.overlap.clip_models import OpenClipError, resolve_device

        try:
            return resolve_device(self.device_name, "embed_device")
        except OpenClipError as e:
            raise DetectorError(str(e)) from None

    def _build(self, device: Any) -> tuple[Any, Callable[[Image.Image], Any], int]:
        raise NotImplementedError

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
        except ImportError:
            raise DetectorError(
                f"detector {self.source}: needs torch, which is not installed"
            ) from None
        device = self._device()
        model, preprocess, size = self._build(device)
        model.eval()
        self._device_obj = device
        self._model = model
        self._preprocess = preprocess
        try:
            with torch.inference_mode():
                out = model(torch.zeros(1, 3, size, size, device=device))
        except Exception as e:  # any failure of a user's model on a dummy batch
            raise DetectorError(
                f"detector {self.source}: the model fails on a [1, 3, {size}, {size}] batch: "
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DetectorError(
                f"detector {self.source}: the model must return one [N, D] tensor, got {shape}"
            )
        self._dim = int(out.shape[1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_model=None, _preprocess=None, _device_obj=None, _threads=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # the model reloads on first use

    # -- embedding -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> str:
        return self.source

    def _prepared_batches(
        self, items: Sequence[Any], prepare: Callable[[Any], Any]
    ) -> Iterator[list[Any]]:
        """``prepare`` applied to ``items``, a batch at a time, in order. With several
        workers, up to two batches are prepared on threads while the model runs one."""
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if self.workers <= 1 or len(items) <= 1:
            for chunk in chunks:
                yield [prepare(x) for x in chunk]
            return
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
        pending: deque[list[Any]] = deque()
        for chunk in chunks:
            pending.append([self._threads.submit(prepare, x) for x in chunk])
            if len(pending) > 2:
                yield [f.result() for f in pending.popleft()]
        while pending:
            yield [f.result() for f in pending.popleft()]

    def _embed(self, items: Sequence[Any], prepare: Callable[[Any], Any]) -> list[Any]:
        """One unit vector per item, or None where ``prepare`` gave None."""
        import torch

        self._load()
        out: list[Any] = []
        for batch in self._prepared_batches(items, prepare):
            ok = [x for x in batch if x is not None]
            vecs = iter(())
            if ok:
                x = torch.stack(ok).to(self._device_obj, non_blocking=True)
                with torch.inference_mode():
                    y = torch.nn.functional.normalize(self._model(x).float(), dim=1)
                vecs = iter(y.cpu().numpy())
            out += [None if x is None else next(vecs) for x in batch]
        return out

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32 unit vectors."""
        self._load()
        preprocess = self._preprocess
        assert preprocess is not None
        vecs = self._embed(images, lambda im: preprocess(_rgb(im)))
        return np.stack(vecs) if vecs else np.zeros((0, self._dim), np.float32)

    def embed_image(self, img: Image.Image) -> np.ndarray:
        return self.embed_images([img])[0]

    def embed_bytes(self, data: bytes) -> np.ndarray | None:
        return self.embed_bytes_batch([data])[0]

    def embed_bytes_batch(self, images: Sequence[bytes]) -> list[np.ndarray | None]:
        """Decoded, preprocessed and embedded; None for bytes that are not an image."""
        self._load()
        preprocess = self._preprocess
        assert preprocess is not None

        def prepare(data: bytes) -> Any:
            img = decode_for_hash(data, 0)
            return None if img is None else preprocess(_rgb(img))

        return self._embed(images, prepare)


def _rgb(img: Image.Image) -> Image.Image:
    img = to_8bit(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class TorchScriptDetector(EmbeddingDetector):
    def __init__(
        self,
        path: str | Path,
        size: int = 288,
        resize: str = "crop",
        batch_size: int = 64,
        device: str = "auto",
        workers: int = 0,
    ) -> None:
        self.path = Path(path).expanduser()
        self.size = size
        self.resize = resize
        super().__init__(f"torchscript:{path}", batch_size, device, workers)

    def describe(self) -> str:
        return f"torchscript({self.path.name}, {self.resize} {self.size})"

    def _build(self, device: Any) -> tuple[Any, Callable[[Image.Image], Any], int]:
        import torch

        if not self.path.is_file():
            raise DetectorError(f"detector {self.source}: no such file {self.path}")
        try:
            with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(self.path), map_location=device)
        except Exception as e:  # torch raises RuntimeError, ValueError, zipfile errors...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectorError(
                f"detector {self.source}: not a TorchScript model (torch.jit.save): {msg}"
            ) from None
        size, resize = self.size, self.resize
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

        def preprocess(img: Image.Image) -> Any:
            if resize == "squash":
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            else:
                scale = size / min(img.size)
                w = max(size, round(img.width * scale))
                h = max(size, round(img.height * scale))
                img = img.resize((w, h), Image.Resampling.BICUBIC)
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            x = torch.from_numpy(np.array(img, np.float32, copy=True)).permute(2, 0, 1) / 255.0
            return (x - mean) / std

        return model, preprocess, size


class OpenClipDetector(EmbeddingDetector):
    def __init__(
        self,
        config_json: str | Path,
        checkpoint: str | Path,
        batch_size: int = 64,
        device: str = "auto",
        workers: int = 0,
    ) -> None:
        self.config_json = Path(config_json).expanduser()
        self.checkpoint = Path(checkpoint).expanduser()
        super().__init__(
            f"embedding:open_clip:{config_json}:{checkpoint}", batch_size, device, workers
        )

    def describe(self) -> str:
        return f"open_clip({self.config_json.stem}, {self.checkpoint.name})"

    def _build(self, device: Any) -> tuple[Any, Callable[[Image.Image], Any], int]:
        from pipeline.overlap import clip_models as cm

        for what, p in (("model config", self.config_json), ("checkpoint", self.checkpoint)):
            if not p.is_file():
                raise DetectorError(f"detector {self.source}: {what}: no such file {p}")
        label = f"model config {self.config_json}"
        try:
            cfg = cm.read_config(self.config_json)
            model, preprocess, _ = cm.create(cfg, label, device)
            state = cm.state_dict_of(cm.read_checkpoint(self.checkpoint))
            if state is None:
                raise cm.OpenClipError(f"checkpoint {self.checkpoint}: no state dict in it")
            hint = "give as CONFIG_JSON the model config it was trained with"
            cm.load_weights(model, state, self.checkpoint, label, hint)
        except cm.OpenClipError as e:
            raise DetectorError(f"detector {self.source}: {e}") from None
        visual = model.visual.to(device)
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        return visual, preprocess, size


DETECTOR_SYNTAX = "phash, torchscript:PATH, embedding:open_clip:CONFIG_JSON:CHECKPOINT"


def make_detector(config: OverlapConfig) -> Detector:
    spec = config.detector
    if spec == "phash":
        return PHashDetector(tuple(config.hashes), config.hash_size)
    if spec.startswith("torchscript:"):
        path = spec[len("torchscript:") :]
        if not path:
            raise DetectorError("detector torchscript: needs a path: torchscript:PATH")
        return TorchScriptDetector(
            path,
            config.embed_size,
            config.embed_resize,
            config.embed_batch,
            config.embed_device,
            config.embed_workers,
        )
    if spec.startswith("embedding:open_clip:"):
        rest = spec[len("embedding:open_clip:") :]
        cfg_path, sep, ckpt = rest.partition(".json:")
        if sep:
            cfg_path += ".json"
        else:
            cfg_path, _, ckpt = rest.partition(":")
        if not cfg_path or not ckpt:
            raise DetectorError(
                f"detector {spec}: expected embedding:open_clip:CONFIG_JSON:CHECKPOINT"
            )
        return OpenClipDetector(
            cfg_path, ckpt, config.embed_batch, config.embed_device, config.embed_workers
        )
    if spec.startswith("embedding:") or spec == "embedding":
        raise DetectorError(
            f"detector {spec}: unknown embedding model; available: "
            "embedding:open_clip:CONFIG_JSON:CHECKPOINT (the training stage's own encoder and "
            "CLIP appendix C's learned detector are not available yet)"
        )
    raise DetectorError(
        f"detector {spec!r}: unknown; available: {DETECTOR_SYNTAX} (not yet: the learned "
        "detector of CLIP's appendix C)"
    )
