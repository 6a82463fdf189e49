from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from pipeline.shards.reader import ShardReadError, find_shards, iter_samples, iter_shard
from pipeline.stats.counters import Counters
from tests.overlap.layouts import field_image, jpeg, write_img2dataset_dir, write_train_dir


def _images(n: int) -> list[bytes]:
    return [jpeg(field_image(i)) for i in range(n)]


def test_reads_our_shards_in_order_with_caption_and_meta(tmp_path: Path) -> None:
    images = _images(7)
    keys = write_train_dir(tmp_path, images, per_shard=3, captions=[f"cap {i}" for i in range(7)])
    shards = find_shards(tmp_path)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    stats = Counters()
    samples = list(iter_samples(shards, stats))
    assert [s.key for s in samples] == keys
    assert [s.image for s in samples] == images
    assert [s.caption for s in samples] == [f"cap {i}" for i in range(7)]
    assert [s.meta["n"] for s in samples] == list(range(7))
    assert [s.index for s in samples] == [0, 1, 2, 0, 1, 2, 0]
    assert {s.ext for s in samples} == {"jpg"}
    assert stats.to_dict() == {"samples": 7}


def test_reads_img2dataset_output_folder(tmp_path: Path) -> None:
    images = _images(5)
    keys = write_img2dataset_dir(tmp_path / "i2d", images, per_shard=2)
    shards = find_shards(tmp_path / "i2d")
    assert len(shards) == 3
    samples = list(iter_samples(shards))
    assert [s.key for s in samples] == keys
    assert [s.image for s in samples] == images
    assert samples[0].meta == {"key": keys[0]}


def test_a_single_tar_is_a_shard_and_bad_paths_say_what_is_expected(tmp_path: Path) -> None:
    write_train_dir(tmp_path / "d", _images(2), per_shard=2)
    tar = tmp_path / "d" / "shards" / "00000.tar"
    assert find_shards(tar) == [tar]
    with pytest.raises(ShardReadError, match="no such folder"):
        find_shards(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ShardReadError,
        match=r"no shards found: expected .*empty/shards/\*\.tar .* or .*empty/\*\.tar",
    ):
        find_shards(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ShardReadError, match=r"not a \.tar"):
        find_shards(tmp_path / "x.txt")


def _member_offset(tar_path: Path, name: str) -> int:
    with tarfile.open(tar_path) as t:
        return next(m.offset for m in t.getmembers() if m.name == name)


def test_a_damaged_member_header_is_skipped_and_counted_and_reading_goes_on(tmp_path: Path) -> None:
    write_train_dir(tmp_path, _images(5), per_shard=5)
    tar = tmp_path / "shards" / "00000.tar"
    data = bytearray(tar.read_bytes())
    at = _member_offset(tar, "000000002.jpg")
    data[at : at + 512] = os.urandom(512)
    tar.write_bytes(bytes(data))
    stats = Counters()
    keys = [s.key for s in iter_shard(tar, stats)]
    assert keys == ["000000000", "000000001", "000000003", "000000004"]
    assert stats["corrupt_member"] == 1
    assert stats["no_image"] == 1  # sample 2 kept its .json and .txt, not its image
    assert stats["samples"] == 4


def test_a_truncated_or_garbage_tar_yields_what_came_before_and_is_counted(tmp_path: Path) -> None:
    write_train_dir(tmp_path, _images(5), per_shard=5)
    tar = tmp_path / "shards" / "00000.tar"
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: _member_offset(tar, "000000003.jpg") + 600])  # inside sample 3's image
    stats = Counters()
    assert [s.key for s in iter_shard(cut, stats)] == ["000000000", "000000001", "000000002"]
    assert stats["corrupt_tar"] == 1
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all " * 100)
    stats = Counters()
    assert list(iter_shard(junk, stats)) == []
    assert stats["corrupt_tar"] == 1


def test_unparseable_json_is_counted_and_the_sample_kept(tmp_path: Path) -> None:
    import io

    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, payload in (("a.jpg", b"xx"), ("a.json", b"{nope"), ("b.txt", b"no image")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    stats = Counters()
    samples = list(iter_shard(tar_path, stats))
    assert [(s.key, s.meta) for s in samples] == [("a", {})]
    assert stats.to_dict() == {"bad_json": 1, "no_image": 1, "samples": 1}
