"""open_clip's own trainer and data loader for bench.train (the anchor), in their own process.

Run with ``bench/.openclip-deps`` first on PYTHONPATH: open_clip_train 3.3.0 needs
webdataset <= 0.2.86 (0.2.90+ raise ``KeyError: 'fname'`` in its tar reader), and that
folder holds 0.2.86 alone, shadowing the venv's newer copy; torch, numpy and open_clip
are the venv's.

    python -m bench._open_clip_run train ARGV...   open_clip_train.main.main(ARGV)
    python -m bench._open_clip_run loader JSON     get_wds_dataset alone; prints JSON timings

Both register our model configs first (a config's name is its file stem: ``tiny``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "training" / "model_configs"
WEBDATASET_PIN = "0.2.86"


def _check_webdataset() -> None:
    import webdataset

    version = getattr(webdataset, "__version__", "?")
    if version != WEBDATASET_PIN:
        raise SystemExit(
            f"bench._open_clip_run: webdataset {version} from {webdataset.__file__}; open_clip's "
            f"trainer needs {WEBDATASET_PIN}: put bench/.openclip-deps first on PYTHONPATH "
            "(make bench-train installs it)"
        )


def _register(model: str) -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR / f"{model}.json")


def train(argv: list[str]) -> int:
    from open_clip_train.main import main as open_clip_main

    model = argv[argv.index("--model") + 1]
    _register(model)
    return open_clip_main(argv) or 0


def loader(settings: dict) -> dict:
    """Batches/s of open_clip's webdataset pipeline alone: decode, augment, tokenize, batch."""
    import argparse

    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    _register(settings["model"])
    torch.manual_seed(settings["seed"])
    _, preprocess_train, _ = open_clip.create_model_and_transforms(
        settings["model"], pretrained=None, precision="fp32"
    )
    tokenizer = open_clip.get_tokenizer(settings["model"])
    args = argparse.Namespace(
        train_data=settings["train_data"],
        val_data=None,
        dataset_resampled=False,
        train_num_samples=settings["batches"] * settings["batch_size"],
        train_data_upsampling_factors=None,
        seed=settings["seed"],
        batch_size=settings["batch_size"],
        workers=settings["workers"],
        world_size=1,
    )
    info = get_wds_dataset(args, preprocess_train, is_train=True, tokenizer=tokenizer)
    info.set_epoch(0)
    return _time_batches(info.dataloader, settings["batches"])


def _time_batches(batches, limit: int) -> dict:
    t0 = time.perf_counter()
    stamps, sizes = [], []
    for images, _texts in batches:
        stamps.append(time.perf_counter())
        sizes.append(len(images))
        if len(stamps) >= limit:
            break
    return {"start": t0, "stamps": stamps, "sizes": sizes}


def main() -> int:
    _check_webdataset()
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "train":
        return train(rest)
    if mode == "loader":
        print(json.dumps(loader(json.loads(rest[0]))))
        return 0
    raise SystemExit(f"bench._open_clip_run: unknown mode {mode!r} (train or loader)")


if __name__ == "__main__":
    sys.exit(main())
