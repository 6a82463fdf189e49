from __future__ import annotations

import sys


def test_local_session_runs_python_workers_with_this_interpreter(spark) -> None:
    rows = spark.sparkContext.parallelize(range(4), 2).map(lambda _: sys.executable).collect()
    assert set(rows) == {sys.executable}


def test_arrow_transfer_works(spark) -> None:
    df = spark.createDataFrame([(1, "a"), (2, "b")], ["n", "s"])
    assert df.toPandas()["n"].sum() == 3
