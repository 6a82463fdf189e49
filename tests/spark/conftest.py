"""The build job's main() run up to where it would start Spark: the checks before it."""

from __future__ import annotations

import pytest

from tests.spark.job import SparkWouldStart


@pytest.fixture
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's main() stops with SparkWouldStart where it would start Spark."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise SparkWouldStart

    monkeypatch.setattr("pipeline.spark.session.get_session", refuse)
