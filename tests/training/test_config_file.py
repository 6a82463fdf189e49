"""training.run --config FILE: every value is checked against its option, as a flag is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training import run

ARGV = ["--train-data", "d", "--output", "o"]


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        run.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"compile": "no"}, "compile='no': expected true or false"),
        ({"resample": 1}, "resample=1: expected true or false"),
        ({"check": "yes"}, "check='yes': expected true or false"),
        ({"steps": 3.5}, "steps=3.5: expected an integer"),
        ({"steps": True}, "steps=True: expected an integer"),
        ({"batch_size": "16"}, "batch_size='16': expected an integer"),
        ({"lr": True}, "lr=True: expected a number"),
        ({"lr": "1e-3"}, "lr='1e-3': expected a number"),
        ({"model": 3}, "model=3: expected a string"),
        ({"precision": False}, "precision=False: expected a string"),
        ({"exclude": 3}, "exclude=3: expected a string or a list of strings"),
        ({"zeroshot": ["cifar10", 1]}, "zeroshot=['cifar10', 1]: expected a string or a list"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line(
    options: dict[str, Any], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(options))
    line = _error([*ARGV, "--config", str(cfg)], capsys)
    assert f"error: --config {cfg}: {expected}" in line, line


def test_config_values_of_the_right_type_are_taken(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    options = {"steps": 3, "lr": 1, "compile": False, "exclude": "x.parquet", "model": "tiny"}
    cfg.write_text(json.dumps(options))
    args = run.parse_args([*ARGV, "--config", str(cfg)])
    assert (args.steps, args.compile, args.exclude, args.model) == (3, False, ["x.parquet"], "tiny")
    assert args.lr == 1.0 and isinstance(args.lr, float)
    cfg.write_text(json.dumps({"zeroshot": ["cifar10", "imagenet"], "steps": None}))
    args = run.parse_args([*ARGV, "--config", str(cfg)])
    assert args.zeroshot == ["cifar10", "imagenet"] and args.steps == run.DEFAULT_STEPS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{steps: 1}", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "expected a JSON object of options (keys as the flags), got list"),
        ("3", "expected a JSON object of options (keys as the flags), got int"),
        (None, "no such file"),
    ],
)
def test_a_bad_config_file_is_one_line(
    text: str | None, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "cfg.json"
    if text is not None:
        cfg.write_text(text)
    line = _error([*ARGV, "--config", str(cfg)], capsys)
    assert f"error: --config {cfg}: {expected}" in line, line


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("lr", -1, "-1.0"),
        ("lr", -0.001, "-0.001"),
        ("lr", float("nan"), "nan"),
        ("weight_decay", -0.1, "-0.1"),
        ("warmup", -1, "-1"),
    ],
)
def test_negative_rates_and_warmup_are_refused(
    name: str, value: float, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flag = f"--{name.replace('_', '-')}"
    expected = f"error: {flag} must be at least 0, not {shown}"
    assert _error([*ARGV, f"{flag}={value}"], capsys).endswith(expected)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({name: value}))
    assert _error([*ARGV, "--config", str(cfg)], capsys).endswith(expected)
    assert getattr(run.parse_args([*ARGV, f"{flag}=0"]), name) == 0
