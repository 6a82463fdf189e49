"""Exact and near-duplicate images inside a dataset, each pointing at the key it duplicates.

Exact: the same SHA-256 of the original bytes. Near: perceptual hashes (pHash, 64 bits)
within a Hamming radius, found with a FAISS binary index. Duplicates form groups (near
duplicates chain: a~b and b~c puts a, b, c together); the smallest key of a group is the
one kept, so the answer does not depend on the order images were seen in.

pHash is robust to re-encoding and rescaling (distance ~0) but not to crops or flips
(FIELD_NOTES 2): it finds copies, not near-copies; the overlap stage has the learned
detector for those.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    max_hamming: int = 4  # of 64 bits; re-encodes and rescales land at 0-2

    def __post_init__(self) -> None:
        from pipeline.config import ConfigError

        if not 0 <= self.max_hamming < 16:
            raise ConfigError(f"max_hamming must be in 0..15, got {self.max_hamming}")


@dataclass(frozen=True, slots=True)
class Duplicate:
    key: str
    duplicate_of: str  # the kept key of its group
    kind: str  # "exact" or "near"
    distance: int  # Hamming distance of the pair that joined it to the group (0 for exact)


class _Groups:
    """Union-find over keys; the root of a group is its smallest key."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, k: str) -> str:
        root = k
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(k, k) != root:  # path compression
            self.parent[k], k = root, self.parent[k]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def exact_duplicates(rows: Iterable[tuple[str, str | None]]) -> list[Duplicate]:
    """(key, sha256) pairs -> every key whose bytes an earlier (smaller) key already has.

    A row without a digest (null or empty: a ledger written without hashes) is nobody's
    duplicate: an unknown digest says nothing about the bytes."""
    hashed = sorted((key, digest) for key, digest in rows if digest)
    first: dict[str, str] = {}
    out = []
    for key, digest in hashed:
        kept = first.setdefault(digest, key)
        if kept != key:
            out.append(Duplicate(key, kept, "exact", 0))
    return out


def phash_code(image_bytes: bytes) -> np.ndarray | None:
    """The 64-bit pHash of an image as 8 bytes, or None when it cannot be decoded."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image_bytes)) as img:
            h = imagehash.phash(img.convert("L"))
    except Exception:  # undecodable bytes: nothing to compare, reported by the caller
        return None
    return np.packbits(h.hash.flatten()).astype(np.uint8)


def near_duplicates(
    keys: list[str],
    codes: np.ndarray,
    max_hamming: int,
    skip: set[str] | None = None,
    exhaustive_limit: int = 20_000,
) -> list[Duplicate]:
    """Groups of codes within ``max_hamming`` bits; every member but the smallest key.

    ``codes`` is uint8 [n, 8]. Multi-index hashing (8 substrings of 8 bits) finds every
    pair within radius < 8 exactly, without comparing all pairs.
    """
    import faiss

    skip = skip or set()
    n = len(keys)
    if n < 2:
        return []
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if n <= exhaustive_limit:
        index = faiss.IndexBinaryFlat(64)
    else:  # exact for radius < 8 by the pigeonhole principle, and sub-quadratic
        index = faiss.IndexBinaryMultiHash(64, 8, 8)
    index.add(codes)
    lims, distances, labels = index.range_search(codes, max_hamming + 1)  # radius is exclusive
    groups = _Groups()
    joined: dict[str, int] = {}
    for i in range(n):
        for j, d in zip(
            labels[lims[i] : lims[i + 1]], distances[lims[i] : lims[i + 1]], strict=True
        ):
            if j <= i or keys[i] in skip or keys[j] in skip:
                continue
            groups.union(keys[i], keys[int(j)])
            for k in (keys[i], keys[int(j)]):
                joined[k] = min(joined.get(k, 64), int(d))
    out = []
    for k in sorted(joined):
        root = groups.find(k)
        if root != k:
            out.append(Duplicate(k, root, "near", joined[k]))
    return out


def image_hashes(
    images: Iterable[tuple[str, str, bytes]],
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, sha256, image bytes) -> (key, sha256, 8-byte pHash or None if undecodable).

    The per-image half of the work: runs where the images are (a Spark task per shard)."""
    for key, digest, data in images:
        code = phash_code(data)
        yield key, digest, None if code is None else code.tobytes()


def duplicates_from_hashes(
    hashes: Iterable[tuple[str, str, bytes | None]], config: DedupConfig
) -> tuple[list[Duplicate], dict[str, int]]:
    """The global half: exact groups by sha256, near groups by pHash, smallest key kept.

    Returns the duplicates and counts (images, undecodable, exact, near)."""
    rows: list[tuple[str, str]] = []
    keys: list[str] = []
    codes: list[np.ndarray] = []
    undecodable = 0
    for key, digest, code in hashes:
        rows.append((key, digest))
        if code is None:
            undecodable += 1
        else:
            keys.append(key)
            codes.append(np.frombuffer(code, dtype=np.uint8))
    exact = exact_duplicates(rows) if config.exact else []
    near: list[Duplicate] = []
    if config.near and keys:
        exact_keys = {d.key for d in exact}
        near = near_duplicates(keys, np.stack(codes), config.max_hamming, skip=exact_keys)
    counts = {
        "images": len(rows),
        "undecodable": undecodable,
        "exact": len(exact),
        "near": len(near),
    }
    return exact + near, counts


def find_duplicates(
    images: Iterable[tuple[str, str, bytes]], config: DedupConfig
) -> tuple[list[Duplicate], dict[str, int]]:
    """(key, sha256, image bytes) -> duplicates and counts, on one machine."""
    return duplicates_from_hashes(image_hashes(images), config)
