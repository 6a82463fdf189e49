"""One place that builds a SparkSession the way this project needs it.

Pitfalls handled here (see FIELD_NOTES 5): executors run ``python3`` from PATH unless told
otherwise, so PYSPARK_PYTHON is set to this interpreter (workers then have pyarrow and
the pipeline); the host name may resolve oddly, so Spark binds to 127.0.0.1 in local
mode; the UI is off unless asked for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Warnings and errors only, as `make demo` sets with spark-submit --conf (see the file).
LOG4J2_FILE = Path(__file__).with_name("log4j2.properties")
JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def local_environment() -> None:
    """Environment a local-mode session needs; harmless when already set."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # spark-submit from the pyspark wheel looks for the venv's bin on PATH.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def quiet_settings(conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Settings that keep a session started from Python as quiet as `make demo`: the
    project's log4j2 file (no INFO start-up lines) and no ``[Stage ...]`` progress bars,
    which pyspark turns on as for its shell. Only when this process starts the JVM (under
    spark-submit it is running, its options set) and the user set no driver Java options
    of their own (``conf``, PYSPARK_SUBMIT_ARGS, a log4j2 file in SPARK_CONF_DIR)."""
    from pyspark import SparkConf, SparkContext

    out = {"spark.ui.showConsoleProgress": "false"}
    if SparkContext._jvm is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        return out
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if (
        JAVA_OPTIONS in (conf or {})
        or SparkConf().contains(JAVA_OPTIONS)
        or "extraJavaOptions" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")
        or (conf_dir and (Path(conf_dir) / "log4j2.properties").is_file())
    ):
        return out
    out[JAVA_OPTIONS] = f"-Dlog4j2.configurationFile=file:{LOG4J2_FILE}"
    return out


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
        **quiet_settings(conf),
    }
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return session
