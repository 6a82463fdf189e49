from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.dedup.images import DedupConfig, exact_duplicates, find_duplicates, near_duplicates
from pipeline.synthweb.images import render_image


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_exact_duplicates_point_at_the_smallest_key() -> None:
    rows = [("000000003", "aa"), ("000000001", "aa"), ("000000002", "bb"), ("000000004", "aa")]
    dups = exact_duplicates(rows)
    assert [(d.key, d.duplicate_of, d.kind) for d in dups] == [
        ("000000003", "000000001", "exact"),
        ("000000004", "000000001", "exact"),
    ]


def test_rows_without_a_digest_are_never_exact_duplicates() -> None:
    # A ledger written without hashes (img2dataset without compute_hash) has null sha256:
    # those images are not copies of each other, and a generator is read whole.
    rows = [("000000001", None), ("000000002", None), ("000000003", ""), ("000000004", "ab")]
    assert exact_duplicates(rows) == []
    dups = exact_duplicates(iter([*rows, ("000000005", "ab")]))
    assert [(d.key, d.duplicate_of, d.kind) for d in dups] == [("000000005", "000000004", "exact")]


def test_near_duplicates_group_transitively_and_keep_the_smallest_key() -> None:
    # a~b at distance 1, b~c at distance 1 (a~c at 2): one group with radius 1.
    a = np.zeros(8, np.uint8)
    b = a.copy()
    b[0] = 0b1
    c = b.copy()
    c[1] = 0b1
    far = np.full(8, 0xFF, np.uint8)
    dups = near_duplicates(["k3", "k1", "k2", "k9"], np.stack([c, a, b, far]), max_hamming=1)
    assert {(d.key, d.duplicate_of) for d in dups} == {("k2", "k1"), ("k3", "k1")}


def test_planted_copies_are_found_and_distinct_images_are_not() -> None:
    originals = [render_image(seed, 480, 360)[0] for seed in range(12)]
    images = []
    truth = {}
    for i, img in enumerate(originals):
        key = f"{i:09d}"
        images.append((key, f"sha{i}", _jpeg(img)))
    # Copies: a re-encode at low quality, a downscale, and a byte-identical file.
    images.append(("100000000", "sha-re", _jpeg(originals[0], quality=40)))
    truth["100000000"] = ("000000000", "near")
    images.append(("100000001", "sha-small", _jpeg(originals[1].resize((240, 180)))))
    truth["100000001"] = ("000000001", "near")
    images.append(("100000002", "sha2", images[2][2]))
    truth["100000002"] = ("000000002", "exact")
    dups, counts = find_duplicates(images, DedupConfig(max_hamming=6))
    assert {d.key: (d.duplicate_of, d.kind) for d in dups} == truth
    assert counts == {"images": 15, "undecodable": 0, "exact": 1, "near": 2}


def test_undecodable_images_are_counted_not_fatal() -> None:
    dups, counts = find_duplicates([("000000001", "x", b"not an image")], DedupConfig())
    assert dups == [] and counts["undecodable"] == 1


def test_bad_radius_is_a_config_error() -> None:
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="max_hamming"):
        DedupConfig(max_hamming=40)


def test_multi_index_hashing_finds_what_exhaustive_search_finds() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    noisy = base.copy()
    flips = rng.integers(0, 64, size=(300, 3))
    for row, bits in enumerate(flips):  # up to 3 bit flips from each base code
        for b in bits:
            noisy[row, b // 8] ^= np.uint8(1 << (b % 8))
    codes = np.concatenate([base, noisy])
    keys = [f"{i:09d}" for i in range(len(codes))]
    flat = near_duplicates(keys, codes, max_hamming=3)
    hashed = near_duplicates(keys, codes, max_hamming=3, exhaustive_limit=0)
    assert {(d.key, d.duplicate_of) for d in hashed} == {(d.key, d.duplicate_of) for d in flat}
    assert len(flat) >= 300
