"""python -m training.gpu_check --help: a whole description, and every flag says what it
does and its default."""

from __future__ import annotations

import argparse

import pytest

from training.gpu_check import DESCRIPTION, build_parser, main


def test_help_describes_the_check_in_whole_sentences(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m training.gpu_check ")
    assert " ".join(DESCRIPTION.split()) in out
    assert DESCRIPTION.endswith(".") and "samples/s" in DESCRIPTION and "bottleneck" in DESCRIPTION


def test_every_flag_has_help_with_its_default() -> None:
    options = [a for a in build_parser()._actions if not isinstance(a, argparse._HelpAction)]
    assert {a.dest for a in options} >= {"steps", "batch_size", "workers", "precision"}
    for action in options:
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help"
        assert "(default: " in action.help, f"{flag}: help names no default"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in action.help, flag
