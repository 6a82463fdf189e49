"""The build job as a module, for tests that call its main()."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


class SparkWouldStart(Exception):
    """Raised where the job would start a Spark session (the no_spark fixture)."""


def build_job() -> ModuleType:
    """jobs/build_wit.py as a module (jobs/ is not a package: spark-submit runs the file)."""
    spec = importlib.util.spec_from_file_location("build_wit", REPO / "jobs" / "build_wit.py")
    job = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(job)
    return job
