"""Settings of the overlap stage: one frozen dataclass, loadable from TOML/YAML like the others.

Uses ``pipeline.config``'s loading and coercion; the flag help lives here, next to the
settings it describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.config import ConfigError

HASHES: tuple[str, ...] = ("phash", "dhash", "dhash_vertical", "average_hash", "whash")


# A given threshold's range (the default NaN means: calibrate).
THRESHOLD_RANGE = "threshold must be a finite similarity in [-1, 1]"


@dataclass(frozen=True)
class OverlapConfig:
    detector: str = "phash"
    hashes: tuple[str, ...] = ("phash", "dhash")
    hash_size: int = 16  # bits per hash = hash_size**2
    embed_size: int = 288  # torchscript input side
    embed_resize: str = "crop"  # crop: short side then centre crop; squash: straight to a square
    embed_batch: int = 64
    embed_device: str = "auto"  # auto: cuda when available, else cpu
    embed_workers: int = 0  # threads decoding and preprocessing images; 0: one per CPU core
    zeroshot_batch: int = 256  # --checkpoint: images per batch (training.run's own batch)
    zeroshot_device: str = "auto"
    precision: float = 0.99  # calibration target
    threshold: float = math.nan  # similarity; NaN: calibrate per eval set
    top_k: int = 5
    max_matches: int = 100  # training matches kept per eval item (decontamination list)
    calibration_items: int = 1000
    # Mirrored eval items searched with them: the false-match rate at the training set's
    # size (calibrate.threshold_at_scale); 0: none.
    decoys: int = 1000
    seed: int = 0
    confidence: float = 0.995  # two-sided Clopper-Pearson level
    alpha: float = 0.05  # family-wise level of the Bonferroni-corrected tests
    contact_pairs: int = 24
    processes: int = 0  # 0: one per CPU core
    spark: bool = False

    def __post_init__(self) -> None:
        if not self.detector:
            raise ConfigError("detector must not be empty")
        if not self.hashes:
            raise ConfigError("hashes must name at least one hash")
        unknown = [h for h in self.hashes if h not in HASHES]
        if unknown:
            raise ConfigError(f"hashes: unknown {', '.join(unknown)}; known: {', '.join(HASHES)}")
        if len(set(self.hashes)) != len(self.hashes):
            raise ConfigError("hashes: each hash at most once")
        if self.hash_size < 2 or (self.hash_size**2) % 8:
            # FAISS binary codes are whole bytes.
            raise ConfigError(
                f"hash_size must be >= 2 with hash_size**2 a multiple of 8 (4, 8, 12, 16...), got {self.hash_size}"
            )
        if "whash" in self.hashes and self.hash_size & (self.hash_size - 1):
            raise ConfigError(f"whash needs a power-of-two hash_size, got {self.hash_size}")
        if self.embed_size < 8:
            raise ConfigError(f"embed_size must be >= 8, got {self.embed_size}")
        if self.embed_resize not in ("crop", "squash"):
            raise ConfigError(f"embed_resize must be crop or squash, got {self.embed_resize!r}")
        if self.embed_batch < 1:
            raise ConfigError(f"embed_batch must be >= 1, got {self.embed_batch}")
        if self.embed_workers < 0:
            raise ConfigError(
                f"embed_workers must be >= 0 (0: one per CPU core), got {self.embed_workers}"
            )
        if not self.embed_device:
            raise ConfigError("embed_device must not be empty (auto, cpu, cuda, cuda:N)")
        if self.zeroshot_batch < 1:
            raise ConfigError(f"zeroshot_batch must be >= 1, got {self.zeroshot_batch}")
        if not self.zeroshot_device:
            raise ConfigError("zeroshot_device must not be empty (auto, cpu, cuda, cuda:N)")
        if not 0 < self.precision <= 1:
            raise ConfigError(f"precision must be in (0, 1], got {self.precision}")
        if not math.isnan(self.threshold):  # NaN: calibrate (the default, never given)
            if not -1 <= self.threshold <= 1:
                raise ConfigError(f"{THRESHOLD_RANGE}, got {self.threshold}")
            if self.detector == "phash" and self.threshold < 0:
                raise ConfigError(
                    f"threshold must be in [0, 1] for the phash detector (1 - Hamming "
                    f"distance / bits), got {self.threshold}"
                )
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_matches < 1:
            raise ConfigError(f"max_matches must be >= 1, got {self.max_matches}")
        if self.decoys < 0:
            raise ConfigError(f"decoys must be >= 0 (0: none), got {self.decoys}")
        if self.calibration_items < 10:
            raise ConfigError(f"calibration_items must be >= 10, got {self.calibration_items}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.contact_pairs < 0:
            raise ConfigError(f"contact_pairs must be >= 0, got {self.contact_pairs}")
        if self.processes < 0:
            raise ConfigError(f"processes must be >= 0 (0: one per CPU core), got {self.processes}")

    @property
    def calibrate(self) -> bool:
        return math.isnan(self.threshold)


HELP: dict[str, str] = {
    "detector": "duplicate detector: phash (imagehash codes, Hamming distance); "
    "torchscript:PATH (a TorchScript image model such as SSCD, [N,3,S,S] ImageNet-normalized "
    "in, [N,D] out); embedding:open_clip:CONFIG_JSON:CHECKPOINT (an open_clip image tower "
    "built offline); embeddings are L2-normalized, similarity = inner product (default: phash)",
    "hashes": "perceptual hashes concatenated into one binary code: "
    + ", ".join(HASHES)
    + " (default: phash,dhash)",
    "hash_size": "hash side: each hash has hash_size**2 bits (default: 16)",
    "embed_size": "torchscript detector input side S (default: 288)",
    "embed_resize": "torchscript resizing: crop (short side to S, centre crop) or squash "
    "(straight to S x S) (default: crop)",
    "embed_batch": "images per batch of an embedding detector (default: 64)",
    "embed_device": "device of an embedding detector: auto (CUDA when available), cpu, cuda, "
    "cuda:N (default: auto)",
    "embed_workers": "threads that decode and preprocess images for an embedding detector, "
    "ahead of the model; 0 = one per CPU core (default: 0)",
    "zeroshot_batch": "images per batch of --checkpoint zero-shot predictions (default: 256, "
    "as training.run)",
    "zeroshot_device": "device of the --checkpoint model: auto (CUDA when available), cpu, "
    "cuda, cuda:N (default: auto)",
    "precision": "target precision of the calibrated threshold (default: 0.99)",
    "threshold": "similarity threshold (1 = identical codes) instead of calibrating one: in "
    "[0, 1] for phash, [-1, 1] (a cosine) for an embedding detector",
    "top_k": "nearest training images kept per eval item (default: 5)",
    "max_matches": "training images above the threshold kept per eval item for "
    "decontaminate.parquet; items with more are counted and warned about (default: 100)",
    "decoys": "mirrored eval items per eval set searched over the training set with the "
    "eval items: false matches at the training set's size, which raise a calibrated "
    "threshold until the estimated precision reaches --precision (default: 1000; 0: none)",
    "calibration_items": "eval items given a planted transformed copy per eval set (default: 1000)",
    "seed": "seed of the calibration sample and its transformations (default: 0)",
    "confidence": "level of the two-sided Clopper-Pearson interval on Overlap accuracy "
    "(default: 0.995)",
    "alpha": "family-wise significance level, Bonferroni-corrected across eval sets (default: 0.05)",
    "contact_pairs": "borderline pairs drawn on each eval set's contact sheet (default: 24)",
    "processes": "worker processes for the local search; 0 = one per CPU core (default: 0)",
    "spark": "run the search on Spark, one task per shard (default: false)",
}


def add_overlap_flags(parser: Any) -> None:
    """One ``--flag`` per setting; unset flags stay None so a config file can decide."""
    from pipeline.config import add_setting_flags

    add_setting_flags(parser, OverlapConfig, help_texts=HELP, metavars={"hashes": "NAME,..."})
