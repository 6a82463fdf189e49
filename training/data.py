"""Training data: a stream of (image, caption) batches over tar shards.

Shards (ours or img2dataset's, by folder or brace pattern) are split across ranks and
DataLoader workers; each worker reads only its own shards, so no sample is read twice and
none is skipped. Problems that would otherwise hang a run (too few shards for ranks x
workers, nothing usable to train on) fail before any worker starts.

Batches are formed inside the workers (the DataLoader runs with ``batch_size=None``), so
global batch ``b`` always comes from worker ``b % workers``. That makes the data position
a single number: a resumed run tells each worker how many of its batches to skip, and the
skip reads tar bytes without decoding any image.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from torch.utils.data import IterableDataset

from pipeline.shards.reader import ShardReadError, TrainSample, find_shards, iter_shard
from pipeline.stats.counters import Counters


class TrainDataError(ValueError):
    """Training data that cannot work: no shards, no usable samples, too few shards."""


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """webdataset-style patterns: ``{00000..00009}`` (zero padding kept) and ``{a,b}``."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for opt in options for x in expand_braces(head + opt + tail)]


def resolve_shards(spec: str) -> list[Path]:
    """Shards named by a folder, a single tar, or a brace pattern; ``::`` joins several."""
    shards: list[Path] = []
    for part in spec.split("::"):
        if "{" in part:
            paths = [Path(p) for p in expand_braces(part)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise TrainDataError(
                    f"--train-data {part}: {len(missing)} of {len(paths)} shards missing, "
                    f"first {missing[0]}"
                )
            shards.extend(paths)
        else:
            try:
                shards.extend(find_shards(part))
            except ShardReadError as e:
                raise TrainDataError(str(e)) from None
    if not shards:
        raise TrainDataError(f"--train-data {spec}: no shards")
    return shards


def count_samples(shard: Path) -> int:
    """Samples in a shard from its stats JSON or Parquet (both writers leave them);
    a bare tar is counted by reading its headers, so no count is ever a required flag."""
    stem = shard.with_suffix("")
    stats_path = stem.parent / f"{stem.name}_stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        if isinstance(stats.get("successes"), int):
            return stats["successes"]
    parquet = shard.with_suffix(".parquet")
    if parquet.is_file():
        table = pq.read_table(parquet, columns=None)
        if "status" in table.column_names:
            return sum(1 for s in table.column("status").to_pylist() if s == "success")
        return table.num_rows
    return sum(1 for _ in iter_shard(shard))


def load_exclusions(path: str | Path) -> frozenset[str]:
    """Keys from a Parquet file with a ``key`` column (decontaminate.parquet, dedup lists)."""
    p = Path(path)
    if not p.is_file():
        raise TrainDataError(f"--exclude {p}: not found")
    schema = pq.read_schema(p)
    if "key" not in schema.names:
        raise TrainDataError(f"--exclude {p}: no 'key' column (columns: {schema.names})")
    keys = pq.read_table(p, columns=["key"]).column("key").to_pylist()
    return frozenset(str(k) for k in keys if k is not None)


@dataclass(frozen=True)
class DataPlan:
    """What the main process decided before any worker starts."""

    shards: tuple[Path, ...]
    samples: int  # usable samples in all shards, before exclusion
    rank: int
    world_size: int
    workers: int

    def shards_for(self, worker: int) -> tuple[Path, ...]:
        slots = self.world_size * max(1, self.workers)
        slot = self.rank * max(1, self.workers) + worker
        return self.shards[slot::slots]


def plan_data(spec: str, rank: int = 0, world_size: int = 1, workers: int = 0) -> DataPlan:
    shards = resolve_shards(spec)
    slots = world_size * max(1, workers)
    if len(shards) < slots:
        raise TrainDataError(
            f"--train-data {spec}: {len(shards)} shard(s) for {world_size} rank(s) x "
            f"{max(1, workers)} worker(s) = {slots} readers; every reader needs at least one "
            f"shard: lower --workers to {max(0, len(shards) // world_size)} or write more shards"
        )
    counts = [count_samples(s) for s in shards]
    total = sum(counts)
    if total == 0:
        raise TrainDataError(f"--train-data {spec}: {len(shards)} shard(s) but zero usable samples")
    return DataPlan(tuple(shards), total, rank, world_size, workers)


def decode_image(sample: TrainSample) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(sample.image))
    img.load()  # decode now: a truncated file fails here, inside the skip-and-count guard
    return img.convert("RGB")


class ShardStream(IterableDataset):
    """An endless stream of batches for one rank: an ``IterableDataset`` for DataLoader."""

    def __init__(
        self,
        plan: DataPlan,
        batch_size: int,
        transform: Callable[[Any], Any],
        tokenize: Callable[[list[str]], Any],
        seed: int = 0,
        shuffle_buffer: int = 1000,
        exclude: frozenset[str] = frozenset(),
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.batch_size = batch_size
        self.transform = transform
        self.tokenize = tokenize
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.exclude = exclude
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = info.id if info is not None else 0
        n_workers = max(1, self.plan.workers)
        # Global batch b comes from worker b % n_workers (DataLoader's round robin).
        first = self.start_batch
        skip = len(range(worker, first, n_workers)) if first > worker else 0
        index = worker + skip * n_workers  # this worker's next global batch index
        stats = Counters()
        batch: list[TrainSample] = []
        for sample in self._samples(worker, stats):
            batch.append(sample)
            if len(batch) < self.batch_size:
                continue
            if skip > 0:
                skip -= 1
                batch = []
                continue
            images, keys, captions = [], [], []
            # Augmentation drawn from (seed, rank, batch): identical after a resume.
            torch.manual_seed(hash((self.seed, self.plan.rank, index)) & 0x7FFFFFFF)
            for s in batch:
                try:
                    images.append(self.transform(decode_image(s)))
                except Exception:  # PIL raises many types; each is one corrupt sample
                    stats.add("corrupt_image")
                    continue
                keys.append(s.key)
                captions.append(s.caption)
            batch = []
            if not images:
                continue
            yield {
                "images": torch.stack(images),
                "texts": self.tokenize(captions),
                "keys": keys,
                "batch": index,
                "worker": worker,
                "stats": stats.to_dict(),
            }
            index += n_workers

    def _samples(self, worker: int, stats: Counters) -> Iterator[TrainSample]:
        shards = list(self.plan.shards_for(worker))
        epoch = 0
        while True:
            rng = random.Random(hash((self.seed, self.plan.rank, worker, epoch)))
            order = shards[:]
            rng.shuffle(order)
            yielded = 0
            buffer: list[TrainSample] = []
            for shard in order:
                for sample in iter_shard(shard, stats):
                    if sample.key in self.exclude:
                        stats.add("excluded")
                        continue
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(sample)
                        continue
                    # Reservoir-style buffer: emit a random held sample, keep the new one.
                    j = rng.randrange(len(buffer))
                    buffer[j], sample = sample, buffer[j]
                    yielded += 1
                    yield sample
            rng.shuffle(buffer)
            yielded += len(buffer)
            yield from buffer
            if yielded == 0:
                # An endless loop over nothing would hang the run; say which shards.
                raise TrainDataError(
                    f"worker {worker} of rank {self.plan.rank}: zero usable samples in "
                    f"{len(shards)} shard(s) ({', '.join(str(s) for s in shards[:3])}...) "
                    f"after exclusion and damage: {stats.to_dict()}"
                )
            epoch += 1
