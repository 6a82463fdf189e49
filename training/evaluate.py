"""Evaluation for ``training.run``: zero-shot classification on the overlap tool's eval-set
registry (``--zeroshot NAME`` or ``NAME:PATH``, as ``pipeline.overlap --eval`` takes them)
and image-text retrieval recall@K on held-out shards (``--val-data``).

Eval sets are loaded (and so checked) before training starts; images are decoded and
encoded a batch at a time, and retrieval similarities are computed a block of rows at a
time, so memory holds features, never the whole similarity matrix.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.overlap.evalsets import EvalSet, EvalSetError, load_eval_set, parse_eval_spec
from pipeline.overlap.templates import read_templates
from pipeline.overlap.zeroshot import predict_eval_set, write_predictions
from pipeline.shards.reader import split_member_name
from training.data import TrainDataError, resolve_shards

RECALL_KS: tuple[int, ...] = (1, 5, 10)
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def load_zeroshot_sets(specs: Sequence[str], eval_root: str | Path | None = None) -> list[EvalSet]:
    """Eval sets for ``--zeroshot`` specs (a bare NAME is looked up in ``eval_root``);
    raises ``EvalSetError`` naming the bad one."""
    root = Path(eval_root) if eval_root is not None else None
    sets = []
    for spec in specs:
        try:
            sets.append(load_eval_set(parse_eval_spec(spec), root=root))
        except EvalSetError as e:
            # The registry words its errors for pipeline.overlap's --eval flag.
            raise EvalSetError(str(e).replace("--eval ", "--zeroshot ", 1)) from None
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalSetError(
            f"--zeroshot: eval set {dup[0]} given twice; use ALIAS={dup[0]}:PATH for two sets"
        )
    for s in sets:
        if not s.has_labels:
            raise EvalSetError(f"--zeroshot {s.name}: the set has no labels to score against")
    return sets


@dataclass(frozen=True)
class Pair:
    key: str
    image: bytes
    caption: str


def read_pairs(spec: str, limit: int = 0) -> list[Pair]:
    """(image, caption) pairs from a shard folder, tar or brace pattern, in shard order.
    Samples without an image or a caption (or a blank one) are skipped; images are decoded
    at evaluation, where one that fails is skipped and counted."""
    try:
        shards = resolve_shards(spec)
    except TrainDataError as e:
        raise TrainDataError(f"--val-data: {e}") from None
    pairs: list[Pair] = []
    for shard in shards:
        members: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    parsed = split_member_name(info.name)
                    if parsed is None:
                        continue
                    key, ext = parsed
                    f = tar.extractfile(info)
                    if f is None:
                        continue
                    if key not in members:
                        members[key] = {}
                        order.append(key)
                    members[key][ext] = f.read()
        except (tarfile.TarError, OSError) as e:
            raise TrainDataError(f"--val-data: cannot read {shard}: {e}") from None
        for key in order:
            m = members[key]
            ext = next((e for e in _IMAGE_EXTS if e in m), None)
            caption = m.get("txt", b"").decode("utf-8", "replace").strip()
            if ext is None or not caption:
                continue
            pairs.append(Pair(key, m[ext], caption))
            if limit and len(pairs) >= limit:
                return pairs
    if not pairs:
        raise TrainDataError(f"--val-data {spec}: no samples with both an image and a .txt")
    return pairs


def recall_at_k(
    image_features: Any, text_features: Any, ks: Sequence[int] = RECALL_KS, chunk: int = 1024
) -> dict[str, float]:
    """Recall@K both ways for aligned, normalized features (pair i is image i, text i).

    Rows of the similarity matrix are computed ``chunk`` at a time: memory is
    ``chunk * N``, never ``N * N``. Ties (duplicate captions give identical text features;
    scores within a few float32 ulps) are broken at random in expectation: a query whose
    match has ``g`` keys strictly above it and ``t`` other keys tied with it scores
    ``clip((K - g) / (t + 1))``, so duplicates neither all win nor all lose, and a constant model scores ``K / N``.
    """
    import torch

    n = image_features.shape[0]
    out: dict[str, float] = {}
    for direction, queries, keys in (
        ("image_to_text", image_features, text_features),
        ("text_to_image", text_features, image_features),
    ):
        above = torch.empty(n, dtype=torch.float64)
        ties = torch.empty(n, dtype=torch.float64)
        for i in range(0, n, chunk):
            sims = queries[i : i + chunk] @ keys.T
            rows = torch.arange(i, min(i + chunk, n))
            true = sims[torch.arange(len(rows)), rows][:, None]
            # Equal features can give dot products a few ulps apart: BLAS kernels sum
            # edge rows in another order (seen with torch 2.11's CPU GEMM), so a tie is
            # "within a few float32 ulps", not bitwise equality.
            tol = 16 * torch.finfo(sims.dtype).eps
            above[rows] = (sims > true + tol).sum(dim=1).double()
            ties[rows] = ((sims - true).abs() <= tol).sum(dim=1).double() - 1
        for k in ks:
            hit = ((k - above) / (ties + 1)).clamp(0, 1)
            out[f"{direction}_R@{k}"] = float(hit.mean())
    out["pairs"] = n
    return out


def retrieval_eval(
    model: Any,
    preprocess: Callable[[Any], Any],
    tokenizer: Callable[[list[str]], Any],
    pairs: Sequence[Pair],
    device: Any = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    was_training = model.training
    model.eval()
    img_feats, txt_feats = [], []
    undecodable = 0
    try:
        with torch.no_grad():
            for i in range(0, len(pairs), batch_size):
                images, captions = [], []
                for p in pairs[i : i + batch_size]:
                    try:
                        image = Image.open(io.BytesIO(p.image))
                        image.load()
                        images.append(preprocess(image.convert("RGB")))
                    except Exception:  # PIL raises many types; each is one bad pair
                        undecodable += 1
                        continue
                    captions.append(p.caption)
                if not images:
                    continue
                x, t = torch.stack(images), tokenizer(captions)
                img_feats.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1))
                txt_feats.append(F.normalize(model.encode_text(t.to(device)).float(), dim=-1))
    finally:
        model.train(was_training)
    if not img_feats:  # nothing to rank
        return {"pairs": 0, "undecodable": undecodable}
    out = recall_at_k(torch.cat(img_feats).cpu(), torch.cat(txt_feats).cpu())
    out["undecodable"] = undecodable
    return out


@dataclass
class Evaluator:
    """Everything ``training.run`` evaluates, loaded and validated before training."""

    sets: list[EvalSet]
    templates: tuple[str, ...] | None
    pairs: list[Pair]

    @classmethod
    def from_args(
        cls,
        zeroshot_specs: Sequence[str],
        templates_file: str | None,
        val_data: str | None,
        val_max: int = 0,
        eval_root: str | Path | None = None,
    ) -> Evaluator:
        templates = read_templates(templates_file) if templates_file else None
        sets = load_zeroshot_sets(zeroshot_specs, eval_root)
        pairs = read_pairs(val_data, val_max) if val_data else []
        return cls(sets, templates, pairs)

    def __bool__(self) -> bool:
        return bool(self.sets or self.pairs)

    def run(
        self,
        model: Any,
        preprocess: Callable[[Any], Any],
        tokenizer: Callable[[list[str]], Any],
        device: Any,
        predictions_dir: Path | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"zeroshot": {}}
        for s in self.sets:
            # The same computation as ``pipeline.overlap --checkpoint``.
            r = predict_eval_set(model, preprocess, tokenizer, s, self.templates, device)
            metrics = r.metrics
            if predictions_dir is not None:
                # Parquet: an integer column is class indices, however the classes are
                # named (in CSV text, "10" may be an index or a folder named 10), and
                # the top-5 travel with it; as pipeline.overlap --checkpoint writes them.
                path = predictions_dir / f"{s.name}.parquet"
                write_predictions(path, s.ids, r.predictions, r.top5)
                metrics["predictions"] = str(path)
            result["zeroshot"][s.name] = metrics
        if self.pairs:
            result["retrieval"] = retrieval_eval(model, preprocess, tokenizer, self.pairs, device)
        return result
