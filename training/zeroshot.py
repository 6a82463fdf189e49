"""Zero-shot classification with prompt ensembling, and the predictions file the overlap
tool reads (``pipeline.overlap --predictions``: CSV with ``id,prediction``).

Each class's text embedding is the mean of its normalized template embeddings,
renormalized (CLIP's ensembling): averaging unnormalized features would let one template
with a large norm dominate.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.templates import SIMPLE_TEMPLATES


@dataclass(frozen=True)
class ZeroShotResult:
    top1: float
    top5: float
    predictions: list[int]  # class index per image, in input order


def class_embeddings(
    model: Any,
    tokenizer: Callable[[list[str]], Any],
    classnames: Sequence[str],
    templates: Sequence[str] = SIMPLE_TEMPLATES,
) -> Any:
    """(embed_dim, n_classes) matrix of ensembled, normalized class embeddings."""
    import torch
    import torch.nn.functional as F

    weights = []
    with torch.no_grad():
        for name in classnames:
            texts = tokenizer([t.format(name) for t in templates])
            feats = F.normalize(model.encode_text(texts), dim=-1)
            weights.append(F.normalize(feats.mean(dim=0), dim=-1))
    return torch.stack(weights, dim=1)


def classify(
    model: Any,
    images: Any,
    labels: Sequence[int],
    classifier: Any,
    batch_size: int = 256,
) -> ZeroShotResult:
    """Top-1/top-5 accuracy of preprocessed ``images`` (N, C, H, W) against ``classifier``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    preds: list[int] = []
    hits1 = hits5 = 0
    target = torch.as_tensor(list(labels))
    k = min(5, classifier.shape[1])
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            feats = F.normalize(model.encode_image(images[i : i + batch_size]), dim=-1)
            topk = (feats @ classifier).topk(k, dim=-1).indices
            y = target[i : i + batch_size]
            hits1 += int((topk[:, 0] == y).sum())
            hits5 += int((topk == y[:, None]).any(dim=-1).sum())
            preds.extend(topk[:, 0].tolist())
    n = max(1, len(preds))
    return ZeroShotResult(hits1 / n, hits5 / n, preds)


def write_predictions(path: str | Path, ids: Sequence[str], predictions: Sequence[int]) -> None:
    """``id,prediction`` CSV (class indices), as ``pipeline.overlap --predictions`` reads."""
    if len(ids) != len(predictions):
        raise ValueError(f"{len(ids)} ids but {len(predictions)} predictions")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prediction"])
        w.writerows(zip(ids, predictions, strict=True))
    tmp.replace(p)
