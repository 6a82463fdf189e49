"""Probes for bench.train, each in its own process: our data loader alone, the model alone.

    python -m bench._train_probe loader JSON   training.data's ShardStream in a DataLoader,
                                               no model: timestamps of each batch
    python -m bench._train_probe model JSON    forward + loss + backward + AdamW step of the
                                               model on synthetic batches held in memory

Each prints one JSON line. The loader is built exactly as ``training.run`` builds it (same
plan, transform, tokenizer, shuffle buffer, DataLoader settings); the model step is the
loop's (same param groups, loss and clamp), without the data and the logging.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def loader(settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from training.data import ShardStream, plan_data, split_preprocess, to_model_input
    from training.models import build, input_side

    torch.manual_seed(settings["seed"])
    net, preprocess_train, _, tokenizer = build(settings["model"])
    plan = plan_data(settings["train_data"], workers=settings["workers"])
    worker_transform, normalize = split_preprocess(preprocess_train)  # as training.run
    if settings.get("float_in_workers"):  # before the uint8 hand-over: for comparison
        worker_transform, normalize = preprocess_train, None
    stream = ShardStream(
        plan,
        settings["batch_size"],
        worker_transform,
        tokenizer,
        seed=settings["seed"],
        shuffle_buffer=settings["shuffle_buffer"],
        draft_side=2 * input_side(net),  # as training.run decodes
    )
    try:  # the trainer's own DataLoader settings, where training.run has them in one place
        from training.run import make_loader

        batches = make_loader(stream, settings["workers"], torch.device("cpu"))
    except ImportError:
        batches = DataLoader(stream, batch_size=None, num_workers=settings["workers"])
    t0 = time.perf_counter()
    stamps, sizes = [], []
    for batch in batches:
        # The normalization the trainer runs on the batch counts as loading here, so the
        # probe compares with open_clip's loader, whose workers normalize each image.
        to_model_input(batch["images"], torch.device("cpu"), normalize)
        stamps.append(time.perf_counter())
        sizes.append(len(batch["keys"]))
        if len(stamps) >= settings["batches"]:
            break
    return {"start": t0, "stamps": stamps, "sizes": sizes}


def model(settings: dict[str, Any]) -> dict[str, Any]:
    """Seconds per phase of each step, on a few distinct synthetic batches reused in turn.

    ``fused``: AdamW's fused kernel instead of torch's default on CPU (one tensor at a
    time), to show what the optimizer step costs and what it could cost."""
    import torch

    from training.models import build
    from training.optim import param_groups
    from training.run import make_loss

    torch.manual_seed(settings["seed"])
    net, _, _, tokenizer = build(settings["model"])
    size = net.visual.image_size
    size = size if isinstance(size, int) else size[0]
    bs = settings["batch_size"]
    captions = [f"a photo of a small {c} square over a gradient" for c in range(bs)]
    pool = [
        (torch.randn(bs, 3, size, size), tokenizer([f"{c} {i}" for c in captions]))
        for i in range(4)
    ]
    fused = {"fused": True} if settings.get("fused") else {}
    optimizer = torch.optim.AdamW(param_groups(net, 0.2), lr=5e-4, **fused)
    loss_fn = make_loss("clip")
    net.train()
    phases: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "step": []}
    total: list[float] = []
    for i in range(settings["warmup"] + settings["steps"]):
        images, texts = pool[i % len(pool)]
        t0 = time.perf_counter()
        out = net(images, texts)
        t1 = time.perf_counter()
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, 4.6052)
        t4 = time.perf_counter()
        if i >= settings["warmup"]:
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[k].append(dt)
            total.append(t4 - t0)
    return {"step_s": total, "phases_s": phases, "threads": torch.get_num_threads()}


def main() -> int:
    mode, settings = sys.argv[1], json.loads(sys.argv[2])
    probes = {"loader": loader, "model": model}
    if mode not in probes:
        raise SystemExit(f"bench._train_probe: unknown mode {mode!r} ({', '.join(probes)})")
    print(json.dumps(probes[mode](settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
