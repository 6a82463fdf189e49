"""The single-machine download engine: a pair list in, committed shards and a ledger out.

``plan`` splits the input into deterministic shards; ``process_shard(shard_id, ...)`` does
one shard (fetch, check, resize, encode, write, commit) in plain Python, so the Spark
job can distribute the very same function; ``run_download`` runs all pending shards on
local processes with a progress bar and merges their stats.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import fcntl
import hashlib
import heapq
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DownloadConfig, ImageConfig
from pipeline.fetch.client import Fetcher, FetchResult, parse_target, sha256_hex
from pipeline.fetch.guard import Resolver
from pipeline.fetch.robots import RobotsCache
from pipeline.images.process import process_image
from pipeline.schema import EXIF_FIELD, SAMPLE_FIELDS, STATUSES, Status, sample_fields
from pipeline.shards.layout import OutputLayout, make_key
from pipeline.shards.writer import (
    SHARD_SCHEMA_KEY,
    ShardWriter,
    dumps,
    encode_schema,
    extras_schema,
    json_safe,
    write_json_atomic,
)
from pipeline.sources.pairs import InputError, PairRow, expand_inputs, read_inputs
from pipeline.stats.counters import Counters, format_table

PLAN_SCHEMA = pa.schema(
    [
        ("row_index", pa.int64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("extra", pa.string()),  # JSON object of the input's other columns
    ]
)
_FETCH_STAGE = frozenset(
    {
        Status.INVALID_URL,
        Status.BLOCKED_ADDRESS,
        Status.HTTP_ERROR,
        Status.TIMEOUT,
        Status.CONNECTION_ERROR,
        Status.TOO_MANY_REDIRECTS,
        Status.OPT_OUT,
    }
)


@dataclass(frozen=True)
class Plan:
    n_rows: int
    n_shards: int
    rows_per_shard: tuple[int, ...]


@dataclass
class RunSummary:
    stats: dict[str, Any]
    failed_shards: dict[int, str]

    @property
    def ok(self) -> bool:
        return not self.failed_shards


# ---- planning ------------------------------------------------------------------------------


def _fingerprint(input_path: str, config: DownloadConfig) -> dict[str, Any]:
    """What makes a plan: the input's content (not its mtime: a copy is the same input) and
    the settings that shape the shards and their images."""
    import fsspec

    def sha256_of(path: str) -> str:
        digest = hashlib.sha256()
        try:
            with fsspec.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except (OSError, ValueError):
            pass  # read_pairs reports an unreadable input with a clear message
        return digest.hexdigest()

    try:
        files = expand_inputs(input_path)
    except InputError:
        files = [input_path]  # read_inputs reports it
    # One file: its own digest (as before folders were read, so older plans still match).
    # Several: the digest of their digests in order, so adding, dropping or reordering a
    # file changes the plan as much as editing one does.
    digests = [sha256_of(f) for f in files]
    combined = (
        digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()
    )
    return {
        "input": input_path,
        "input_sha256": combined,
        "url_col": config.url_col,
        "caption_col": config.caption_col,
        "samples_per_shard": config.samples_per_shard,
        "image": asdict(config.image),
    }


def check_plan(input_path: str, output: str | Path, config: DownloadConfig) -> None:
    """Raises InputError when ``output`` holds a plan made from another input or other
    settings, as ``plan`` would: for callers that must know before writing anything."""
    _checked_fingerprint(input_path, output, config)


def _checked_fingerprint(
    input_path: str, output: str | Path, config: DownloadConfig
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """This input's fingerprint, and the saved plan (None: none yet) it matches."""
    # As plan.json holds it (json_safe: an unlimited setting is null there; plans written
    # before that hold Infinity, read back as inf: both sides go through json_safe).
    fingerprint = json_safe(json.loads(json.dumps(_fingerprint(input_path, config), default=str)))
    plan_json = OutputLayout(Path(output)).plan_dir / "plan.json"
    if not plan_json.is_file():
        return fingerprint, None
    saved_plan = json.loads(plan_json.read_text())
    saved = json_safe(saved_plan["fingerprint"])
    if isinstance(saved.get("image"), dict):
        # An image setting added since the plan was made reads as its default: what the
        # engine then did (a plan without extract_exif wrote no exif field).
        default = json_safe(json.loads(json.dumps(asdict(ImageConfig()), default=str)))
        saved["image"] = {**default, **saved["image"]}
    # The path may differ (a moved or copied input); content and settings may not.
    changed = sorted(k for k in fingerprint if k != "input" and saved.get(k) != fingerprint[k])
    if changed:
        raise InputError(
            f"{output} holds a dataset planned from a different input or settings "
            f"({', '.join(changed)} changed): use another --output"
        )
    return fingerprint, saved_plan


def plan(input_path: str, output: str | Path, config: DownloadConfig) -> Plan:
    """Split the input into shards under DIR/_plan, or reuse the plan a previous run made.

    A plan made from another input or other settings is refused: mixing them would put
    two datasets in one directory.
    """
    layout = OutputLayout(Path(output))
    fingerprint, saved = _checked_fingerprint(input_path, output, config)
    if saved is not None:
        layout.make_dirs()
        return Plan(saved["n_rows"], saved["n_shards"], tuple(saved["rows_per_shard"]))
    rows = read_inputs(input_path, config.url_col, config.caption_col)
    layout.make_dirs()  # after the input is read: a bad one leaves no empty folders behind
    sps = config.samples_per_shard
    sizes = []
    extras: list[dict[str, Any]] = []  # as the shards will see them: through the plan's JSON
    for sid, start in enumerate(range(0, len(rows), sps)):
        part = rows[start : start + sps]
        sizes.append(len(part))
        plan_rows = [_plan_row(r) for r in part]
        extras += [json.loads(r["extra"]) for r in plan_rows if r["extra"]]
        table = pa.Table.from_pylist(plan_rows, schema=PLAN_SCHEMA)
        tmp = layout.plan_part(sid).with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, layout.plan_part(sid))
    result = Plan(len(rows), len(sizes), tuple(sizes))
    write_json_atomic(
        layout.plan_dir / "plan.json",
        {
            "fingerprint": fingerprint,
            "n_rows": result.n_rows,
            "n_shards": result.n_shards,
            "rows_per_shard": sizes,
            SHARD_SCHEMA_KEY: encode_schema(extras_schema(extras)),
        },
    )
    return result


def _plan_row(r: PairRow) -> dict[str, Any]:
    return {
        "row_index": r.row_index,
        "url": r.url,
        "caption": r.caption,
        "status": r.status.value if r.status else None,
        "error_message": r.error_message,
        "extra": dumps(r.extra) if r.extra else None,
    }


# ---- one shard ------------------------------------------------------------------------------


# The longest a fetch thread waits for one host (its back-off, a retry's backoff): a longer
# wait hands the row back, to be fetched again when due, while the thread serves other hosts.
FETCH_PATIENCE_S = 0.5


@dataclass(slots=True)
class _Outcome:
    ledger: dict[str, Any]
    sample: tuple[str, bytes] | None  # (ext, bytes) on success
    extra: dict[str, Any]
    bytes_downloaded: int
    later: FetchResult | None = None  # not done: fetch the row again at later.retry_at


def _host_of(url: str | None) -> str:
    target = parse_target(url) if url else "x"
    return "" if isinstance(target, str) else target.origin


def interleave_by_host(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round-robin over hosts, so that fetch threads spread over hosts instead of queueing
    behind one host's politeness limit. Deterministic."""
    queues: dict[str, collections.deque] = {}
    for r in rows:
        queues.setdefault(_host_of(r["url"]), collections.deque()).append(r)
    out: list[dict[str, Any]] = []
    active = list(queues.values())
    while active:
        nxt = []
        for q in active:
            out.append(q.popleft())
            if q:
                nxt.append(q)
        active = nxt
    return out


def _handle_row(
    row: dict[str, Any],
    key: str,
    shard_id: int,
    fetcher: Fetcher,
    config: DownloadConfig,
    cpu_slots: threading.BoundedSemaphore,
    resume: FetchResult | None = None,
) -> _Outcome:
    extra = json.loads(row["extra"]) if row["extra"] else {}
    ledger: dict[str, Any] = {
        "key": key,
        "shard": shard_id,
        "row_index": row["row_index"],
        "url": row["url"],
        "caption": row["caption"],
        "status": row["status"],
        "error_message": row["error_message"],
    }
    if row["status"]:
        return _Outcome(ledger, None, extra, 0)
    try:
        return _fetch_and_process(ledger, row, extra, fetcher, config, cpu_slots, resume)
    except Exception as e:
        # The fetcher and the image step turn every fault of the web into a status; what
        # still escapes is our bug. It is this row's, not its shard's: a shard failed on
        # it would fail again on every rerun and leave all its rows unaccounted for.
        ledger.update(
            status=Status.INTERNAL_ERROR.value,
            error_message=f"internal error (please report): {type(e).__name__}: {e}",
        )
        for name in ("original_width", "original_height", "width", "height"):
            ledger.pop(name, None)
        ledger.pop(EXIF_FIELD, None)
        return _Outcome(ledger, None, extra, 0)


def _fetch_and_process(
    ledger: dict[str, Any],
    row: dict[str, Any],
    extra: dict[str, Any],
    fetcher: Fetcher,
    config: DownloadConfig,
    cpu_slots: threading.BoundedSemaphore,
    resume: FetchResult | None = None,
) -> _Outcome:
    fetched = fetcher.fetch(row["url"], patience=FETCH_PATIENCE_S, resume=resume)
    if fetched.retry_at is not None:
        return _Outcome(ledger, None, extra, 0, later=fetched)
    ledger.update(
        http_status=fetched.http_status, attempts=fetched.attempts, final_url=fetched.final_url
    )
    if not fetched.ok:
        ledger.update(status=fetched.status.value, error_message=fetched.error_message)
        return _Outcome(ledger, None, extra, 0)
    data = fetched.data or b""
    with cpu_slots:  # fetch threads wait on the network; only a few decode at once
        image = process_image(data, config.image)
        digest = sha256_hex(data)
    ledger.update(
        num_bytes=len(data),
        sha256=digest,
        # A header may claim up to 2^32 - 1 pixels a side (refused as too_large, its size
        # in the message); the ledger's int32 holds any size an image can really have.
        original_width=_int32_or_none(image.original_width),
        original_height=_int32_or_none(image.original_height),
        status=image.status.value,
        error_message=image.error_message,
    )
    if image.status is not Status.SUCCESS:
        return _Outcome(ledger, None, extra, len(data))
    ledger.update(width=image.width, height=image.height)
    if config.image.extract_exif:
        ledger[EXIF_FIELD] = image.exif  # the sample's, not the ledger's: see _sample_meta
    return _Outcome(ledger, (image.ext, image.data), extra, len(data))


def _int32_or_none(value: int | None) -> int | None:
    return value if value is not None and -(2**31) <= value < 2**31 else None


def process_shard(
    shard_id: int,
    output: str | Path,
    config: DownloadConfig,
    progress: Callable[[int], None] | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    """Download one planned shard and commit it. Idempotent: a committed shard is skipped.

    Returns the shard's stats (also written as NNNNN_stats.json, the commit marker).
    """
    layout = OutputLayout(Path(output))
    if layout.is_committed(shard_id):
        stats = json.loads(layout.shard_stats(shard_id).read_text())
        return {**stats, "skipped": True}
    rows = pq.ParquetFile(layout.plan_part(shard_id)).read().to_pylist()
    first_index = rows[0]["row_index"] if rows else 0
    sps = config.samples_per_shard
    start = time.time()
    robots = RobotsCache(layout.root / "_robots") if config.fetch.respect_robots else None
    fetcher = Fetcher(config.fetch, resolver=resolver, robots=robots)
    writer = ShardWriter(layout, shard_id)
    outcomes: list[_Outcome] = []
    # Many threads overlap network waits; a few decode, so CPU work is not time-sliced
    # among dozens of threads (measured: ~10% more images/s on 2 cores than unbounded).
    cpu_slots = threading.BoundedSemaphore(config.decode_threads)
    fields = sample_fields(config.image.extract_exif)
    try:
        window = config.threads * 4  # bounds the bytes held in memory at once
        with cf.ThreadPoolExecutor(config.threads, thread_name_prefix=f"shard{shard_id}") as pool:
            pending: dict[cf.Future, dict[str, Any]] = {}
            todo: Iterator[dict[str, Any]] = iter(interleave_by_host(rows))
            # Rows handed back by the fetcher (their host is backing off, or a retry is
            # due later), by the time they are due: (retry_at, tie, row, resume).
            later: list[tuple[float, int, dict[str, Any], FetchResult]] = []
            tie = itertools.count()

            def submit(row: dict[str, Any], resume: FetchResult | None) -> None:
                key = make_key(shard_id, row["row_index"] - first_index, sps)
                fut = pool.submit(
                    _handle_row, row, key, shard_id, fetcher, config, cpu_slots, resume
                )
                pending[fut] = row

            def submit_more() -> None:
                now = time.monotonic()
                while later and later[0][0] <= now and len(pending) < window:
                    _, _, row, resume = heapq.heappop(later)
                    submit(row, resume)
                while len(pending) < window:
                    row = next(todo, None)
                    if row is None:
                        return
                    submit(row, None)

            submit_more()
            while pending or later:
                # A row due while the window is full waits for a completion, not a timer.
                room = len(pending) < window
                wait = max(0.0, later[0][0] - time.monotonic()) if later and room else None
                if pending:
                    done, _ = cf.wait(pending, timeout=wait, return_when=cf.FIRST_COMPLETED)
                else:
                    time.sleep(wait or 0.0)  # only rows of backed-off hosts are left
                    done = set()
                finished = 0
                for fut in done:
                    row = pending.pop(fut)
                    outcome = fut.result()
                    if outcome.later is not None:
                        retry_at = outcome.later.retry_at or 0.0
                        heapq.heappush(later, (retry_at, next(tie), row, outcome.later))
                        continue
                    finished += 1
                    outcomes.append(outcome)
                    if outcome.sample is not None:
                        ext, data = outcome.sample
                        led = outcome.ledger
                        writer.add(
                            led["key"],
                            ext,
                            data,
                            led["caption"],
                            _sample_meta(led, outcome.extra, fields),
                        )
                        outcome.sample = (ext, b"")  # written: free the bytes
                if progress is not None and finished:
                    progress(finished)
                submit_more()
        outcomes.sort(key=lambda o: o.ledger["row_index"])
        stats = _shard_stats(shard_id, outcomes, writer, start)
        writer.commit(_shard_rows(outcomes, fields), [o.ledger for o in outcomes], stats)
    except BaseException:
        writer.abort()
        raise
    finally:
        fetcher.close()
    return stats


def _sample_meta(
    ledger: dict[str, Any], extra: dict[str, Any], fields: tuple[str, ...] = SAMPLE_FIELDS
) -> dict[str, Any]:
    meta = {k: ledger.get(k) for k in fields}
    for k, v in extra.items():  # make_row renames input columns named as these; a plan
        meta.setdefault(k, v)  # made before it did may still hold one: ours win
    return meta


def _shard_rows(outcomes: list[_Outcome], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    extra_cols: dict[str, None] = {}
    for o in outcomes:
        for k in o.extra:
            extra_cols.setdefault(k, None)
    rows = []
    for o in outcomes:
        row = _sample_meta(o.ledger, {}, fields)
        for k in extra_cols:
            if k not in row:
                row[k] = o.extra.get(k)
        rows.append(row)
    return rows


def _shard_stats(
    shard_id: int, outcomes: list[_Outcome], writer: ShardWriter, start: float
) -> dict[str, Any]:
    counts = collections.Counter(o.ledger["status"] for o in outcomes)
    end = time.time()
    successes = counts.get(Status.SUCCESS.value, 0)
    failed_download = sum(v for k, v in counts.items() if k in _FETCH_STAGE)
    return {
        "shard": shard_id,
        "count": len(outcomes),
        "successes": successes,
        # img2dataset's names, so tools that read its stats read ours
        "failed_to_download": failed_download,
        "failed_to_resize": len(outcomes) - successes - failed_download,
        "status_dict": dict(sorted(counts.items())),
        "bytes_downloaded": sum(o.bytes_downloaded for o in outcomes),
        "bytes_written": writer.bytes_written,
        "retries": sum(max(0, (o.ledger.get("attempts") or 1) - 1) for o in outcomes),
        "start_time": start,
        "end_time": end,
        "duration": end - start,
    }


# ---- the whole run ---------------------------------------------------------------------------

_progress_counter: Any = None


def _init_worker(counter: Any) -> None:
    global _progress_counter
    _progress_counter = counter
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker must not outlive a killed run: an orphan would race the rerun's writes."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _worker_progress(n: int) -> None:
    with _progress_counter.get_lock():
        _progress_counter.value += n


def _process_shard_in_worker(shard_id: int, output: str, config: DownloadConfig) -> dict[str, Any]:
    return process_shard(shard_id, output, config, progress=_worker_progress)


class RunLock:
    """One run writes to an output directory at a time."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise InputError(f"another run is writing to {self.path.parent}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def merge_stats(layout: OutputLayout, n_shards: int) -> dict[str, Any]:
    """Sum the committed shards' stats: counts add, rates are computed on the sums."""
    total = Counters()
    committed = 0
    for sid in range(n_shards):
        if not layout.is_committed(sid):
            continue
        s = json.loads(layout.shard_stats(sid).read_text())
        committed += 1
        part = Counters.from_dict({f"status.{k}": v for k, v in s["status_dict"].items()})
        part.add("rows", s["count"])
        part.add("bytes_downloaded", s["bytes_downloaded"])
        part.add("bytes_written", s["bytes_written"])
        part.add("retries", s.get("retries", 0))
        total = total + part
    status_counts = {k: total[f"status.{k}"] for k in STATUSES if total[f"status.{k}"]}
    rows = total["rows"]
    return {
        "shards": n_shards,
        "shards_committed": committed,
        "rows": rows,
        "successes": status_counts.get("success", 0),
        "success_rate": (status_counts.get("success", 0) / rows) if rows else None,
        "status_counts": status_counts,
        "bytes_downloaded": total["bytes_downloaded"],
        "bytes_written": total["bytes_written"],
        "retries": total["retries"],
    }


def run_download(
    input_path: str,
    output: str | Path,
    config: DownloadConfig,
    show_progress: bool = True,
    resolver: Resolver | None = None,
) -> RunSummary:
    """Plan, then download every shard not yet committed; write DIR/stats.json."""
    from tqdm import tqdm

    root = Path(output)
    layout = OutputLayout(root)
    n_processes = config.processes or os.cpu_count() or 1
    with RunLock(root):
        # Workers are forked first, while this process has no threads of its own and no
        # Arrow work in flight: fork is then safe, and ~0.7 s faster than spawn on 2 cores.
        pool = _WorkerPool(n_processes) if n_processes > 1 else None
        try:
            the_plan = plan(input_path, root, config)
            layout.remove_leftovers()  # what a killed run left half-written
            pending = [s for s in range(the_plan.n_shards) if not layout.is_committed(s)]
            todo_rows = sum(the_plan.rows_per_shard[s] for s in pending)
            before = merge_stats(layout, the_plan.n_shards)
            bar = tqdm(
                total=the_plan.n_rows,
                initial=the_plan.n_rows - todo_rows,
                unit="img",
                desc="download",
                disable=not show_progress,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            start = time.perf_counter()
            if pool is None:
                failed: dict[int, str] = {}
                for sid in pending:
                    try:
                        process_shard(sid, root, config, progress=bar.update, resolver=resolver)
                    except Exception as e:  # a bug in one shard must not take the others
                        failed[sid] = f"{type(e).__name__}: {e}"
            else:
                failed = pool.run(pending, str(root), config, bar)
            elapsed = time.perf_counter() - start
            bar.close()
        finally:
            if pool is not None:
                pool.close()
        shutil.rmtree(layout.tmp_dir, ignore_errors=True)
        stats = merge_stats(layout, the_plan.n_shards)
        new_successes = stats["successes"] - before["successes"]
        stats.update(
            {
                "elapsed_s": round(elapsed, 3),
                "rows_this_run": todo_rows,
                "rows_per_second": _rate(todo_rows, elapsed),
                "images_per_second": _rate(new_successes, elapsed),
                "failed_shards": {str(k): v for k, v in failed.items()},
                "config": asdict(config),
            }
        )
        write_json_atomic(layout.stats_path, stats)
        return RunSummary(stats, failed)


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if n and seconds > 0 else None


class _WorkerPool:
    """Worker processes, one shard at a time each, reporting progress through a counter."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.counter = ctx.Value("q", 0)
        self.executor = cf.ProcessPoolExecutor(
            processes, mp_context=ctx, initializer=_init_worker, initargs=(self.counter,)
        )
        # Start every worker now (fork happens here, before any thread exists).
        for f in [self.executor.submit(os.getpid) for _ in range(processes)]:
            f.result()

    def run(
        self, pending: list[int], output: str, config: DownloadConfig, bar: Any
    ) -> dict[int, str]:
        failed: dict[int, str] = {}
        stop = threading.Event()

        def poll() -> None:
            last = 0
            while not stop.wait(0.2):
                value = self.counter.value
                bar.update(value - last)
                last = value
            bar.update(self.counter.value - last)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            futures = {
                self.executor.submit(_process_shard_in_worker, sid, output, config): sid
                for sid in pending
            }
            for fut in cf.as_completed(futures):
                try:
                    fut.result()
                except Exception as e:  # reported per shard, the rest go on
                    failed[futures[fut]] = f"{type(e).__name__}: {e}"
        finally:
            stop.set()
            poller.join()
        return failed

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def summary_text(stats: dict[str, Any]) -> str:
    rows = stats["rows"]
    counts = sorted(stats["status_counts"].items(), key=lambda kv: (-kv[1], kv[0]))
    table = format_table(counts, rows, "status")
    rate = stats.get("rows_per_second")
    lines = [
        table,
        f"shards: {stats['shards_committed']}/{stats['shards']} committed; "
        f"downloaded {stats['bytes_downloaded'] / 1e6:.1f} MB, wrote {stats['bytes_written'] / 1e6:.1f} MB; "
        f"retries {stats['retries']}",
    ]
    if rate:
        lines.append(
            f"this run: {stats['rows_this_run']:,} rows in {stats['elapsed_s']:.1f}s = {rate:,.1f} rows/s"
        )
    return "\n".join(lines)


def ledger_rows(output: str | Path) -> Iterable[dict[str, Any]]:
    """Every ledger row of a run, for inspection and tests."""
    layout = OutputLayout(Path(output))
    for path in sorted(layout.ledger_dir.glob("*.parquet")):
        yield from pq.ParquetFile(path).read().to_pylist()
