"""Writes one shard under a temporary directory, then commits it by renames.

Commit order: tar, shard Parquet, ledger part, and the shard's stats JSON last. A shard
counts as done only when its stats JSON and ledger exist; anything else of it that a
killed run left behind is overwritten when the shard is redone. Every file appears under
its final name complete (rename is atomic on one filesystem), so every tar is readable.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import LEDGER_SCHEMA
from pipeline.shards.atomic import write_text_atomic
from pipeline.shards.layout import OutputLayout


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default, sort_keys=False)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default))


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
        pq.write_table(_shard_table(shard_rows), parquet_tmp)
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


def _shard_table(rows: list[dict[str, Any]]) -> pa.Table:
    """img2dataset's per-shard Parquet: every row of the shard, extras as their own columns."""
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Extra columns of mixed types across rows: keep them as JSON text, never lose them.
        fixed = [
            {k: (v if k in _CORE_COLUMNS or v is None else dumps(v)) for k, v in r.items()}
            for r in rows
        ]
        return pa.Table.from_pylist(fixed)


_CORE_COLUMNS = frozenset(LEDGER_SCHEMA.names)
