"""Every benchmark's --help names the command that runs it (``python -m bench.NAME``),
not the file argparse sees (``extract.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The benchmarks run as python -m bench.NAME; _-prefixed modules are their helpers.
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("[!_]*.py"))


def test_the_benchmarks_are_found() -> None:
    assert {"download", "extract", "curate", "overlap", "build", "train"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_help_names_the_command(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m bench.{name} "), done.stdout[:200]
