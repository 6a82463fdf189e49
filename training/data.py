"""Training data: a stream of (image, caption) batches over tar shards.

Shards (ours or img2dataset's, by folder or brace pattern) are laid end to end in an
order drawn per epoch from the seed, and the samples dealt out in ranges, one per rank
and reader (DataLoader worker slot), sized by the batches each makes: no sample is read
twice in an epoch, whatever the shard sizes. With ``resample`` every reader instead draws
whole shards with replacement (open_clip's ``--dataset-resampled``). Data that could hang
a run (nothing usable to train on) fails before any worker starts.

Batches are formed inside the workers (the DataLoader runs with ``batch_size=None``), so
global batch ``b`` always comes from reader ``b % readers`` and belongs to epoch
``b // batches_per_epoch``, and every batch is full: a sample that fails is replaced by the
next. The data position is the next batch and, for the epoch in progress, how many
samples each reader had taken: a resumed run skips those (reading tar bytes without
decoding any image) and goes on with the same batches.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

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
    """Shards named by a folder, a single tar, or a brace pattern (of tars or of folders);
    ``::`` joins several."""
    shards: list[Path] = []
    for part in spec.split("::"):
        if "{" in part:
            paths = [Path(p) for p in expand_braces(part)]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise TrainDataError(
                    f"--train-data {part}: {len(missing)} of {len(paths)} shards or folders "
                    f"missing, first {missing[0]}"
                )
            for p in paths:
                if p.is_dir():  # a pattern of folders names their shards
                    shards.extend(_find(str(p)))
                else:
                    shards.append(p)
        else:
            shards.extend(_find(part))
    if not shards:
        raise TrainDataError(f"--train-data {spec}: no shards")
    return shards


def _find(part: str) -> list[Path]:
    try:
        return find_shards(part)
    except ShardReadError as e:
        raise TrainDataError(str(e)) from None


def count_samples(shard: Path, notes: list[str] | None = None) -> int:
    """Samples in a shard from its stats JSON or Parquet (both writers leave them);
    a bare tar is counted by reading its headers, so no count is ever a required flag.
    A side file that cannot be read is passed over for the next source, said in ``notes``."""
    stem = shard.with_suffix("")
    stats_path = stem.parent / f"{stem.name}_stats.json"
    if stats_path.is_file():
        try:
            stats = json.loads(stats_path.read_text())
        except (OSError, ValueError) as e:  # torn or not JSON (UnicodeDecodeError too)
            stats = None
            _note(notes, f"{stats_path}: not readable JSON ({e}); counted another way")
        if isinstance(stats, dict) and isinstance(stats.get("successes"), int):
            return stats["successes"]
    parquet = shard.with_suffix(".parquet")
    if parquet.is_file():
        try:
            names = pq.read_schema(parquet).names
            if "status" in names:
                status = pq.read_table(parquet, columns=["status"]).column("status")
                return sum(1 for s in status.to_pylist() if s == "success")
            return pq.ParquetFile(parquet).metadata.num_rows
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            _note(notes, f"{parquet}: not a readable Parquet file ({e}); the tar is counted")
    return sum(1 for _ in iter_shard(shard))


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


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


class Segment(NamedTuple):
    """Usable samples ``start`` to ``stop`` of a shard (``stop`` None: to its end),
    counted in tar order over the samples its exclusions leave."""

    shard: Path
    start: int
    stop: int | None


@dataclass(frozen=True)
class DataPlan:
    """What the main process decided before any worker starts.

    Every epoch lays the shards end to end in an order drawn from (seed, epoch), the same
    on every rank, and deals that sequence of samples out in contiguous ranges: one per
    rank, then one per reader of the rank, sized by the batches the reader makes in that
    epoch. So every reader holds its share of samples whatever the shard sizes are, and
    an epoch reads each usable sample once (when the counts are right: see ``ShardStream``
    for what happens when they are not). Readers may share a shard: each reads it from the
    start (tar bytes, no decoding) to the end of its range."""

    shards: tuple[Path, ...]  # shards with samples in them
    samples: int  # usable samples: the counts, less the exclusions known per shard
    rank: int
    world_size: int
    workers: int
    resample: bool = False  # draw shards with replacement instead of splitting them
    counts: tuple[int, ...] = ()  # per shard; empty: equal counts of samples // shards
    notes: tuple[str, ...] = ()  # what the start-up lines should tell
    empty_shards: int = 0  # shards left out: no samples (or all of them excluded)

    @property
    def readers(self) -> int:
        return self.world_size * max(1, self.workers)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Steps in one pass over the data: samples // global batch (the last partial one
        is dropped). Zero when the data holds less than one global batch."""
        return self.samples // (batch_size * self.world_size)

    def digest(self, exclude: Exclusions | None = None) -> str:
        """What the epochs' dealing and the readers' offsets depend on: each shard (as
        folder/name) and its count of usable samples, in order, and the keys ``exclude``
        leaves out (offsets count the samples they leave). A resume mid-epoch with another
        digest (--exclude or the data changed) cannot continue the epoch as it was dealt."""
        import hashlib

        listed = [
            [f"{s.parent.name}/{s.name}", c]
            for s, c in zip(self.shards, self._counts(), strict=True)
        ]
        left_out: list[Any] = []
        if exclude is not None:
            left_out = [
                sorted(exclude.everywhere),
                sorted((k, sorted(v)) for k, v in exclude.by_shard.items()),
            ]
        text = json.dumps([listed, self.resample, left_out])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _counts(self) -> tuple[int, ...]:
        if self.counts:
            return self.counts
        n = len(self.shards)
        return tuple(self.samples // n + (i < self.samples % n) for i in range(n))

    def excluding(self, exclude: Exclusions) -> DataPlan:
        """The plan less the keys ``exclude`` names per shard (taken off that shard's
        count; keys it leaves out everywhere are not known per shard and stay counted).
        Shards left with nothing are dropped."""
        if not exclude.by_shard:
            return self
        counts = [
            max(0, c - len(exclude.in_shard(s)))
            for s, c in zip(self.shards, self._counts(), strict=True)
        ]
        total = sum(counts)
        if total == 0:
            raise TrainDataError(
                f"--exclude leaves none of the {self.samples} samples in the shards to train on"
            )
        kept = [(s, c) for s, c in zip(self.shards, counts, strict=True) if c > 0]
        notes = list(self.notes)
        if len(kept) < len(self.shards):
            notes.append(f"{len(self.shards) - len(kept)} shard(s) wholly excluded: not read")
        return replace(
            self,
            shards=tuple(s for s, _ in kept),
            counts=tuple(c for _, c in kept),
            samples=total,
            notes=tuple(notes),
            empty_shards=self.empty_shards + len(self.shards) - len(kept),
        )

    def segments(
        self,
        reader: int,
        epoch: int = 0,
        seed: int = 0,
        readers_per_rank: int | None = None,
        weights: list[int] | None = None,
    ) -> tuple[Segment, ...]:
        """This rank's reader's samples in ``epoch``: its range of the epoch's sequence,
        as pieces of shards. ``weights``: each reader's share (its batches in the epoch),
        equal by default."""
        per_rank = readers_per_rank or max(1, self.workers)
        weights = weights or [1] * per_rank
        order = list(range(len(self.shards)))
        random.Random(hash((seed, epoch))).shuffle(order)
        counts = self._counts()
        a = self.samples * self.rank // self.world_size
        c = self.samples * (self.rank + 1) // self.world_size
        total, before = sum(weights), sum(weights[:reader])
        lo = a + (c - a) * before // total
        hi = a + (c - a) * (before + weights[reader]) // total
        out, pos = [], 0
        for i in order:
            s0, s1 = pos, pos + counts[i]
            pos = s1
            x, y = max(lo, s0), min(hi, s1)
            if x < y:
                # The piece reaching a shard's end reads to its end: a low count loses none.
                out.append(Segment(self.shards[i], x - s0, None if y == s1 else y - s0))
        return tuple(out)

    def all_segments(self) -> list[Segment]:
        """Every shard whole: what a reader refills from (see ``ShardStream``)."""
        return [Segment(s, 0, None) for s in self.shards]

    def shards_for(self, worker: int, epoch: int = 0, seed: int = 0) -> tuple[Path, ...]:
        """The shards this rank's worker reads from in ``epoch`` (equal shares)."""
        return tuple(s.shard for s in self.segments(worker, epoch, seed))


def plan_data(
    spec: str, rank: int = 0, world_size: int = 1, workers: int = 0, resample: bool = False
) -> DataPlan:
    shards = resolve_shards(spec)
    notes: list[str] = []
    counts = [count_samples(s, notes) for s in shards]
    total = sum(counts)
    if total == 0:
        raise TrainDataError(f"--train-data {spec}: {len(shards)} shard(s) but zero usable samples")
    # img2dataset writes a shard whose every URL failed, with no sample: nothing to deal.
    empty = [s for s, c in zip(shards, counts, strict=True) if c == 0]
    if empty:
        notes.append(f"{len(empty)} shard(s) with no samples skipped (first {empty[0]})")
    kept = [(s, c) for s, c in zip(shards, counts, strict=True) if c > 0]
    return DataPlan(
        tuple(s for s, _ in kept),
        total,
        rank,
        world_size,
        workers,
        resample,
        tuple(c for _, c in kept),
        tuple(notes),
        len(empty),
    )


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


class _Tally:
    """The damage counts of one reader: into ``stats`` while it reads its own range the
    first time in an epoch, elsewhere (reading up to its range, past a resume point again,
    or refilling: see ``ShardStream``) into nothing. So each damaged or excluded sample is
    counted once an epoch, by the reader whose range holds it."""

    def __init__(self, stats: Counters) -> None:
        self.stats = stats
        self.in_range = True
        self.skipping = False
        self.refilling = False

    @property
    def counting(self) -> bool:
        return self.in_range and not self.skipping and not self.refilling

    def add(self, name: str, n: int = 1) -> None:
        if self.counting:
            self.stats.add(name, n)


@dataclass
class _Reader:
    """One reader's pass over its samples in one epoch, and how far it has got."""

    index: int
    tally: _Tally
    samples: Generator[TrainSample, None, None] | None = None
    taken: int = 0  # samples taken from ``samples`` this epoch (decodable or not)
    passes: int = 0  # complete passes: its range, then refills (see ``ShardStream``)


class ShardStream(IterableDataset):
    """An endless stream of batches for one rank: an ``IterableDataset`` for DataLoader.

    Epochs are global: ``epoch_batches`` steps (default: the plan's samples // global
    batch) make one epoch. Each rank has ``readers`` readers in an epoch (default: one per
    DataLoader worker); batch ``b`` is reader ``b % readers``'s, and each reader holds a
    range of the epoch's samples sized for its batches (``DataPlan.segments``). A batch
    always holds ``batch_size`` distinct samples: one that fails to decode, has no caption,
    or is already in the batch is passed over (counted) and the next one taken, so every
    rank's batches are the same size and a batch is never skipped. A reader whose range
    runs out before its batches do (a count above the samples really there, damage, keys
    left out everywhere, a whole shard undecodable) refills from the whole epoch: every
    shard of the plan (all ranks' samples), reshuffled, pass after pass, for the rest of the
    epoch. Those refill samples are trained twice in the epoch; the run fails only when a
    whole pass over the epoch's data brings no usable sample the batch lacks. The refill
    depends on nothing but the seed and the samples taken, so a resume stays exact, and it
    is not counted again: damage and exclusions are counted on a reader's first pass over
    its own range, once per sample and epoch (with ``resample``, per draw).

    A DataLoader of ``W`` workers asks them in turn: worker ``w`` plays the readers
    ``r % W == w`` (``W`` divides ``readers``), so the data of batch ``b`` do not depend on
    ``W``. A resumed stream starts at ``start_batch``; ``start_offsets`` (reader -> samples
    it had taken in that epoch, as the checkpoint records them) and ``start_readers`` (the
    readers that epoch was dealt to) say where each reader stood, and the skip reads tar
    bytes without decoding any image. ``stop_batch``: the stream ends there.

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
        readers: int | None = None,
        start_readers: int | None = None,
        start_offsets: dict[int, int] | None = None,
        stop_batch: int | None = None,
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
        self.readers = readers or max(1, plan.workers)
        self.start_readers = start_readers or self.readers
        self.start_offsets = dict(start_offsets) if start_offsets is not None else None
        self.stop_batch = stop_batch

    def readers_in(self, epoch: int) -> int:
        """Readers per rank in ``epoch``."""
        return (
            self.start_readers if epoch == self.start_batch // self.epoch_batches else self.readers
        )

    def batches_of(self, reader: int, epoch: int, readers: int, until: int | None = None) -> int:
        """Batches ``reader`` makes in ``epoch`` (before batch ``until``)."""
        lo = epoch * self.epoch_batches
        end = lo + self.epoch_batches if until is None else until
        return len(range(lo + (reader - lo) % readers, end, readers))

    def start_offset(self, reader: int, epoch: int, readers: int) -> int:
        """Samples ``reader`` had taken of ``epoch`` (the epoch of ``start_batch``) before
        ``start_batch``: as ``start_offsets`` says, else (a checkpoint written before they
        were recorded) its full batches with nothing passed over."""
        if self.start_offsets is not None:
            return self.start_offsets.get(reader, 0)
        return self.batch_size * self.batches_of(reader, epoch, readers, until=self.start_batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        # DataLoader asks its workers in turn from worker 0: worker w gets batches
        # start + w, start + w + n_workers, ...
        first = self.start_batch + (info.id if info is not None else 0)
        slot = first % n_workers
        per_epoch = self.epoch_batches
        stats = Counters()
        while self.stop_batch is None or first < self.stop_batch:
            epoch = first // per_epoch
            k = self.readers_in(epoch)
            if k % n_workers:
                raise ValueError(f"{n_workers} DataLoader workers cannot share {k} readers")
            end = (epoch + 1) * per_epoch
            if self.stop_batch is not None:
                end = min(end, self.stop_batch)
            readers: dict[int, _Reader] = {}
            try:
                for index in range(first, end, n_workers):
                    r = index % k
                    if r not in readers:
                        readers[r] = self._reader(r, epoch, k, stats)
                    yield self._batch(readers[r], index, epoch, slot, k, stats)
            finally:
                for reader in readers.values():
                    if reader.samples is not None:
                        reader.samples.close()
            nxt = (epoch + 1) * per_epoch
            first = nxt + (slot - nxt) % n_workers

    def _reader(self, r: int, epoch: int, k: int, stats: Counters) -> _Reader:
        reader = _Reader(r, _Tally(stats))
        rng = random.Random(hash((self.seed, self.plan.rank, r, epoch)))
        reader.samples = self._samples(reader, epoch, rng)
        if epoch == self.start_batch // self.epoch_batches:
            # Resumed mid-epoch: what this reader took before the resume point.
            skip = self.start_offset(r, epoch, k)
            reader.tally.skipping = True
            for _ in range(skip):
                next(reader.samples)
            reader.tally.skipping = False
            reader.taken = skip
        return reader

    def _batch(
        self, reader: _Reader, index: int, epoch: int, slot: int, k: int, stats: Counters
    ) -> dict[str, Any]:
        import torch

        images, keys, captions = [], [], []
        held: set[tuple[str, int]] = set()
        # Augmentation drawn from (seed, rank, batch): identical after a resume.
        torch.manual_seed(hash((self.seed, self.plan.rank, index)) & 0x7FFFFFFF)
        passes = reader.passes
        while len(images) < self.batch_size:
            if reader.passes - passes >= 2:
                # Two passes, the last one over every shard, and nothing new: no sample in
                # the data can fill this batch.
                raise TrainDataError(
                    f"reader {reader.index} of rank {self.plan.rank}: batch {index} has "
                    f"{len(images)} of {self.batch_size} samples and the data hold no other "
                    f"usable one: {stats.to_dict()}; lower --batch-size"
                )
            sample = next(reader.samples)
            first_read = not reader.tally.refilling  # the pass ``sample`` comes from
            reader.taken += 1
            ident = (sample.shard, sample.index)
            if ident in held:
                continue  # its range read again (see the class): never twice in a batch
            try:
                images.append(self.transform(decode_image(sample, self.draft_side)))
            except Exception:  # PIL raises many types; each is one corrupt sample
                if first_read:  # counted once an epoch, not again on a refill
                    stats.add("corrupt_image")
                continue
            held.add(ident)
            keys.append(sample.key)
            captions.append(sample.caption)
            passes = reader.passes
        return {
            "images": torch.stack(images),
            "texts": self.tokenize(captions),
            "keys": keys,
            "batch": index,
            "epoch": epoch,
            "worker": slot,
            "reader": reader.index,
            "readers": k,
            "taken": reader.taken,
            "stats": stats.to_dict(),
        }

    def _passes(self, worker: int, epoch: int, rng: random.Random) -> Iterator[list[Segment]]:
        """Endless lists of segments to read in turn; the shuffle buffer drains after each.
        The reader's range first, then refills over every shard (see the class)."""
        if not self.plan.resample:
            k = self.readers_in(epoch)
            weights = [self.batches_of(r, epoch, k) for r in range(k)]
            segments = list(self.plan.segments(worker, epoch, self.seed, k, weights))
            rng.shuffle(segments)
            yield segments
            every = self.plan.all_segments()
            while True:
                rng.shuffle(every)
                yield every[:]
        # Resampled (open_clip's --dataset-resampled): every reader draws from all shards
        # with replacement.
        while True:
            yield [Segment(rng.choice(self.plan.shards), 0, None) for _ in self.plan.shards]

    def _samples(self, reader: _Reader, epoch: int, rng: random.Random) -> Iterator[TrainSample]:
        """One reader's samples in one epoch, endless; the caller takes its share."""
        candidates = set(self.plan.all_segments())  # what the refills read
        barren: set[Segment] = set()  # segments read with nothing usable, this epoch
        for segments in self._passes(reader.index, epoch, rng):
            read = 0
            buffer: list[TrainSample] = []
            for segment in segments:
                before = read
                for sample in self._read(segment, reader.tally):
                    read += 1
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(sample)
                        continue
                    # Reservoir-style buffer: emit a random held sample, keep the new one.
                    j = rng.randrange(len(buffer))
                    buffer[j], sample = sample, buffer[j]
                    yield sample
                if read == before:
                    barren.add(segment)
            rng.shuffle(buffer)
            yield from buffer
            reader.passes += 1
            # Resampled draws are all first reads; otherwise the range has been read once.
            reader.tally.refilling = not self.plan.resample
            if read == 0 and barren >= candidates:
                # An endless loop over nothing would hang the run; say which shards.
                names = ", ".join(str(s.shard) for s in segments[:3])
                raise TrainDataError(
                    f"reader {reader.index} of rank {self.plan.rank}: zero usable samples in "
                    f"{len(candidates)} shard(s) ({names}...) after exclusion and damage: "
                    f"{reader.tally.stats.to_dict()}"
                )

    def _read(self, segment: Segment, tally: _Tally) -> Iterator[TrainSample]:
        """The usable samples of one segment. Damage is counted by the reader whose range
        holds it: what follows usable sample ``start - 1`` up to usable sample ``stop - 1``."""
        everywhere = self.exclude.everywhere
        only_here = self.exclude.in_shard(segment.shard)
        start, stop = segment.start, segment.stop
        tally.in_range = start == 0
        samples = iter_shard(segment.shard, tally)
        position = 0  # usable samples of the shard so far
        try:
            for sample in samples:
                if sample.key in everywhere or sample.key in only_here:
                    tally.add("excluded")
                    continue
                position += 1
                ordinal = position - 1
                if stop is not None and ordinal >= stop:
                    break
                if ordinal >= start:
                    if sample.caption.strip():
                        yield sample
                    else:  # no .txt, or a blank one: nothing to learn the image against
                        tally.add("no_caption")
                if ordinal == start - 1:
                    tally.in_range = True
                if stop is not None and ordinal == stop - 1:
                    tally.in_range = False
        finally:
            samples.close()
            tally.in_range = True
