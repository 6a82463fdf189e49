"""The WIT build on Spark: sources -> clean -> dedup -> match -> balance -> download -> dedup
-> report. Every stage is a plain-Python step of the pipeline; this module only
distributes them and keeps the books.

Every candidate ends as one row of ``DIR/candidates/`` with its fate (``kept`` or the
reason it was dropped); every selected pair as one row of the download ledger
(``DIR/ledger/``); every downloaded image as a sample of ``DIR/shards/`` and, unless it
duplicates another, a row of ``DIR/final.parquet``. ``DIR/stats.json`` holds the funnel,
which is checked against those rows before it is written.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ConfigError, DownloadConfig
from pipeline.curate.balance import BalanceConfig
from pipeline.curate.clean import CleanConfig
from pipeline.curate.dedup_candidates import CandidateDedupConfig
from pipeline.curate.match import MatchConfig
from pipeline.curate.queries import QueryConfig
from pipeline.dedup.images import DedupConfig
from pipeline.shards.writer import json_safe
from pipeline.sources.crawl import CrawlConfig
from pipeline.sources.html import ExtractConfig
from pipeline.sources.pairs import InputError
from pipeline.stats.counters import Counters
from pipeline.stats.funnel import Funnel

ENGINES = ("native", "img2dataset")
KEPT = "kept"
DROPPED = "dropped"


class ShardsFailed(RuntimeError):
    """Download shards that did not commit (their error named): the build stops before
    dedup and the funnel, which would count their rows as lost."""


def _by_int(item: tuple[str, Any]) -> int:
    return int(item[0])


@dataclass(frozen=True)
class BuildConfig:
    output: str = "data/demo"
    warc: tuple[str, ...] = ()  # WARC/WAT files or globs, local or fsspec URLs
    pairs: tuple[str, ...] = ()  # pair lists (the engine's formats)
    crawl: tuple[str, ...] = ()  # seed pages
    queries: str = ""  # a saved query list; empty: build one (QueryConfig)
    engine: str = "native"
    sample_sheet: int = 24  # images on the contact sheet
    download: DownloadConfig = field(default_factory=DownloadConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    crawler: CrawlConfig = field(default_factory=CrawlConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    candidate_dedup: CandidateDedupConfig = field(default_factory=CandidateDedupConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")


# ---- partition steps (run in Spark tasks; plain Python) -----------------------------------

Row = dict[str, Any]
Tagged = tuple[str, Any]  # ("row", Row) or ("counters", dict)


def _tagged(step: Callable[[Iterator[Row]], Iterator[Row]], counters: Counters) -> Callable:
    """Wrap a partition step so that its counters travel with its rows."""

    def run(rows: Iterator[Row]) -> Iterator[Tagged]:
        for row in step(rows):
            yield "row", row
        yield "counters", counters.to_dict()

    return run


def _extract_warc_file(path: str, extract: ExtractConfig) -> Iterator[Tagged]:
    from pipeline.sources.warc import iter_candidates

    counters = Counters()
    for i, c in enumerate(iter_candidates(path, extract, counters)):
        yield "row", {**c.to_dict(), "candidate_id": f"warc:{path}#{i:09d}"}
    yield "counters", counters.to_dict()


def _clean_partition(rows: Iterator[Row], config: CleanConfig) -> Iterator[Tagged]:
    from pipeline.curate.clean import CaptionCleaner
    from pipeline.curate.records import Candidate

    step = CaptionCleaner(config, emit_dropped=True)
    # The step yields one record per record, in order: each meets its row (candidate_id,
    # error_message ...) again at the head of this queue.
    pending: collections.deque[Row] = collections.deque()

    def candidates() -> Iterator[Candidate]:
        for r in rows:
            pending.append(r)
            yield Candidate.from_dict(r)

    for c in step(candidates()):
        yield "row", {**pending.popleft(), **c.to_dict()}
    yield "counters", step.counters.to_dict()


def _dedup_partition(rows: Iterable[Row], config: CandidateDedupConfig) -> Iterator[Tagged]:
    """All copies of a key are in this partition; the smallest candidate id wins."""
    from pipeline.curate.dedup_candidates import CandidateDeduplicator
    from pipeline.curate.records import Candidate

    step = CandidateDeduplicator(config, emit_dropped=True)
    ordered = sorted(rows, key=lambda r: r["candidate_id"])
    for r, c in zip(ordered, step(Candidate.from_dict(r) for r in ordered), strict=True):
        yield "row", {**r, **c.to_dict()}
    yield "counters", step.counters.to_dict()


def _match_partition(rows: Iterator[Row], matcher: Any) -> Iterator[Row]:
    for r in rows:
        r["matched"] = matcher.match(r["caption"]) if r["status"] == KEPT else []
        yield r


def _count_partition(rows: Iterator[Row], n_entries: int) -> Iterator[Any]:
    from pipeline.curate.balance import EntryCounts

    yield EntryCounts.from_matches([r["matched"] for r in rows if r["status"] == KEPT], n_entries)


def _balance_partition(rows: Iterator[Row], balancer: Any) -> Iterator[Row]:
    from pipeline.curate.balance import pair_key

    for r in rows:
        if r["status"] == KEPT:
            reason = balancer.decide(pair_key(r["url"], r["caption"]), r["matched"])
            if reason is not None:
                r["status"], r["reason"] = DROPPED, reason
        yield r


def _balance_stats_partition(rows: Iterator[Row], balancer: Any, n_entries: int) -> Iterator[Any]:
    """Per entry, over the pairs that went into the draw: the sum of their keep
    probabilities (expected count after) and how many were kept (realized)."""
    import numpy as np

    from pipeline.curate.balance import DROP_BALANCED, DROP_UNMATCHED, BalanceStats

    stats = BalanceStats.zeros(n_entries)
    for r in rows:
        if r["status"] == KEPT:
            stats.counters.add("pairs")
            stats.counters.add("kept")
        elif r["reason"] in (DROP_BALANCED, DROP_UNMATCHED):
            stats.counters.add("pairs")
            stats.counters.add(f"drop.{r['reason']}")
        drawn = r["status"] == KEPT or r["reason"] == DROP_BALANCED
        if not drawn or not r["matched"]:
            continue
        ids = np.asarray(r["matched"], dtype=np.int64)
        stats.expected[ids] += balancer.keep_probability(r["matched"])
        if r["status"] == KEPT:
            stats.realized[ids] += 1
    yield stats


# ---- driver ---------------------------------------------------------------------------------


def _split(tagged: Any) -> tuple[Any, Counters]:
    """Rows of a tagged RDD (cached) and its merged counters."""
    tagged = tagged.cache()
    counters = sum(
        (
            Counters.from_dict(d)
            for d in tagged.filter(lambda t: t[0] == "counters").map(lambda t: t[1]).collect()
        ),
        Counters(),
    )
    return tagged.filter(lambda t: t[0] == "row").map(lambda t: t[1]), counters


def _driver_candidates(
    config: BuildConfig, log: Callable[[str], None]
) -> tuple[list[Row], Counters]:
    from pipeline.curate.records import candidate_from_pair_row
    from pipeline.sources.crawl import crawl
    from pipeline.sources.pairs import expand_inputs, read_pairs

    rows: list[Row] = []
    counters = Counters()
    # A folder or glob is its files, each read on its own: ids name the file they came from.
    d = config.download
    for given in config.pairs:
        files = expand_inputs(given)
        before = len(rows)
        for path in files:
            # One file of several may be empty (a Spark job's empty partition).
            for pr in read_pairs(path, d.url_col, d.caption_col, allow_empty=len(files) > 1):
                c = candidate_from_pair_row(pr)
                rows.append(
                    {
                        **c.to_dict(),
                        "candidate_id": f"pairs:{path}#{pr.row_index:09d}",
                        "error_message": pr.error_message,  # why the reader refused it
                    }
                )
            counters.add("pairs.files")
        if len(rows) == before:
            raise InputError(f"no rows in any of the {len(files)} pair lists of {given}")
    if config.crawl:
        log(
            f"crawl: {len(config.crawl)} seed(s), depth <= {config.crawler.max_depth}, pages <= {config.crawler.max_pages}"
        )
        result = crawl(config.crawl, config.crawler, config.download.fetch, config.extract)
        for i, c in enumerate(result.candidates):
            rows.append({**c.to_dict(), "candidate_id": f"crawl:{i:09d}"})
        counters = counters + result.counters
    return rows, counters


def check_query_inputs(config: BuildConfig) -> None:
    """Raise InputError when a local file the query list is built from is missing, or the
    list given to ``--queries`` cannot be read or has the wrong shape: checked before
    Spark starts, not minutes later at the query stage."""
    from pipeline.curate.queries import missing_wordnet_files

    if config.queries:
        _load_query_list(config)
        return
    q = config.query
    for flag, paths in (("--corpus-files", q.corpus_files), ("--title-files", q.title_files)):
        for path in paths:
            if "://" not in path and not Path(path).is_file():
                raise InputError(f"{flag}: no such file: {path}")
    if q.wordnet and (missing := missing_wordnet_files(q.wordnet_dir)):
        raise InputError(
            f"no WordNet 3.0 database in {q.wordnet_dir} (missing {', '.join(missing)}): "
            "install the Debian package wordnet-base (apt-get install wordnet-base), give "
            "--wordnet-dir DIR (a folder holding index.noun, data.noun, ...), or build the "
            "query list without WordNet with --wordnet false"
        )


def _load_query_list(config: BuildConfig) -> tuple[Any, dict[str, int]]:
    """The list of ``--queries``, normalized as captions are matched, and its counts."""
    from pipeline.curate.queries import load_query_list

    try:
        return load_query_list(config.queries, lowercase=config.match.lowercase)
    except FileNotFoundError:
        raise InputError(
            f"query list not found: {config.queries}: give an existing file to --queries, "
            "or leave it out to build the list"
        ) from None


def _query_entries(config: BuildConfig, loaded: Any, out: Path) -> list[str]:
    """The entries in id order; the list used is saved in ``out``. ``loaded``: the table of
    ``_load_query_list``, or None to build the list."""
    from pipeline.curate.queries import build_queries, query_entries, save_queries

    table = loaded if loaded is not None else build_queries(config.query)
    save_queries(table, out / "queries.parquet")
    return query_entries(table)


_CANDIDATE_COLUMNS = (
    "candidate_id",
    "source",
    "page_url",
    "url",
    "caption",
    "caption_source",
    "status",
    "reason",
    "error_message",  # a pair-list row the reader refused: why (line, field)
)


def _write_candidates(spark: Any, rows: Any, out: Path) -> None:
    from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

    fields = [StructField(c, StringType()) for c in _CANDIDATE_COLUMNS]
    fields.append(StructField("matched", ArrayType(IntegerType())))
    schema = StructType(fields)
    data = rows.map(
        lambda r: (*tuple(r.get(c) for c in _CANDIDATE_COLUMNS), r.get("matched") or [])
    )
    spark.createDataFrame(data, schema).write.mode("overwrite").parquet(str(out / "candidates"))


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def run_build(
    spark: Any, config: BuildConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The whole job; returns what DIR/stats.json holds.

    An fsspec ``output`` (``s3://...``) is built in a local staging folder (kept across
    reruns on this machine, so a killed job resumes) and uploaded when complete, its
    stats.json last: a reader that sees stats.json sees a complete dataset.
    """
    if not is_remote(config.output):
        return _run_build(spark, config, log)
    import hashlib

    import fsspec

    fs, remote = fsspec.core.url_to_fs(config.output)
    if fs.exists(f"{remote}/stats.json"):
        with fs.open(f"{remote}/stats.json") as f:
            done = json.load(f)
        changed = changed_settings(done.get("config", {}), config)
        if changed:
            raise InputError(
                f"{config.output} is complete and was built with other settings "
                f"({', '.join(changed[:8])} changed): use another --output"
            )
        log(f"{config.output} is complete (stats.json present): nothing to do")
        return done
    staging = (
        Path(".wit-staging").resolve() / hashlib.sha256(config.output.encode()).hexdigest()[:16]
    )
    log(f"staging {config.output} in {staging}")
    stats = _run_build(spark, dataclasses.replace(config, output=str(staging)), log)
    n = _upload(staging, fs, remote)
    log(f"uploaded {n} files to {config.output}; removed the staging folder {staging}")
    shutil.rmtree(staging)
    return stats


# Run-time settings: how fast and how politely the job works, not what it builds. A
# resumed or repeated build may change them.
RUNTIME_SETTINGS = frozenset(
    {"output", "sample_sheet", "download.processes", "download.threads",
     "download.decode_threads", "crawler.threads"}
)  # fmt: skip
# Fetching (timeouts, retries, politeness, robots.txt): as a local rerun may change them
# for the shards still to download, without a new plan.
RUNTIME_PREFIXES = ("download.fetch.",)


def changed_settings(recorded: dict[str, Any], config: BuildConfig) -> list[str]:
    """The settings (dotted names) that decide a dataset and differ between a finished
    build's recorded config (its stats.json) and ``config``."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    def as_recorded(d: Any) -> dict[str, Any]:
        # As stats.json records them: an unlimited (infinite) setting is null there.
        return flat(json.loads(json.dumps(json_safe(d), default=str)))

    now = as_recorded(dataclasses.asdict(config))
    then = as_recorded(recorded)
    # A setting added since that build reads as its default: what the build then did.
    default = as_recorded(dataclasses.asdict(BuildConfig()))
    return sorted(
        k
        for k in set(now) | set(then)
        if k not in RUNTIME_SETTINGS
        and not k.startswith(RUNTIME_PREFIXES)
        and now.get(k) != then.get(k, default.get(k))
    )


def _upload(staging: Path, fs: Any, remote: str) -> int:
    """The staged dataset to ``remote``, stats.json last. Spark names its part files anew
    on every run, so remote candidates/ parts this build did not write are removed first
    (else a rerun after an interrupted upload doubles the candidates); Hadoop's .crc side
    files, the run lock and a killed write's temp files stay local."""
    files = sorted(
        p
        for p in staging.rglob("*")
        if p.is_file()
        and p.name not in ("stats.json", ".lock")
        and p.suffix != ".crc"
        and not (p.name.startswith(".") and p.suffix == ".tmp")  # a killed write's
    )
    names = {p.relative_to(staging).as_posix() for p in files}
    fs.invalidate_cache(remote)  # listings cached by this process may predate a rerun's
    if fs.exists(f"{remote}/candidates"):
        for path in fs.find(f"{remote}/candidates"):
            if path[len(remote) + 1 :] not in names:
                fs.rm_file(path)
    for p in files:
        fs.put_file(str(p), f"{remote}/{p.relative_to(staging).as_posix()}")
    fs.put_file(str(staging / "stats.json"), f"{remote}/stats.json")
    return len(files) + 1


def _run_build(spark: Any, config: BuildConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from pipeline.engine import RunLock

    Path(config.output).mkdir(parents=True, exist_ok=True)
    with RunLock(Path(config.output)):  # one job per output directory
        return _build(spark, config, log)


def _build(spark: Any, config: BuildConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from pipeline.curate.balance import Balancer, EntryCounts
    from pipeline.curate.dedup_candidates import dedup_key
    from pipeline.curate.match import Matcher
    from pipeline.curate.records import Candidate
    from pipeline.shards.writer import write_json_atomic
    from pipeline.sources.warc import expand_paths
    from pipeline.spark.dedup import dedup_on_spark
    from pipeline.spark.download import download_on_spark

    started = time.time()
    if config.engine == "img2dataset":  # refused settings fail here, before any work
        from pipeline.spark.img2dataset_engine import check_config

        check_config(config.download)
    # The query list's inputs too (run_build may be called without the job's check): a
    # given list is read now, for use at stage 4.
    loaded_queries, query_load = None, None
    if config.queries:
        loaded_queries, query_load = _load_query_list(config)
    else:
        check_query_inputs(config)
    # Tasks run in other working directories: they get absolute paths.
    config = dataclasses.replace(config, output=str(Path(config.output).resolve()))
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    sc = spark.sparkContext
    parallelism = max(2, sc.defaultParallelism)

    # 1. Extract
    driver_rows, counters = _driver_candidates(config, log)
    rdd = sc.parallelize(driver_rows, max(1, min(parallelism, len(driver_rows) // 1000 + 1)))
    if config.warc:
        files = expand_paths(config.warc)
        log(f"extract: {len(files)} WARC/WAT file(s)")
        extract = config.extract
        with _input_errors_of_tasks():  # a file a task cannot open: one line, not a trace
            warc_rows, warc_counters = _split(
                sc.parallelize(files, len(files)).flatMap(lambda f: _extract_warc_file(f, extract))
            )
        rdd = rdd.union(warc_rows)
        counters = counters + warc_counters
    # Candidates a reader already refused (bad pair-list rows) are dropped from the start.
    n_candidates = rdd.count()
    if n_candidates == 0:
        raise ConfigError(
            "no candidates: give --warc, --pairs or --crawl inputs that hold images with text"
        )
    log(f"extract: {n_candidates:,} candidates")

    # 2. Clean
    clean_cfg = config.clean
    cleaned, clean_counters = _split(rdd.mapPartitions(lambda it: _clean_partition(it, clean_cfg)))

    # 3. Dedup candidates: route every copy of a key to one task, smallest id wins there.
    dd_cfg = config.candidate_dedup

    def route(r: Row) -> tuple[str, Row]:
        key = dedup_key(Candidate.from_dict(r), dd_cfg) if r["status"] == KEPT else None
        return (key or f"\x00{r['candidate_id']}", r)

    deduped, dedup_counters = _split(
        cleaned.map(route)
        .partitionBy(parallelism)
        .mapPartitions(lambda it: _dedup_partition((r for _, r in it), dd_cfg))
    )

    # What selection writes is staged and moved into place only once the download's plan
    # accepts it: a rerun with other settings is refused without touching the dataset.
    stage = out / "_tmp" / "select"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)

    # 4. Queries, 5. match and balance
    entries = _query_entries(config, loaded_queries, stage)
    log(f"queries: {len(entries):,} entries")
    if query_load and (query_load["changed"] or query_load["dropped"] or query_load["repeats"]):
        log(
            f"queries: {config.queries}: {query_load['changed']:,} entries normalized as "
            f"captions are matched (spaces, Unicode NFC{', case' if config.match.lowercase else ''}), "
            f"{query_load['dropped']:,} dropped (no letter or digit), "
            f"{query_load['repeats']:,} repeats dropped"
        )
    matcher = sc.broadcast(Matcher(entries, config.match))
    matched = deduped.mapPartitions(lambda it: _match_partition(it, matcher.value)).cache()
    n_entries = len(entries)
    counts = matched.mapPartitions(lambda it: _count_partition(it, n_entries)).reduce(
        lambda a, b: a + b
    )
    balancer = sc.broadcast(Balancer(counts, config.balance))
    fates = matched.mapPartitions(lambda it: _balance_partition(it, balancer.value)).cache()
    _write_candidates(spark, fates, stage)
    reasons = dict(
        fates.map(lambda r: (r["reason"] or KEPT, 1)).reduceByKey(lambda a, b: a + b).collect()
    )
    selected = (
        fates.filter(lambda r: r["status"] == KEPT)
        .map(
            lambda r: {
                "url": r["url"],
                "caption": r["caption"],
                "candidate_id": r["candidate_id"],
                "source": r["source"],
                "page_url": r["page_url"],
                "caption_source": r["caption_source"],
                "queries": r["matched"],  # entry ids here, names below
            }
        )
        .collect()
    )
    selected.sort(key=lambda r: r["candidate_id"])  # a deterministic shard plan
    from pipeline.curate.balance import BalanceStats, make_report, per_entry_table

    bstats = fates.mapPartitions(
        lambda it: _balance_stats_partition(it, balancer.value, n_entries)
    ).fold(BalanceStats.zeros(n_entries), lambda a, b: a + b)
    pq.write_table(per_entry_table(entries, counts, bstats), stage / "queries_balance.parquet")
    balance_report = dataclasses.asdict(make_report(entries, counts, bstats, config.balance))
    kept_counts = EntryCounts.from_matches([r["queries"] for r in selected], n_entries)
    for r in selected:
        r["queries"] = [entries[e] for e in r["queries"]]
    log(f"select: {len(selected):,} pairs after cleaning, dedup, matching and balancing")
    pq.write_table(
        pa.Table.from_pylist(selected)
        if selected
        else pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}),
        stage / "selected.parquet",
    )
    _commit_selection(stage, out, config)
    pairs_path = out / "selected.parquet"

    # 6. Download
    if selected and config.engine == "img2dataset":
        from pipeline.spark.img2dataset_engine import download_with_img2dataset

        dl = download_with_img2dataset(
            spark, str(pairs_path), out, config.download, stats_path=out / DOWNLOAD_STATS
        )
    elif selected:
        # Not DIR/stats.json: that is the finished build's, written last.
        dl = download_on_spark(
            spark, str(pairs_path), out, config.download, stats_path=out / DOWNLOAD_STATS
        )
    else:
        dl = {"rows": 0, "status_counts": {}, "successes": 0, "shards": 0}
    failed = dl.get("failed_shards") or {}
    if failed:
        named = sorted(failed.items(), key=_by_int)
        more = f"; and {len(named) - 5} more" if len(named) > 5 else ""
        raise ShardsFailed(
            f"download: {len(failed)} of {dl['shards']} shards failed ("
            + "; ".join(f"shard {sid}: {why}" for sid, why in named[:5])
            + f"{more}): committed shards are kept; rerun the same command to retry the others "
            "(a shard that fails the same way again has a lasting cause, named here)"
        )
    log(f"download: {dl['successes']:,} of {dl['rows']:,} images")

    # 7. Dedup images
    if dl.get("shards"):
        dd = dedup_on_spark(spark, out, dl["shards"], config.dedup)
    else:
        dd = {"images": 0, "undecodable": 0, "exact": 0, "near": 0, "final": 0}
    log(
        f"dedup: {dd['exact']:,} exact and {dd['near']:,} near duplicates; {dd['final']:,} in the final dataset"
    )

    # 8. Funnel and report
    funnel = _funnel(n_candidates, reasons, clean_counters, dedup_counters, dl, dd)
    stats = {
        "funnel": funnel.to_dict(),
        "counters": {
            "extract": counters.to_dict(),
            "clean": clean_counters.to_dict(),
            "candidate_dedup": dedup_counters.to_dict(),
        },
        "queries": {
            "entries": n_entries,
            "pairs_matched": int(counts.matched_pairs),
            "pairs_considered": int(counts.pairs),
            "share_matched": (counts.matched_pairs / counts.pairs) if counts.pairs else None,
            "entries_matched": int((counts.counts > 0).sum()),
            "top_entries_before": _top(counts.counts, entries),
            "top_entries_after": _top(kept_counts.counts, entries),
            "max_per_query": config.balance.max_per_query,
            "list_loaded": query_load,  # a given list: entries normalized, dropped, repeats
        },
        "balance": balance_report,
        "download": {k: v for k, v in dl.items() if k != "config"},
        "dedup": dd,
        "elapsed_s": round(time.time() - started, 2),
        "config": dataclasses.asdict(config),
    }
    from pipeline.stats.card import write_report

    write_report(out, funnel, stats, config.sample_sheet)
    write_json_atomic(out / "stats.json", stats)  # last: it says the dataset is complete
    return stats


SELECTION_OUTPUTS = ("queries.parquet", "queries_balance.parquet", "candidates", "selected.parquet")
# The download stage's merged stats, apart from DIR/stats.json (the finished build's).
DOWNLOAD_STATS = "download_stats.json"
# A Python exception of a Spark task, as the driver's error quotes its traceback.
_TASK_INPUT_ERROR = re.compile(r"^\S*InputError: (.+)$", re.M)


@contextlib.contextmanager
def _input_errors_of_tasks() -> Iterator[None]:
    """An ``InputError`` raised in a Spark task (a WARC file a worker cannot open) reaches
    the driver as a Py4J error holding pages of Java and Python traceback; raise it as the
    ``InputError`` it was, its one line."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        found = _TASK_INPUT_ERROR.findall(str(e))
        if not found:
            raise
        raise InputError(found[-1].strip()) from None


def _commit_selection(stage: Path, out: Path, config: BuildConfig) -> None:
    """Moves the staged selection into ``out``, once the download's plan accepts it; a
    refusal (another input or other settings than the dataset in ``out`` was planned
    from) leaves ``out`` as it was. ``selected.parquet`` goes last: the plan reads it."""
    from pipeline.engine import check_plan

    try:
        check_plan(str(stage / "selected.parquet"), out, config.download)
    except InputError:
        _remove_stage(stage)
        raise
    # From here the dataset changes until this build writes its stats.json again: a
    # finished build's (or a download's, from before download_stats.json) must not
    # say it is complete meanwhile.
    (out / "stats.json").unlink(missing_ok=True)
    for name in SELECTION_OUTPUTS:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        os.replace(stage / name, old)
    _remove_stage(stage)


def _remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty: the download keeps its own there
        stage.parent.rmdir()


def _top(counts: Any, entries: list[str], n: int = 20) -> list[tuple[str, int]]:
    import numpy as np

    order = np.argsort(-counts, kind="stable")[:n]
    return [(entries[int(e)], int(counts[e])) for e in order if counts[e] > 0]


def _funnel(
    n_candidates: int,
    reasons: dict[str, int],
    clean_counters: Counters,
    dedup_counters: Counters,
    dl: dict[str, Any],
    dd: dict[str, Any],
) -> Funnel:
    """The funnel, from the counters of each stage; checked against the rows' own fates."""
    from pipeline.curate.balance import DROP_BALANCED, DROP_UNMATCHED

    clean_drops = clean_counters.with_prefix("clean.drop.")
    dedup_drops = dedup_counters.with_prefix("dedup.drop.")
    # Each stage's drops are its own counts; what the rows say beyond them the sources
    # dropped (a reader's refused rows). Reasons are unique across stages, but were not
    # always: a reason two stages share still lands in the stage that dropped each row.
    later = {DROP_UNMATCHED, DROP_BALANCED, KEPT}
    source_drops = {
        k: v - clean_drops.get(k, 0) - dedup_drops.get(k, 0)
        for k, v in reasons.items()
        if k not in later
    }
    funnel = Funnel("candidates", n_candidates)
    funnel.add("readable", source_drops)
    funnel.add("cleaned", clean_drops)
    funnel.add("unique", dedup_drops)
    funnel.add("matched", {DROP_UNMATCHED: reasons.get(DROP_UNMATCHED, 0)})
    funnel.add("balanced", {DROP_BALANCED: reasons.get(DROP_BALANCED, 0)})
    funnel.add(
        "downloaded", {k: v for k, v in dl.get("status_counts", {}).items() if k != "success"}
    )
    funnel.add("deduplicated", {"exact_duplicate": dd["exact"], "near_duplicate": dd["near"]})
    funnel.check(
        {
            "balanced": reasons.get(KEPT, 0),
            "downloaded": dl.get("successes", 0),
            "deduplicated": dd["final"],
        }
    )
    return funnel


def load_stats(output: str | Path) -> dict[str, Any]:
    return json.loads((Path(output) / "stats.json").read_text())
