"""Predictions files: which class a model predicted for each eval item.

CSV or Parquet with columns ``id`` (the eval item id, see ``evalsets``) and
``prediction``: a class index or a class name (ImageNet also takes synset ids and the
full WordNet words). Every item of the set needs exactly one prediction; anything else is
an error that names the offending ids, because a silently partial accuracy is worse than
none.

An empty (CSV) or null (Parquet) prediction is "no answer", as ``training.run --zeroshot``
and ``--checkpoint`` write for an eval image they could not decode: the item counts as
wrong (``NO_ANSWER``). An integer column holds class indices. In a text column (every CSV
column), a value that is both a class index and the name of another class (an imagefolder
with classes named 0, 1, ..., 10, 11 sorts "10" before "2") is refused as ambiguous: read
either way it could mis-score silently.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.overlap.evalsets import EvalSet


class PredictionsError(ValueError):
    """A predictions file that cannot be read or does not match its eval set."""


def _read_table(path: Path) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise PredictionsError(f"predictions file {path}: not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            # Read both columns as text: ids like "00012" and names like "007" stay intact.
            header = pacsv.read_csv(path, parse_options=opts).schema.names
            types = {name: pa.string() for name in header}
            table = pacsv.read_csv(
                path, parse_options=opts, convert_options=pacsv.ConvertOptions(column_types=types)
            )
        else:
            raise PredictionsError(f"predictions file {path}: must be .csv, .tsv or .parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise PredictionsError(f"predictions file {path}: cannot read: {e}") from None
    missing = [c for c in ("id", "prediction") if c not in table.schema.names]
    if missing:
        raise PredictionsError(
            f"predictions file {path}: missing column(s) {', '.join(missing)}; expected columns "
            f"id and prediction, found {', '.join(table.schema.names) or 'none'}"
        )
    return table


def class_lookup(eval_set: EvalSet) -> tuple[dict[str, int], set[str]]:
    """Name -> class index, and the names shared by several classes (unusable)."""
    counts = Counter(eval_set.classes)
    ambiguous = {name for name, c in counts.items() if c > 1}
    lookup = {name: i for i, name in enumerate(eval_set.classes) if name not in ambiguous}
    # An alias spelled like an ambiguous short name (ImageNet's "crane" words) stays ambiguous.
    lookup.update({k: v for k, v in eval_set.aliases.items() if k not in ambiguous})
    return lookup, ambiguous


NO_ANSWER = -1  # an item without a prediction (empty or null): never equals a label


class _Ambiguous(ValueError):
    """Text that is one class's index and another class's name: (index, named index)."""


def _as_index(value: object, lookup: dict[str, int], n_classes: int) -> int | None:
    """The class index ``value`` names, ``NO_ANSWER`` for an empty one, None when it names
    none; raises ``_Ambiguous`` for text that is one class's index and another's name."""
    if value is None:
        return NO_ANSWER
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value) if 0 <= value < n_classes else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 <= value < n_classes else None
    text = str(value).strip()
    if not text:
        return NO_ANSWER
    as_index = int(text) if text.isdigit() and int(text) < n_classes else None
    as_name = lookup.get(text)
    if as_index is not None and as_name is not None and as_index != as_name:
        raise _Ambiguous(as_index, as_name)
    return as_index if as_index is not None else as_name


def read_predictions(path: str | Path, eval_set: EvalSet) -> np.ndarray:
    """Predicted class index per eval item, aligned with ``eval_set.ids``; ``NO_ANSWER``
    (-1) where the file gives none."""
    p = Path(path)
    table = _read_table(p)
    if not eval_set.has_labels:
        raise PredictionsError(
            f"predictions file {p}: eval set {eval_set.name} has no labels, so accuracy "
            "cannot be measured"
        )
    ids = [None if v is None else str(v) for v in table.column("id").to_pylist()]
    values = table.column("prediction").to_pylist()
    position = {item: i for i, item in enumerate(eval_set.ids)}
    dup = [k for k, c in Counter(ids).items() if c > 1]
    if dup:
        raise PredictionsError(
            f"predictions file {p}: {len(dup)} id(s) appear twice, e.g. {dup[0]!r}"
        )
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise PredictionsError(
            f"predictions file {p}: {len(unknown)} id(s) are not items of eval set "
            f"{eval_set.name}, e.g. {unknown[0]!r} (ids are {_id_rule(eval_set)})"
        )
    if len(ids) != len(eval_set):
        seen = set(ids)
        missing = [i for i in eval_set.ids if i not in seen]
        raise PredictionsError(
            f"predictions file {p}: {len(missing)} of {len(eval_set)} items of eval set "
            f"{eval_set.name} have no prediction, e.g. {missing[0]!r}"
        )
    lookup, ambiguous = class_lookup(eval_set)
    out = np.empty(len(eval_set), dtype=np.int64)
    for item, value in zip(ids, values, strict=True):
        try:
            idx = _as_index(value, lookup, len(eval_set.classes))
        except _Ambiguous as e:
            index, named = e.args
            classes = eval_set.classes
            raise PredictionsError(
                f"predictions file {p}: item {item!r}: {value!r} is ambiguous: class index "
                f"{index} ({classes[index]!r}) or the name of class {named} "
                f"({classes[named]!r}); give class indices as integers (a Parquet file with "
                "an integer prediction column, as --checkpoint's predictions.parquet)"
            ) from None
        if idx is None:
            why = (
                f"{value!r} names several classes: use the class index"
                if str(value).strip() in ambiguous
                else f"{value!r} is neither a class index (0-{len(eval_set.classes) - 1}) nor a "
                "class name"
            )
            raise PredictionsError(f"predictions file {p}: item {item!r}: {why}")
        out[position[item]] = idx
    return out


def _id_rule(eval_set: EvalSet) -> str:
    if eval_set.kind in ("imagenet", "imagefolder"):
        return f"paths relative to {eval_set.root}, like {eval_set.ids[0]!r}"
    return f"indices in the split, 0 to {len(eval_set) - 1}"
