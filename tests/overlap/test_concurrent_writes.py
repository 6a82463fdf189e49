"""Two writers of one output path at once (two runs into one folder): every read of the
file parses as one writer's whole output, neither writer fails, and no temporary file is
left behind. A fixed temporary name made the writers share it: one renamed the other's
half-written file into place, and the other's rename then found nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.overlap import report as rep
from pipeline.overlap.zeroshot import write_predictions

ROUNDS = 60


def _race(
    target: Path, writers: list[Callable[[], None]], read: Callable[[], object]
) -> list[object]:
    """Run each writer ROUNDS times in its own thread while reading the file; returns
    what was read, and raises what any writer raised."""
    errors: list[BaseException] = []
    seen: list[object] = []
    done = threading.Event()

    def loop(write: Callable[[], None]) -> None:
        try:
            for _ in range(ROUNDS):
                write()
        except BaseException as e:  # reported to the test below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    reader_errors: list[BaseException] = []

    def reader() -> None:
        while not done.is_set():
            if target.exists():
                try:
                    seen.append(read())
                except FileNotFoundError:
                    pass  # between an unlink and a rename: not a torn file
                except BaseException as e:
                    reader_errors.append(e)

    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.join()
    done.set()
    r.join()
    assert not errors, f"a writer failed: {errors[0]!r}"
    assert not reader_errors, f"a read saw a torn file: {reader_errors[0]!r}"
    seen.append(read())
    return seen


def test_two_report_json_writers_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    # Large enough that a write takes several system calls.
    a = {"writer": "a", "rows": [{"i": i, "v": "a" * 40} for i in range(4000)]}
    b = {"writer": "b", "rows": [{"i": i, "v": "b" * 40} for i in range(3000)]}
    seen = _race(
        target,
        [lambda: rep.write_json(target, a), lambda: rep.write_json(target, b)],
        lambda: json.loads(target.read_text(encoding="utf-8")),
    )
    assert all(s in (a, b) for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("name", ["preds.parquet", "preds.csv"])
def test_two_prediction_writers_never_collide(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    ids = [f"img{i:05d}" for i in range(5000)]
    a, b = (np.arange(5000) % 7).tolist(), (np.arange(5000) % 11).tolist()

    def read() -> list[int]:
        if target.suffix == ".parquet":
            # One open file: pq.read_table(path) opens the path twice (footer, then pages),
            # and a rename in between would mix two files that are each whole.
            with open(target, "rb") as f:
                return pq.read_table(f).column("prediction").to_pylist()
        return [int(line.split(",")[1]) for line in target.read_text().splitlines()[1:]]

    seen = _race(
        target,
        [lambda: write_predictions(target, ids, a), lambda: write_predictions(target, ids, b)],
        read,
    )
    assert all(s in (a, b) for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == [name]
