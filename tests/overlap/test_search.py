"""Exact search against brute force, and merges that do not depend on order."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.overlap.detectors import PHashDetector
from pipeline.overlap.search import (
    EMPTY_REF,
    EvalIndex,
    SearchResult,
    make_ref,
    search_codes,
    search_local,
)
from tests.overlap.layouts import field_image, jpeg, write_train_dir


def _hamming_scores(queries: np.ndarray, base: np.ndarray, bits: int) -> np.ndarray:
    q = np.unpackbits(queries, axis=1).astype(np.int32)
    b = np.unpackbits(base, axis=1).astype(np.int32)
    d = (q[:, None, :] != b[None, :, :]).sum(-1)
    return (1.0 - d / bits).astype(np.float32)


def _binary_case(
    seed: int, n_eval: int = 60, n_train: int = 200, bits: int = 32
) -> tuple[EvalIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    eval_codes = rng.integers(0, 256, (n_eval, bits // 8), dtype=np.uint8)
    train = rng.integers(0, 256, (n_train, bits // 8), dtype=np.uint8)
    train[:10] = eval_codes[:10]  # exact copies
    train[10:20] = eval_codes[10:20]
    train[10:20, 0] ^= np.uint8(1)  # one bit off
    thresholds = rng.choice(np.array([0.75, 0.8, 0.9], np.float32), n_eval)
    valid = np.ones(n_eval, bool)
    valid[-1] = False  # an undecodable eval image is never searched
    return EvalIndex("binary", bits, eval_codes, thresholds, valid), train


def _search_in_shards(
    index: EvalIndex, train: np.ndarray, cuts: list[int], k: int, m: int
) -> list[SearchResult]:
    parts = []
    bounds = [0, *cuts, len(train)]
    for sid, (a, b) in enumerate(itertools.pairwise(bounds)):
        keys = [f"k{sid}-{i}" for i in range(b - a)]
        parts.append(search_codes(sid, train[a:b], np.arange(b - a), keys, index, k, m))
    return parts


def test_binary_search_is_exact_against_brute_force() -> None:
    index, train = _binary_case(0)
    k, m = 5, 50
    parts = _search_in_shards(index, train, [70, 150], k, m)
    result = sum(parts[1:], parts[0])
    # Global position of each reference, to recompute its score by brute force.
    offsets = {0: 0, 1: 70, 2: 150}
    brute = _hamming_scores(index.codes, train, index.dim)
    for row in range(len(index)):
        if not index.valid[row]:
            assert (result.top_refs[row] == EMPTY_REF).all()
            assert not (result.match_rows == row).any()
            continue
        expected = np.sort(brute[row])[::-1][:k]
        assert np.array_equal(result.top_scores[row], expected), row
        for ref, score in zip(result.top_refs[row], result.top_scores[row], strict=True):
            pos = offsets[int(ref) >> 32] + (int(ref) & 0xFFFFFFFF)
            assert brute[row, pos] == score
        above = np.flatnonzero(brute[row] >= index.thresholds[row])
        got = result.match_refs[result.match_rows == row]
        assert len(got) == len(above), row
    # The planted copies are found, each as the nearest neighbour.
    assert (result.top_scores[:10, 0] == 1.0).all()
    assert (result.top_scores[10:20, 0] == np.float32(1 - 1 / 32)).all()


def test_float_search_is_exact_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    eval_vecs = rng.normal(size=(40, 16)).astype(np.float32)
    eval_vecs /= np.linalg.norm(eval_vecs, axis=1, keepdims=True)
    train = rng.normal(size=(120, 16)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    train[:5] = eval_vecs[:5]
    index = EvalIndex("float", 16, eval_vecs, np.full(40, 0.99, np.float32), np.ones(40, bool))
    result = search_codes(0, train, np.arange(120), [str(i) for i in range(120)], index, 3, 10)
    brute = eval_vecs @ train.T
    expected = np.sort(brute, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(result.top_scores, expected, rtol=1e-5, atol=1e-6)
    assert sorted(result.match_rows.tolist()) == [0, 1, 2, 3, 4]
    assert result.key(int(result.top_refs[3, 0])) == "3"


def _same(a: SearchResult, b: SearchResult) -> bool:
    return (
        np.array_equal(a.top_scores, b.top_scores)
        and np.array_equal(a.top_refs, b.top_refs)
        and np.array_equal(a.match_rows, b.match_rows)
        and np.array_equal(a.match_refs, b.match_refs)
        and np.array_equal(a.match_scores, b.match_scores)
        and np.array_equal(a.match_counts, b.match_counts)
        and a.keys == b.keys
    )


def test_merging_shard_answers_in_any_order_and_grouping_gives_one_answer() -> None:
    index, train = _binary_case(2, n_train=240)
    parts = _search_in_shards(index, train, [40, 90, 170, 200], k=4, m=3)
    reference = sum(parts[1:], parts[0])
    rng = np.random.default_rng(0)
    for _ in range(6):
        order = rng.permutation(len(parts))
        left = parts[order[0]]
        for i in order[1:]:
            left = left + parts[i]
        assert _same(left, reference)
        # A tree: pairs first, as Spark's treeReduce may group them.
        a = parts[order[0]] + parts[order[1]]
        b = parts[order[2]] + (parts[order[3]] + parts[order[4]])
        assert _same(b + a, reference)
    # max_matches caps the matches kept per eval item, best first.
    counts = np.bincount(reference.match_rows, minlength=len(index))
    assert counts.max() <= 3


@pytest.mark.parametrize(("k", "m"), [(5, 2), (5, 5), (5, 6), (3, 8), (2, 40)])
def test_matches_beyond_max_matches_are_counted_as_capped(k: int, m: int) -> None:
    """Whatever top_k is next to max_matches, every item keeps min(its matches, m) of
    them, the best ones, and ``capped`` marks exactly the items that have more than m."""
    rng = np.random.default_rng(7)
    bits = 32
    eval_codes = rng.integers(0, 256, (8, bits // 8), dtype=np.uint8)
    # Item i has i * 2 exact copies (0 to 14), spread over the shards; the rest is noise.
    copies = [eval_codes[i] for i in range(8) for _ in range(2 * i)]
    train = np.concatenate([np.stack(copies), rng.integers(0, 256, (60, bits // 8), np.uint8)])
    train = train[rng.permutation(len(train))]
    index = EvalIndex("binary", bits, eval_codes, np.full(8, 0.95, np.float32), np.ones(8, bool))
    parts = _search_in_shards(index, train, [30, 31, 70], k, m)
    result = sum(parts[1:], parts[0])
    true = (_hamming_scores(eval_codes, train, bits) >= 0.95).sum(axis=1)
    assert true.tolist() == [2 * i for i in range(8)]  # no accidental near copy
    kept = np.bincount(result.match_rows, minlength=8)
    assert kept.tolist() == np.minimum(true, m).tolist()
    assert result.capped.tolist() == (true > m).tolist()
    assert (result.match_scores == 1.0).all()


def test_ties_are_broken_by_reference_so_the_kept_set_is_deterministic() -> None:
    index = EvalIndex(
        "binary",
        8,
        np.array([[0b1111_0000]], np.uint8),
        np.array([0.5], np.float32),
        np.ones(1, bool),
    )
    same = np.full((6, 1), 0b1111_0000, np.uint8)  # six identical training images
    parts = [
        search_codes(s, same[s * 2 : s * 2 + 2], np.arange(2), ["a", "b"], index, 3, 10)
        for s in range(3)
    ]
    merged = parts[2] + parts[0] + parts[1]
    assert merged.top_refs[0].tolist() == [
        int(make_ref(0, 0)),
        int(make_ref(0, 1)),
        int(make_ref(1, 0)),
    ]
    assert len(merged.match_rows) == 6


def test_local_search_in_worker_processes_equals_in_process(tmp_path: Path) -> None:
    det = PHashDetector(("phash", "dhash"), 8)
    eval_imgs = [field_image(i) for i in range(30)]
    train = [jpeg(field_image(1000 + i)) for i in range(40)] + [
        jpeg(eval_imgs[i], 80, (80, 60)) for i in range(5)
    ]
    write_train_dir(tmp_path, train, per_shard=15)
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    codes = np.stack([det.embed_image(im) for im in eval_imgs])
    index = EvalIndex("binary", det.dim, codes, np.full(30, 0.9, np.float32), np.ones(30, bool))
    one = search_local(shards, index, det, 3, 5, processes=1)
    two = search_local(shards, index, det, 3, 5, processes=2)
    assert _same(one, two)
    assert one.counters["embedded"] == 45 and one.counters["shards"] == 3
    assert sorted(set(one.match_rows.tolist())) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_no_training_images_gives_empty_answers(kind: str) -> None:
    width = 2 if kind == "binary" else 16
    dtype = np.uint8 if kind == "binary" else np.float32
    index = EvalIndex(
        kind, 16, np.zeros((3, width), dtype), np.zeros(3, np.float32), np.ones(3, bool)
    )
    r = search_codes(0, np.zeros((0, width), dtype), np.zeros(0, np.int64), [], index, 2, 5)
    assert (r.top_refs == EMPTY_REF).all() and len(r.match_rows) == 0 and r.keys == {}
