"""Our model configs, registered with open_clip from training/model_configs/ (never a download).

open_clip only builds models by name, so every JSON here is registered before building.
Configs whose tokenizer or text tower comes from Hugging Face would download on first use;
they are refused with a clear error instead of hanging or failing deep inside a request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.overlap.clip_models import OpenClipError, check_config

CONFIG_DIR = Path(__file__).parent / "model_configs"


class ModelConfigError(ValueError):
    """A model name we have no config for, or a config that would need the network."""


def available_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ModelConfigError(
            f"--model {name}: no config {path}; available: {', '.join(available_models())}"
        )
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise ModelConfigError(f"--model {name}: {path} is not JSON: {e}") from None
    try:  # the same offline checks as the overlap tool's model loader
        return check_config(cfg, f"--model {name}")
    except OpenClipError as e:
        raise ModelConfigError(str(e)) from None


def build(
    name: str, precision: str = "fp32", grad_checkpointing: bool = False
) -> tuple[Any, Any, Any, Any]:
    """(model, train preprocess, eval preprocess, tokenizer) for one of our configs.

    Weights are fp32 for every precision we train with: bf16 and amp are autocast around
    fp32 master weights. ``grad_checkpointing`` recomputes each transformer block's
    activations in the backward pass: less memory for the same gradients.
    """
    import open_clip

    load_config(name)  # validates before open_clip sees it
    # add_model_config takes a file or folder; registering the folder is idempotent.
    open_clip.add_model_config(CONFIG_DIR)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name,
        pretrained=None,
        precision="fp32" if precision in ("bf16", "amp") else precision,
        output_dict=True,
    )
    if grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ModelConfigError(f"--model {name}: --grad-checkpointing is not supported")
        model.set_grad_checkpointing(True)
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess_train, preprocess_val, tokenizer


def input_side(model: Any) -> int:
    """The longer side, in pixels, of the images the model takes: the size open_clip built
    its preprocess from (``RandomResizedCrop`` crops to it), so decoding needs no more."""
    import open_clip

    size = open_clip.get_model_preprocess_cfg(model)["size"]
    return max(size) if isinstance(size, tuple | list) else int(size)
