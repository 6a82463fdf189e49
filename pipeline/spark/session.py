"""One place that builds a SparkSession the way this project needs it.

Pitfalls handled here (see FIELD_NOTES 5): executors run ``python3`` from PATH unless told
otherwise, so PYSPARK_PYTHON is set to this interpreter (workers then have pyarrow and
the pipeline); the host name may resolve oddly, so Spark binds to 127.0.0.1 in local
mode; the UI is off unless asked for.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def local_environment() -> None:
    """Environment a local-mode session needs; harmless when already set."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # spark-submit from the pyspark wheel looks for the venv's bin on PATH.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def get_session(
    app_name: str = "wit-builder",
    master: str | None = None,
    ui: bool = False,
    conf: dict[str, Any] | None = None,
) -> Any:
    """The active session, or a new one (local[*] unless a master is given or set)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from pyspark import SparkConf

    local_environment()
    builder = SparkSession.builder.appName(app_name)
    master = master or os.environ.get("SPARK_MASTER")
    if master:
        builder = builder.master(master)
    elif "spark.master" not in (conf or {}) and not SparkConf().contains("spark.master"):
        builder = builder.master("local[*]")  # not under spark-submit, which sets its own
    settings = {
        "spark.ui.enabled": str(ui).lower(),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.python.worker.reuse": "true",
        "spark.pyspark.python": sys.executable,
    }
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return session
