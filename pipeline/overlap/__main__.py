"""python -m pipeline.overlap --eval imagenet --train DIR --out REPORT_DIR

Finds eval items that also appear in the training data (CLIP section 5, appendix C) and
reports accuracy on All, Clean and Overlap with the paper's statistics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import (
    ConfigError,
    build_config,
    load_settings,
    prog_name,
    settings_from_args,
)
from pipeline.overlap.calibrate import CalibrationError
from pipeline.overlap.config import THRESHOLD_RANGE, OverlapConfig, add_overlap_flags
from pipeline.overlap.detectors import DetectorError
from pipeline.overlap.evalsets import REGISTRY, EvalSetError, parse_eval_spec
from pipeline.overlap.predictions import PredictionsError
from pipeline.overlap.run import (
    NothingSearchedError,
    OverlapJob,
    parse_named_paths,
    prepare,
    run_overlap,
)
from pipeline.overlap.templates import TemplatesError
from pipeline.overlap.zeroshot import ZeroShotError
from pipeline.shards.reader import ShardReadError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog_name("pipeline.overlap", "wit-overlap"),
        description="Train-test overlap (CLIP section 5): find eval items duplicated in the "
        "training shards, split each eval set into Overlap and Clean, and report accuracy on "
        "each with a binomial test and Clopper-Pearson intervals.",
    )
    p.add_argument(
        "--eval",
        action="append",
        required=True,
        metavar="NAME[:PATH]",
        help=f"eval set, repeatable: {', '.join(REGISTRY)}; NAME:PATH gives its folder, "
        "ALIAS=NAME:PATH names a second set of one kind",
    )
    p.add_argument(
        "--eval-root",
        action="append",
        default=[],
        metavar="DIR|NAME:DIR",
        help="folder holding one folder per eval set (DIR/imagenet, DIR/cifar10, ...), or "
        "NAME:DIR for one set; repeatable",
    )
    p.add_argument(
        "--train",
        action="append",
        required=True,
        metavar="DIR",
        help="training data: a wit-builder download folder (DIR/shards/*.tar) or an "
        "img2dataset output folder (DIR/*.tar); repeatable",
    )
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="output folder")
    p.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="[NAME:]FILE",
        help="CSV or Parquet with columns id and prediction (class index or name; empty or "
        "null: no answer, counted wrong); NAME:FILE per eval set, plain FILE when there is one "
        "eval set; repeatable",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="accuracies from zero-shot predictions of a training checkpoint (training.run's "
        "OUTPUT/checkpoints/step_*.pt) on every eval set, computed as training.run --zeroshot "
        "does; written to REPORT_DIR/<eval>/predictions.parquet; instead of --predictions",
    )
    p.add_argument(
        "--model-config",
        metavar="CONFIG.json",
        help="open_clip model-config JSON of the --checkpoint model (training.run's are "
        "training/model_configs/NAME.json); needed unless the checkpoint records its config",
    )
    p.add_argument(
        "--templates",
        metavar="FILE",
        help="--checkpoint prompt templates, one per line with {} for the class name (every "
        "set); default: built-in ones per eval set (OpenAI's 80 for ImageNet)",
    )
    p.add_argument("--config", help="TOML or YAML file with the same settings as the flags")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the eval sets, predictions, templates, options and detector, then exit "
        "without reading --train or --checkpoint (which may not exist yet): a workflow's "
        "first step, before hours of building",
    )
    add_overlap_flags(p)
    return p


def job_from_args(args: argparse.Namespace) -> OverlapJob:
    if args.precision is not None and args.threshold is not None:
        raise ConfigError("give --precision (calibrate a threshold) or --threshold, not both")
    settings = load_settings(args.config) if args.config else {}
    in_file = {k.replace("-", "_") for k, v in settings.items() if v is not None}
    if {"precision", "threshold"} <= in_file:
        raise ConfigError(
            f"config file {args.config}: give precision (calibrate a threshold) or threshold, "
            "not both"
        )
    flags = settings_from_args(args, OverlapConfig)
    # Precision and threshold are one choice, and the command line's wins over the file's.
    for given, other in (("precision", "threshold"), ("threshold", "precision")):
        if given in flags:
            settings = {k: v for k, v in settings.items() if k.replace("-", "_") != other}
    settings.update(flags)
    config = build_config(OverlapConfig, settings)
    threshold = [v for k, v in settings.items() if k.replace("-", "_") == "threshold"]
    if threshold and threshold[-1] is not None and config.calibrate:
        # NaN is the default's "calibrate"; a NaN given is a mistake, not that choice.
        raise ConfigError(f"{THRESHOLD_RANGE}, got {threshold[-1]}")
    if args.checkpoint and args.predictions:
        raise ConfigError("give --predictions FILE or --checkpoint FILE, not both")
    if not args.checkpoint and (args.model_config or args.templates):
        raise ConfigError("--model-config and --templates need --checkpoint FILE")
    evals = tuple(parse_eval_spec(e) for e in args.eval)
    names = [e.name for e in evals]
    named_roots, plain_roots = parse_named_paths(
        args.eval_root, [*names, *(e.kind for e in evals)], "--eval-root"
    )
    if len(plain_roots) > 1:
        raise EvalSetError("--eval-root DIR given twice; use NAME:DIR for per-set folders")
    named_preds, plain_preds = parse_named_paths(args.predictions, names, "--predictions")
    if plain_preds:
        if len(plain_preds) > 1 or len(evals) > 1 or named_preds:
            raise PredictionsError(
                "--predictions FILE without a name needs exactly one --eval; use NAME:FILE"
            )
        named_preds[evals[0].name] = plain_preds[0]
    return OverlapJob(
        evals=evals,
        train=tuple(Path(t).expanduser() for t in args.train),
        out=Path(args.out).expanduser(),
        config=config,
        eval_root=plain_roots[0] if plain_roots else None,
        eval_roots=named_roots,
        predictions=named_preds,
        checkpoint=Path(args.checkpoint).expanduser() if args.checkpoint else None,
        model_config=Path(args.model_config).expanduser() if args.model_config else None,
        templates=Path(args.templates).expanduser() if args.templates else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = job_from_args(args)
        if args.check:
            prep = prepare(job, check_only=True)
            sets = ", ".join(f"{s.name} ({len(s):,} items)" for s in prep.eval_sets)
            print(f"check: ok: {sets}; detector {prep.detector.describe()}")
            return 0
        report = run_overlap(job)
    except (
        ConfigError,
        EvalSetError,
        PredictionsError,
        ShardReadError,
        DetectorError,
        CalibrationError,
        ZeroShotError,
        TemplatesError,
        NothingSearchedError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in report.per_set.items():
        acc = (
            ""
            if r["all_minus_clean"] is None
            else f", All - Clean {100 * r['all_minus_clean']:+.2f}%"
        )
        if "zeroshot" in r:
            acc += f", zero-shot top-1 {100 * r['zeroshot']['top1']:.2f}%"
        print(
            f"{name}: {r['n_overlap']:,} of {r['n_all']:,} items overlap ({r['overlap_pct']:.2f}%){acc}"
        )
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {report.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
