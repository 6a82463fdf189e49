"""Zero-shot classification with prompt ensembling, and the predictions file the overlap
tool reads (``pipeline.overlap --predictions``: CSV with ``id,prediction``).

The implementation lives in ``pipeline.overlap.zeroshot`` so that ``training.run
--zeroshot`` and ``pipeline.overlap --checkpoint`` compute the same predictions; this module
keeps training's names for it.
"""

from __future__ import annotations

from pipeline.overlap.zeroshot import (
    EvalSetPredictions,
    ZeroShotResult,
    class_embeddings,
    classify,
    predict_eval_set,
    write_predictions,
)

__all__ = [
    "EvalSetPredictions",
    "ZeroShotResult",
    "class_embeddings",
    "classify",
    "predict_eval_set",
    "write_predictions",
]
