"""One row can never fail its shard: what the web sends that our types cannot hold, and a
bug of ours met on one row, each end as that row's status while the shard commits."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import engine
from pipeline.engine import ledger_rows, plan, process_shard
from pipeline.shards.layout import OutputLayout
from pipeline.synthweb.site import reference_config
from tests.images.test_process import encode, noise
from tests.loopback import serve


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (up to 2^32 - 1 a side)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def _run(tmp_path: Path, bodies: dict[str, bytes]) -> list[dict]:
    config = dataclasses.replace(reference_config(), samples_per_shard=100, threads=4)
    with serve(bodies) as origin:
        rows = [{"url": origin + path, "caption": f"caption of {path}"} for path in bodies]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        out = tmp_path / "out"
        plan(str(pairs), out, config)
        process_shard(0, out, config)
    assert OutputLayout(out).is_committed(0)
    return sorted(ledger_rows(out), key=lambda r: r["row_index"])


def test_a_header_size_over_int32_is_too_large_and_its_shard_commits(tmp_path: Path) -> None:
    ledger = _run(
        tmp_path,
        {
            "/good.png": encode(noise(40, 30), "PNG"),
            "/wide.png": _png_header(3_000_000_000, 1),
            "/max.png": _png_header(0xFFFFFFFF, 0xFFFFFFFF),
        },
    )
    assert [r["status"] for r in ledger] == ["success", "too_large", "too_large"]
    assert "3000000000" in ledger[1]["error_message"]  # the size is told, in the message
    assert ledger[1]["original_width"] is None and ledger[1]["original_height"] == 1
    assert ledger[0]["original_width"] == 40


def test_a_bug_met_on_one_row_is_that_rows_status(tmp_path: Path, monkeypatch) -> None:
    poison = encode(noise(33, 33), "PNG")
    real = engine.process_image

    def buggy(data: bytes, config):  # a stand-in for a bug of ours on one input
        if data == poison:
            raise KeyError("a bug")
        return real(data, config)

    monkeypatch.setattr(engine, "process_image", buggy)
    ledger = _run(tmp_path, {"/a.png": encode(noise(40, 30), "PNG"), "/bug.png": poison})
    assert [r["status"] for r in ledger] == ["success", "internal_error"]
    assert ledger[1]["error_message"] == "internal error (please report): KeyError: 'a bug'"
    assert ledger[1]["http_status"] == 200  # what was known before the bug is kept


def test_the_readme_names_every_status() -> None:
    from pipeline.schema import STATUSES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [s for s in STATUSES if f"`{s}`" not in readme] == []


def test_a_rerun_removes_what_a_killed_run_left_half_written(tmp_path: Path) -> None:
    from pipeline.engine import run_download

    config = dataclasses.replace(reference_config(), samples_per_shard=1, processes=1)
    with serve(
        {"/a.png": encode(noise(40, 30), "PNG"), "/b.png": encode(noise(30, 40), "PNG")}
    ) as origin:
        pairs = tmp_path / "pairs.parquet"
        rows = [{"url": f"{origin}/{n}.png", "caption": f"picture {n}"} for n in "ab"]
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        out = tmp_path / "out"
        run_download(str(pairs), out, config, show_progress=False)
        layout = OutputLayout(out)
        # As a SIGKILL in the middle of atomic writes leaves them (write_json_atomic's and
        # the plan's part names), beside the committed files.
        leftovers = [
            layout.shards_dir / ".00001_stats.json.0123456789ab.tmp",
            layout.ledger_dir / ".00001.parquet.0123456789ab.tmp",
            layout.root / ".stats.json.0123456789ab.tmp",
            layout.plan_dir / "00002.tmp",
        ]
        committed = sorted(p.name for p in layout.shards_dir.iterdir())
        for path in leftovers:
            path.write_text("half")
        run_download(str(pairs), out, config, show_progress=False)
    assert [p for p in leftovers if p.exists()] == []
    assert sorted(p.name for p in layout.shards_dir.iterdir()) == committed
