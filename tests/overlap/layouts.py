"""Tiny eval sets and training folders, generated in the real on-disk layouts.

Eval images are random colour fields: any two differ a lot under a perceptual hash, and a
resized JPEG copy of one stays close to it, so planted duplicates have a known ground
truth. Training distractors are synthweb's photo-like renders, another domain, as web
images are to an eval set.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.shards.layout import OutputLayout
from pipeline.shards.writer import ShardWriter


def field_image(seed: int, size: tuple[int, int] = (64, 48), grey: bool = False) -> Image.Image:
    """A random field: 16x12 random colours upsampled with bicubic interpolation (fewer
    cells would leave too little structure for a perceptual hash to tell images apart)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (12, 16) if grey else (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)


def field_array(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[0], shape[1]
    return np.asarray(field_image(seed, (w, h), grey=len(shape) == 2))


def jpeg(img: Image.Image, quality: int = 90, size: tuple[int, int] | None = None) -> bytes:
    if size is not None:
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_train_dir(
    root: Path, images: Sequence[bytes], per_shard: int, captions: Sequence[str] | None = None
) -> list[str]:
    """A wit-builder download folder (DIR/shards/NNNNN.tar); returns each image's key."""
    layout = OutputLayout(root)
    keys: list[str] = []
    for sid, start in enumerate(range(0, len(images), per_shard)):
        w = ShardWriter(layout, sid)
        for j, data in enumerate(images[start : start + per_shard]):
            key = f"{sid:05d}{j:04d}"
            caption = captions[start + j] if captions else f"image {start + j}"
            w.add(key, "jpg", data, caption, {"n": start + j})
            keys.append(key)
        w.commit([], [], {})
    return keys


def write_img2dataset_dir(root: Path, images: Sequence[bytes], per_shard: int) -> list[str]:
    """img2dataset's output: NNNNN.tar at the top, with .jpg, .txt and .json members."""
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for sid, start in enumerate(range(0, len(images), per_shard)):
        with tarfile.open(root / f"{sid:05d}.tar", "w") as tar:
            for j, data in enumerate(images[start : start + per_shard]):
                key = f"{sid:05d}{j:04d}"
                for ext, payload in (
                    ("jpg", data),
                    ("txt", b"a caption"),
                    ("json", b'{"key": "%s"}' % key.encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys.append(key)
        (root / f"{sid:05d}.parquet").write_bytes(b"")  # present in real output, never read
    return keys


IMAGENET_SYNSETS = ("n01440764", "n01443537", "n02012849", "n03126707")  # tench, goldfish, 2 cranes


def write_imagenet(root: Path, per_class: int = 3, seed: int = 0) -> dict[str, Image.Image]:
    """ILSVRC2012 val sorted into synset folders, under root/val; returns id -> image."""
    out = {}
    n = 0
    for c, wnid in enumerate(IMAGENET_SYNSETS):
        d = root / "val" / wnid
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(per_class):
            n += 1
            img = field_image(seed + 100 * c + n)
            name = f"ILSVRC2012_val_{n:08d}.JPEG"
            img.save(d / name, format="PNG")  # lossless, whatever the suffix says, as in real data
            out[f"{wnid}/{name}"] = img
    return out


def write_imagefolder(
    root: Path, classes: Sequence[str], per_class: int, seed: int = 0
) -> dict[str, Image.Image]:
    out = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = field_image(seed + 1000 * c + j)
            img.save(root / name / f"{j:03d}.png")
            out[f"{name}/{j:03d}.png"] = img
    return out


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def write_cifar10(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    images = np.stack([field_array(seed + i, (32, 32, 3)) for i in range(n)])
    labels = np.arange(n, dtype=np.uint8) % 10
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
    (d / "test_batch.bin").write_bytes(records.astype(np.uint8).tobytes())
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return images, labels


def write_cifar100(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = root / "cifar-100-binary"
    d.mkdir(parents=True, exist_ok=True)
    images = np.stack([field_array(seed + i, (32, 32, 3)) for i in range(n)])
    fine = (np.arange(n) * 7 % 100).astype(np.uint8)
    coarse = (fine // 5).astype(np.uint8)
    records = np.concatenate(
        [coarse[:, None], fine[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1
    )
    (d / "test.bin").write_bytes(records.astype(np.uint8).tobytes())
    (d / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    (d / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    return images, fine


def idx_bytes(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def write_idx_set(
    root: Path, n: int, gz: bool, seed: int = 0, dotted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style t10k files: root/t10k-images-idx3-ubyte[.gz] and the labels."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.stack([field_array(seed + i, (28, 28)) for i in range(n)])
    labels = (np.arange(n) % 10).astype(np.uint8)
    sep = "." if dotted else "-"
    for name, arr in (
        (f"t10k-images{sep}idx3-ubyte", images),
        (f"t10k-labels{sep}idx1-ubyte", labels),
    ):
        data = idx_bytes(arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return images, labels


def write_stl10(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    images = np.stack([field_array(seed + i, (96, 96, 3)) for i in range(n)])
    labels = (np.arange(n) % 10).astype(np.uint8)
    # On disk: per image, channel planes, each column-major, i.e. (N, C, W, H).
    (d / "test_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
    (d / "test_y.bin").write_bytes((labels + 1).tobytes())
    (d / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return images, labels


def write_wds(
    root: Path, n: int, shards: int = 2, seed: int = 0
) -> tuple[list[Image.Image], list[int]]:
    """CLIP_benchmark's export: root/test/{0..}.tar with .webp + .cls, nshards.txt, classnames."""
    split = root / "test"
    split.mkdir(parents=True, exist_ok=True)
    images = [field_image(seed + i) for i in range(n)]
    labels = [i % 3 for i in range(n)]
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(split / f"{s}.tar", "w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                buf = io.BytesIO()
                images[i].save(buf, format="WEBP", lossless=True)
                for ext, payload in (("cls", str(labels[i]).encode()), ("webp", buf.getvalue())):
                    info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    (split / "nshards.txt").write_text(f"{shards}\n")
    (root / "classnames.txt").write_text("cat\ndog\nbird\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return images, labels
