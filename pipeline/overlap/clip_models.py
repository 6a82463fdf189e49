"""open_clip models built offline, shared by the ``embedding:open_clip`` detector and
``--checkpoint`` zero-shot predictions.

A model is built from a model-config dict (read from a JSON file, or recorded in a
checkpoint) and a state dict read with ``torch.load(weights_only=True)``. open_clip only
builds models by name, so the dict is registered under a name derived from its content:
two configs that share a file name never shadow each other. Configs that would download
(Hugging Face text towers or tokenizers, timm's pretrained weights) are refused: nothing is
ever downloaded. torch and open_clip are imported only inside these functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'wit-builder[train]'"


class OpenClipError(ValueError):
    """A model config, checkpoint or device that cannot be used; the message names it."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def resolve_device(name: str, setting: str) -> Any:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise OpenClipError(f"{setting} {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OpenClipError(f"{setting} {name}: CUDA is not available here")
    return dev


def check_config(cfg: object, label: str) -> dict[str, Any]:
    """The config dict itself, or an error saying why open_clip cannot build it offline."""
    if not isinstance(cfg, dict):
        raise OpenClipError(f"{label}: not an open_clip model config: not a JSON object")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise OpenClipError(
            f"{label}: not an open_clip model config: needs embed_dim, vision_cfg and "
            f"text_cfg; missing {', '.join(missing)}"
        )
    text_cfg = cfg["text_cfg"] if isinstance(cfg["text_cfg"], dict) else {}
    vision_cfg = cfg["vision_cfg"] if isinstance(cfg["vision_cfg"], dict) else {}
    for key in ("hf_tokenizer_name", "hf_model_name"):
        if text_cfg.get(key):
            raise OpenClipError(
                f"{label}: text_cfg.{key}={text_cfg[key]!r} needs a Hugging Face download, "
                "which this tool never does; use a CLIP-style text tower"
            )
    if vision_cfg.get("timm_model_pretrained"):
        raise OpenClipError(
            f"{label}: vision_cfg.timm_model_pretrained downloads timm weights, which this "
            "tool never does; set it to false (the checkpoint holds the weights)"
        )
    return cfg


def read_config(path: Path) -> dict[str, Any]:
    label = f"model config {path}"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise OpenClipError(f"{label}: not an open_clip model config: {first_line(e)}") from None
    return check_config(cfg, label)


def create(
    cfg: dict[str, Any], label: str, device: Any
) -> tuple[Any, Callable[[Any], Any], Callable[[list[str]], Any]]:
    """(model with random weights on ``device``, eval preprocessing, tokenizer)."""
    try:
        import open_clip
    except ImportError:
        raise OpenClipError(
            f"needs open_clip_torch, which is not installed ({INSTALL_HINT})"
        ) from None
    check_config(cfg, label)
    text = json.dumps(cfg, sort_keys=True)
    name = f"wit-config-{hashlib.sha1(text.encode()).hexdigest()[:16]}"
    if name not in open_clip.list_models():
        # add_model_config reads the file at once; the registry keeps the dict.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(text, encoding="utf-8")
            open_clip.add_model_config(path)
    # open_clip warns that the model "initialized randomly": true, until load_weights.
    quiet = _DropMessage(f"No pretrained weights loaded for model '{name}'")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, device=device
        )
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # an invalid config: open_clip raises many kinds
        raise OpenClipError(f"{label}: {type(e).__name__}: {first_line(e)}") from None
    finally:
        root.removeFilter(quiet)
    return model, preprocess, tokenizer


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def read_checkpoint(path: Path) -> Any:
    """Whatever ``torch.save`` stored, restricted to tensors and plain containers."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        raise OpenClipError(
            f"checkpoint {path}: cannot read it (torch.load, weights_only=True): {first_line(e)}"
        ) from None


def state_dict_of(obj: object) -> dict[str, Any] | None:
    """The model's state dict in a checkpoint: ``{'model': ...}`` (training.run),
    ``{'state_dict': ...}`` (open_clip's trainer) or a plain state dict; DataParallel's
    ``module.`` prefix removed. None when there is none."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        return None
    return {
        (k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k): v
        for k, v in obj.items()
    }


def load_weights(
    model: Any,
    state: dict[str, Any],
    checkpoint: Path,
    label: str,
    hint: str = "give the model config it was trained with",
) -> None:
    """Strict load; a SigLIP run's ``logit_bias`` gets its parameter first (training.run
    adds it to the model, the config does not record it). Weights that do not fit are
    one line: how many keys are missing, unexpected or of another shape, the first few,
    and ``hint`` (what to do)."""
    import torch

    if "logit_bias" in state and getattr(model, "logit_bias", None) is None:
        model.logit_bias = torch.nn.Parameter(torch.zeros((), device=model.logit_scale.device))
    problems = weight_mismatch(model.state_dict(), state)
    if problems:
        raise OpenClipError(f"checkpoint {checkpoint} does not fit the {label}: {problems}; {hint}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # keys and shapes fit: something else, rarely seen
        msg = " ".join(str(e).split())[:300]
        raise OpenClipError(f"checkpoint {checkpoint} does not fit the {label}: {msg}") from None


def weight_mismatch(own: dict[str, Any], state: dict[str, Any], show: int = 3) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own``, in a
    few words (torch's own message names every key: kilobytes for another model size);
    empty when the keys and shapes fit."""

    def shape(t: Any) -> str:
        return "x".join(str(d) for d in getattr(t, "shape", ())) or "scalar"

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    other = [k for k in own if k in state and shape(own[k]) != shape(state[k])]
    parts = []
    for keys, what in ((missing, "missing"), (unexpected, "unexpected")):
        if keys:
            more = f", ... {len(keys) - show} more" if len(keys) > show else ""
            parts.append(f"{len(keys)} {what} key(s) ({', '.join(keys[:show])}{more})")
    if other:
        more = f", ... {len(other) - show} more" if len(other) > show else ""
        shapes = ", ".join(f"{k} {shape(state[k])} vs {shape(own[k])}" for k in other[:show])
        parts.append(f"{len(other)} of another shape (checkpoint vs model: {shapes}{more})")
    return "; ".join(parts)
