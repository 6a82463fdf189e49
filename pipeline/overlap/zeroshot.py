"""Zero-shot classification with prompt ensembling: the one implementation behind
``training.run --zeroshot`` and ``pipeline.overlap --checkpoint``.

Each class's text embedding is the mean of its normalized template embeddings,
renormalized (CLIP's ensembling): averaging unnormalized features would let one template
with a large norm dominate. An image's prediction is the class whose embedding has the
largest inner product with its normalized image features; top-5 are the five largest.

Predictions files have the ``--predictions`` format (``id``, ``prediction`` = class
index): CSV, or Parquet with a ``top5`` list column as well. An eval image that cannot be
decoded gets no prediction (empty / null) and counts as wrong.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.overlap.evalsets import EvalSet
from pipeline.overlap.templates import SIMPLE_TEMPLATES, templates_for
from pipeline.shards.atomic import write_bytes_atomic

TOP_K = 5


class ZeroShotError(ValueError):
    """A checkpoint or model config that cannot give zero-shot predictions here."""


@dataclass(frozen=True)
class ZeroShotResult:
    top1: float
    top5: float | None  # None with 5 classes or fewer: every label is in the top five
    predictions: list[int]  # class index per image, in input order


@dataclass(frozen=True)
class EvalSetPredictions:
    """Zero-shot predictions on one eval set, aligned with ``eval_set.ids``."""

    predictions: np.ndarray  # int64 class index per item; -1: the image could not be decoded
    top5: np.ndarray  # (items, min(5, classes)) int64, best first; -1 rows: undecodable
    metrics: dict[str, Any] = field(default_factory=dict)


def class_embeddings(
    model: Any,
    tokenizer: Callable[[list[str]], Any],
    classnames: Sequence[str],
    templates: Sequence[str] = SIMPLE_TEMPLATES,
    device: Any = None,
) -> Any:
    """(embed_dim, n_classes) matrix of ensembled, normalized class embeddings."""
    import torch
    import torch.nn.functional as F

    weights = []
    with torch.no_grad():
        for name in classnames:
            texts = tokenizer([t.format(name) for t in templates])
            if device is not None:
                texts = texts.to(device)
            feats = F.normalize(model.encode_text(texts).float(), dim=-1)
            weights.append(F.normalize(feats.mean(dim=0), dim=-1))
    return torch.stack(weights, dim=1)


def top_classes(model: Any, images: Any, classifier: Any, device: Any = None) -> Any:
    """(N, min(5, classes)) class indices of a preprocessed batch, best first, on the CPU."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x = images if device is None else images.to(device)
        feats = F.normalize(model.encode_image(x).float(), dim=-1)
        k = min(TOP_K, classifier.shape[1])
        return (feats @ classifier).topk(k, dim=-1).indices.cpu()


def _accuracy(top: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(top-1 hits, top-5 hits); rows of -1 (undecodable) never hit."""
    if not len(top):
        return 0, 0
    hits1 = int((top[:, 0] == labels).sum())
    hits5 = int((top == labels[:, None]).any(axis=1).sum())
    return hits1, hits5


def classify(
    model: Any,
    images: Any,
    labels: Sequence[int],
    classifier: Any,
    batch_size: int = 256,
) -> ZeroShotResult:
    """Top-1/top-5 accuracy of preprocessed ``images`` (N, C, H, W) against ``classifier``."""
    model.eval()
    device = classifier.device
    parts = [
        top_classes(model, images[i : i + batch_size], classifier, device).numpy()
        for i in range(0, len(images), batch_size)
    ]
    top = np.concatenate(parts) if parts else np.zeros((0, 1), np.int64)
    hits1, hits5 = _accuracy(top, np.asarray(list(labels), dtype=np.int64))
    n = max(1, len(top))
    top5 = hits5 / n if classifier.shape[1] > 5 else None  # 5 classes or fewer: always 1
    return ZeroShotResult(hits1 / n, top5, top[:, 0].tolist())


def predict_eval_set(
    model: Any,
    preprocess: Callable[[Any], Any],
    tokenizer: Callable[[list[str]], Any],
    eval_set: EvalSet,
    templates: Sequence[str] | None = None,
    device: Any = "cpu",
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> EvalSetPredictions:
    """Zero-shot predictions on every item of a labelled eval set.

    Images are decoded and preprocessed ``batch_size`` at a time; ``templates`` default to
    the set kind's built-in ones. ``progress(done, total)`` is called after each batch. The
    model's train/eval mode is restored afterwards.
    """
    import torch

    templates = tuple(templates or templates_for(eval_set.kind))
    n = len(eval_set)
    k = min(TOP_K, len(eval_set.classes))
    top = np.full((n, k), -1, np.int64)
    undecodable = 0
    was_training = model.training
    model.eval()
    try:
        classifier = class_embeddings(model, tokenizer, eval_set.classes, templates, device)
        for start in range(0, n, batch_size):
            rows, tensors = [], []
            for i in range(start, min(start + batch_size, n)):
                try:
                    img = eval_set.images.image(i).convert("RGB")
                except Exception:  # a damaged eval image: no prediction, counted wrong
                    undecodable += 1
                    continue
                rows.append(i)
                tensors.append(preprocess(img))
            if rows:
                top[rows] = top_classes(model, torch.stack(tensors), classifier, device).numpy()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    hits1, hits5 = _accuracy(top, eval_set.labels)
    metrics = {
        "kind": eval_set.kind,
        "root": str(eval_set.root),
        "items": n,
        "classes": len(eval_set.classes),
        "templates": len(templates),
        "top1": hits1 / n if n else 0.0,
        # With five classes or fewer every label is in the top five: no measure, so null.
        "top5": (hits5 / n if n else 0.0) if len(eval_set.classes) > 5 else None,
        "undecodable": undecodable,
    }
    return EvalSetPredictions(top[:, 0].copy(), top, metrics)


def write_predictions(
    path: str | Path,
    ids: Sequence[str],
    predictions: Sequence[int] | np.ndarray,
    top5: np.ndarray | None = None,
) -> None:
    """A predictions file as ``pipeline.overlap --predictions`` reads it: ``.parquet``
    (id, prediction, and top5 when given) or CSV (id, prediction). Negative predictions
    (undecodable images) are written empty. Written to a unique temporary name, then renamed."""
    preds = [int(p) for p in predictions]
    if len(ids) != len(preds):
        raise ValueError(f"{len(ids)} ids but {len(preds)} predictions")
    if top5 is not None and len(top5) != len(preds):
        raise ValueError(f"{len(preds)} predictions but {len(top5)} top-5 rows")
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, pa.Array] = {
            "id": pa.array([str(i) for i in ids], pa.string()),
            "prediction": pa.array([v if v >= 0 else None for v in preds], pa.int64()),
        }
        if top5 is not None:
            columns["top5"] = pa.array(
                [row.tolist() if row[0] >= 0 else None for row in np.asarray(top5)],
                pa.list_(pa.int64()),
            )
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink)
        data = sink.getvalue().to_pybytes()
    else:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["id", "prediction"])
        w.writerows((i, v if v >= 0 else "") for i, v in zip(ids, preds, strict=True))
        data = text.getvalue().encode("utf-8")
    # A unique temporary name, then a rename: two writers of one path never collide.
    write_bytes_atomic(p, data)


# ---------------------------------------------------------------------------------------------
# A training checkpoint as a zero-shot classifier


@dataclass
class CheckpointModel:
    """An open_clip model restored from a checkpoint, ready for ``predict_eval_set``."""

    model: Any
    preprocess: Callable[[Any], Any]
    tokenizer: Callable[[list[str]], Any]
    device: Any
    checkpoint: Path
    name: str  # the model name the checkpoint records, else the config file's stem
    config_source: str  # the --model-config file, or where in the checkpoint the config is
    step: int | None  # the training step the checkpoint records, when it does

    def describe(self) -> str:
        return f"open_clip({self.name}, {self.checkpoint.name})"

    def release(self) -> None:
        """Drop the model (and its GPU memory) once the predictions are made."""
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _recorded_name(obj: object) -> str | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("model_name")
    args = obj.get("args")
    if not name and isinstance(args, dict):
        name = args.get("model")
    return str(name) if name else None


def _recorded_step(obj: object) -> int | None:
    if isinstance(obj, dict):
        sched = obj.get("scheduler")
        if isinstance(sched, dict) and isinstance(sched.get("step"), int):
            return int(sched["step"])
        if isinstance(obj.get("step"), int):
            return int(obj["step"])
    return None


def _found(obj: object) -> str:
    if isinstance(obj, dict):
        keys = [str(k) for k in list(obj)[:6]]
        more = ", ..." if len(obj) > 6 else ""
        return f"a dict with keys {', '.join(keys) or '(none)'}{more}"
    return f"a {type(obj).__name__}"


def check_zeroshot_setup(
    model_config: str | Path | None = None, device: str = "auto"
) -> tuple[Any, dict[str, Any] | None]:
    """What ``--checkpoint`` needs besides the checkpoint itself, checked as the real run
    checks it (``--check`` runs this alone, before a checkpoint exists): the model config
    (exists, parses, builds offline), torch and open_clip, and the device. Returns (torch
    device, model config dict or None)."""
    from pipeline.overlap import clip_models as cm

    cfg_path = Path(model_config).expanduser() if model_config else None
    if cfg_path is not None and not cfg_path.is_file():
        raise ZeroShotError(f"--model-config {cfg_path}: no such file")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ZeroShotError(
            f"--checkpoint needs torch, which is not installed ({cm.INSTALL_HINT})"
        ) from None
    try:
        import open_clip  # noqa: F401
    except ImportError:
        raise ZeroShotError(
            f"--checkpoint needs open_clip_torch, which is not installed ({cm.INSTALL_HINT})"
        ) from None
    try:
        dev = cm.resolve_device(device, "zeroshot_device")
        cfg = cm.read_config(cfg_path) if cfg_path is not None else None
    except cm.OpenClipError as e:
        raise ZeroShotError(str(e)) from None
    return dev, cfg


def load_checkpoint_model(
    checkpoint: str | Path, model_config: str | Path | None = None, device: str = "auto"
) -> CheckpointModel:
    """The model a ``training.run`` checkpoint holds, built offline.

    The architecture comes from ``model_config`` (an open_clip model-config JSON) or, when
    that is not given, from the ``model_config`` dict the checkpoint records. Every problem
    is one ``ZeroShotError`` naming the file.
    """
    from pipeline.overlap import clip_models as cm

    ckpt = Path(checkpoint).expanduser()
    cfg_path = Path(model_config).expanduser() if model_config else None
    if not ckpt.is_file():
        raise ZeroShotError(f"--checkpoint {ckpt}: no such file")
    dev, cfg = check_zeroshot_setup(cfg_path, device)  # before a big load
    try:
        obj = cm.read_checkpoint(ckpt)
    except cm.OpenClipError as e:
        raise ZeroShotError(str(e)) from None
    state = cm.state_dict_of(obj)
    if not state or not any(isinstance(k, str) and k.startswith("visual.") for k in state):
        raise ZeroShotError(
            f"--checkpoint {ckpt}: not a training checkpoint: expected training.run's "
            f"{{'model': state_dict, ...}} (or an open_clip state dict), found {_found(obj)}"
        )
    name = _recorded_name(obj)
    has_config = isinstance(obj, dict) and isinstance(obj.get("model_config"), dict)
    if cfg_path is not None:
        label = f"model config {cfg_path}"
        source = str(cfg_path)
        hint = "give the --model-config it was trained with"
        if has_config:
            hint += ", or leave --model-config out to use the one recorded in the checkpoint"
        elif name:
            hint += f" (training.run's for model {name!r}: training/model_configs/{name}.json)"
    elif has_config:
        cfg = obj["model_config"]
        label = f"model config recorded in {ckpt}"
        source = f"{ckpt} (recorded)"
        hint = "give --model-config CONFIG.json, the model config it was trained with"
    else:
        hint = (
            f"; training.run's config for it is training/model_configs/{name}.json" if name else ""
        )
        recorded = f"records model {name!r} but not its config" if name else "records no model"
        raise ZeroShotError(
            f"--checkpoint {ckpt}: {recorded}: give --model-config CONFIG.json{hint}"
        )
    try:
        model, preprocess, tokenizer = cm.create(cfg, label, dev)
        cm.load_weights(model, state, ckpt, label, hint)
    except cm.OpenClipError as e:
        raise ZeroShotError(str(e)) from None
    model.eval()
    return CheckpointModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=dev,
        checkpoint=ckpt,
        name=name or (cfg_path.stem if cfg_path is not None else "open_clip"),
        config_source=source,
        step=_recorded_step(obj),
    )
