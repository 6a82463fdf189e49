"""Reads samples back from WebDataset tar shards: ours (DIR/shards/*.tar) and img2dataset's
(*.tar at the top of its output folder).

A shard is streamed member by member (``tarfile`` in ``r|`` mode), so reading holds one
sample in memory, never a whole shard. Members of one sample are consecutive and share a
key: the member name up to the first dot of its base name, as webdataset groups them.
Damage is counted, never raised: a member that cannot be read, a sample without an image,
unparseable JSON metadata, a tar cut short (the samples before the cut are still yielded).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.stats.counters import Counters

# Image members by preference when a sample holds more than one.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
# webdataset's rule: the key is everything before the first dot of the base name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class ShardReadError(ValueError):
    """Training data that cannot be found at all (a bad path), as opposed to damage inside it."""


@dataclass(frozen=True)
class TrainSample:
    key: str
    image: bytes
    ext: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    shard: str = ""  # the tar's path
    index: int = 0  # the sample's ordinal in its shard (0-based, samples with an image)


def find_shards(path: str | Path) -> list[Path]:
    """The tar shards of a dataset folder, sorted by name.

    Our layout keeps them in ``DIR/shards/``; img2dataset writes them at the top of its
    output folder. A path to a single ``.tar`` is that shard.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix != ".tar":
            raise ShardReadError(f"training data {p}: not a .tar shard or a folder of shards")
        return [p]
    if not p.is_dir():
        raise ShardReadError(f"training data {p}: no such folder")
    for d in (p / "shards", p):
        shards = sorted(x for x in d.glob("*.tar") if x.is_file())
        if shards:
            return shards
    raise ShardReadError(
        f"training data {p}: no shards found: expected {p / 'shards'}/*.tar (wit-builder "
        f"download) or {p}/*.tar (img2dataset output)"
    )


def split_member_name(name: str) -> tuple[str, str] | None:
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def _sample_from(
    key: str, members: dict[str, bytes], shard: str, index: int, stats: Counters
) -> TrainSample | None:
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        stats.add("no_image")
        return None
    image = members[ext]
    if not image:
        stats.add("empty_image")
        return None
    caption = members.get("txt", b"").decode("utf-8", "replace")
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            loaded = json.loads(members["json"])
            meta = loaded if isinstance(loaded, dict) else {"value": loaded}
        except (ValueError, UnicodeDecodeError):
            stats.add("bad_json")
    return TrainSample(key, image, ext, caption, meta, shard, index)


def iter_shard(path: str | Path, stats: Counters | None = None) -> Iterator[TrainSample]:
    """The samples of one tar shard, in tar order; damage is counted in ``stats``."""
    stats = stats if stats is not None else Counters()
    shard = str(path)
    key: str | None = None
    members: dict[str, bytes] = {}
    index = 0

    def flush() -> TrainSample | None:
        nonlocal index
        if key is None:
            return None
        sample = _sample_from(key, members, shard, index, stats)
        if sample is not None:
            index += 1
            stats.add("samples")
        return sample

    expected_offset = 0  # where the next header should start if nothing was skipped
    try:
        # ignore_zeros: a damaged header is skipped block by block until the next good one,
        # instead of ending the archive there silently (tarfile's default in stream mode).
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|", ignore_zeros=True) as tar:
            for info in tar:
                if info.offset > expected_offset:
                    stats.add("corrupt_member")  # bytes between two good headers were skipped
                expected_offset = (
                    info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                )
                if not info.isfile():
                    continue
                parts = split_member_name(info.name)
                if parts is None:
                    stats.add("unnamed_member")
                    continue
                if parts[0] != key:
                    sample = flush()
                    if sample is not None:
                        yield sample
                    key, members = parts[0], {}
                data = tar.extractfile(info)
                members[parts[1]] = data.read() if data is not None else b""
    except (tarfile.TarError, OSError, EOFError):
        # Cut short (a member's data ends early, or the file itself): what came before was
        # yielded; the sample being read is dropped; the rest of the file is unreachable.
        stats.add("corrupt_tar")
        return
    if _has_data_after(path, expected_offset):
        # Skipping damaged headers ran to the end of the file: the tail was not a tar.
        stats.add("corrupt_tar")
    sample = flush()
    if sample is not None:
        yield sample


def _has_data_after(path: str | Path, offset: int) -> bool:
    """Whether anything but the zero padding that ends a tar follows ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return True
    return False


def iter_samples(
    paths: Iterable[str | Path], stats: Counters | None = None
) -> Iterator[TrainSample]:
    """Every sample of every shard, shard by shard."""
    for p in paths:
        yield from iter_shard(p, stats)
