"""Training data: a stream of (image, caption) batches over tar shards.

Shards (ours or img2dataset's, by folder or brace pattern) are split across ranks and
DataLoader workers; each worker reads only its own shards, so no sample is read twice in
an epoch. Each epoch deals the shards anew (seeded by seed and epoch). With ``resample``
every worker instead draws shards from the whole list with replacement (open_clip's
``--dataset-resampled``), so a few shards can feed many readers. Problems that would
otherwise hang a run (too few shards for ranks x workers, nothing usable to train on)
fail before any worker starts.

Batches are formed inside the workers (the DataLoader runs with ``batch_size=None``), so
global batch ``b`` always comes from reader ``b % workers`` (the shards and shuffle of
one worker slot) and belongs to epoch ``b // batches_per_epoch``. That makes the data
position a single number: a resumed run tells each worker which reader it plays and where
to start, and the skip inside the epoch reads tar bytes without decoding any image.
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from braceexpand import braceexpand
from torch.utils.data import IterableDataset

from pipeline.shards.reader import ShardReadError, TrainSample, find_shards, iter_shard
from pipeline.stats.counters import Counters


class TrainDataError(ValueError):
    """Training data that cannot work: no shards, no usable samples, too few shards."""


def expand_braces(pattern: str) -> list[str]:
    """webdataset's brace patterns (``{00000..00009}``, zero padding kept; ``{a,b}``),
    through the same library webdataset uses."""
    return list(braceexpand(pattern))


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


# The column holding training keys in the files --exclude reads: ``key`` in the build's
# dedup/duplicates.parquet and plain key lists, ``train_key`` in the overlap tool's
# decontaminate.parquet. Each of those two also names the key's shard: decontaminate's
# ``train_shard_path`` as a resolved path, duplicates' ``shard`` relative to the dataset
# (DIR/dedup/duplicates.parquet names DIR/shards/NNNNN.tar).
EXCLUDE_COLUMNS = ("key", "train_key")
SHARD_PATH_COLUMN = "train_shard_path"
DATASET_SHARD_COLUMN = "shard"


def shard_id(shard: str | Path) -> str:
    """A shard's identity for exclusions: its resolved path, as the overlap tool writes it."""
    return str(Path(shard).resolve())


@dataclass(frozen=True)
class Exclusions:
    """The samples ``--exclude`` leaves out.

    A row that names its shard (the overlap tool's ``train_shard_path``, the build's
    duplicates ``shard``) leaves its key out of that shard only, when that shard is one of
    the training shards: datasets joined with ``::`` repeat keys (each numbers its shards
    from 00000). Every other key (plain key lists, rows naming a shard training does not
    read, as when the overlap ran on a copy elsewhere) is left out of every shard: more
    than asked, never less."""

    everywhere: frozenset[str] = frozenset()
    by_shard: dict[str, frozenset[str]] = field(default_factory=dict)  # shard_id -> keys
    notes: tuple[str, ...] = ()  # what the start-up line should tell

    def __len__(self) -> int:
        """Distinct exclusions: keys left out everywhere, plus (shard, key) pairs."""
        return len(self.everywhere) + sum(len(k - self.everywhere) for k in self.by_shard.values())

    def __bool__(self) -> bool:
        return bool(self.everywhere) or any(self.by_shard.values())

    def in_shard(self, shard: str | Path) -> frozenset[str]:
        """The keys left out of this shard alone (``everywhere`` holds the rest)."""
        return self.by_shard.get(shard_id(shard), frozenset()) if self.by_shard else frozenset()


def load_exclusions(
    paths: str | Path | list[str] | list[Path], shards: list[Path] | tuple[Path, ...] = ()
) -> Exclusions:
    """The samples to leave out, from one or more Parquet files: the build's
    ``dedup/duplicates.parquet``, the overlap tool's ``decontaminate.parquet``, or any file
    with a ``key`` column. ``shards``: the shards training reads (see ``Exclusions``)."""
    training = {shard_id(s) for s in shards}
    everywhere: set[str] = set()
    by_shard: dict[str, set[str]] = {}
    notes: list[str] = []
    for path in [paths] if isinstance(paths, str | Path) else paths:
        p = Path(path)
        if not p.is_file():
            raise TrainDataError(f"--exclude {p}: not found")
        try:
            names = pq.read_schema(p).names
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise TrainDataError(f"--exclude {p}: not a Parquet file ({e})") from None
        column = next((c for c in EXCLUDE_COLUMNS if c in names), None)
        if column is None:
            raise TrainDataError(
                f"--exclude {p}: no {' or '.join(repr(c) for c in EXCLUDE_COLUMNS)} column "
                f"(columns: {names})"
            )
        if column == "train_key" and SHARD_PATH_COLUMN in names:
            table = pq.read_table(p, columns=[column, SHARD_PATH_COLUMN])
            shards = table.column(SHARD_PATH_COLUMN).to_pylist()
        elif column == "key" and DATASET_SHARD_COLUMN in names and p.parent.name == "dedup":
            table = pq.read_table(p, columns=[column, DATASET_SHARD_COLUMN])
            root = p.parent.parent
            shards = [
                shard_id(root / s) if s is not None else None
                for s in table.column(DATASET_SHARD_COLUMN).to_pylist()
            ]
        else:
            values = pq.read_table(p, columns=[column]).column(column).to_pylist()
            everywhere.update(str(k) for k in values if k is not None)
            continue
        elsewhere: set[str] = set()
        for key, shard in zip(table.column(column).to_pylist(), shards, strict=True):
            if key is None:
                continue
            if shard in training:
                by_shard.setdefault(shard, set()).add(str(key))
            else:
                everywhere.add(str(key))
                elsewhere.add(shard or "(none)")
        if elsewhere:
            notes.append(
                f"--exclude {p}: {len(elsewhere):,} shard(s) it names are not in --train-data "
                f"(first {sorted(elsewhere)[0]}); their keys are left out of every shard"
            )
    return Exclusions(
        frozenset(everywhere),
        {s: frozenset(k) for s, k in by_shard.items()},
        tuple(notes),
    )


@dataclass(frozen=True)
class DataPlan:
    """What the main process decided before any worker starts."""

    shards: tuple[Path, ...]
    samples: int  # usable samples in all shards, before exclusion
    rank: int
    world_size: int
    workers: int
    resample: bool = False  # draw shards with replacement instead of splitting them

    @property
    def readers(self) -> int:
        return self.world_size * max(1, self.workers)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Steps in one pass over the data: samples // global batch (the last partial one
        is dropped). Zero when the data holds less than one global batch."""
        return self.samples // (batch_size * self.world_size)

    def shards_for(self, worker: int, epoch: int = 0, seed: int = 0) -> tuple[Path, ...]:
        """This rank's worker's shards in ``epoch``. The whole list is permuted by (seed,
        epoch) first, identically on every rank, so the readers stay disjoint while each
        epoch deals them different shards."""
        order = list(self.shards)
        random.Random(hash((seed, epoch))).shuffle(order)
        slot = self.rank * max(1, self.workers) + worker
        return tuple(order[slot :: self.readers])


def plan_data(
    spec: str, rank: int = 0, world_size: int = 1, workers: int = 0, resample: bool = False
) -> DataPlan:
    shards = resolve_shards(spec)
    slots = world_size * max(1, workers)
    if len(shards) < slots and not resample:
        raise TrainDataError(
            f"--train-data {spec}: {len(shards)} shard(s) for {world_size} rank(s) x "
            f"{max(1, workers)} worker(s) = {slots} readers; every reader needs at least one "
            f"shard: lower --workers to {max(0, len(shards) // world_size)}, write more shards, "
            "or pass --resample"
        )
    counts = [count_samples(s) for s in shards]
    total = sum(counts)
    if total == 0:
        raise TrainDataError(f"--train-data {spec}: {len(shards)} shard(s) but zero usable samples")
    return DataPlan(tuple(shards), total, rank, world_size, workers, resample)


def decode_image(sample: TrainSample, draft_side: int | None = None) -> Any:
    """The sample's image in RGB. ``draft_side``: a JPEG is decoded by libjpeg at 1/2, 1/4
    or 1/8 scale, the smallest that keeps both sides at least ``draft_side`` (the download
    engine does the same); a smaller JPEG or any other format decodes at full size."""
    from PIL import Image

    img = Image.open(io.BytesIO(sample.image))
    if draft_side:
        img.draft("RGB", (draft_side, draft_side))  # a no-op for formats other than JPEG
    img.load()  # decode now: a truncated file fails here, inside the skip-and-count guard
    return img.convert("RGB")


class DeviceNormalize:
    """The float conversion and normalization of a preprocess, run on whole batches where
    the model is: ``images.float() / 255``, then ``(x - mean) / std``, the same operations
    in the same order as ``ToTensor`` and ``Normalize`` apply them to one image."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._on: dict[Any, tuple[Any, Any]] = {}  # device -> (mean, std) shaped (1, C, 1, 1)

    def __call__(self, images: Any, device: Any) -> Any:
        import torch

        x = images.to(device, non_blocking=True)
        if x.dtype != torch.uint8:
            raise TypeError(f"DeviceNormalize takes uint8 batches, got {x.dtype}")
        if x.device not in self._on:
            shape = (1, len(self.mean), 1, 1)
            self._on[x.device] = (
                torch.tensor(self.mean, device=x.device).view(shape),
                torch.tensor(self.std, device=x.device).view(shape),
            )
        mean, std = self._on[x.device]
        return x.float().div_(255).sub_(mean).div_(std)


def split_preprocess(transform: Any) -> tuple[Callable[[Any], Any], DeviceNormalize | None]:
    """open_clip's train preprocess as (what the data workers run, what runs on the batch).

    A ``Compose`` ending in ``ToTensor`` (or open_clip's ``MaybeToTensor``) and
    ``Normalize`` is cut before those two: the workers crop and resize, then hand over
    uint8 pixels (``PILToTensor``), a quarter of the bytes through shared memory, pinned
    memory and the bus, and the batch is normalized on the device in one pass (timm's
    ``PrefetchLoader`` and FFCV do the same). Any other transform is kept whole, in the
    workers, with ``None`` for the second part."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if (
        len(steps) >= 2
        and isinstance(transform, T.Compose)
        and isinstance(steps[-2], T.ToTensor)
        and type(steps[-1]) is T.Normalize
        and not steps[-1].inplace
    ):
        norm = steps[-1]
        return T.Compose([*steps[:-2], T.PILToTensor()]), DeviceNormalize(norm.mean, norm.std)
    return transform, None


def to_model_input(images: Any, device: Any, normalize: DeviceNormalize | None) -> Any:
    """A batch from the stream as the model takes it, on ``device``."""
    if normalize is None:
        return images.to(device, non_blocking=True)
    return normalize(images, device)


class ShardStream(IterableDataset):
    """An endless stream of batches for one rank: an ``IterableDataset`` for DataLoader.

    Epochs are global: ``epoch_batches`` steps (default: the plan's samples // global
    batch) make one epoch, and each worker yields its round-robin share of them from that
    epoch's pass over its shards, then starts the next epoch reshuffled. A worker whose
    shards run out before its share (uneven shards, excluded keys) starts another pass
    within the epoch; what is left of a pass when the share is met is dropped.

    ``draft_side``: JPEGs are decoded at a reduced scale that keeps both sides at least
    this many pixels (see ``decode_image``); ``training.run`` passes twice the model's
    input side, a margin for the crop and the antialiased downscale that follow.
    """

    def __init__(
        self,
        plan: DataPlan,
        batch_size: int,
        transform: Callable[[Any], Any],
        tokenize: Callable[[list[str]], Any],
        seed: int = 0,
        shuffle_buffer: int = 1000,
        exclude: Exclusions | frozenset[str] = frozenset(),
        start_batch: int = 0,
        epoch_batches: int | None = None,
        draft_side: int | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.batch_size = batch_size
        self.transform = transform
        self.tokenize = tokenize
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        # A plain key set leaves those keys out of every shard.
        self.exclude = (
            exclude if isinstance(exclude, Exclusions) else Exclusions(frozenset(exclude))
        )
        self.start_batch = start_batch
        per_epoch = (
            epoch_batches if epoch_batches is not None else plan.batches_per_epoch(batch_size)
        )
        self.epoch_batches = max(1, per_epoch)
        self.draft_side = draft_side

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        n_workers = max(1, self.plan.workers)
        per_epoch = self.epoch_batches
        # Global batch b is read by reader b % n_workers and belongs to epoch
        # b // per_epoch: the batch index alone fixes the data. DataLoader asks its
        # workers in turn from worker 0, so after a resume at batch s worker w plays
        # reader (s + w) % n_workers: it yields b = s + w, s + w + n_workers, ...
        worker = ((info.id if info is not None else 0) + self.start_batch) % n_workers
        first = self.start_batch + (info.id if info is not None else 0)
        epoch = first // per_epoch
        stats = Counters()
        while True:
            lo = epoch * per_epoch
            mine = range(lo + (worker - lo) % n_workers, lo + per_epoch, n_workers)
            samples = self._samples(worker, epoch, stats)
            for index in mine:
                batch = list(itertools.islice(samples, self.batch_size))
                if index < first:
                    continue  # before the resume point: tar bytes read, no image decoded
                images, keys, captions = [], [], []
                # Augmentation drawn from (seed, rank, batch): identical after a resume.
                torch.manual_seed(hash((self.seed, self.plan.rank, index)) & 0x7FFFFFFF)
                for s in batch:
                    try:
                        images.append(self.transform(decode_image(s, self.draft_side)))
                    except Exception:  # PIL raises many types; each is one corrupt sample
                        stats.add("corrupt_image")
                        continue
                    keys.append(s.key)
                    captions.append(s.caption)
                if not images:
                    continue
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenize(captions),
                    "keys": keys,
                    "batch": index,
                    "epoch": epoch,
                    "worker": worker,
                    "stats": stats.to_dict(),
                }
            samples.close()
            epoch += 1

    def _passes(self, worker: int, epoch: int, rng: random.Random) -> Iterator[list[Path]]:
        """Endless lists of shards to read in turn; the shuffle buffer drains after each."""
        if not self.plan.resample:
            shards = list(self.plan.shards_for(worker, epoch, self.seed))
            while True:
                rng.shuffle(shards)
                yield shards[:]
        # Resampled (open_clip's --dataset-resampled): every reader draws from all shards
        # with replacement, so there need not be a shard per reader.
        while True:
            yield [rng.choice(self.plan.shards) for _ in self.plan.shards]

    def _samples(self, worker: int, epoch: int, stats: Counters) -> Iterator[TrainSample]:
        """This worker's samples in one epoch, endless; the caller takes its share."""
        rng = random.Random(hash((self.seed, self.plan.rank, worker, epoch)))
        barren: set[Path] = set()  # shards read with nothing usable in them, this epoch
        for shards in self._passes(worker, epoch, rng):
            read = 0
            buffer: list[TrainSample] = []
            everywhere = self.exclude.everywhere
            for shard in shards:
                before = read
                only_here = self.exclude.in_shard(shard)
                for sample in iter_shard(shard, stats):
                    if sample.key in everywhere or sample.key in only_here:
                        stats.add("excluded")
                        continue
                    read += 1
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(sample)
                        continue
                    # Reservoir-style buffer: emit a random held sample, keep the new one.
                    j = rng.randrange(len(buffer))
                    buffer[j], sample = sample, buffer[j]
                    yield sample
                if read == before:
                    barren.add(shard)
            rng.shuffle(buffer)
            yield from buffer
            candidates = set(self.plan.shards) if self.plan.resample else set(shards)
            if read == 0 and barren >= candidates:
                # An endless loop over nothing would hang the run; say which shards.
                raise TrainDataError(
                    f"worker {worker} of rank {self.plan.rank}: zero usable samples in "
                    f"{len(candidates)} shard(s) ({', '.join(str(s) for s in shards[:3])}...) "
                    f"after exclusion and damage: {stats.to_dict()}"
                )
