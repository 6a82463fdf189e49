"""``--engine img2dataset``: the same shard plan, downloaded by img2dataset 1.47's pyspark
distributor, written in the same layout (tars in DIR/shards, a ledger row per pair).

img2dataset fetches with urllib and has no address guard, so its workers are pointed at
a loopback ``GuardedProxy`` (http_proxy/https_proxy in their environment): every request,
every redirect hop included, passes our guard there. What img2dataset does not do at
all it still does not do, and the native engine is the one to use on untrusted lists:
``REFUSED`` and ``UNHONOURED`` below name those settings, each with the reason. A run
that asks for a refused one (robots.txt) is refused, since ignoring it is not an option;
each unhonoured one a run sets away from its default gets a note (``check_config``, run
by the build job before Spark starts). ``max_image_pixels`` holds, but is checked after
decoding, not from the header before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ConfigError, DownloadConfig
from pipeline.schema import LEDGER_SCHEMA, Status

_QUIET_ENV = {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}

# What this engine cannot honour, by DownloadConfig setting name (nested ones included),
# with the reason: the one list that check_config, README and docs/CONFIG.md follow.
REFUSED = {"respect_robots": "img2dataset does not read robots.txt"}
UNHONOURED = {
    "max_bytes": "it reads every image whole, with no byte cap",
    "per_host_connections": "it has no per-host connection limit",
    "host_delay": "it has no delay between requests to one host",
    "total_timeout": "it has only the connect and read timeout",
    "backoff_base": "it retries at once, with no backoff",
    "backoff_max": "it retries at once, with no backoff",
    "max_retry_after": "it does not read Retry-After",
    "max_redirects": "urllib follows up to 10 redirects",
    "user_agent": "it sends its own User-Agent, naming the wit-builder token",
    "decode_threads": "its fetch threads decode too",
}


def _is_set(config: DownloadConfig, name: str) -> bool:
    """Whether ``config`` (or its nested fetch/image config) sets ``name`` away from its
    default."""
    for part in (config, config.fetch, config.image):
        if hasattr(part, name):
            return getattr(part, name) != getattr(type(part)(), name)
    raise KeyError(name)


def check_config(config: DownloadConfig) -> list[str]:
    """Raises ConfigError when ``config`` asks for what this engine would break (robots.txt);
    else one note line for each setting it would ignore that ``config`` sets."""
    for name, why in REFUSED.items():
        if _is_set(config, name):
            raise ConfigError(
                f"engine img2dataset cannot honour {name} ({why}): use --engine native, which does"
            )
    return [
        f"note: engine img2dataset ignores {name} ({why}); --engine native honours it"
        for name, why in UNHONOURED.items()
        if _is_set(config, name)
    ]


def classify(status: str, message: str | None) -> Status:
    """img2dataset's (status, error_message) as one of our statuses."""
    if status == "success":
        return Status.SUCCESS
    m = (message or "").lower()
    if "x-wit-blocked" in m or ("403" in m and "forbidden" in m and "blocked" in m):
        return Status.BLOCKED_ADDRESS
    if "x-robots-tag" in m:
        return Status.OPT_OUT
    if "redirect" in m and ("infinite" in m or "loop" in m or "exceed" in m):
        return Status.TOO_MANY_REDIRECTS
    if "timed out" in m or "timeout" in m:
        return Status.TIMEOUT
    if re.search(r"http error \d{3}", m):
        return Status.HTTP_ERROR
    if "unknown url type" in m or "no host given" in m or "invalid url" in m:
        return Status.INVALID_URL
    if "image too small" in m:
        return Status.TOO_SMALL
    if "aspect ratio too large" in m:
        return Status.BAD_ASPECT_RATIO
    if "image area too large" in m:
        return Status.TOO_LARGE
    if status == "failed_to_download":
        return Status.CONNECTION_ERROR
    if "decoding error" in m or "cannot identify" in m or "image decoding" in m:
        return Status.NOT_IMAGE if "cannot identify" in m else Status.DECODE_ERROR
    return Status.DECODE_ERROR


def _ledger_and_stats(layout: Any, shard_id: int, plan_rows: list[dict[str, Any]]) -> None:
    """Our ledger part and stats (the commit marker) from img2dataset's shard Parquet."""
    theirs = pq.ParquetFile(layout.parquet(shard_id)).read().to_pylist()
    if len(theirs) != len(plan_rows):
        raise RuntimeError(
            f"img2dataset shard {shard_id}: {len(theirs)} rows for {len(plan_rows)} planned"
        )
    by_index = sorted(theirs, key=lambda r: r["key"])  # its keys follow the input order
    ledger = []
    counts: dict[str, int] = {}
    for plan_row, row in zip(plan_rows, by_index, strict=True):
        status = classify(row.get("status") or "", row.get("error_message"))
        counts[status.value] = counts.get(status.value, 0) + 1
        ledger.append(
            {
                "key": row["key"],
                "shard": shard_id,
                "row_index": plan_row["row_index"],
                "url": plan_row["url"],
                "caption": plan_row["caption"],
                "status": status.value,
                "error_message": None if status is Status.SUCCESS else row.get("error_message"),
                "sha256": row.get("sha256"),
                "original_width": row.get("original_width"),
                "original_height": row.get("original_height"),
                "width": row.get("width"),
                "height": row.get("height"),
            }
        )
    tmp = layout.ledger(shard_id).with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), tmp)
    os.replace(tmp, layout.ledger(shard_id))
    their_stats = json.loads(layout.shard_stats(shard_id).read_text())
    successes = counts.get("success", 0)
    stats = {
        **their_stats,
        "shard": shard_id,
        "count": len(ledger),
        "successes": successes,
        "status_dict": dict(sorted(counts.items())),
        "img2dataset_status_dict": their_stats.get("status_dict"),
        "bytes_downloaded": 0,  # img2dataset does not report it
        "bytes_written": layout.tar(shard_id).stat().st_size,
        "engine": "img2dataset",
    }
    from pipeline.shards.writer import write_json_atomic

    write_json_atomic(layout.shard_stats(shard_id), stats)


def download_with_img2dataset(
    spark: Any,
    input_path: str,
    output: str | Path,
    config: DownloadConfig,
    stats_path: str | Path | None = None,
) -> dict[str, Any]:
    """Download with img2dataset's pyspark distributor; the merged stats are written to
    ``stats_path`` (default DIR/stats.json; the build job keeps that name for its own)."""
    check_config(config)  # the build job checks before Spark starts; other callers, here
    from dataclasses import asdict

    from pipeline.engine import merge_stats, plan
    from pipeline.fetch.guard import AddressGuard
    from pipeline.fetch.proxy import GuardedProxy
    from pipeline.shards.layout import OutputLayout
    from pipeline.shards.writer import write_json_atomic

    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    from img2dataset import download

    layout = OutputLayout(Path(output))
    the_plan = plan(input_path, output, config)
    pending = [s for s in range(the_plan.n_shards) if not layout.is_committed(s)]
    start = time.perf_counter()
    if pending:
        extra = [
            c
            for c in pq.ParquetFile(input_path).schema_arrow.names
            if c not in (config.url_col, config.caption_col)
        ]
        sc = spark.sparkContext
        guard = AddressGuard.from_cidrs(config.fetch.allow_networks)
        with GuardedProxy(guard, timeout=config.fetch.timeout) as proxy:
            env = {"http_proxy": proxy.url, "https_proxy": proxy.url, **_QUIET_ENV}
            saved = {k: sc.environment.get(k) for k in env}
            sc.environment.update(env)  # the Python workers img2dataset's tasks run in
            try:
                download(
                    url_list=input_path,
                    input_format="parquet",
                    url_col=config.url_col,
                    caption_col=config.caption_col,
                    save_additional_columns=extra or None,
                    output_format="webdataset",
                    output_folder=str(layout.shards_dir),
                    processes_count=1,
                    thread_count=config.threads,
                    image_size=config.image.image_size,
                    resize_mode=config.image.resize_mode,
                    resize_only_if_bigger=config.image.resize_only_if_bigger,
                    encode_format=config.image.encode_format,
                    encode_quality=config.image.encode_quality,
                    number_sample_per_shard=config.samples_per_shard,
                    distributor="pyspark",
                    enable_wandb=False,
                    timeout=int(max(1, round(config.fetch.timeout))),
                    retries=config.fetch.retries,
                    min_image_size=config.image.min_image_size,
                    max_aspect_ratio=config.image.max_aspect_ratio,
                    max_image_area=float(config.image.max_image_pixels),
                    extract_exif=config.image.extract_exif,
                    user_agent_token="wit-builder",
                    disallowed_header_directives=list(config.fetch.opt_out_directives),
                    incremental_mode="incremental",
                )
            finally:
                for k, v in saved.items():
                    if v is None:
                        sc.environment.pop(k, None)
                    else:
                        sc.environment[k] = v
        for sid in pending:
            rows = pq.ParquetFile(layout.plan_part(sid)).read().to_pylist()
            _ledger_and_stats(layout, sid, rows)
    elapsed = time.perf_counter() - start
    shutil.rmtree(layout.shards_dir / "_tmp", ignore_errors=True)  # img2dataset's own
    # DIR/_tmp: the plan makes it for the native engine's writers; this engine leaves it
    # empty. Removed only when empty: the build job stages its selection there.
    with contextlib.suppress(OSError):
        layout.tmp_dir.rmdir()
    stats = merge_stats(layout, the_plan.n_shards)
    stats.update(
        {
            "elapsed_s": round(elapsed, 3),
            "rows_this_run": sum(the_plan.rows_per_shard[s] for s in pending),
            "failed_shards": {},
            "engine": "img2dataset",
            "config": asdict(config),
        }
    )
    write_json_atomic(Path(stats_path) if stats_path else layout.stats_path, stats)
    return stats
