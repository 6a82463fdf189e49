"""Evaluation sets in their standard on-disk layouts: a registry of loaders.

Every loader checks the layout before anything heavy happens and raises one
``EvalSetError`` naming the files it expected and where. Images stay on disk (or in a
memory map) and are opened one at a time: an eval set costs its ids and labels in memory.

Item ids: the path relative to the set's root for folder layouts (``imagenet``,
``imagefolder``); the index in the split, as a string, for array and sharded formats
(``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``stl10``, ``wds``). Only the
evaluation split is read: ImageNet val, the test split of the others.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from pipeline.overlap.detectors import to_8bit
from pipeline.overlap.imagenet_classes import imagenet_classes
from pipeline.shards.reader import split_member_name

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class EvalSetError(ValueError):
    """A missing or malformed eval set, or a bad ``--eval`` spec: the message says what was
    expected and where."""


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def encoded(self, i: int) -> bytes | None:
        """The item's encoded file when the format stores one (JPEG, PNG...), else None."""

    def image(self, i: int) -> Image.Image:
        """The item decoded (mode L or RGB)."""


@dataclass(frozen=True)
class FileImages:
    root: Path
    paths: tuple[str, ...]  # relative to root

    def __len__(self) -> int:
        return len(self.paths)

    def encoded(self, i: int) -> bytes | None:
        return (self.root / self.paths[i]).read_bytes()

    def image(self, i: int) -> Image.Image:
        return _decode(self.encoded(i) or b"")


@dataclass(frozen=True)
class ArrayImages:
    array: np.ndarray  # (N, H, W) grey or (N, H, W, 3) RGB, uint8; may be a memory map

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def encoded(self, i: int) -> bytes | None:
        return None

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.array[i]))


@dataclass(frozen=True)
class TarImages:
    entries: tuple[tuple[str, int, int], ...]  # (tar path, data offset, size) per item

    def __len__(self) -> int:
        return len(self.entries)

    def encoded(self, i: int) -> bytes | None:
        path, offset, size = self.entries[i]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def image(self, i: int) -> Image.Image:
        return _decode(self.encoded(i) or b"")


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return to_8bit(img)  # 16-bit and float images: Pillow's convert() would clip them white


@dataclass(frozen=True)
class EvalSet:
    name: str  # the name in the report
    kind: str  # the registry entry that loaded it
    root: Path
    ids: tuple[str, ...]
    labels: np.ndarray  # int64 class index per item; -1 when the layout has no labels
    classes: tuple[str, ...]  # class index -> name
    images: ImageSource
    # Other names a prediction may use for a class (ImageNet synset ids and WordNet words).
    aliases: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


@dataclass(frozen=True)
class EvalKind:
    name: str
    layout: str  # what the loader expects, for error messages
    load: Callable[[str, Path], EvalSet]
    # Folder names to try under an --eval-root besides the set's own name.
    root_names: tuple[str, ...] = ()
    default_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class EvalSpec:
    """One ``--eval``: NAME, NAME:PATH, or ALIAS=NAME[:PATH] (two sets of one kind)."""

    name: str
    kind: str
    path: Path | None = None


_SPEC = re.compile(
    r"^(?:(?P<alias>[A-Za-z0-9][\w.-]*)=)?(?P<kind>[a-z0-9][a-z0-9-]*)(?::(?P<path>.+))?$"
)


def parse_eval_spec(text: str) -> EvalSpec:
    m = _SPEC.match(text.strip())
    if not m or m.group("kind") not in REGISTRY:
        kinds = ", ".join(REGISTRY)
        raise EvalSetError(
            f"--eval {text!r}: expected NAME, NAME:PATH or ALIAS=NAME:PATH with NAME one of {kinds}"
        )
    path = Path(m.group("path")).expanduser() if m.group("path") else None
    return EvalSpec(m.group("alias") or m.group("kind"), m.group("kind"), path)


def resolve_path(spec: EvalSpec, roots: Mapping[str, Path], root: Path | None) -> Path:
    """Where a set lives: its own PATH, a NAME:PATH --eval-root, DIR/NAME under the general
    --eval-root, or a known system location (Debian's Fashion-MNIST)."""
    kind = REGISTRY[spec.kind]
    if spec.path is not None:
        return spec.path
    for key in (spec.name, spec.kind):
        if key in roots:
            return roots[key]
    tried: list[Path] = []
    if root is not None:
        for sub in dict.fromkeys((spec.name, spec.kind, *kind.root_names)):
            tried.append(root / sub)
            if (root / sub).exists():
                return root / sub
    for p in kind.default_paths:
        tried.append(p)
        if p.exists():
            return p
    where = f"looked in {', '.join(map(str, tried))}" if tried else "no --eval-root given"
    raise EvalSetError(
        f"eval set {spec.name}: not found ({where}); give --eval {spec.kind}:PATH or "
        f"--eval-root DIR; expected {kind.layout}"
    )


def load_eval_set(
    spec: EvalSpec, roots: Mapping[str, Path] | None = None, root: Path | None = None
) -> EvalSet:
    path = resolve_path(spec, roots or {}, root)
    kind = REGISTRY[spec.kind]
    if not path.exists():
        raise EvalSetError(f"eval set {spec.name}: {path} does not exist; expected {kind.layout}")
    eval_set = kind.load(spec.name, path)
    if not len(eval_set):
        raise EvalSetError(
            f"eval set {spec.name}: no items in {eval_set.root}; expected {kind.layout}"
        )
    return eval_set


def _missing(name: str, kind: str, where: Path, what: str) -> EvalSetError:
    return EvalSetError(f"eval set {name}: {what} in {where}; expected {REGISTRY[kind].layout}")


def _first_dir_with(path: Path, names: Sequence[str], subdirs: Sequence[str]) -> Path | None:
    """``path`` or one of its known subfolders, the first that holds every file in ``names``."""
    for d in (path, *(path / s for s in subdirs)):
        if all((d / n).is_file() for n in names):
            return d
    return None


def _read_lines(path: Path) -> tuple[str, ...]:
    return tuple(
        line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    )


# ---------------------------------------------------------------------------------------------
# Class-folder trees


def _scan_class_tree(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted class folders, and (class, relative path) of every image below them."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    items: list[tuple[str, str]] = []
    for c in classes:
        for dirpath, dirnames, filenames in os.walk(root / c):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            for fn in sorted(filenames):
                if Path(fn).suffix.lower() in IMAGE_SUFFIXES and not fn.startswith("."):
                    items.append((c, (rel / fn).as_posix()))
    return classes, items


def _flat_images(path: Path) -> int:
    return sum(
        1 for e in os.scandir(path) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )


_SYNSET = re.compile(r"^n\d{8}$")


def load_imagenet(name: str, path: Path) -> EvalSet:
    table = imagenet_classes()
    index = {wnid: i for i, (wnid, _) in enumerate(table)}
    root = None
    for d in (path, path / "val", path / "ILSVRC2012_img_val"):
        if d.is_dir() and any(_SYNSET.match(e.name) and e.is_dir() for e in os.scandir(d)):
            root = d
            break
    if root is None:
        flat = _flat_images(path) if path.is_dir() else 0
        hint = (
            f"found {flat} images directly in it: sort them into synset folders first"
            if flat
            else "no synset folders (n01440764, ...)"
        )
        raise _missing(name, "imagenet", path, hint)
    classes, items = _scan_class_tree(root)
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise EvalSetError(
            f"eval set {name}: {root} has folders that are not ImageNet-1k synsets: "
            f"{', '.join(unknown[:5])}; expected {REGISTRY['imagenet'].layout} "
            "(use imagefolder for other class trees)"
        )
    if not items:
        raise _missing(name, "imagenet", root, "no images in the synset folders")
    short = tuple(words.split(", ", 1)[0] for _, words in table)
    aliases: dict[str, int] = {}
    for i, (wnid, words) in enumerate(table):
        aliases[wnid] = i
        aliases[words] = i
    return EvalSet(
        name=name,
        kind="imagenet",
        root=root,
        ids=tuple(rel for _, rel in items),
        labels=np.array([index[c] for c, _ in items], dtype=np.int64),
        classes=short,
        images=FileImages(root, tuple(rel for _, rel in items)),
        aliases=aliases,
    )


def load_imagefolder(name: str, path: Path) -> EvalSet:
    if not path.is_dir():
        raise _missing(name, "imagefolder", path.parent, f"{path.name} is not a folder")
    classes, items = _scan_class_tree(path)
    if not items:
        raise _missing(name, "imagefolder", path, "no images in class folders")
    index = {c: i for i, c in enumerate(classes)}
    return EvalSet(
        name=name,
        kind="imagefolder",
        root=path,
        ids=tuple(rel for _, rel in items),
        labels=np.array([index[c] for c, _ in items], dtype=np.int64),
        classes=tuple(classes),
        images=FileImages(path, tuple(rel for _, rel in items)),
    )


# ---------------------------------------------------------------------------------------------
# Array formats


def _array_set(
    name: str, kind: str, root: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> EvalSet:
    labels = labels.astype(np.int64)
    if len(labels) != len(images):
        raise EvalSetError(
            f"eval set {name}: {len(images)} images but {len(labels)} labels in {root}; "
            f"expected {REGISTRY[kind].layout}"
        )
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if len(bad):
        raise EvalSetError(
            f"eval set {name}: label {int(bad[0])} out of range for {len(classes)} classes in "
            f"{root}; expected {REGISTRY[kind].layout}"
        )
    return EvalSet(
        name=name,
        kind=kind,
        root=root,
        ids=tuple(str(i) for i in range(len(labels))),
        labels=labels,
        classes=tuple(classes),
        images=ArrayImages(images),
    )


def _load_cifar(name: str, path: Path, kind: str) -> EvalSet:
    # The binary release: fixed-size records of label byte(s) then 3x32x32 pixels (R, G, B
    # planes). Read with numpy; the Python release is pickles, which we never load.
    if kind == "cifar10":
        data_file, names_file, subdirs, label_bytes = (
            "test_batch.bin",
            "batches.meta.txt",
            ("cifar-10-batches-bin",),
            1,
        )
        py_dir = "cifar-10-batches-py"
    else:
        data_file, names_file, subdirs, label_bytes = (
            "test.bin",
            "fine_label_names.txt",
            ("cifar-100-binary",),
            2,
        )
        py_dir = "cifar-100-python"
    d = _first_dir_with(path, (data_file, names_file), subdirs)
    if d is None:
        pickled = (
            path.name == py_dir
            or (path / py_dir).is_dir()
            or (path / "test_batch").is_file()
            or (path / "test").is_file()
        )
        what = f"{data_file} and {names_file} not found"
        if pickled:
            what += (
                " (found the Python release: its pickles are never loaded, use the binary release)"
            )
        raise _missing(name, kind, path, what)
    record = label_bytes + 3 * 32 * 32
    size = (d / data_file).stat().st_size
    if size == 0 or size % record:
        raise EvalSetError(
            f"eval set {name}: {d / data_file} is {size} bytes, not a whole number of "
            f"{record}-byte records; expected {REGISTRY[kind].layout}"
        )
    records = np.memmap(d / data_file, dtype=np.uint8, mode="r").reshape(-1, record)
    labels = np.array(records[:, label_bytes - 1])  # CIFAR-100: the fine label, second byte
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _array_set(name, kind, d, images, labels, _read_lines(d / names_file))


def load_cifar10(name: str, path: Path) -> EvalSet:
    return _load_cifar(name, path, "cifar10")


def load_cifar100(name: str, path: Path) -> EvalSet:
    return _load_cifar(name, path, "cifar100")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot decompress: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: header cut short")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} but the body has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(path: Path, stem_words: tuple[str, str]) -> Path | None:
    """The t10k images or labels file under ``path`` (a few levels, gz or not, - or . naming)."""
    prefix, kind = stem_words
    pattern = re.compile(rf"^{prefix}[-.]{kind}[-.]idx\d-ubyte(\.gz)?$")
    for depth in range(4):
        for p in sorted(path.glob("/".join(["*"] * (depth + 1)))):
            if p.is_file() and pattern.match(p.name):
                return p
    return None


def _load_idx_set(name: str, path: Path, kind: str, classes: Sequence[str]) -> EvalSet:
    images_file = _find_idx(path, ("t10k", "images"))
    labels_file = _find_idx(path, ("t10k", "labels"))
    if images_file is None or labels_file is None:
        missing = [
            n
            for n, f in (
                ("t10k-images-idx3-ubyte[.gz]", images_file),
                ("t10k-labels-idx1-ubyte[.gz]", labels_file),
            )
            if f is None
        ]
        raise _missing(name, kind, path, f"{' and '.join(missing)} not found")
    try:
        images = read_idx(images_file)
        labels = read_idx(labels_file)
    except ValueError as e:
        raise EvalSetError(
            f"eval set {name}: malformed {e}; expected {REGISTRY[kind].layout}"
        ) from None
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise EvalSetError(
            f"eval set {name}: {images_file} holds {images.shape} {images.dtype}, expected N x H x W "
            f"bytes, and {labels_file} N labels; expected {REGISTRY[kind].layout}"
        )
    return _array_set(name, kind, images_file.parent, images, labels, classes)


def load_mnist(name: str, path: Path) -> EvalSet:
    return _load_idx_set(name, path, "mnist", tuple(str(i) for i in range(10)))


def load_fashion_mnist(name: str, path: Path) -> EvalSet:
    return _load_idx_set(name, path, "fashion-mnist", FASHION_MNIST_CLASSES)


def load_stl10(name: str, path: Path) -> EvalSet:
    files = ("test_X.bin", "test_y.bin", "class_names.txt")
    d = _first_dir_with(path, files, ("stl10_binary",))
    if d is None:
        raise _missing(name, "stl10", path, f"{', '.join(files)} not found")
    pixels = 3 * 96 * 96
    size = (d / "test_X.bin").stat().st_size
    if size == 0 or size % pixels:
        raise EvalSetError(
            f"eval set {name}: {d / 'test_X.bin'} is {size} bytes, not a whole number of "
            f"3x96x96 images; expected {REGISTRY['stl10'].layout}"
        )
    # Each image is stored channel by channel, each channel column-major: (N, C, W, H).
    raw = np.memmap(d / "test_X.bin", dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    images = raw.transpose(0, 3, 2, 1)
    labels = np.fromfile(d / "test_y.bin", dtype=np.uint8).astype(np.int64) - 1  # 1-based on disk
    return _array_set(name, "stl10", d, images, labels, _read_lines(d / "class_names.txt"))


# ---------------------------------------------------------------------------------------------
# CLIP_benchmark's WebDataset export


_WDS_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


def load_wds(name: str, path: Path) -> EvalSet:
    split = path / "test"
    if not (split / "nshards.txt").is_file():
        raise _missing(name, "wds", path, "test/nshards.txt not found")
    try:
        nshards = int((split / "nshards.txt").read_text().strip())
    except ValueError:
        raise EvalSetError(
            f"eval set {name}: {split / 'nshards.txt'} does not hold a number of shards"
        ) from None
    tars = [split / f"{i}.tar" for i in range(nshards)]
    missing = [t.name for t in tars if not t.is_file()]
    if missing:
        raise _missing(name, "wds", split, f"{', '.join(missing[:5])} missing of {nshards} shards")
    dataset_type = (
        (path / "dataset_type.txt").read_text().strip().lower()
        if (path / "dataset_type.txt").is_file()
        else "classification"
    )
    labelled = dataset_type == "classification"
    if labelled and not (path / "classnames.txt").is_file():
        raise _missing(name, "wds", path, "classnames.txt not found")
    classes = _read_lines(path / "classnames.txt") if labelled else ()
    entries: list[tuple[str, int, int]] = []
    labels: list[int] = []
    keys: list[str] = []
    for t in tars:
        try:
            samples = _scan_wds_tar(t)
        except (tarfile.TarError, OSError, ValueError) as e:
            raise EvalSetError(
                f"eval set {name}: {t} is not a readable tar ({e}); expected {REGISTRY['wds'].layout}"
            ) from None
        for key, image, cls in samples:
            if image is None:
                raise EvalSetError(
                    f"eval set {name}: sample {key} in {t} has no {'/'.join(_WDS_IMAGE_EXTS)} image"
                )
            if labelled and cls is None:
                raise EvalSetError(f"eval set {name}: sample {key} in {t} has no .cls label")
            entries.append((str(t), *image))
            labels.append(cls if labelled and cls is not None else -1)
            keys.append(key)
    labels_arr = np.array(labels, dtype=np.int64)
    if labelled and len(labels_arr) and (labels_arr.max() >= len(classes) or labels_arr.min() < 0):
        raise EvalSetError(
            f"eval set {name}: a .cls label is out of range for the {len(classes)} classes of {path / 'classnames.txt'}"
        )
    return EvalSet(
        name=name,
        kind="wds",
        root=path,
        ids=tuple(str(i) for i in range(len(entries))),
        labels=labels_arr,
        classes=classes,
        images=TarImages(tuple(entries)),
    )


def _scan_wds_tar(path: Path) -> list[tuple[str, tuple[int, int] | None, int | None]]:
    """(key, (offset, size) of its image, class) of each sample, without reading images."""
    out: dict[str, list] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            parts = split_member_name(info.name)
            if parts is None:
                continue
            key, ext = parts
            entry = out.setdefault(key, [None, None, 99])
            if ext in _WDS_IMAGE_EXTS and _WDS_IMAGE_EXTS.index(ext) < entry[2]:
                entry[0], entry[2] = (info.offset_data, info.size), _WDS_IMAGE_EXTS.index(ext)
            elif ext == "cls":
                f = tar.extractfile(info)
                entry[1] = int((f.read() if f else b"").decode().strip())
    return [(k, v[0], v[1]) for k, v in out.items()]


REGISTRY: dict[str, EvalKind] = {
    k.name: k
    for k in (
        EvalKind(
            "imagenet",
            "ILSVRC2012 val as a class-folder tree: PATH/n01440764/*.JPEG, one folder per "
            "synset id (or PATH/val/n01440764/...)",
            load_imagenet,
            ("ILSVRC2012_img_val",),
        ),
        EvalKind(
            "cifar10",
            "the CIFAR-10 binary release: PATH/test_batch.bin and PATH/batches.meta.txt "
            "(or PATH/cifar-10-batches-bin/...)",
            load_cifar10,
            ("cifar-10-batches-bin",),
        ),
        EvalKind(
            "cifar100",
            "the CIFAR-100 binary release: PATH/test.bin and PATH/fine_label_names.txt "
            "(or PATH/cifar-100-binary/...)",
            load_cifar100,
            ("cifar-100-binary",),
        ),
        EvalKind(
            "mnist",
            "MNIST IDX files: PATH/t10k-images-idx3-ubyte and PATH/t10k-labels-idx1-ubyte, "
            "gzipped (.gz) or not",
            load_mnist,
            ("MNIST",),
        ),
        EvalKind(
            "fashion-mnist",
            "Fashion-MNIST IDX files: PATH/t10k-images-idx3-ubyte and "
            "PATH/t10k-labels-idx1-ubyte, gzipped (.gz) or not (Debian's dataset-fashion-mnist "
            f"puts them under {DEBIAN_FASHION_MNIST})",
            load_fashion_mnist,
            ("fashion_mnist", "FashionMNIST"),
            (DEBIAN_FASHION_MNIST,),
        ),
        EvalKind(
            "stl10",
            "the STL-10 binary release: PATH/test_X.bin, PATH/test_y.bin and "
            "PATH/class_names.txt (or PATH/stl10_binary/...)",
            load_stl10,
            ("stl10_binary",),
        ),
        EvalKind(
            "imagefolder",
            "a class-folder tree: PATH/<class name>/<image files> (classes in sorted order)",
            load_imagefolder,
        ),
        EvalKind(
            "wds",
            "CLIP_benchmark's WebDataset layout: PATH/test/nshards.txt, PATH/test/0.tar ... "
            "(samples with .webp/.png/.jpg and .cls) and PATH/classnames.txt",
            load_wds,
        ),
    )
}
