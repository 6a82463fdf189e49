"""Killing the job (kill -9) and rerunning it yields the same dataset as an uninterrupted
run: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec

REPO = Path(__file__).resolve().parents[2]


def _cmd(pairs: Path, queries: Path, out: Path) -> list[str]:
    return [
        sys.executable, "jobs/build_wit.py", "--master", "local[2]", "--pairs", str(pairs),
        "--output", str(out), "--queries", str(queries), "--allow-networks", "127.0.0.0/8",
        "--samples-per-shard", "6", "--threads", "2", "--per-host-connections", "1",
        "--host-delay", "0.05", "--image-size", "64", "--max-per-query", "30",
    ]  # fmt: skip


def _dataset(out: Path) -> tuple[list[str], Counter]:
    final = sorted(pq.read_table(out / "final.parquet").column("key").to_pylist())
    members: Counter = Counter()
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            members.update(m.name for m in tf.getmembers())
    return final, members


@pytest.mark.slow
def test_kill_9_during_the_build_then_rerun_gives_the_same_dataset(tmp_path: Path) -> None:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    with SynthWeb(SiteSpec(seed=41, n_images=30, n_hosts=2, n_pages=1)) as web:
        web.warm()
        rows = [
            {"url": r["url"], "caption": r["caption"]}
            for r in web.pair_rows()
            if r["fault"] in (None, "not_found")
        ]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        queries = tmp_path / "queries.txt"
        queries.write_text(
            "\n".join(["red", "blue", "green", "yellow", "circle", "square", "gradient", "a"])
        )
        clean = tmp_path / "clean"
        done = subprocess.run(
            _cmd(pairs, queries, clean),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]

        killed = tmp_path / "killed"
        proc = subprocess.Popen(
            _cmd(pairs, queries, killed),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if list((killed / "shards").glob("*_stats.json")):  # mid-download: some shards done
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and Python workers
        proc.wait()
        assert not (killed / "final.parquet").exists()
        again = subprocess.run(
            _cmd(pairs, queries, killed),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-2000:]
    final_clean, members_clean = _dataset(clean)
    final_killed, members_killed = _dataset(killed)
    assert final_killed == final_clean
    assert members_killed == members_clean
    assert all(n == 1 for n in members_killed.values())  # no member twice
