"""One overlap run: eval sets and training shards in, REPORT_DIR out.

Order: everything that can be wrong is checked first (--out, eval layouts, predictions
files, training shards, detector), before any image is embedded. Then eval items are
embedded, each eval set gets its threshold (calibrated or given), the training shards are
searched once for all eval sets together (locally or on Spark), and the outputs are
written. Each eval set's folder is written whole under a temporary name and then swapped
in, so a rerun into the same --out leaves nothing of an older run's set folders.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ConfigError
from pipeline.overlap import report as rep
from pipeline.overlap.calibrate import (
    Calibration,
    CalibrationError,
    Decoys,
    ScaleCheck,
    calibrate,
    make_decoys,
    threshold_at_scale,
)
from pipeline.overlap.config import OverlapConfig
from pipeline.overlap.detectors import (
    Detector,
    code_layout,
    embed_many,
    make_detector,
    png_bytes,
)
from pipeline.overlap.evalsets import EvalSet, EvalSetError, EvalSpec, load_eval_set
from pipeline.overlap.predictions import NO_ANSWER, PredictionsError, read_predictions
from pipeline.overlap.search import (
    EMPTY_REF,
    EvalIndex,
    SearchResult,
    ref_index,
    ref_shard,
    search_local,
)
from pipeline.overlap.stats import SplitCounts, bonferroni, split_statistics
from pipeline.overlap.templates import read_templates
from pipeline.overlap.zeroshot import (
    CheckpointModel,
    EvalSetPredictions,
    check_zeroshot_setup,
    load_checkpoint_model,
    predict_eval_set,
    write_predictions,
)
from pipeline.shards.reader import find_shards, iter_shard
from pipeline.stats.counters import Counters


@dataclass(frozen=True)
class OverlapJob:
    evals: tuple[EvalSpec, ...]
    train: tuple[Path, ...]
    out: Path
    config: OverlapConfig = field(default_factory=OverlapConfig)
    eval_root: Path | None = None  # holds one folder per eval set
    eval_roots: Mapping[str, Path] = field(default_factory=dict)  # NAME -> its folder
    predictions: Mapping[str, Path] = field(default_factory=dict)  # eval set name -> file
    # Or zero-shot predictions of a training checkpoint on every eval set:
    checkpoint: Path | None = None
    model_config: Path | None = None  # open_clip model-config JSON; else the checkpoint's own
    templates: Path | None = None  # one prompt template per line; else the built-in ones


@dataclass(frozen=True)
class TrainShards:
    paths: tuple[Path, ...]  # in shard-id order
    sources: tuple[str, ...]  # the --train folder of each shard

    def relative(self, shard_id: int) -> str:
        p, src = self.paths[shard_id], Path(self.sources[shard_id])
        try:
            return p.relative_to(src).as_posix()
        except ValueError:
            return p.name

    def absolute(self, shard_id: int) -> str:
        return self._resolved[shard_id]

    @functools.cached_property
    def _resolved(self) -> tuple[str, ...]:
        return tuple(str(p.resolve()) for p in self.paths)


class NothingSearchedError(ValueError):
    """A run that could not search anything: no training image could be read."""


@dataclass
class OverlapReport:
    out: Path
    per_set: dict[str, dict[str, Any]]
    bonferroni: dict[str, Any]
    calibrations: dict[str, Calibration | None]
    read_counts: dict[str, int]
    seconds: dict[str, float]
    # What the numbers do not show on their own (also in report.md's notes): an eval set
    # none of whose images could be decoded, matches beyond --max-matches.
    warnings: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    eval_sets: list[EvalSet]
    predictions: dict[str, np.ndarray]
    shards: TrainShards
    detector: Detector
    zeroshot: CheckpointModel | None = None
    templates: tuple[str, ...] | None = None  # the --templates file's, for every set
    zeroshot_results: dict[str, EvalSetPredictions] = field(default_factory=dict)


def prepare(job: OverlapJob, check_only: bool = False) -> Prepared:
    """Every check that needs no embedding: fail here, before minutes of work.

    ``check_only``: the checks that need neither the training data nor the checkpoint
    (which may not exist yet, as when a DAG checks its inputs before the build): the eval
    sets, predictions files, templates, options and the detector."""
    names = [s.name for s in job.evals]
    if not names:
        raise EvalSetError("no eval set given: use --eval NAME[:PATH]")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalSetError(f"eval set {dup[0]} given twice; name one of them ALIAS={dup[0]}:PATH")
    _check_out(job.out, names)
    eval_sets = [load_eval_set(s, job.eval_roots, job.eval_root) for s in job.evals]
    if job.config.calibrate:
        for s in eval_sets:
            if len(s) < 2:
                raise CalibrationError(
                    f"eval set {s.name}: {len(s)} item(s), too few to calibrate a threshold; "
                    "give --threshold"
                )
    if job.checkpoint is not None and job.predictions:
        raise PredictionsError("give --predictions or --checkpoint, not both")
    if job.checkpoint is None and (job.model_config is not None or job.templates is not None):
        raise PredictionsError("--model-config and --templates need --checkpoint FILE")
    templates = None
    if job.checkpoint is not None:
        for s in eval_sets:
            if not s.has_labels:
                raise PredictionsError(
                    f"--checkpoint: eval set {s.name} has no labels, so accuracy cannot be measured"
                )
        templates = read_templates(job.templates) if job.templates is not None else None
    unknown = sorted(set(job.predictions) - set(names))
    if unknown:
        raise EvalSetError(
            f"predictions for {unknown[0]}, which is not an --eval set ({', '.join(names)})"
        )
    predictions = {
        s.name: read_predictions(job.predictions[s.name], s)
        for s in eval_sets
        if s.name in job.predictions
    }
    paths: list[Path] = []
    sources: list[str] = []
    for t in () if check_only else job.train:
        found = find_shards(t)
        paths += found
        sources += [str(t)] * len(found)
    detector = make_detector(job.config)
    zeroshot = None
    if job.checkpoint is not None and not check_only:
        zeroshot = load_checkpoint_model(
            job.checkpoint, job.model_config, job.config.zeroshot_device
        )
    elif job.checkpoint is not None:  # all but the checkpoint, which may not exist yet
        check_zeroshot_setup(job.model_config, job.config.zeroshot_device)
    return Prepared(
        eval_sets,
        predictions,
        TrainShards(tuple(paths), tuple(sources)),
        detector,
        zeroshot,
        templates,
    )


def _check_out(out: Path, names: Sequence[str]) -> None:
    """--out must be a folder, or a path where one can be made; an eval set's folder in it
    must not be a file."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "exists" if path == out else f"is inside {path}, which exists"
                raise ConfigError(f"--out {out}: {where} and is not a folder")
            break
    for name in names:
        if (out / name).exists() and not (out / name).is_dir():
            raise ConfigError(
                f"--out {out}: {out / name}, eval set {name}'s folder, exists and is not a folder"
            )


def zeroshot_predictions(
    prep: Prepared, batch_size: int, log: Callable[[str], None]
) -> dict[str, EvalSetPredictions]:
    """The checkpoint's zero-shot predictions on every eval set, as ``training.run
    --zeroshot`` computes them; they stand in for ``--predictions`` files."""
    zs = prep.zeroshot
    assert zs is not None
    results: dict[str, EvalSetPredictions] = {}
    for s in prep.eval_sets:
        t0 = time.perf_counter()
        marks = {max(1, len(s) * q // 10) for q in range(1, 11)}

        def progress(
            done: int, total: int, name: str = s.name, t0: float = t0, marks: set = marks
        ) -> None:
            if done in marks or done == total:
                log(
                    f"{name}: zero-shot {done:,}/{total:,} items ({time.perf_counter() - t0:.0f} s)"
                )

        r = predict_eval_set(
            zs.model,
            zs.preprocess,
            zs.tokenizer,
            s,
            prep.templates,
            zs.device,
            batch_size,
            progress,
        )
        results[s.name] = r
        top5 = r.metrics["top5"]
        log(
            f"{s.name}: zero-shot top-1 {100 * r.metrics['top1']:.2f}%, top-5 "
            + (f"{100 * top5:.2f}%" if top5 is not None else "n/a (5 classes or fewer)")
            + f" ({r.metrics['templates']} templates)"
        )
    return results


def embed_eval_set(eval_set: EvalSet, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """Codes of every item, and which items could be decoded (the others stay unsearched)."""
    width, dtype = code_layout(detector)
    codes = np.zeros((len(eval_set), width), dtype)
    valid = np.zeros(len(eval_set), bool)
    if detector.kind == "float":
        # Embedding detectors run batches: encode the array formats' items (PNG, lossless).
        for start in range(0, len(eval_set), 256):
            rows = range(start, min(start + 256, len(eval_set)))
            datas = []
            for i in rows:
                data = eval_set.images.encoded(i)
                datas.append(png_bytes(eval_set.images.image(i)) if data is None else data)
            for i, code in zip(rows, embed_many(detector, datas), strict=True):
                if code is not None:
                    codes[i] = code
                    valid[i] = True
        return codes, valid
    for i in range(len(eval_set)):
        data = eval_set.images.encoded(i)
        if data is None:
            code = detector.embed_image(eval_set.images.image(i))
        else:
            code = detector.embed_bytes(data)
        if code is not None:
            codes[i] = code
            valid[i] = True
    return codes, valid


def _search(
    job: OverlapJob, prep: Prepared, index: EvalIndex, log: Callable[[str], None]
) -> SearchResult:
    cfg = job.config
    shards = [str(p) for p in prep.shards.paths]
    if cfg.spark:
        from pipeline.spark.overlap import search_spark  # the only place pyspark is touched

        return search_spark(shards, index, prep.detector, cfg.top_k, cfg.max_matches)
    processes = cfg.processes or os.cpu_count() or 1
    if prep.detector.kind == "float":
        processes = 1  # torch already uses every core (or the GPU) within a batch
    done = [0]
    t0 = time.perf_counter()

    def progress(part: SearchResult) -> None:
        done[0] += 1
        if done[0] == len(shards) or done[0] % max(1, len(shards) // 20) == 0:
            log(f"searched {done[0]}/{len(shards)} shards ({time.perf_counter() - t0:.0f} s)")

    return search_local(
        shards, index, prep.detector, cfg.top_k, cfg.max_matches, processes, progress
    )


def run_overlap(job: OverlapJob, log: Callable[[str], None] | None = None) -> OverlapReport:
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = job.config
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    prep = prepare(job)
    detector = prep.detector
    log(
        f"{len(prep.eval_sets)} eval set(s), {sum(map(len, prep.eval_sets)):,} items; "
        f"{len(prep.shards.paths)} training shard(s); detector {detector.describe()}"
    )
    for name, pred in prep.predictions.items():
        missing = int((pred == NO_ANSWER).sum())
        if missing:
            log(
                f"{name}: {missing:,} item(s) have no prediction in {job.predictions[name]} "
                "(empty or null): they count as wrong"
            )
    seconds["prepare"] = time.perf_counter() - t

    if prep.zeroshot is not None:
        t = time.perf_counter()
        log(f"zero-shot predictions of {prep.zeroshot.describe()}")
        prep.zeroshot_results = zeroshot_predictions(prep, cfg.zeroshot_batch, log)
        for name, r in prep.zeroshot_results.items():
            prep.predictions[name] = r.predictions
        prep.zeroshot.release()  # free its memory (GPU) for the detector
        seconds["zeroshot"] = time.perf_counter() - t

    t = time.perf_counter()
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in prep.eval_sets:
        codes[s.name] = embed_eval_set(s, detector)
        log(f"{s.name}: embedded {int(codes[s.name][1].sum()):,} of {len(s):,} items")
    seconds["embed_eval"] = time.perf_counter() - t

    t = time.perf_counter()
    calibrations: dict[str, Calibration | None] = {}
    thresholds: dict[str, float] = {}
    unreached: list[str] = []
    for s in prep.eval_sets:
        if cfg.calibrate:
            cal = calibrate(
                s, *codes[s.name], detector, cfg.precision, cfg.calibration_items, cfg.seed
            )
            calibrations[s.name] = cal
            thresholds[s.name] = cal.threshold
            log(
                f"{s.name}: threshold {cal.threshold:.4f} (precision {cal.precision:.3f}, recall "
                f"{cal.recall:.3f} on {len(cal.items)} planted copies)"
            )
            if not cal.reached:
                unreached.append(
                    f"{s.name}: no threshold reaches precision {cfg.precision} on its planted "
                    "copies, so nothing can be called overlap (its 0 overlap means nothing): "
                    "give --threshold, or a lower --precision"
                )
        else:
            calibrations[s.name] = None
            thresholds[s.name] = float(np.float32(cfg.threshold))
    seconds["calibrate"] = time.perf_counter() - t

    t = time.perf_counter()
    decoys: dict[str, Decoys] = {}
    copy_levels: dict[str, float] = {}
    for s in prep.eval_sets:
        if cfg.decoys:
            copy_levels[s.name] = _copy_level(s, codes[s.name], calibrations[s.name], detector, cfg)
            decoys[s.name] = make_decoys(
                s, *codes[s.name], detector, cfg.decoys, cfg.seed, floor=copy_levels[s.name]
            )
    seconds["decoys"] = time.perf_counter() - t

    offsets = np.cumsum([0] + [len(s) for s in prep.eval_sets])
    n_items = int(offsets[-1])
    decoy_codes = [d.codes for d in decoys.values()]
    index = EvalIndex(
        kind=detector.kind,
        dim=detector.dim,
        codes=np.concatenate([codes[s.name][0] for s in prep.eval_sets] + decoy_codes),
        # Decoys record no matches (their best scores are all that is needed of them).
        thresholds=np.concatenate(
            [np.full(len(s), thresholds[s.name], np.float32) for s in prep.eval_sets]
            + [np.full(len(c), np.inf, np.float32) for c in decoy_codes]
        ),
        valid=np.concatenate(
            [codes[s.name][1] for s in prep.eval_sets]
            + [np.ones(len(c), bool) for c in decoy_codes]
        ),
    )
    t = time.perf_counter()
    searched = _search(job, prep, index, log)
    seconds["search"] = time.perf_counter() - t

    if searched.counters["embedded"] == 0:
        raise NothingSearchedError(_nothing_searched(job, prep, searched))
    scale = _check_scale(prep, searched, offsets, codes, decoys, thresholds, copy_levels, cfg, log)
    for name, check in scale.items():
        if check.raised:
            thresholds[name] = check.threshold
    result = _eval_rows(searched, n_items, offsets, thresholds, prep)
    warnings = (
        unreached
        + _scale_warnings(scale, cfg)
        + _warnings(prep, result, offsets, codes, cfg.max_matches)
    )

    t = time.perf_counter()
    out = job.out
    out.mkdir(parents=True, exist_ok=True)
    # Each set's folder is written whole under a temporary name, then swapped in.
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staged = {s.name: out / f".{s.name}.new-{token}" for s in prep.eval_sets}
    per_set: dict[str, dict[str, Any]] = {}
    try:
        for i, s in enumerate(prep.eval_sets):
            rows = slice(int(offsets[i]), int(offsets[i + 1]))
            per_set[s.name] = _write_eval_set(
                s,
                rows,
                result,
                prep,
                thresholds[s.name],
                calibrations[s.name],
                codes[s.name][1],
                cfg,
                staged[s.name],
            )
            if s.name in scale:
                per_set[s.name]["decoys"] = _scale_entry(scale[s.name])
        seconds["write"] = time.perf_counter() - t

        t = time.perf_counter()
        if cfg.contact_pairs:
            _contact_sheets(prep, result, offsets, thresholds, cfg.contact_pairs, staged)
        seconds["contact_sheets"] = time.perf_counter() - t
        t = time.perf_counter()
        _swap_in(staged, out)
    finally:
        for folder in staged.values():  # left only when something failed
            shutil.rmtree(folder, ignore_errors=True)
    _write_decontaminate(prep, result, offsets, out / "decontaminate.parquet")
    _remove_stale_sets(out, {s.name for s in prep.eval_sets}, log)
    bonf = bonferroni({n: r["p_value"] for n, r in per_set.items()}, cfg.alpha)
    rep.write_json(out / "report.json", per_set)
    notes = _notes(prep, result, codes, job) + [f"Warning: {w}" for w in warnings]
    (out / "report.md").write_text(
        rep.report_markdown(per_set, bonf, calibrations, cfg.confidence, notes, scale),
        encoding="utf-8",
    )
    rep.plot_overlap(per_set, bonf["significant"], out / "overlap.png")
    seconds["write"] += time.perf_counter() - t
    capped = result.capped
    rep.write_json(
        out / "run.json",
        {
            "eval_sets": {
                s.name: {
                    "kind": s.kind,
                    "root": str(s.root),
                    "items": len(s),
                    "undecodable": int((~codes[s.name][1]).sum()),
                    "predictions": (
                        str(out / s.name / "predictions.parquet")
                        if s.name in prep.zeroshot_results
                        else str(job.predictions.get(s.name, "")) or None
                    ),
                    # Items the predictions leave without an answer (counted wrong).
                    "no_prediction": (
                        int((prep.predictions[s.name] == NO_ANSWER).sum())
                        if s.name in prep.predictions
                        else None
                    ),
                    # Items with more training matches than decontaminate.parquet lists.
                    "capped_matches": int(capped[offsets[i] : offsets[i + 1]].sum()),
                }
                for i, s in enumerate(prep.eval_sets)
            },
            "train": [str(t) for t in job.train],
            "shards": len(prep.shards.paths),
            "training_images": result.counters.to_dict(),
            "detector": detector.describe(),
            "zeroshot": _zeroshot_run_info(job, prep),
            "config": _jsonable(asdict(cfg)),
            "bonferroni": bonf,
            "decontaminate": {
                "rows": len(result.match_rows),
                "max_matches": cfg.max_matches,
                "capped_items": int(capped.sum()),
            },
            "calibration": {
                n: None
                if c is None
                else {
                    "threshold": c.threshold,
                    "precision": c.precision,
                    "recall": c.recall,
                    "target": c.target,
                    "reached": c.reached,
                    "items": len(c.items),
                    "distractors": c.distractors,
                }
                for n, c in calibrations.items()
            },
            "decoys": {n: _scale_entry(c) for n, c in scale.items()},
            "warnings": warnings,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        },
    )
    return OverlapReport(
        out, per_set, bonf, calibrations, result.counters.to_dict(), seconds, warnings
    )


def _nothing_searched(job: OverlapJob, prep: Prepared, result: SearchResult) -> str:
    c = result.counters
    return (
        f"no training image could be read from the {len(prep.shards.paths):,} shard(s) of "
        f"--train {', '.join(str(t) for t in job.train)} (damaged tars {c['corrupt_tar']:,}, "
        f"skipped damaged members {c['corrupt_member']:,}, undecodable images "
        f"{c['undecodable']:,}, samples without an image {c['no_image']:,}): nothing was "
        "searched, no report written"
    )


def _check_scale(
    prep: Prepared,
    searched: SearchResult,
    offsets: np.ndarray,
    codes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    decoys: Mapping[str, Decoys],
    thresholds: Mapping[str, float],
    copy_levels: Mapping[str, float],
    cfg: OverlapConfig,
    log: Callable[[str], None],
) -> dict[str, ScaleCheck]:
    """Each set's threshold against its decoys' best scores over the whole training set:
    a calibrated threshold is raised until the estimated precision reaches the target; a
    given one is kept, with its estimated precision reported."""
    checks: dict[str, ScaleCheck] = {}
    start = int(offsets[-1])
    for i, s in enumerate(prep.eval_sets):
        if s.name not in decoys:
            continue
        d = decoys[s.name]
        rows = slice(start, start + len(d.codes))
        start += len(d.codes)
        decoy_top = searched.top_scores[rows, 0]
        # A decoy scoring like a planted copy found a copy of itself: a flipped copy of
        # its eval image (common on the web), not an unrelated image's chance match. Left
        # in, one such hit stood for n/D false matches and lifted the threshold above the
        # real copies. (The test is the score: mirroring the training image back and
        # comparing it with the source is the same comparison, to the detector.)
        copies = decoy_top >= np.float32(copy_levels[s.name])
        # A decoy whose best training image is one its own item matched found that item's
        # copy (a near-symmetric item), not an unrelated image.
        lo = int(offsets[i])
        hit_refs = searched.top_refs[rows, 0]
        for j, src in enumerate(d.sources):
            row = lo + int(src)
            own = searched.top_refs[row][searched.top_scores[row] >= np.float32(thresholds[s.name])]
            if hit_refs[j] != EMPTY_REF and hit_refs[j] in own:
                copies[j] = True
        decoy_top = decoy_top[~copies]
        items = searched.top_scores[int(offsets[i]) : int(offsets[i + 1]), 0]
        eval_top = items[codes[s.name][1]]
        # A threshold the user gave stands: only its estimated precision is reported.
        check = threshold_at_scale(
            thresholds[s.name],
            decoy_top,
            eval_top,
            cfg.precision,
            d.symmetric,
            may_raise=cfg.calibrate,
            copy_hits=int(copies.sum()),
        )
        checks[s.name] = check
        estimate = "n/a" if check.precision is None else f"{check.precision:.3f}"
        if check.raised:
            log(
                f"{s.name}: threshold raised {check.base:.4f} -> {check.threshold:.4f}: "
                f"{check.base_decoy_hits:,} of {check.decoys:,} mirrored decoys scored at or "
                f"above {check.base:.4f} over the whole training set (estimated precision "
                f"now {estimate})"
            )
        else:
            log(
                f"{s.name}: {check.decoy_hits:,} of {check.decoys:,} mirrored decoys at or "
                f"above threshold {check.threshold:.4f} (estimated precision {estimate})"
            )
    return checks


def _copy_level(
    s: EvalSet,
    codes: tuple[np.ndarray, np.ndarray],
    cal: Calibration | None,
    detector: Detector,
    cfg: OverlapConfig,
) -> float:
    """The score a copy reaches: the median of the planted copies' scores (planted for this
    when the threshold is given). A decoy at that level against its own source is
    mirror-symmetric, and one at that level against a training image found a copy of
    itself; neither says anything of chance matches. Too few items to plant: infinity."""
    if cal is None:
        try:
            cal = calibrate(s, *codes, detector, cfg.precision, cfg.calibration_items, cfg.seed)
        except CalibrationError:
            return math.inf
    return float(np.median(cal.positive)) if len(cal.positive) else math.inf


def _scale_warnings(scale: Mapping[str, ScaleCheck], cfg: OverlapConfig) -> list[str]:
    """What the decoys say that a reader of the overlap numbers must know."""
    warnings = []
    for name, c in scale.items():
        if c.raised and c.eval_hits == 0 < c.base_eval_hits:
            warnings.append(
                f"{name}: the decoys raised the threshold {c.base:.4f} -> {c.threshold:.4f}, "
                f"above all {c.base_eval_hits:,} items the calibrated threshold called overlap: "
                "its 0 overlap may hide copies the detector cannot tell from chance matches at "
                "this training set's size; see borderline.png, or give --threshold"
            )
        elif not cfg.calibrate and c.precision is not None and c.precision < cfg.precision:
            warnings.append(
                f"{name}: at the given threshold {c.threshold:.4f}, {c.decoy_hits:,} of "
                f"{c.decoys:,} mirrored decoys also match: about {c.expected_false:,.0f} of its "
                f"{c.eval_hits:,} overlap items are likely unrelated images (estimated "
                f"precision {c.precision:.3f}, below --precision {cfg.precision})"
            )
    return warnings


def _scale_entry(check: ScaleCheck) -> dict[str, Any]:
    return {**asdict(check), "precision": check.precision, "expected_false": check.expected_false}


def _eval_rows(
    searched: SearchResult,
    n: int,
    offsets: np.ndarray,
    thresholds: Mapping[str, float],
    prep: Prepared,
) -> SearchResult:
    """The search's answer for the eval items alone (decoys dropped), with only the matches
    at or above each set's final threshold (raised thresholds drop some)."""
    final = np.concatenate(
        [np.full(len(s), thresholds[s.name], np.float32) for s in prep.eval_sets]
    )
    rows = searched.match_rows
    keep = (rows < n) & (searched.match_scores >= final[np.minimum(rows, n - 1)])
    kept_rows = rows[keep]
    counts = np.bincount(kept_rows, minlength=n).astype(np.int64)[:n]
    # More matches than were kept, at the final threshold: the best one the cap left out
    # still reaches it (a raise may leave a row capped at the base threshold with fewer).
    overflow = searched.overflow[:n]
    capped = (counts == searched.max_matches) & (overflow >= final)
    counts = np.where(capped, searched.max_matches + 1, counts)
    result = SearchResult(
        searched.top_scores[:n],
        searched.top_refs[:n],
        kept_rows,
        searched.match_refs[keep],
        searched.match_scores[keep],
        counters=searched.counters,
        max_matches=searched.max_matches,
        match_counts=counts,
        overflow=np.where(overflow >= final, overflow, -np.inf).astype(np.float32),
    )
    wanted = set(result.top_refs[result.top_refs != EMPTY_REF].tolist())
    wanted.update(result.match_refs.tolist())
    result.keys = {r: k for r, k in searched.keys.items() if r in wanted}
    return result


def _warnings(
    prep: Prepared,
    result: SearchResult,
    offsets: np.ndarray,
    codes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    max_matches: int,
) -> list[str]:
    """What a reader of the overlap numbers must know: they do not say it themselves."""
    warnings = []
    for s in prep.eval_sets:
        if len(s) and not codes[s.name][1].any():
            warnings.append(
                f"{s.name}: none of its {len(s):,} eval images could be decoded, so none was "
                "searched: its 0 overlap means nothing"
            )
    capped = result.capped
    if capped.any():
        per_set = ", ".join(
            f"{s.name} {int(capped[offsets[i] : offsets[i + 1]].sum()):,}"
            for i, s in enumerate(prep.eval_sets)
            if capped[offsets[i] : offsets[i + 1]].any()
        )
        warnings.append(
            f"{int(capped.sum()):,} eval item(s) ({per_set}) match more than --max-matches "
            f"{max_matches} training images; decontaminate.parquet lists only the best "
            f"{max_matches} of each: rerun with a larger --max-matches to list them all"
        )
    return warnings


def _swap_in(staged: Mapping[str, Path], out: Path) -> None:
    """Each staged folder replaces its set's folder whole: no file of an older run (a
    calibration curve, a contact sheet, predictions) is left next to the new ones."""
    for name, new in staged.items():
        final = out / name
        old = new.with_name(new.name.replace(".new-", ".old-", 1))
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)


def _zeroshot_run_info(job: OverlapJob, prep: Prepared) -> dict[str, Any] | None:
    zs = prep.zeroshot
    if zs is None:
        return None
    return {
        "checkpoint": str(zs.checkpoint),
        "model": zs.describe(),
        "model_config": zs.config_source,
        "step": zs.step,
        "device": str(zs.device),
        "templates": str(job.templates) if job.templates is not None else "built-in",
    }


def _zeroshot_entry(prep: Prepared, name: str) -> dict[str, Any]:
    """What report.json records per set about the model behind its accuracies."""
    zs, r = prep.zeroshot, prep.zeroshot_results[name]
    assert zs is not None
    return {
        "checkpoint": str(zs.checkpoint),
        "model": zs.describe(),
        "model_config": zs.config_source,
        "step": zs.step,
        "templates": r.metrics["templates"],
        "top1": r.metrics["top1"],
        "top5": r.metrics["top5"],
        "undecodable": r.metrics["undecodable"],
        "predictions": f"{name}/predictions.parquet",
    }


def _jsonable(d: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def _notes(
    prep: Prepared,
    result: SearchResult,
    codes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    job: OverlapJob,
) -> list[str]:
    c = result.counters
    notes = [
        f"Training images searched: {c['embedded']:,} from {len(prep.shards.paths)} shard(s); "
        f"undecodable {c['undecodable']:,}; damaged tars {c['corrupt_tar']:,}, skipped damaged "
        f"members {c['corrupt_member']:,}, samples without an image {c['no_image']:,}."
    ]
    for s in prep.eval_sets:
        bad = int((~codes[s.name][1]).sum())
        if bad and bad < len(s):  # none decodable: a warning says more
            notes.append(
                f"{s.name}: {bad:,} eval image(s) could not be decoded; they count as Clean."
            )
    if prep.zeroshot is not None:
        zs = prep.zeroshot
        templates = (
            f"{len(prep.templates)} templates from --templates"
            if prep.templates
            else "the built-in templates of each set"
        )
        notes.append(
            f"Accuracies: zero-shot predictions of {zs.describe()} (checkpoint {zs.checkpoint}, "
            f"model config {zs.config_source}) with {templates}; top-1/top-5 in report.json, "
            "per item in `<eval>/predictions.parquet`."
        )
        for s in prep.eval_sets:
            bad = prep.zeroshot_results[s.name].metrics["undecodable"]
            if bad:
                notes.append(
                    f"{s.name}: {bad:,} eval image(s) could not be decoded for zero-shot "
                    "classification; they count as wrong."
                )
    for s in prep.eval_sets:
        missing = (
            int((prep.predictions[s.name] == NO_ANSWER).sum())
            if s.name in prep.predictions and s.name not in prep.zeroshot_results
            else 0
        )
        if missing:
            notes.append(
                f"{s.name}: {missing:,} of {len(s):,} item(s) have no prediction (empty or null "
                f"in {job.predictions[s.name]}, as for images the model could not decode); "
                "they count as wrong."
            )
    if any(s.name not in prep.predictions for s in prep.eval_sets):
        notes.append(
            "Accuracies need --predictions NAME:FILE or --checkpoint FILE; sets without "
            "predictions report overlap only."
        )
    return notes


def _remove_stale_sets(out: Path, current: set[str], log: Callable[[str], None]) -> None:
    """A report rewritten into the same folder with fewer eval sets: the folders of the
    sets it no longer has (this tool's, known by their splits.parquet) would pass for
    part of it."""
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in current):
        if (folder / "splits.parquet").is_file():
            shutil.rmtree(folder)
            log(f"removed {folder}: eval set {folder.name} is not in this report")


def _key_columns(refs: np.ndarray, result: SearchResult, shards: TrainShards) -> dict[str, list]:
    keys, sources, shard_names, shard_paths = [], [], [], []
    for r in refs:
        if r == EMPTY_REF:
            keys.append(None)
            sources.append(None)
            shard_names.append(None)
            shard_paths.append(None)
        else:
            sid = ref_shard(int(r))
            keys.append(result.key(int(r)))
            sources.append(shards.sources[sid])
            shard_names.append(shards.relative(sid))
            shard_paths.append(shards.absolute(sid))
    return {
        "train_key": keys,
        "train_source": sources,
        "train_shard": shard_names,
        # Where the shard is on this machine: training's --exclude leaves the key out of
        # that shard alone when it trains on it (keys repeat across datasets).
        "train_shard_path": shard_paths,
    }


def _write_eval_set(
    s: EvalSet,
    rows: slice,
    result: SearchResult,
    prep: Prepared,
    threshold: float,
    cal: Calibration | None,
    valid: np.ndarray,
    cfg: OverlapConfig,
    folder: Path,
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    top_scores = result.top_scores[rows]
    top_refs = result.top_refs[rows]
    best = top_scores[:, 0]
    overlap = valid & (top_refs[:, 0] != EMPTY_REF) & (best >= np.float32(threshold))
    score_col = [
        None if r == EMPTY_REF else float(v) for v, r in zip(best, top_refs[:, 0], strict=True)
    ]
    columns: dict[str, object] = {
        "id": list(s.ids),
        "label": s.labels.tolist(),
        "split": ["overlap" if o else "clean" for o in overlap],
        "score": score_col,
        **_key_columns(top_refs[:, 0], result, prep.shards),
    }
    correct = None
    if s.name in prep.zeroshot_results:
        r = prep.zeroshot_results[s.name]
        write_predictions(folder / "predictions.parquet", s.ids, r.predictions, r.top5)
    if s.name in prep.predictions:
        pred = prep.predictions[s.name]
        correct = pred == s.labels
        columns["prediction"] = [None if v == NO_ANSWER else int(v) for v in pred]
        columns["correct"] = correct.tolist()
    pq.write_table(pa.table(columns), folder / "splits.parquet")
    # Every kept neighbour, rank 1 first, for inspection beyond the nearest one.
    r_idx, rank = np.nonzero(top_refs != EMPTY_REF)
    pq.write_table(
        pa.table(
            {
                "id": [s.ids[i] for i in r_idx],
                "rank": (rank + 1).tolist(),
                "score": top_scores[r_idx, rank].astype(float).tolist(),
                **_key_columns(top_refs[r_idx, rank], result, prep.shards),
            }
        ),
        folder / "neighbours.parquet",
    )
    if cal is not None:
        _write_calibration(s, cal, folder)
    counts = SplitCounts.from_arrays(overlap, correct)
    stats = split_statistics(counts, threshold, prep.detector.describe(), cfg.confidence)
    if s.name in prep.zeroshot_results:
        stats["zeroshot"] = _zeroshot_entry(prep, s.name)
    return stats


def _write_calibration(s: EvalSet, cal: Calibration, folder: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "threshold": cal.curve_thresholds.astype(float),
                "tp": cal.curve_tp,
                "fp": cal.curve_fp,
                "precision": cal.curve_precision,
                "recall": cal.curve_recall,
            }
        ),
        folder / "calibration.parquet",
    )
    n = len(s)
    pq.write_table(
        pa.table(
            {
                "id": [s.ids[i] for i in cal.items],
                "copy_score": cal.positive.astype(float),
                "distractor_score": cal.negative.astype(float),
                "distractor": [
                    s.ids[r] if r < n else f"copy of {s.ids[cal.items[r - n]]}"
                    for r in cal.negative_ref
                ],
            }
        ),
        folder / "calibration_items.parquet",
    )
    rep.plot_pr_curve(cal, s.name, folder / "pr_curve.png")


def _write_decontaminate(
    prep: Prepared, result: SearchResult, offsets: np.ndarray, path: Path
) -> None:
    """Training images matching any eval item: what training should leave out."""
    set_of_row = np.searchsorted(offsets, result.match_rows, side="right") - 1
    order = np.lexsort((result.match_rows, result.match_refs))
    refs = result.match_refs[order]
    rows = result.match_rows[order]
    cols = _key_columns(refs, result, prep.shards)
    names = [prep.eval_sets[k].name for k in set_of_row[order]]
    ids = [
        prep.eval_sets[k].ids[r - offsets[k]] for k, r in zip(set_of_row[order], rows, strict=True)
    ]
    pq.write_table(
        pa.table(
            {
                **cols,
                "eval_set": pa.array(names, pa.string()),
                "eval_id": pa.array(ids, pa.string()),
                "score": pa.array(result.match_scores[order].astype(float), pa.float64()),
            },
            schema=pa.schema(
                [
                    ("train_key", pa.string()),
                    ("train_source", pa.string()),
                    ("train_shard", pa.string()),
                    ("train_shard_path", pa.string()),
                    ("eval_set", pa.string()),
                    ("eval_id", pa.string()),
                    ("score", pa.float64()),
                ]
            ),
        ),
        path,
    )


def _contact_sheets(
    prep: Prepared,
    result: SearchResult,
    offsets: np.ndarray,
    thresholds: Mapping[str, float],
    n_pairs: int,
    folders: Mapping[str, Path],
) -> None:
    chosen: dict[str, np.ndarray] = {}
    wanted: dict[int, set[int]] = {}
    for i, s in enumerate(prep.eval_sets):
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        scores = np.where(
            result.top_refs[rows, 0] != EMPTY_REF, result.top_scores[rows, 0], -np.inf
        )
        picked = rep.borderline_rows(scores.astype(np.float64), thresholds[s.name], n_pairs)
        chosen[s.name] = picked
        for r in result.top_refs[rows, 0][picked]:
            wanted.setdefault(ref_shard(int(r)), set()).add(ref_index(int(r)))
    images = _fetch_training_images(prep.shards, wanted)
    for i, s in enumerate(prep.eval_sets):
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        pairs = []
        for r in chosen[s.name]:
            ref = int(result.top_refs[rows, 0][r])
            try:
                eval_img = s.images.image(int(r))
            except Exception:  # an undecodable eval image still shows its pair, blank
                eval_img = None
            pairs.append(
                rep.Pair(
                    s.ids[r],
                    result.key(ref),
                    float(result.top_scores[rows, 0][r]),
                    eval_img,
                    images.get((ref_shard(ref), ref_index(ref))),
                )
            )
        rep.contact_sheet(pairs, thresholds[s.name], s.name, folders[s.name] / "borderline.png")


def _fetch_training_images(
    shards: TrainShards, wanted: Mapping[int, set[int]]
) -> dict[tuple[int, int], bytes]:
    """Image bytes of a few training samples, reading only the shards that hold them."""
    got: dict[tuple[int, int], bytes] = {}
    for sid, indices in wanted.items():
        left = set(indices)
        for sample in iter_shard(shards.paths[sid], Counters()):
            if sample.index in left:
                got[(sid, sample.index)] = sample.image
                left.discard(sample.index)
                if not left:
                    break
    return got


# An eval set's name as ``--eval`` spells one (evalsets._SPEC: a kind or an ALIAS).
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def parse_named_paths(
    values: Sequence[str], known: Sequence[str], what: str
) -> tuple[dict[str, Path], list[Path]]:
    """``NAME:PATH`` entries (NAME among ``known``) and plain paths, from repeated flags.

    A prefix that looks like a name (no ``/``) but is not one is a misspelt or wrong name,
    unless the whole value is a path that exists (a file name may hold a colon)."""
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for v in values:
        name, sep, rest = v.partition(":")
        if sep and name in known:
            if name in named:
                raise EvalSetError(f"{what} for {name} given twice")
            named[name] = Path(rest).expanduser()
        elif sep and _NAME.match(name) and not Path(v).expanduser().exists():
            raise EvalSetError(
                f"{what} {v}: {name} is not an --eval set ({', '.join(dict.fromkeys(known))}); "
                "use NAME:PATH with one of them"
            )
        else:
            plain.append(Path(v).expanduser())
    return named, plain
