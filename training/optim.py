"""The optimizer side of training.run: AdamW's parameter groups, kernels and
hyperparameters, its state across checkpoints, the learning-rate schedule, and gradient
accumulation over micro-batches (the contrastive loss over all of them)."""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable
from typing import Any


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on gains, biases, embeddings' scale or the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        exclude = exclude or "logit_scale" in name or "logit_bias" in name
        (no_decay if exclude else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def fused_adamw_devices() -> list[str]:
    """Device types with a fused AdamW kernel in this torch (CPU and CUDA since 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper: if a later torch moves it, the two we know
        return ["cpu", "cuda"]
    return list(_get_fused_kernels_supported_devices())


def make_optimizer(model: Any, args: argparse.Namespace, device: Any) -> tuple[Any, str]:
    """AdamW over ``param_groups`` with ``--optimizer-impl``'s kernels, and the one used.

    torch's default AdamW on CPU updates one tensor at a time: on the tiny model that was
    60% of the step (27 ms, fused 3.4 ms; docs/BENCHMARKS.md, training loop)."""
    import torch

    impl = args.optimizer_impl
    if impl == "fused" and device.type not in fused_adamw_devices():
        impl = f"default (no fused AdamW for {device.type} in torch {torch.__version__})"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": True} if impl == "foreach" else {}
    groups = param_groups(model, args.weight_decay)
    betas, eps = adam_params(args, getattr(model, "visual", None))
    return torch.optim.AdamW(groups, lr=args.lr, betas=betas, eps=eps, **kwargs), impl


def adam_params(args: argparse.Namespace, visual: Any) -> tuple[tuple[float, float], float]:
    """AdamW's betas and epsilon: the flags, else CLIP's (paper, table 19; open_clip's
    defaults): beta2 0.98 and eps 1e-6 for a ViT image tower, 0.999 and 1e-8 otherwise
    (open_clip's ModifiedResNet)."""
    resnet = type(visual).__name__ == "ModifiedResNet"
    beta1 = 0.9 if args.beta1 is None else args.beta1
    beta2 = (0.999 if resnet else 0.98) if args.beta2 is None else args.beta2
    eps = (1e-8 if resnet else 1e-6) if args.eps is None else args.eps
    return (beta1, beta2), eps


def load_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    """A checkpoint's AdamW state into ``optimizer``, keeping ``optimizer``'s kernels.

    torch's ``load_state_dict`` also copies the saved groups' ``fused`` and ``foreach``
    flags, so a checkpoint from an unfused run would silently resume unfused (and a fused
    one would ask for fused kernels where there are none). The flags are put back, and
    each step count moved to where those kernels keep it: fused on the parameter's device,
    otherwise a CPU scalar."""
    import torch

    kernels = [(g["fused"], g["foreach"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels, strict=True):
        group["fused"], group["foreach"] = fused, foreach
        on_device = bool(fused or group.get("capturable"))
        for param in group["params"]:
            saved = optimizer.state.get(param)
            if saved and torch.is_tensor(saved.get("step")):
                where = param.device if on_device else torch.device("cpu")
                saved["step"] = saved["step"].to(dtype=torch.float32, device=where)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr


def accumulate_gradients(
    net: Any,
    inputs: list[tuple[Any, Any]],
    cached: list[dict[str, Any]],
    loss_of: Callable[[Any, Any, Any, bool], Any],
    backward: Callable[[Any], None],
    no_sync: Callable[[], Any],
    autocast: Callable[[], Any],
) -> None:
    """The gradient of the contrastive loss over all micro-batches, one micro-batch's
    activations at a time (GradCache; open_clip's ``--accum-freq``).

    ``cached``: each micro-batch's features computed without gradients. Micro-batch ``j``
    is run again with gradients and its features put in place of its cached ones, so each
    backward pass adds the full loss's gradient through micro-batch ``j``; their sum is the
    full batch's gradient. The logit scale (and SigLIP's bias) enter every pass but take a
    gradient from the last one only: open_clip's loop adds theirs at every pass, K times
    the full batch's. Under DDP all passes but the last skip the gradient all-reduce
    (``no_sync``): one all-reduce per step, not K."""
    import torch

    image_f = [c["image_features"] for c in cached]
    text_f = [c["text_features"] for c in cached]
    for j, (images, texts) in enumerate(inputs):
        last = j == len(inputs) - 1
        with contextlib.nullcontext() if last else no_sync():
            with autocast():
                out = net(images, texts)
                scale = out["logit_scale"] if last else out["logit_scale"].detach()
                loss = loss_of(
                    torch.cat([*image_f[:j], out["image_features"], *image_f[j + 1 :]]),
                    torch.cat([*text_f[:j], out["text_features"], *text_f[j + 1 :]]),
                    scale,
                    last,
                )
            backward(loss)
