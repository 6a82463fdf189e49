"""Pair lists: (url, caption) rows from Parquet, CSV, TSV or JSON Lines.

Reading never drops a row silently: a row that cannot be parsed, or whose url or caption
is missing or not valid text, comes back as a ``PairRow`` carrying the status it will
have in the ledger. A file that cannot be read at all (missing, empty, unknown format,
missing column, a compressed file cut short) raises ``InputError`` with one line naming
the problem.

Quoting. TSV has no quoting convention (as img2dataset and pandas read it with quoting
off): a ``"`` is an ordinary character and every line is one row. CSV follows RFC 4180: a
quoted cell may hold the delimiter, ``""`` and line breaks. A quote the file never closes
would swallow the rest of the file into one cell, and text after a closing quote
(``"Best of" collection``) is malformed: either way the line where the broken row starts
is an ``invalid_row`` naming it, and reading goes on at the next line, so every line
after it is read (and counted) as its own row.

JSON: a ``.json``/``.jsonl``/``.ndjson`` file holds JSON Lines (one object per line), or,
as pandas' ``to_json`` and img2dataset's ``json`` input format write it, one JSON array
of objects (an element that is not an object is an ``invalid_row``).
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline.schema import RESERVED_FIELDS, Status

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class InputError(ValueError):
    """The input file as a whole is unusable; the message is one line for the user."""


@dataclass(slots=True)
class PairRow:
    row_index: int
    url: str | None
    caption: str | None
    status: Status | None = None  # set when the row is already known to fail
    error_message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def detect_format(path: str) -> str:
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise InputError(
        f"cannot tell the format of {path}: expected one of {', '.join(sorted(FORMATS))} "
        "(optionally compressed .gz/.bz2/.xz/.zst)"
    )


def _text(value: Any, what: str) -> tuple[str | None, str | None]:
    """A cell as text, or (None, why not)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"{what} is missing"
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})"
    if not isinstance(value, str):
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, f"{what} is not valid UTF-8 text"
    return value, None


def make_row(index: int, raw: dict[str, Any], url_col: str, caption_col: str) -> PairRow:
    url, url_err = _text(raw.get(url_col), "url")
    caption, cap_err = _text(raw.get(caption_col), "caption")
    # An input column named as a field the engine writes is kept, renamed, not overwritten.
    extra = {
        (f"input_{k}" if k in RESERVED_FIELDS else k): v
        for k, v in raw.items()
        if k not in (url_col, caption_col)
    }
    row = PairRow(index, url, caption, extra=extra)
    if url_err:
        row.status, row.error_message = Status.INVALID_URL, url_err
    elif cap_err:
        row.status, row.error_message = Status.INVALID_CAPTION, cap_err
    elif not caption.strip():
        row.status, row.error_message = Status.INVALID_CAPTION, "caption is empty"
    elif not url.strip():
        row.status, row.error_message = Status.INVALID_URL, "url is empty"
    return row


def _check_columns(path: str, columns: list[str], url_col: str, caption_col: str) -> None:
    missing = [c for c in (url_col, caption_col) if c not in columns]
    if missing:
        raise InputError(
            f"{path}: column {missing[0]!r} not found; columns are: {', '.join(columns) or '(none)'} "
            "(choose others with --url-col / --caption-col)"
        )


def read_pairs(
    path: str, url_col: str = "url", caption_col: str = "caption", allow_empty: bool = False
) -> list[PairRow]:
    """Read every row of a pair list. Raises InputError when the file is unusable, or
    holds no rows unless ``allow_empty`` (one file of several: a Spark job's empty
    partition is a file with no rows)."""
    fmt = detect_format(path)
    zstd = path.lower().endswith(".zst")
    try:
        # fsspec's zstd reader ends quietly where a cut-short file ends: read it ourselves.
        with fsspec.open(path, "rb", compression=None if zstd else "infer") as f:
            data = _zstd_decompress(f.read()) if zstd else f.read()
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except _read_errors() as e:  # a compressed file cut short or damaged is a bad file
        raise InputError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not data.strip():
        if allow_empty:
            return []
        raise InputError(f"input file is empty: {path}")
    if fmt == "parquet":
        rows = list(_read_parquet(path, data, url_col, caption_col))
    elif fmt in ("csv", "tsv"):
        rows = list(
            _read_delimited(path, data, "\t" if fmt == "tsv" else ",", url_col, caption_col)
        )
    else:
        rows = list(_read_jsonl(path, data, url_col, caption_col))
    if not rows and not allow_empty:
        raise InputError(f"input file has no rows: {path}")
    return rows


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading (and decompressing) a damaged file raises: gzip and bz2 cut short give
    EOFError, a corrupt stream zlib.error or lzma.LZMAError, zstandard its ZstdError."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
    )
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _zstd_decompress(raw: bytes) -> bytes:
    """Every frame of a .zst file; EOFError when the last one is cut short."""
    import zstandard

    out = []
    while raw:
        frame = zstandard.ZstdDecompressor().decompressobj()
        out.append(frame.decompress(raw))
        if not frame.eof:
            raise EOFError("Compressed file ended before the end of its last zstd frame")
        raw = frame.unused_data
    return b"".join(out)


def expand_inputs(path: str) -> list[str]:
    """The pair lists ``path`` names, as img2dataset reads its input: a file; a folder,
    meaning its files of one format (sorted by name; hidden and ``_``-prefixed files, such
    as Spark's ``_SUCCESS`` and ``.crc``, and files of no pair-list format are skipped); or
    a glob (sorted). Local or fsspec URLs. Raises InputError when nothing usable is named."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(path)
    remote = "://" in path

    def shown(p: str) -> str:
        return fs.unstrip_protocol(p) if remote else p

    if fs.isfile(root):
        return [path]
    if fs.isdir(root):
        listed = sorted(
            p
            for p in fs.ls(root, detail=False)
            if fs.isfile(p) and p.rsplit("/", 1)[-1][:1] not in "._"
        )
        files = [p for p in listed if _format_or_none(p)]
        if not files:
            raise InputError(
                f"no pair list in folder {path}: expected files ending in "
                f"{', '.join(sorted(FORMATS))} (optionally compressed .gz/.bz2/.xz/.zst)"
            )
        _one_format([shown(p) for p in files], f"folder {path}")
        return [shown(p) for p in files]
    if any(ch in root for ch in "*?["):
        files = [shown(p) for p in sorted(fs.glob(root)) if fs.isfile(p)]
        if not files:
            raise InputError(f"no input file matches {path}")
        for f in files:
            detect_format(f)  # a file of no pair-list format among the matches is an error
        _one_format(files, path)
        return files
    raise InputError(f"input file not found: {path}")


def _format_or_none(path: str) -> str | None:
    try:
        return detect_format(path)
    except InputError:
        return None


def _one_format(files: list[str], where: str) -> None:
    by_format: dict[str, list[str]] = {}
    for f in files:
        by_format.setdefault(detect_format(f), []).append(f)
    if len(by_format) > 1:
        listed = "; ".join(f"{fmt}: {', '.join(fs)}" for fmt, fs in sorted(by_format.items()))
        raise InputError(
            f"{where} holds pair lists of {len(by_format)} formats ({listed}): "
            "give files of one format"
        )


def read_inputs(path: str, url_col: str = "url", caption_col: str = "caption") -> list[PairRow]:
    """Every row of the pair lists ``path`` names (``expand_inputs``), in file order;
    ``row_index`` counts across the files, so keys and shards follow that one order."""
    files = expand_inputs(path)
    if len(files) == 1:
        return read_pairs(files[0], url_col, caption_col)
    rows: list[PairRow] = []
    for f in files:
        for r in read_pairs(f, url_col, caption_col, allow_empty=True):
            r.row_index = len(rows)
            rows.append(r)
    if not rows:
        raise InputError(f"no rows in any of the {len(files)} pair lists of {path}")
    return rows


def _read_parquet(path: str, data: bytes, url_col: str, caption_col: str) -> Iterator[PairRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()  # read_table would import pandas
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path} is not a readable Parquet file: {e}") from None
    _check_columns(path, table.column_names, url_col, caption_col)
    for i, raw in enumerate(table.to_pylist()):
        yield make_row(i, raw, url_col, caption_col)


def _read_delimited(
    path: str, data: bytes, delimiter: str, url_col: str, caption_col: str
) -> Iterator[PairRow]:
    # surrogateescape keeps undecodable bytes as lone surrogates: the row survives and the
    # bad cell is reported, instead of the whole file failing to decode.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    # Physical lines as the csv module splits them (\n, \r\n or \r), ends kept.
    lines = io.StringIO(text, newline="").readlines()
    quoting = {"quoting": csv.QUOTE_NONE} if delimiter == "\t" else {"strict": True}

    def from_line(first: int) -> Iterator[str]:  # lines[first:] without copying them
        return (lines[i] for i in range(first, len(lines)))

    reader = csv.reader(from_line(0), delimiter=delimiter, **quoting)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise InputError(f"{path}: cannot read a header line: {e}") from None
    header = [h.strip() for h in header]
    _check_columns(path, header, url_col, caption_col)
    index = 0
    base = 0  # physical lines before the one ``reader`` started on
    while True:
        start = base + reader.line_num + 1  # the line the next record starts on
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = base + reader.line_num
            if end > start:
                # A quote opened on line ``start`` was never closed where it should be:
                # that line is the bad row, and the lines it swallowed are read again.
                why = f"line {start}: {e} (a quoted cell opened on this line is not closed)"
                base = start
                reader = csv.reader(from_line(base), delimiter=delimiter, **quoting)
            else:
                why = f"line {start}: {e}"
            yield PairRow(index, None, None, Status.INVALID_ROW, why)
            index += 1
            continue
        if not cells:
            continue  # a blank line is not a row
        if len(cells) != len(header):
            yield PairRow(
                index,
                None,
                None,
                Status.INVALID_ROW,
                f"line {start}: {len(cells)} fields, header has {len(header)}",
            )
        else:
            yield make_row(index, dict(zip(header, cells, strict=True)), url_col, caption_col)
        index += 1


def _read_jsonl(path: str, data: bytes, url_col: str, caption_col: str) -> Iterator[PairRow]:
    seen_columns: set[str] = set()
    if data.lstrip()[:1] == b"[":
        values = _json_array(path, data)
        if values is not None:
            for index, raw in enumerate(values):
                if isinstance(raw, dict):
                    seen_columns.update(raw)
                    yield make_row(index, raw, url_col, caption_col)
                else:
                    why = f"item {index} of the JSON array: not a JSON object"
                    yield PairRow(index, None, None, Status.INVALID_ROW, why)
            if seen_columns and not {url_col, caption_col} <= seen_columns:
                _check_columns(path, sorted(seen_columns), url_col, caption_col)
            return
    index = 0
    for line_no, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield PairRow(
                index, None, None, Status.INVALID_ROW, f"line {line_no}: not UTF-8 ({e.reason})"
            )
        except json.JSONDecodeError as e:
            yield PairRow(
                index, None, None, Status.INVALID_ROW, f"line {line_no}: invalid JSON ({e.msg})"
            )
        else:
            if not isinstance(raw, dict):
                yield PairRow(
                    index, None, None, Status.INVALID_ROW, f"line {line_no}: not a JSON object"
                )
            else:
                seen_columns.update(raw)
                yield make_row(index, raw, url_col, caption_col)
        index += 1
    if seen_columns and not {url_col, caption_col} <= seen_columns:
        _check_columns(path, sorted(seen_columns), url_col, caption_col)


def _json_array(path: str, data: bytes) -> list[Any] | None:
    """The elements of a file that is one JSON array; None when it is JSON Lines whose first
    line happens to be an array (read line by line, that line an invalid row). A broken
    array is refused whole: its rows cannot be told apart."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: a JSON array that is not UTF-8 ({e.reason})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        first = text.lstrip().split("\n", 1)[0]
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise InputError(
                f"{path}: starts a JSON array that does not parse: {e.msg} at line "
                f"{e.lineno} column {e.colno} (expected one JSON array of objects, "
                "or JSON Lines: one object per line)"
            ) from None
        return None  # JSON Lines: its first line parses on its own
    return value if isinstance(value, list) else None
