"""The reference the equivalence tests compare training.run with: one process, one
plain full-batch step at a time, no accumulation, no DDP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from training import optim, run


def full_batch_losses(
    model: Any,
    optimizer: Any,
    next_parts: Callable[[], list[dict[str, Any]]],
    steps: int,
    lr: float,
    warmup: int,
) -> list[float]:
    """Each step's CLIP loss over the batches ``next_parts`` returns, concatenated into
    one batch, then AdamW on the warmup + cosine schedule and the logit-scale clamp."""
    loss_fn = run.make_loss("clip")
    losses = []
    for step in range(steps):
        parts = next_parts()
        out = model(torch.cat([p["images"] for p in parts]), torch.cat([p["texts"] for p in parts]))
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        for g in optimizer.param_groups:
            g["lr"] = optim.lr_at(step, lr, warmup, steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return losses
