"""Writes one shard under a temporary directory, then commits it by renames.

Commit order: tar, shard Parquet, ledger part, and the shard's stats JSON last. A shard
counts as done only when its stats JSON and ledger exist; anything else of it that a
killed run left behind is overwritten when the shard is redone. Every file appears under
its final name complete (rename is atomic on one filesystem), so every tar is readable.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import EXIF_FIELD, LEDGER_SCHEMA, sample_fields
from pipeline.shards.atomic import write_text_atomic
from pipeline.shards.layout import OutputLayout


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def json_safe(obj: Any) -> Any:
    """``obj`` with every infinite or NaN float as None: strict JSON has no Infinity or NaN
    (Python writes them, JSON.parse and most readers refuse them). An unlimited setting
    such as ``max_aspect_ratio = inf`` reads back as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(
        json_safe(obj), ensure_ascii=False, default=_json_default, sort_keys=False, allow_nan=False
    )


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, default=_json_default, allow_nan=False)
    write_text_atomic(path, text)


class ShardWriter:
    """Streams samples into ``NNNNN.tar`` in a private temp dir; ``commit`` publishes it."""

    def __init__(self, layout: OutputLayout, shard_id: int) -> None:
        self.layout = layout
        self.shard_id = shard_id
        layout.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=layout.tmp_dir, prefix=f"{layout.name(shard_id)}-"))
        self._tar_path = self.tmp / "shard.tar"
        self._tar_file = open(self._tar_path, "wb")  # noqa: SIM115 - closed in commit/abort
        # Plain ustar members, as webdataset's TarWriter writes them, with fixed owner and
        # mtime so that a redone shard is byte-identical when its samples are.
        self._tar = tarfile.open(  # noqa: SIM115 - closed in commit/abort
            fileobj=self._tar_file, mode="w|", format=tarfile.USTAR_FORMAT
        )
        self.samples = 0
        self.bytes_written = 0

    def add(self, key: str, ext: str, image: bytes, caption: str, meta: dict[str, Any]) -> None:
        """One sample: {key}.{ext}, {key}.json, {key}.txt (sorted, as webdataset writes)."""
        members = sorted(
            [(ext, image), ("txt", caption.encode("utf-8")), ("json", dumps(meta).encode("utf-8"))]
        )
        for suffix, payload in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(payload)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(payload))
            self.bytes_written += len(payload)
        self.samples += 1

    def commit(
        self, shard_rows: list[dict[str, Any]], ledger_rows: list[dict[str, Any]], stats: dict
    ) -> None:
        self._tar.close()
        self._tar_file.close()
        layout, sid = self.layout, self.shard_id
        parquet_tmp = self.tmp / "shard.parquet"
        pq.write_table(_shard_table(shard_rows, shard_schema(layout)), parquet_tmp)
        ledger_tmp = self.tmp / "ledger.parquet"
        pq.write_table(pa.Table.from_pylist(ledger_rows, schema=LEDGER_SCHEMA), ledger_tmp)
        for src, dst in (
            (self._tar_path, layout.tar(sid)),
            (parquet_tmp, layout.parquet(sid)),
            (ledger_tmp, layout.ledger(sid)),
        ):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        write_json_atomic(layout.shard_stats(sid), stats)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        self._tar_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# The shard Parquet: SAMPLE_FIELDS, then the input's other columns typed once for the
# whole output (``extras_schema``, in plan.json), so every shard's Parquet has one schema
# and a folder of them reads as one table.
SHARD_SCHEMA_KEY = "shard_extras_schema"  # in DIR/_plan/plan.json


def extras_schema(extras: list[dict[str, Any]]) -> pa.Schema:
    """The types of the input's other columns over all its rows: what Arrow infers for each
    column, text where its values mix types (they are written as JSON) or are all null."""
    names = list(dict.fromkeys(k for e in extras for k in e))
    fields = []
    for name in names:
        try:
            kind = pa.array([e.get(name) for e in extras]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            kind = pa.string()
        fields.append(pa.field(name, pa.string() if pa.types.is_null(kind) else kind))
    return pa.schema(fields)


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def shard_schema(layout: OutputLayout) -> pa.Schema | None:
    """The shard Parquet schema of this output, from its plan (None for plans from before
    it was recorded: each shard's types are then inferred from its own rows)."""
    plan_json = layout.plan_dir / "plan.json"
    try:
        plan = json.loads(plan_json.read_text())
        encoded = plan.get(SHARD_SCHEMA_KEY)
    except (OSError, ValueError):
        return None
    if encoded is None:
        return None
    extras = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))
    extract_exif = bool(plan["fingerprint"]["image"].get("extract_exif", False))
    core = [
        LEDGER_SCHEMA.field(c).with_nullable(True)
        if c in LEDGER_SCHEMA.names
        else pa.field(c, pa.string())
        for c in sample_fields(extract_exif)
    ]
    return pa.schema([*core, *extras])


def _shard_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """img2dataset's per-shard Parquet: every row of the shard, extras as their own columns."""
    if schema is not None:
        text = [f.name for f in schema if pa.types.is_string(f.type)]
        typed = [
            {
                **r,
                **{
                    k: dumps(r[k])
                    for k in text
                    if r.get(k) is not None and not isinstance(r[k], str)
                },
            }
            for r in rows
        ]
        try:
            return pa.Table.from_pylist(typed, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # a value of another type than the plan saw: inferred below, never lost
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Extra columns of mixed types across rows: keep them as JSON text, never lose them.
        fixed = [
            {k: (v if k in _CORE_COLUMNS or v is None else dumps(v)) for k, v in r.items()}
            for r in rows
        ]
        return pa.Table.from_pylist(fixed)


_CORE_COLUMNS = frozenset(LEDGER_SCHEMA.names) | {EXIF_FIELD}
