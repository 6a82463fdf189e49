"""A small overlap scenario with known ground truth, built once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.synthweb.images import render_image
from tests.overlap.layouts import (
    jpeg,
    write_cifar10,
    write_imagefolder,
    write_img2dataset_dir,
    write_train_dir,
)


@dataclass(frozen=True)
class Scenario:
    root: Path
    cifar: Path  # cifar10 binary release
    pets: Path  # imagefolder
    ours: Path  # wit-builder download folder
    i2d: Path  # img2dataset output folder
    # eval id -> (training folder, key) of its planted copy
    planted: dict[str, dict[str, tuple[Path, str]]]
    cifar_predictions: Path
    pets_predictions: Path
    cifar_correct: np.ndarray
    pets_correct: np.ndarray


CIFAR_DUPS = (3, 17, 42)
PETS_DUPS = ("cat/002.png", "cat/011.png", "dog/000.png", "dog/007.png")


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("overlap")
    cifar_images, cifar_labels = write_cifar10(root / "cifar", 60, seed=0)
    pets = write_imagefolder(root / "pets", ["cat", "dog"], per_class=15, seed=500)
    # Training data: distractors, plus resized JPEG copies of some eval items, in two folders.
    distractors = [jpeg(render_image(10_000 + i, 64, 48)[0]) for i in range(120)]
    copies_c = [jpeg(Image.fromarray(cifar_images[i]), 85, (64, 64)) for i in CIFAR_DUPS]
    copies_p = [jpeg(pets[i], 80, (56, 42)) for i in PETS_DUPS]
    ours_images = distractors[:70] + copies_c[:2] + copies_p[:2] + distractors[70:80]
    i2d_images = [*distractors[80:], copies_c[2], *copies_p[2:]]
    ours_keys = write_train_dir(root / "ours", ours_images, per_shard=25)
    i2d_keys = write_img2dataset_dir(root / "i2d", i2d_images, per_shard=20)
    planted = {
        "cifar10": {
            str(CIFAR_DUPS[0]): (root / "ours", ours_keys[70]),
            str(CIFAR_DUPS[1]): (root / "ours", ours_keys[71]),
            str(CIFAR_DUPS[2]): (root / "i2d", i2d_keys[40]),
        },
        "pets": {
            PETS_DUPS[0]: (root / "ours", ours_keys[72]),
            PETS_DUPS[1]: (root / "ours", ours_keys[73]),
            PETS_DUPS[2]: (root / "i2d", i2d_keys[41]),
            PETS_DUPS[3]: (root / "i2d", i2d_keys[42]),
        },
    }
    # Predictions: right on every planted item, right on every other third item otherwise.
    rng = np.random.default_rng(0)
    cifar_correct = np.array([i in CIFAR_DUPS or i % 3 == 0 for i in range(60)])
    cifar_pred = np.where(cifar_correct, cifar_labels, (cifar_labels.astype(int) + 1) % 10)
    cifar_predictions = root / "cifar_pred.csv"
    cifar_predictions.write_text(
        "id,prediction\n" + "".join(f"{i},{p}\n" for i, p in enumerate(cifar_pred))
    )
    pet_ids = sorted(pets)
    pets_correct = np.array([i in PETS_DUPS or rng.random() < 0.5 for i in pet_ids])
    names = {"cat": "dog", "dog": "cat"}
    pets_predictions = root / "pets_pred.csv"
    pets_predictions.write_text(
        "id,prediction\n"
        + "".join(
            f"{i},{i.split('/')[0] if ok else names[i.split('/')[0]]}\n"
            for i, ok in zip(pet_ids, pets_correct, strict=True)
        )
    )
    return Scenario(
        root, root / "cifar", root / "pets", root / "ours", root / "i2d", planted,
        cifar_predictions, pets_predictions, cifar_correct, pets_correct,
    )  # fmt: skip
