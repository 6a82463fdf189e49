from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.spark.session import JAVA_OPTIONS


def test_local_session_runs_python_workers_with_this_interpreter(spark) -> None:
    rows = spark.sparkContext.parallelize(range(4), 2).map(lambda _: sys.executable).collect()
    assert set(rows) == {sys.executable}


def test_arrow_transfer_works(spark) -> None:
    df = spark.createDataFrame([(1, "a"), (2, "b")], ["n", "s"])
    assert df.toPandas()["n"].sum() == 3


def test_a_session_started_from_python_is_as_quiet_as_make_demo() -> None:
    """`python jobs/build_wit.py` (no spark-submit): no INFO start-up lines from Spark's
    default log4j profile and no [Stage ...] progress bars on the terminal."""
    import json
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import json, time
        from pipeline.spark.session import JAVA_OPTIONS, get_session, quiet_settings
        own = quiet_settings({JAVA_OPTIONS: "-Dmine=1"})  # the user's options are kept
        spark = get_session("quiet", master="local[1]")
        spark.sparkContext.parallelize(range(3), 3).map(lambda x: time.sleep(0.6)).count()
        conf = spark.sparkContext.getConf()
        print(json.dumps({"own": own, "progress": conf.get("spark.ui.showConsoleProgress"),
                          "java": conf.get(JAVA_OPTIONS)}))
        spark.stop()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_CONF"))}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "log4j2-defaults" not in done.stderr and " INFO " not in done.stderr, done.stderr
    assert "[Stage" not in done.stderr, done.stderr
    assert seen["progress"] == "false"
    assert "-Dlog4j2.configurationFile=file:" in seen["java"]
    assert JAVA_OPTIONS not in seen["own"]
