"""Deduplicating a downloaded dataset in place: hashes per shard, groups globally, marks.

``shard_hashes`` is the per-shard half (a Spark task each in the job); ``apply`` writes the
outcome: the ledger rows of duplicates get ``duplicate_of``/``duplicate_kind`` (each
ledger part rewritten atomically), ``DIR/dedup/duplicates.parquet`` lists them, and
``DIR/final.parquet`` lists the samples that make the final dataset (successes that
duplicate nothing), which is what training reads.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedup.images import DedupConfig, Duplicate, duplicates_from_hashes, image_hashes
from pipeline.schema import LEDGER_SCHEMA, Status
from pipeline.shards.layout import OutputLayout

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FINAL_COLUMNS = ("key", "shard", "url", "caption", "sha256", "width", "height")


def _tar_images(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        for member in tf:
            key, _, ext = member.name.rpartition(".")
            if ext.lower() in IMAGE_EXTS and member.isfile():
                f = tf.extractfile(member)
                if f is not None:
                    yield key, f.read()


def _ledger(layout: OutputLayout, shard_id: int) -> list[dict[str, Any]]:
    return pq.ParquetFile(layout.ledger(shard_id)).read().to_pylist()


def shard_hashes(output: str | Path, shard_id: int) -> list[tuple[str, str, bytes | None]]:
    """(key, sha256, pHash) of every successful sample of one committed shard."""
    layout = OutputLayout(Path(output))
    digests = {
        r["key"]: r["sha256"] for r in _ledger(layout, shard_id) if r["status"] == Status.SUCCESS
    }
    images = (
        (k, digests[k], data) for k, data in _tar_images(layout.tar(shard_id)) if k in digests
    )
    return list(image_hashes(images))


def apply(output: str | Path, n_shards: int, duplicates: list[Duplicate]) -> dict[str, int]:
    """Mark duplicates in the ledger, list them, and write the final sample list."""
    layout = OutputLayout(Path(output))
    by_key = {d.key: d for d in duplicates}
    shard_of: dict[str, str] = {}  # a duplicate's key -> its tar, relative to the dataset
    final_rows: list[dict[str, Any]] = []
    for sid in range(n_shards):
        rows = _ledger(layout, sid)
        for r in rows:
            d = by_key.get(r["key"])
            if d is not None:
                shard_of[d.key] = layout.tar(sid).relative_to(layout.root).as_posix()
            r["duplicate_of"] = d.duplicate_of if d else None
            r["duplicate_kind"] = d.kind if d else None
            if r["status"] == Status.SUCCESS and d is None:
                final_rows.append({c: r[c] for c in FINAL_COLUMNS})
        tmp = layout.ledger(sid).with_suffix(".dedup.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), tmp)
        os.replace(tmp, layout.ledger(sid))
    dedup_dir = layout.root / "dedup"
    dedup_dir.mkdir(parents=True, exist_ok=True)
    # ``shard``: training's --exclude leaves the key out of this dataset's tar alone (keys
    # repeat across datasets: each numbers its shards from 00000).
    dup_table = pa.Table.from_pylist(
        [
            {
                "key": d.key,
                "duplicate_of": d.duplicate_of,
                "kind": d.kind,
                "distance": d.distance,
                "shard": shard_of.get(d.key),
            }
            for d in duplicates
        ],
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("duplicate_of", pa.string()),
                ("kind", pa.string()),
                ("distance", pa.int32()),
                ("shard", pa.string()),
            ]
        ),
    )
    pq.write_table(dup_table, dedup_dir / "duplicates.parquet")
    final = (
        pa.Table.from_pylist(final_rows)
        if final_rows
        else pa.table({c: pa.array([], pa.string()) for c in FINAL_COLUMNS})
    )
    tmp = layout.root / "final.parquet.tmp"
    pq.write_table(final, tmp)
    os.replace(tmp, layout.root / "final.parquet")
    return {"final": len(final_rows)}


def dedup_dataset(output: str | Path, n_shards: int, config: DedupConfig) -> dict[str, int]:
    """The whole stage on one machine (the Spark job maps ``shard_hashes`` over tasks)."""
    hashes = [h for sid in range(n_shards) for h in shard_hashes(output, sid)]
    duplicates, counts = duplicates_from_hashes(hashes, config)
    counts.update(apply(output, n_shards, duplicates))
    return counts
