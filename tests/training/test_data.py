"""The data stream: shard discovery, counts, splits, exclusion, damage, fail-fast paths."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.shards.reader import TrainSample
from tests.training.shardgen import write_shards
from training import run
from training.data import (
    ShardStream,
    TrainDataError,
    decode_image,
    expand_braces,
    load_exclusions,
    plan_data,
    resolve_shards,
    split_preprocess,
    to_model_input,
)
from training.models import ModelConfigError, build, load_config


def _to_tensor(img: object) -> torch.Tensor:
    # The stream's plumbing is under test here, not the pixels: skip the real transform.
    return torch.zeros(1)


def _collect(stream: ShardStream, n_batches: int, workers: int = 0) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n_batches:
            break
    return out


def test_brace_patterns_and_counts_without_flags(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=3, per_shard=5)
    assert expand_braces("a/{00000..00002}.tar") == [f"a/0000{i}.tar" for i in range(3)]
    assert expand_braces("{x,y}{1..2}") == ["x1", "x2", "y1", "y2"]
    assert len(resolve_shards(str(tmp_path / "d" / "{00000..00001}.tar"))) == 2
    assert plan_data(str(tmp_path / "d")).samples == 15
    # Without stats JSON, the tar itself is counted: the count is never a required flag.
    write_shards(tmp_path / "bare", n_shards=2, per_shard=4, write_stats=False)
    assert plan_data(str(tmp_path / "bare")).samples == 8
    with pytest.raises(TrainDataError, match="1 of 3 shards or folders missing"):
        resolve_shards(str(tmp_path / "d" / "{00000..00003}.tar").replace("00000", "00001"))
    # A brace pattern of folders names their shards.
    assert len(resolve_shards(str(tmp_path / "{d,bare}"))) == 5


def test_workers_split_shards_and_cover_every_key_once(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=4, per_shard=8)
    plan = plan_data(str(tmp_path / "d"), workers=2)
    assert set(plan.shards_for(0)).isdisjoint(plan.shards_for(1))
    stream = ShardStream(plan, 8, _to_tensor, list, shuffle_buffer=4)
    batches = _collect(stream, 4, workers=2)  # one epoch: 32 samples
    seen = [k for b in batches for k in b["keys"]]
    assert sorted(seen) == sorted(keys)
    assert [b["worker"] for b in batches] == [0, 1, 0, 1]
    assert [b["batch"] for b in batches] == [0, 1, 2, 3]


def test_excluded_keys_never_yielded(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=2, per_shard=20)
    excluded = set(keys[::3])
    path = tmp_path / "decontaminate.parquet"
    pq.write_table(pa.table({"key": sorted(excluded), "eval": ["x"] * len(excluded)}), path)
    assert load_exclusions(path).everywhere == excluded
    plan = plan_data(str(tmp_path / "d"))
    stream = ShardStream(plan, 5, _to_tensor, list, exclude=load_exclusions(path))
    batches = _collect(stream, 20)  # several epochs
    seen = {k for b in batches for k in b["keys"]}
    assert seen == set(keys) - excluded
    assert batches[-1]["stats"]["excluded"] >= len(excluded)


def test_exclusions_naming_a_shard_leave_the_key_out_of_that_shard_only(tmp_path: Path) -> None:
    # Two datasets numbered alike (as img2dataset numbers each from 000000000): the same
    # keys in both. The overlap tool's rows name the shard each key was found in.
    keys = write_shards(tmp_path / "a", n_shards=2, per_shard=6)
    assert write_shards(tmp_path / "b", n_shards=2, per_shard=6, seed=1) == keys
    shard_a = tmp_path / "a" / "00001.tar"
    named = keys[6:9]  # in a/00001.tar
    elsewhere = tmp_path / "moved" / "00000.tar"  # a shard this run does not read
    path = tmp_path / "decontaminate.parquet"
    rows = {
        "train_key": [*named, keys[0]],
        "train_shard_path": [str(shard_a.resolve())] * 3 + [str(elsewhere)],
    }
    pq.write_table(pa.table(rows), path)
    # Another spelling of the same folder names the same shards.
    spec = f"{tmp_path / 'b' / '..' / 'a'}::{tmp_path / 'b'}"
    plan = plan_data(spec)
    exclusions = load_exclusions(path, plan.shards)
    assert exclusions.in_shard(shard_a) == set(named)
    assert exclusions.in_shard(tmp_path / "b" / "00001.tar") == set()
    # The key whose shard is not read here is left out everywhere, and said so.
    assert exclusions.everywhere == {keys[0]}
    assert len(exclusions) == 4
    (note,) = exclusions.notes
    assert f"1 shard(s) it names are not in --train-data (first {elsewhere})" in note

    # One batch of every usable sample (the shuffle buffer holds the whole pass).
    (batch,) = _collect(ShardStream(plan, 19, _to_tensor, list, exclude=exclusions), 1)
    # keys[0] is left out of both datasets; the named keys only of a/00001.tar: in b
    # they are other images, and are trained on.
    from_a = [k for k in keys if k not in named and k != keys[0]]
    assert sorted(batch["keys"]) == sorted(from_a + keys[1:])
    assert batch["stats"]["excluded"] == 2 + 3
    # Without the shard column (older reports), keys alone: left out of both datasets.
    pq.write_table(pa.table({"train_key": rows["train_key"]}), path)
    assert load_exclusions(path, plan.shards).everywhere == {*named, keys[0]}


def test_the_builds_duplicates_leave_their_keys_out_of_their_own_dataset(tmp_path: Path) -> None:
    # Two builds, numbered alike: DIR/dedup/duplicates.parquet names DIR's tars.
    keys = write_shards(tmp_path / "a" / "shards", n_shards=2, per_shard=4)
    assert write_shards(tmp_path / "b" / "shards", n_shards=2, per_shard=4, seed=1) == keys
    (tmp_path / "a" / "dedup").mkdir()
    dups = tmp_path / "a" / "dedup" / "duplicates.parquet"
    rows = {"key": [keys[5], keys[0]], "shard": ["shards/00001.tar", "shards/00000.tar"]}
    pq.write_table(pa.table({**rows, "duplicate_of": [keys[4], keys[1]]}), dups)
    plan = plan_data(f"{tmp_path / 'a'}::{tmp_path / 'b'}")
    exclusions = load_exclusions(dups, plan.shards)
    assert exclusions.in_shard(tmp_path / "a" / "shards" / "00001.tar") == {keys[5]}
    assert exclusions.in_shard(tmp_path / "a" / "shards" / "00000.tar") == {keys[0]}
    assert exclusions.in_shard(tmp_path / "b" / "shards" / "00001.tar") == set()
    assert exclusions.everywhere == set() and not exclusions.notes
    # Trained on b alone: a's tars are not read, so its keys are left out everywhere.
    alone = load_exclusions(dups, plan_data(str(tmp_path / "b")).shards)
    assert alone.everywhere == {keys[5], keys[0]} and len(alone.notes) == 1
    # A copy of the file elsewhere does not say whose tars it names: keys alone.
    elsewhere = tmp_path / "dups.parquet"
    elsewhere.write_bytes(dups.read_bytes())
    assert load_exclusions(elsewhere, plan.shards).everywhere == {keys[5], keys[0]}


def test_exclusion_file_needs_key_column(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["a"]}), path)
    with pytest.raises(TrainDataError, match="no 'key' or 'train_key' column"):
        load_exclusions(path)
    bad = tmp_path / "bad.parquet"
    bad.write_text("key\na\n")  # a CSV under a Parquet name
    with pytest.raises(TrainDataError, match=r"bad\.parquet: not a Parquet file"):
        load_exclusions([bad])


def test_exclusions_from_several_files_and_the_overlap_tools_column(tmp_path: Path) -> None:
    dups, decontam = tmp_path / "duplicates.parquet", tmp_path / "decontaminate.parquet"
    pq.write_table(pa.table({"key": ["a", "b", None], "duplicate_of": ["x", "y", "z"]}), dups)
    pq.write_table(pa.table({"train_key": ["b", "c"], "eval_id": ["1", "2"]}), decontam)
    assert load_exclusions([dups, decontam]).everywhere == {"a", "b", "c"}
    assert load_exclusions(str(decontam)).everywhere == {"b", "c"}
    args = run.parse_args(
        ["--train-data", "d", "--output", "o", "--exclude", str(dups), "--exclude", str(decontam)]
    )
    assert args.exclude == [str(dups), str(decontam)]


def test_repeatable_options_from_config_are_replaced_by_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"exclude": "a.parquet", "zeroshot": ["cifar10", "mnist"]}))
    base = ["--train-data", "d", "--output", "o", "--config", str(cfg)]
    args = run.parse_args(base)
    assert (args.exclude, args.zeroshot) == (["a.parquet"], ["cifar10", "mnist"])
    args = run.parse_args([*base, "--exclude", "b.parquet", "--zeroshot", "stl10"])
    assert (args.exclude, args.zeroshot) == (["b.parquet"], ["stl10"])


def test_batches_stay_full_past_undecodable_images(tmp_path: Path) -> None:
    # Ranks all-gather features: every batch must hold batch-size samples, so a batch
    # takes the next sample in place of one that fails to decode, and counts it.
    write_shards(tmp_path / "d", n_shards=1, per_shard=20, corrupt_every=4)
    plan = plan_data(str(tmp_path / "d"))
    stream = ShardStream(plan, 5, _to_tensor, list, shuffle_buffer=1)
    batches = _collect(stream, 3)
    assert [len(b["keys"]) for b in batches] == [5, 5, 5]
    assert len({k for b in batches for k in b["keys"]}) == 15  # the 15 good ones, once
    assert batches[-1]["stats"]["corrupt_image"] == 5  # 5 of 20 are truncated JPEGs
    assert [b["taken"] for b in batches] == [7, 14, 20]  # the data position counts them
    # A 4th batch reads the shard again: never a sample twice in one batch.
    for b in _collect(ShardStream(plan, 10, _to_tensor, list, shuffle_buffer=1), 4):
        assert len(b["keys"]) == len(set(b["keys"])) == 10


def test_a_batch_whose_images_all_fail_is_filled_in_order_with_workers(tmp_path: Path) -> None:
    # Two batches' worth of undecodable images in a row: with workers, the batches still
    # arrive in order, full, and the data position follows the batch index.
    write_shards(tmp_path / "d", n_shards=2, per_shard=24, corrupt_every=1)
    write_shards(tmp_path / "e", n_shards=2, per_shard=24, seed=5)
    for i in range(2):
        (tmp_path / "e" / f"{i:05d}.tar").rename(tmp_path / "d" / f"{i + 2:05d}.tar")
        (tmp_path / "e" / f"{i:05d}_stats.json").rename(tmp_path / "d" / f"{i + 2:05d}_stats.json")
    plan = plan_data(str(tmp_path / "d"), workers=2)
    batches = _collect(ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=1), 12, workers=2)
    assert [b["batch"] for b in batches] == list(range(12))
    assert all(len(b["keys"]) == 4 for b in batches)


def test_samples_without_a_caption_are_skipped_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_shards(src, n_shards=1, per_shard=12)
    (tmp_path / "d").mkdir()
    with (
        tarfile.open(src / "00000.tar") as tin,
        tarfile.open(tmp_path / "d" / "00000.tar", "w") as tout,
    ):
        for info in tin:
            payload = tin.extractfile(info).read()
            n = int(info.name[5:9])
            if info.name.endswith(".txt") and n % 3 == 0:
                continue  # no .txt
            if info.name.endswith(".txt") and n % 3 == 1:
                payload = b"  \n"  # a blank caption
            info.size = len(payload)
            tout.addfile(info, io.BytesIO(payload))
    stream = ShardStream(plan_data(str(tmp_path / "d")), 4, _to_tensor, list, shuffle_buffer=1)
    (batch,) = _collect(stream, 1)
    assert all(c.strip() for c in batch["texts"])
    assert len(batch["keys"]) == 4
    assert batch["stats"]["no_caption"] == 8


def test_fail_fast_no_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainDataError, match="no shards found"):
        plan_data(str(tmp_path / "empty"))
    argv = ["--train-data", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]
    assert run.main([*argv, "--steps", "1"]) == 2
    assert "no shards found" in capsys.readouterr().err


def test_readers_share_shards_when_there_are_fewer_shards_than_readers(tmp_path: Path) -> None:
    # 2 shards for 2 ranks x 2 workers: each reader reads its range of a shard; an epoch
    # still reads each sample once.
    keys = write_shards(tmp_path / "d", n_shards=2, per_shard=8)
    seen = []
    for rank in (0, 1):
        plan = plan_data(str(tmp_path / "d"), rank=rank, world_size=2, workers=2)
        stream = ShardStream(plan, 2, _to_tensor, list, shuffle_buffer=3)
        seen += [k for b in _collect(stream, 4, workers=2) for k in b["keys"]]
    assert sorted(seen) == sorted(keys)
    # One shard, two ranks, no workers: fine too (it was refused, naming --workers 0).
    one = str(tmp_path / "d" / "00000.tar")
    assert plan_data(one, rank=1, world_size=2).segments(0) == (
        (tmp_path / "d" / "00000.tar", 4, None),
    )


def test_uneven_and_empty_shards_give_each_sample_once_per_epoch(tmp_path: Path) -> None:
    # Shards of 40, 4, 4, 4 and 0 samples (img2dataset writes an empty shard when all its
    # URLs fail), 2 ranks x 2 workers, 2 epochs: each epoch reads each sample once.
    keys = write_shards(tmp_path / "d", n_shards=5, per_shard=0, sizes=[40, 4, 4, 4, 0])
    assert len(keys) == len(set(keys)) == 52
    by_epoch: dict[int, list[str]] = {0: [], 1: []}
    for rank in (0, 1):
        plan = plan_data(str(tmp_path / "d"), rank=rank, world_size=2, workers=2)
        assert plan.empty_shards == 1 and "1 shard(s) with no samples skipped" in plan.notes[0]
        assert plan.batches_per_epoch(4) == 6
        stream = ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=5)
        for b in _collect(stream, 12, workers=1 if rank else 2):  # 1 worker plays both
            assert len(set(b["keys"])) == 4
            by_epoch[b["epoch"]] += b["keys"]
    for seen in by_epoch.values():
        assert len(seen) == 48 and len(set(seen)) == 48  # 52 // 8 x 8: 4 left for the epoch


def test_a_shard_emptied_by_exclusion_is_left_out_of_the_epoch(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=4, per_shard=8)
    path = tmp_path / "decontaminate.parquet"
    shard0 = str((tmp_path / "d" / "00000.tar").resolve())
    pq.write_table(pa.table({"train_key": keys[:8], "train_shard_path": [shard0] * 8}), path)
    plan = plan_data(str(tmp_path / "d"), workers=2)
    exclusions = load_exclusions(path, plan.shards)
    plan = plan.excluding(exclusions)
    assert (plan.samples, len(plan.shards), plan.empty_shards) == (24, 3, 1)
    stream = ShardStream(plan, 4, _to_tensor, list, exclude=exclusions)
    seen = [k for b in _collect(stream, plan.batches_per_epoch(4), workers=2) for k in b["keys"]]
    assert sorted(seen) == sorted(keys[8:])  # one epoch: each usable sample once


def test_fail_fast_zero_usable_samples(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=2, per_shard=3)
    for stats in (tmp_path / "d").glob("*_stats.json"):
        stats.write_text(json.dumps({"successes": 0}))
    with pytest.raises(TrainDataError, match="zero usable samples"):
        plan_data(str(tmp_path / "d"))
    # Everything excluded: the worker stops with a message instead of looping forever.
    write_shards(tmp_path / "e", n_shards=1, per_shard=3)
    stream = ShardStream(
        plan_data(str(tmp_path / "e")), 2, _to_tensor, list, exclude=frozenset(keys)
    )
    with pytest.raises(TrainDataError, match="zero usable samples"):
        _collect(stream, 1)


def test_unknown_and_network_model_configs_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelConfigError, match="available: ViT-B-32, tiny"):
        load_config("nope")
    cfg = {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_tokenizer_name": "x/y"}}
    (tmp_path / "hf.json").write_text(json.dumps(cfg))
    monkeypatch.setattr("training.models.CONFIG_DIR", tmp_path)
    with pytest.raises(ModelConfigError, match="Hugging Face download"):
        load_config("hf")


def test_epochs_cover_every_key_once_then_reshuffle(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=4, per_shard=8)
    plan = plan_data(str(tmp_path / "d"), workers=2)
    assert plan.batches_per_epoch(4) == 8
    stream = ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=4, seed=7)
    batches = _collect(stream, 16, workers=2)  # two epochs
    assert [b["batch"] for b in batches] == list(range(16))
    assert [b["epoch"] for b in batches] == [0] * 8 + [1] * 8
    epochs = [[k for b in batches if b["epoch"] == e for k in b["keys"]] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(keys) == sorted(epochs[1])
    assert epochs[0] != epochs[1]  # the boundary reshuffled (shards dealt anew too)
    assert plan.shards_for(0, epoch=0, seed=7) != plan.shards_for(0, epoch=1, seed=7)


def test_stream_resumes_mid_epoch_at_the_same_batches(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=4, per_shard=10)
    plan = plan_data(str(tmp_path / "d"), workers=2)
    full = _collect(ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=3), 24, workers=2)
    resumed = ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=3, start_batch=13)
    tail = _collect(resumed, 11, workers=2)
    assert [b["batch"] for b in tail] == list(range(13, 24))
    assert [b["keys"] for b in tail] == [b["keys"] for b in full[13:]]
    assert [b["epoch"] for b in tail] == [b["epoch"] for b in full[13:]]


def test_uneven_shards_still_fill_every_workers_share(tmp_path: Path) -> None:
    # 2 samples for worker 0, 30 for worker 1: worker 0 repeats its pass within the epoch
    # instead of starving the round robin.
    write_shards(tmp_path / "a", n_shards=1, per_shard=2, seed=1)
    write_shards(tmp_path / "b", n_shards=1, per_shard=30, seed=2)
    (tmp_path / "b" / "00000.tar").rename(tmp_path / "a" / "00001.tar")
    plan = plan_data(str(tmp_path / "a" / "{00000..00001}.tar"), workers=2)
    batches = _collect(ShardStream(plan, 4, _to_tensor, list), 8, workers=2)
    assert [b["batch"] for b in batches] == list(range(8))
    assert all(len(b["keys"]) == 4 for b in batches)


def test_resample_feeds_more_readers_than_shards_deterministically(tmp_path: Path) -> None:
    keys = set(write_shards(tmp_path / "d", n_shards=1, per_shard=12))
    spec = str(tmp_path / "d")

    def rank_keys(rank: int, seed: int) -> list[list[str]]:
        plan = plan_data(spec, rank=rank, world_size=2, workers=2, resample=True)
        stream = ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=5, seed=seed)
        batches = _collect(stream, 6, workers=2)
        assert [b["worker"] for b in batches] == [0, 1] * 3  # both workers get data
        return [b["keys"] for b in batches]

    # 1 shard, 2 ranks x 2 workers (ranks simulated by their plans): every reader draws.
    runs = {(rank, seed): rank_keys(rank, seed) for rank in (0, 1) for seed in (0, 1)}
    for got in runs.values():
        assert {k for b in got for k in b} <= keys
        assert all(len(b) == 4 for b in got)
    assert rank_keys(0, 0) == runs[0, 0]  # the same seed draws the same
    assert runs[0, 0] != runs[1, 0]  # ranks draw differently
    assert runs[0, 0] != runs[0, 1]  # and so do seeds


def test_resample_draws_shards_with_replacement_by_seed(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=3, per_shard=2)
    plan = plan_data(str(tmp_path / "d"), resample=True)
    stream = ShardStream(plan, 2, _to_tensor, list, seed=3)

    def draws(seed: int, epoch: int) -> list[str]:
        rng = random.Random(hash((seed, 0, 0, epoch)))
        shards = stream._passes(0, epoch, rng)
        return [p.shard.name for _ in range(4) for p in next(shards)]

    assert draws(3, 0) == draws(3, 0)
    assert draws(3, 0) != draws(3, 1)  # each epoch draws anew
    assert len(set(draws(3, 0))) < len(draws(3, 0))  # with replacement: repeats


def test_resample_with_nothing_usable_fails_instead_of_looping(tmp_path: Path) -> None:
    keys = write_shards(tmp_path / "d", n_shards=2, per_shard=3)
    plan = plan_data(str(tmp_path / "d"), workers=4, resample=True)
    stream = ShardStream(plan, 2, _to_tensor, list, exclude=frozenset(keys))
    with pytest.raises(TrainDataError, match=r"zero usable samples in 2 shard\(s\)"):
        _collect(stream, 1)


def _encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> TrainSample:
    img = Image.new(mode, size, 128 if mode == "L" else (200, 40, 40))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return TrainSample(key="k", image=buf.getvalue(), ext=fmt.lower(), caption="c")


def test_jpeg_draft_decodes_smaller_but_never_below_the_side() -> None:
    big = _encoded((512, 384), "JPEG")
    assert decode_image(big).size == (512, 384)
    # libjpeg scales by 1/2, 1/4 or 1/8: the smallest that keeps both sides >= the side.
    assert decode_image(big, 64).size == (128, 96)  # 1/4 (1/8 would give 48 < 64)
    assert decode_image(big, 100).size == (256, 192)  # 1/2
    assert decode_image(big, 200).size == (512, 384)  # 1/2 would give 192 < 200
    grey = decode_image(_encoded((512, 512), "JPEG", "L"), 64)
    assert (grey.size, grey.mode) == ((64, 64), "RGB")
    assert decode_image(_encoded((40, 40), "JPEG"), 64).size == (40, 40)  # never upscaled
    png = decode_image(_encoded((512, 384), "PNG"), 64)
    assert (png.size, png.mode) == ((512, 384), "RGB")  # other formats decode as before


def test_stream_decodes_with_the_draft_side_it_is_given(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=1, per_shard=8, image_size=256)
    plan = plan_data(str(tmp_path / "d"))

    def sizes(draft_side: int | None) -> list[tuple[int, int]]:
        # The transform passes the decoded size on as the "image" tensor.
        stream = ShardStream(
            plan, 4, lambda img: torch.tensor(img.size), list, draft_side=draft_side
        )
        batches = _collect(stream, 2, workers=1)
        return [tuple(size.tolist()) for b in batches for size in b["images"]]

    assert set(sizes(None)) == {(256, 256)}
    assert set(sizes(64)) == {(64, 64)}  # 1/4 scale, in a DataLoader worker too


@pytest.mark.parametrize("name", ["tiny", "ViT-B-32"])
def test_uint8_batches_normalized_on_the_device_equal_the_whole_preprocess(name: str) -> None:
    _, preprocess, _, _ = build(name)
    worker_part, normalize = split_preprocess(preprocess)
    assert normalize is not None
    noise = torch.Generator().manual_seed(0)
    images = [  # noise, so a crop off by one pixel would show
        Image.fromarray(
            torch.randint(
                0, 256, (260, 300 + 17 * i, 3), generator=noise, dtype=torch.uint8
            ).numpy()
        )
        for i in range(3)
    ]
    torch.manual_seed(5)  # the same random crops for both paths
    whole = torch.stack([preprocess(img) for img in images])
    torch.manual_seed(5)
    pixels = torch.stack([worker_part(img) for img in images])
    assert pixels.dtype == torch.uint8  # a quarter of float32's bytes between processes
    assert pixels.shape == whole.shape
    moved = to_model_input(pixels, torch.device("cpu"), normalize)
    assert moved.dtype == torch.float32
    assert torch.allclose(moved, whole, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="uint8"):
        normalize(whole, torch.device("cpu"))


def test_preprocess_without_totensor_normalize_tail_stays_whole_in_the_workers() -> None:
    from torchvision import transforms as T

    def to_float(img: Image.Image) -> torch.Tensor:
        return T.functional.to_tensor(img) * 2

    for transform in (
        T.Compose([T.Resize(8), T.Lambda(to_float)]),  # no Normalize at the end
        T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3, inplace=True)]),
        to_float,  # not a Compose at all
    ):
        worker_part, normalize = split_preprocess(transform)
        assert worker_part is transform and normalize is None
    batch = torch.rand(2, 3, 8, 8)
    assert to_model_input(batch, torch.device("cpu"), None) is batch  # floats pass as they are


def test_stream_hands_uint8_pixels_to_the_loop(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=1, per_shard=8, image_size=64)
    _, preprocess, _, tokenizer = build("tiny")
    worker_part, normalize = split_preprocess(preprocess)
    stream = ShardStream(plan_data(str(tmp_path / "d")), 4, worker_part, tokenizer)
    (batch,) = _collect(stream, 1, workers=1)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 3, 32, 32)
    images = to_model_input(batch["images"], torch.device("cpu"), normalize)
    # Normalized with CLIP's mean and std: pixel 0 maps to about -1.8, 255 to about 2.1.
    assert images.dtype == torch.float32 and -1.8 < images.mean() < 2.2
    assert images.min() < 0 < images.max()


def test_unreadable_side_files_are_passed_over_for_the_tar_count(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_shards(tmp_path / "d", n_shards=2, per_shard=5)
    (tmp_path / "d" / "00000_stats.json").write_text('{"successes": 5, "fail')  # torn
    (tmp_path / "d" / "00001_stats.json").unlink()
    (tmp_path / "d" / "00001.parquet").write_text("key,status\n")  # not Parquet
    plan = plan_data(str(tmp_path / "d"))
    assert plan.samples == 10
    assert "00000_stats.json: not readable JSON" in plan.notes[0]
    assert "00001.parquet: not a readable Parquet file" in plan.notes[1]
    argv = ["--train-data", str(tmp_path / "d"), "--output", str(tmp_path / "r")]
    assert run.main([*argv, "--steps", "1", "--batch-size", "4", "--threads", "1"]) == 0
    assert "not readable JSON" in capsys.readouterr().err


def test_an_error_in_a_dataloader_worker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Every image undecodable: the worker cannot fill a batch and says so.
    write_shards(tmp_path / "d", n_shards=2, per_shard=8, corrupt_every=1)
    argv = ["--train-data", str(tmp_path / "d"), "--output", str(tmp_path / "r")]
    argv += ["--steps", "1", "--batch-size", "4", "--threads", "1", "--workers", "1"]
    assert run.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "Warning" not in line]
    (line,) = [e for e in err if e.startswith("training.run: reader")]
    assert "batch 0 has 0 of 4 samples" in line and "Traceback" not in "".join(err)


def _one_shard_undecodable(root: Path) -> list[str]:
    """Four shards of 8 samples, every image of 00002.tar truncated; the good keys."""
    keys = write_shards(root, n_shards=4, per_shard=8)
    write_shards(root.parent / "bad", n_shards=3, per_shard=8, corrupt_every=1)
    (root.parent / "bad" / "00002.tar").replace(root / "00002.tar")
    return [k for k in keys if not k.startswith("00002")]


def test_a_reader_whose_range_is_undecodable_refills_from_the_epoch(tmp_path: Path) -> None:
    # 4 readers, 4 equal shards: one reader's whole range is the undecodable shard. It
    # takes its batches from the rest of the epoch instead of failing, and a resume
    # mid-epoch takes the same ones.
    good = _one_shard_undecodable(tmp_path / "d")
    plan = plan_data(str(tmp_path / "d"), workers=4)
    stream = ShardStream(plan, 4, _to_tensor, list, shuffle_buffer=3, seed=1)
    batches = _collect(stream, 16)  # two epochs
    assert [b["batch"] for b in batches] == list(range(16))
    assert all(len(set(b["keys"])) == 4 for b in batches)
    assert {k for b in batches for k in b["keys"]} == set(good)
    offsets = {b["reader"]: b["taken"] for b in batches[:6]}
    resumed = ShardStream(
        plan, 4, _to_tensor, list, shuffle_buffer=3, seed=1, start_batch=6, start_offsets=offsets
    )
    assert [b["keys"] for b in _collect(resumed, 10)] == [b["keys"] for b in batches[6:]]


def test_a_run_trains_past_a_wholly_undecodable_shard_and_counts_it_once(tmp_path: Path) -> None:
    _one_shard_undecodable(tmp_path / "d")
    argv = ["--train-data", str(tmp_path / "d"), "--output", str(tmp_path / "r"), "--model"]
    argv += ["tiny", "--steps", "8", "--batch-size", "4", "--threads", "1", "--workers", "4"]
    assert run.main(argv) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["data_corrupt_image"] == 8  # its 8, once


def test_damage_and_exclusions_count_each_sample_once_an_epoch(tmp_path: Path) -> None:
    # 20 samples, 5 undecodable and 2 excluded everywhere (counted in the shard's 20): the
    # reader refills its batches by reading again, which must not count them again.
    write_shards(tmp_path / "d", n_shards=1, per_shard=20, corrupt_every=4)
    plan = plan_data(str(tmp_path / "d"))
    exclude = frozenset({"000000001", "000000002"})
    stream = ShardStream(plan, 5, _to_tensor, list, shuffle_buffer=2, exclude=exclude)
    batches = _collect(stream, 8)  # two epochs of 4 batches, 13 usable samples each
    assert [b["epoch"] for b in batches] == [0] * 4 + [1] * 4
    assert batches[3]["stats"]["corrupt_image"] == 5 and batches[3]["stats"]["excluded"] == 2
    assert batches[-1]["stats"]["corrupt_image"] == 10 and batches[-1]["stats"]["excluded"] == 4
