"""Checkpoint files: atomic saves that leave nothing behind when they fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import checkpoints


def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "step_00000002.pt"
    checkpoints.save_checkpoint(path, {"step": torch.tensor(2)})
    with pytest.raises(Exception):  # noqa: B017 - pickle's error type varies by object
        checkpoints.save_checkpoint(path, {"step": torch.tensor(3), "bad": lambda: None})
    assert torch.load(path, weights_only=True)["step"].item() == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert checkpoints.find_latest(tmp_path) == path
