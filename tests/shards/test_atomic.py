"""Atomic writes give files the mode a plain ``open(path, "w")`` gives (0o666 less the
umask), as every other output has: stats.json, NNNNN_stats.json, plan.json, robots copies."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.download import main as download_main
from pipeline.fetch.robots import RobotsCache
from pipeline.shards.atomic import write_bytes_atomic, write_text_atomic
from pipeline.shards.writer import write_json_atomic


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=oct)
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_json_has_the_mode_of_a_plain_write(umask: int, tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    with open(plain, "w") as f:
        f.write("{}")
    write_json_atomic(tmp_path / "stats.json", {"count": 1})
    assert json.loads((tmp_path / "stats.json").read_text()) == {"count": 1}
    assert _mode(tmp_path / "stats.json") == 0o666 & ~umask == _mode(plain)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.json", "stats.json"]


def test_atomic_write_replaces_and_leaves_no_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "stats.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    with pytest.raises(TypeError):
        write_text_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_atomic_bytes_have_the_mode_of_a_plain_write_and_leave_no_temporary(
    umask: int, tmp_path: Path
) -> None:
    target = tmp_path / "preds.parquet"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"\x00new")
    assert target.read_bytes() == b"\x00new"
    assert _mode(target) == 0o666 & ~umask
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "text")  # type: ignore[arg-type]
    assert target.read_bytes() == b"\x00new"
    assert [p.name for p in tmp_path.iterdir()] == ["preds.parquet"]


def test_robots_copy_has_the_mode_of_a_plain_write(umask: int, tmp_path: Path) -> None:
    RobotsCache(tmp_path).get("http://127.0.0.1:1", lambda: (404, None))
    (saved,) = tmp_path.iterdir()
    assert _mode(saved) == 0o666 & ~umask


def test_every_download_output_file_has_the_mode_of_a_plain_write(
    umask: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # No fetch happens: each URL is refused (file:, data:) or unreachable (port 9, refused).
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "url,caption\nfile:///etc/passwd,a cat\ndata:image/png;base64,AAAA,a dog\n"
        "http://127.0.0.1:9/x.jpg,a cow\n"
    )
    out = tmp_path / "out"
    argv = ["--input", str(pairs), "--output", str(out), "--processes", "1", "--retries", "0"]
    assert download_main([*argv, "--allow-networks", "127.0.0.0/8", "--no-progress"]) == 0
    capsys.readouterr()
    files = {p.relative_to(out).as_posix(): _mode(p) for p in out.rglob("*") if p.is_file()}
    assert {"stats.json", "shards/00000_stats.json", "_plan/plan.json"} <= set(files)
    assert files == dict.fromkeys(files, 0o666 & ~umask)
