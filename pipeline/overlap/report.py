"""What a run writes: report.json and report.md, overlap.png (CLIP's figure 17), and per eval
set its calibration curve and the contact sheet of borderline pairs."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from pipeline.overlap.calibrate import Calibration, ScaleCheck
from pipeline.overlap.detectors import to_8bit
from pipeline.shards.atomic import write_text_atomic


def _fmt_pct(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.{digits}f}" if sign else f"{100 * x:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def write_json(path: Path, obj: object) -> None:
    """``obj`` as JSON, written to a unique temporary name and renamed (two writers of one
    path never share a temporary file; readers see one whole file)."""
    write_text_atomic(Path(path), json.dumps(obj, indent=2, allow_nan=False) + "\n")


def scale_text(check: ScaleCheck | None) -> str:
    """The decoy check of one threshold, in a sentence (leading space)."""
    if check is None:
        return (
            " No decoys were searched: its false-match rate at the training set's size is unknown."
        )
    if not check.decoys:
        if check.symmetric or check.copy_hits:
            return (
                f" No decoy was left to count ({check.symmetric:,} mirror-symmetric, "
                f"{check.copy_hits:,} whose best training image is a copy of their own item)."
            )
        return " No decoy was searched (no decodable eval item)."
    estimate = "n/a" if check.precision is None else f"{check.precision:.3f}"
    dropped = [
        f"{check.symmetric:,} dropped as mirror-symmetric" if check.symmetric else "",
        f"{check.copy_hits:,} whose best training image is a copy of their own eval item "
        "(found by the item too, or scoring like a planted copy: a flipped copy), not "
        "counted as chance matches"
        if check.copy_hits
        else "",
    ]
    sym = "".join(f", {d}" for d in dropped if d)
    text = (
        f" Decoys: {check.decoys:,} mirrored eval items{sym}, searched over the whole training "
        f"set: {check.decoy_hits:,} score at or above {check.threshold:.4f}, where "
        f"{check.eval_hits:,} eval items do: estimated precision {estimate}"
    )
    if check.raised:
        text += (
            f" (raised from {check.base:.4f}, where {check.base_decoy_hits:,} decoys and "
            f"{check.base_eval_hits:,} items scored: unrelated training images pass a threshold "
            "set among the eval set's own items)"
        )
    return text + "."


def report_markdown(
    per_set: Mapping[str, Mapping[str, Any]],
    bonferroni: Mapping[str, Any],
    calibrations: Mapping[str, Calibration | None],
    confidence: float,
    notes: Sequence[str] = (),
    scale: Mapping[str, ScaleCheck] | None = None,
) -> str:
    level = f"{100 * confidence:g}%"
    lines = [
        "# Train-test overlap",
        "",
        "Overlap: eval items whose nearest training image scores at least the threshold; "
        "Clean: the others; All: every item (CLIP section 5, appendix C). Accuracies in %; "
        f"p: one-tailed binomial test of Overlap accuracy against Clean accuracy; "
        f"interval: two-sided {level} Clopper-Pearson on Overlap accuracy; "
        f"Bonferroni over {bonferroni['tests']} test(s) at alpha {bonferroni['alpha']}.",
        "",
        "| eval set | items | overlap | overlap % | acc All | acc Clean | acc Overlap "
        f"| All - Clean | p | p (Bonferroni) | Overlap acc {level} CI | threshold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    adjusted = bonferroni["adjusted_p_values"]
    for name, r in per_set.items():
        ci = (
            f"[{_fmt_pct(r['ci_low'])}, {_fmt_pct(r['ci_high'])}]"
            if r["ci_low"] is not None
            else "-"
        )
        sig = " *" if name in bonferroni["significant"] else ""
        lines.append(
            f"| {name} | {r['n_all']:,} | {r['n_overlap']:,} | {r['overlap_pct']:.2f} "
            f"| {_fmt_pct(r['acc_all'])} | {_fmt_pct(r['acc_clean'])} "
            f"| {_fmt_pct(r['acc_overlap'])} | {_fmt_pct(r['all_minus_clean'], 2, sign=True)} "
            f"| {_fmt_p(r['p_value'])} | {_fmt_p(adjusted.get(name))}{sig} | {ci} "
            f"| {r['threshold']:.4f} |"
        )
    lines += ["", "`*`: significant after Bonferroni correction.", ""]
    detectors = sorted({str(r["detector"]) for r in per_set.values()})
    lines.append(f"Detector: {', '.join(detectors)}.")
    lines.append("")
    lines.append("## Thresholds")
    lines.append("")
    for name, cal in calibrations.items():
        thr = per_set[name]["threshold"]
        check = (scale or {}).get(name)
        if cal is None:
            lines.append(f"- {name}: {thr:.4f}, given on the command line.{scale_text(check)}")
            continue
        reached = "" if cal.reached else " (target NOT reached: nothing is called overlap)"
        lines.append(
            f"- {name}: {thr:.4f}. Calibrated at {cal.threshold:.4f} on {len(cal.items):,} "
            f"planted copies against {cal.distractors:,} distractors: precision "
            f"{cal.precision:.3f} (target {cal.target}), recall {cal.recall:.3f}{reached}."
            f"{scale_text(check)} Curve: `{name}/calibration.parquet`, `{name}/pr_curve.png`; "
            f"borderline pairs: `{name}/borderline.png`."
        )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Files: `report.json` (these numbers; accuracies as fractions), `<eval>/splits.parquet` "
        "(per item: split, nearest training key, score), `<eval>/neighbours.parquet` (top k), "
        "`decontaminate.parquet` (training images matching any eval item, at most "
        "--max-matches per item), `overlap.png`.",
        "",
    ]
    return "\n".join(lines)


def plot_overlap(
    per_set: Mapping[str, Mapping[str, Any]], significant: Sequence[str], path: Path
) -> None:
    """CLIP's figure 17: per set, the Overlap - Clean accuracy difference with its interval,
    and the overall accuracy change (All - Clean), both against the detected overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(per_set)
    x = np.array([float(per_set[n]["overlap_pct"]) for n in names])
    have = [
        per_set[n]["acc_clean"] is not None and per_set[n]["acc_overlap"] is not None for n in names
    ]
    for i, n in enumerate(names):
        r = per_set[n]
        colour = "tab:red" if n in significant else "tab:blue"
        if have[i]:
            diff = 100 * (r["acc_overlap"] - r["acc_clean"])
            lo = 100 * (r["ci_low"] - r["acc_clean"])
            hi = 100 * (r["ci_high"] - r["acc_clean"])
            left.errorbar(
                x[i], diff, yerr=[[diff - lo], [hi - diff]], fmt="o", color=colour, capsize=3
            )
            left.annotate(n, (x[i], diff), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if r["all_minus_clean"] is not None:
            change = 100 * float(r["all_minus_clean"])
            right.plot(x[i], change, "o", color=colour)
            right.annotate(n, (x[i], change), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for ax in (left, right):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("Detected data overlap (%)")
        ax.grid(alpha=0.3)
    left.set_ylabel("Difference in accuracy, Overlap - Clean (%)")
    left.set_title("Accuracy on overlapping items, with its interval")
    right.set_ylabel("Overall accuracy change due to overlap, All - Clean (%)")
    right.set_title("Effect on the reported accuracy")
    if not any(have):
        for ax in (left, right):
            ax.text(
                0.5, 0.5, "no predictions given", ha="center", va="center", transform=ax.transAxes
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pr_curve(cal: Calibration, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(cal.curve_recall, cal.curve_precision, drawstyle="steps-post", color="tab:blue")
    ax.plot(
        [cal.recall], [cal.precision], "o", color="tab:red", label=f"threshold {cal.threshold:.4f}"
    )
    ax.axhline(cal.target, color="grey", ls="--", lw=0.8, label=f"target precision {cal.target}")
    ax.set_xlabel("Recall (planted copies found)")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{name}: {len(cal.items):,} copies, {cal.distractors:,} distractors")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Pair:
    eval_id: str
    train_key: str
    score: float
    eval_image: Image.Image | None
    train_image: bytes | None


def _thumb(img: Image.Image | None, side: int) -> Image.Image:
    canvas = Image.new("RGB", (side, side), (235, 235, 235))
    if img is not None:
        t = ImageOps.contain(to_8bit(img).convert("RGB"), (side, side))
        canvas.paste(t, ((side - t.width) // 2, (side - t.height) // 2))
    return canvas


def contact_sheet(
    pairs: Sequence[Pair], threshold: float, title: str, path: Path, side: int = 128
) -> None:
    """A grid of (eval image | training image) pairs with their scores; red frame: at or above
    the threshold (called overlap), grey: below. Long ids keep their end, after "..."."""
    per_row = 4
    text_h = 30
    header = 44
    cell_w, cell_h = 2 * side + 12, side + text_h + 12
    rows = max(1, math.ceil(len(pairs) / per_row))
    sheet = Image.new("RGB", (per_row * cell_w + 8, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (8, 8),
        f"{title}  threshold {threshold:.4f}  (left: eval item, right: nearest training image)",
        fill="black",
    )
    x = 8
    for colour, label in (
        (OVERLAP_FRAME, "overlap: score >= threshold"),
        (CLEAN_FRAME, "clean: below"),
    ):
        draw.rectangle((x, 24, x + 14, 36), outline=colour, width=3)
        draw.text((x + 20, 25), label, fill="black")
        x += 20 + int(draw.textlength(label)) + 24
    for i, p in enumerate(pairs):
        x0 = 4 + (i % per_row) * cell_w
        y0 = header + (i // per_row) * cell_h
        train_img = None
        if p.train_image is not None:
            try:
                train_img = Image.open(io.BytesIO(p.train_image))
                train_img.load()
            except Exception:  # a damaged training image still gets its cell, blank
                train_img = None
        colour = OVERLAP_FRAME if p.score >= threshold else CLEAN_FRAME
        draw.rectangle((x0, y0, x0 + cell_w - 6, y0 + side + 6), outline=colour, width=3)
        sheet.paste(_thumb(p.eval_image, side), (x0 + 3, y0 + 3))
        sheet.paste(_thumb(train_img, side), (x0 + side + 6, y0 + 3))
        draw.text((x0 + 2, y0 + side + 9), f"{p.score:.4f}  {_tail(p.eval_id, 28)}", fill="black")
        draw.text((x0 + 2, y0 + side + 21), f"key {_tail(p.train_key, 34)}", fill=(90, 90, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


OVERLAP_FRAME, CLEAN_FRAME = (200, 30, 30), (150, 150, 150)


def _tail(text: str, width: int) -> str:
    """``text`` in ``width`` characters: its end (where ids differ), marked when cut."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def borderline_rows(scores: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Rows whose score lies nearest the threshold: up to n/2 just above, the rest just below."""
    finite = np.flatnonzero(np.isfinite(scores))
    above = finite[scores[finite] >= threshold]
    below = finite[scores[finite] < threshold]
    above = above[np.argsort(scores[above], kind="stable")]
    below = below[np.argsort(-scores[below], kind="stable")]
    n_above = min(len(above), max(n // 2, n - len(below)))
    n_below = min(len(below), n - n_above)
    chosen = np.concatenate([above[:n_above], below[:n_below]])
    return chosen[np.argsort(-scores[chosen], kind="stable")]
