from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.schema import Status
from pipeline.sources.pairs import InputError, expand_inputs, read_inputs, read_pairs

ROWS = [
    {"url": "http://127.0.0.1/a.jpg", "caption": "a red circle", "license": "cc0"},
    {"url": "http://127.0.0.1/b.jpg", "caption": "a blue square", "license": "cc-by"},
]


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        cols = list(rows[0])
        lines = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_every_format_reads_rows_and_keeps_extra_columns(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"pairs.{fmt}", ROWS, fmt)
    rows = read_pairs(str(path))
    assert [(r.row_index, r.url, r.caption) for r in rows] == [
        (0, ROWS[0]["url"], ROWS[0]["caption"]),
        (1, ROWS[1]["url"], ROWS[1]["caption"]),
    ]
    assert [r.extra for r in rows] == [{"license": "cc0"}, {"license": "cc-by"}]
    assert all(r.status is None for r in rows)


def test_input_columns_named_as_the_engines_fields_are_kept_under_input_names(
    tmp_path: Path,
) -> None:
    row = {"URL": "http://127.0.0.1/x", "TEXT": "hi", "url": "other", "status": "approved"}
    path = _write(tmp_path / "p.parquet", [row], "parquet")
    (got,) = read_pairs(str(path), url_col="URL", caption_col="TEXT")
    assert got.extra == {"input_url": "other", "input_status": "approved"}


def test_custom_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.parquet", [{"URL": "http://127.0.0.1/x", "TEXT": "hello"}], "parquet"
    )
    rows = read_pairs(str(path), url_col="URL", caption_col="TEXT")
    assert rows[0].url == "http://127.0.0.1/x" and rows[0].caption == "hello"


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_missing_column_names_it_and_lists_the_columns(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"p.{fmt}", [{"link": "http://127.0.0.1/x", "caption": "c"}], fmt)
    with pytest.raises(InputError, match=r"column 'url' not found; columns are: .*link"):
        read_pairs(str(path))


def test_unusable_files_give_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_pairs(str(empty))
    header_only = tmp_path / "h.csv"
    header_only.write_text("url,caption\n")
    with pytest.raises(InputError, match="no rows"):
        read_pairs(str(header_only))
    with pytest.raises(InputError, match="not found"):
        read_pairs(str(tmp_path / "missing.parquet"))
    unknown = tmp_path / "pairs.xlsx"
    unknown.write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match="cannot tell the format"):
        read_pairs(str(unknown))
    fake = tmp_path / "fake.parquet"
    fake.write_text("url,caption\nhttp://x,y\n")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_pairs(str(fake))


def test_bad_rows_become_rows_with_a_status(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(
        b"url,caption\n"
        b"http://127.0.0.1/ok.jpg,fine\n"
        b"http://127.0.0.1/e.jpg,\n"  # empty caption
        b"http://127.0.0.1/u.jpg,caf\xe9 latin-1\n"  # undecodable caption
        b"http://127.0.0.1/x.jpg,too,many,fields\n"
        b",no url\n"
    )
    rows = read_pairs(str(csv_path))
    assert [(r.row_index, r.status) for r in rows] == [
        (0, None),
        (1, Status.INVALID_CAPTION),
        (2, Status.INVALID_CAPTION),
        (3, Status.INVALID_ROW),
        (4, Status.INVALID_URL),
    ]
    assert "UTF-8" in rows[2].error_message
    assert "4 fields" in rows[3].error_message


def test_bad_jsonl_lines_are_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b'{"url": "http://127.0.0.1/a", "caption": "ok"}\n'
        b"{not json}\n"
        b"[1, 2]\n"
        b'{"url": "http://127.0.0.1/b", "caption": null}\n'
        b"\n"
        b'{"url": "http://127.0.0.1/c", "caption": "\xff\xfe"}\n'
    )
    rows = read_pairs(str(path))
    assert [r.status for r in rows] == [
        None,
        Status.INVALID_ROW,
        Status.INVALID_ROW,
        Status.INVALID_CAPTION,
        Status.INVALID_ROW,
    ]


def test_binary_parquet_columns_with_invalid_utf8(tmp_path: Path) -> None:
    table = pa.table(
        {"url": [b"http://127.0.0.1/a", b"http://127.0.0.1/b"], "caption": [b"good", b"\xff bad"]}
    )
    path = tmp_path / "b.parquet"
    pq.write_table(table, path)
    rows = read_pairs(str(path))
    assert rows[0].status is None and rows[0].caption == "good"
    assert rows[1].status is Status.INVALID_CAPTION


def _rows(name: str, n: int) -> list[dict]:
    return [{"url": f"http://127.0.0.1/{name}{i}.jpg", "caption": f"{name} {i}"} for i in range(n)]


def test_a_folder_is_its_pair_lists_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "part-b.parquet", _rows("b", 1), "parquet")
    _write(folder / "part-a.parquet", _rows("a", 2), "parquet")
    (folder / "_SUCCESS").write_text("")  # what Spark writes next to its parts
    (folder / ".part-a.parquet.crc").write_bytes(b"crc")
    (folder / "notes.txt").write_text("not a pair list\n")
    (folder / "sub.csv").mkdir()
    assert expand_inputs(str(folder)) == [
        str(folder / "part-a.parquet"),
        str(folder / "part-b.parquet"),
    ]
    rows = read_inputs(str(folder))
    assert [(r.row_index, r.url) for r in rows] == [
        (0, "http://127.0.0.1/a0.jpg"),
        (1, "http://127.0.0.1/a1.jpg"),
        (2, "http://127.0.0.1/b0.jpg"),
    ]


def test_empty_parts_of_a_folder_add_no_rows_but_an_all_empty_folder_is_an_error(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # Spark writes an empty partition as a Parquet file with its schema and no rows.
    pq.write_table(
        pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}),
        folder / "part-0.parquet",
    )
    _write(folder / "part-1.parquet", _rows("a", 2), "parquet")
    assert [r.row_index for r in read_inputs(str(folder))] == [0, 1]
    (folder / "part-1.parquet").unlink()
    shutil.copy(folder / "part-0.parquet", folder / "part-2.parquet")
    with pytest.raises(InputError, match=r"no rows in any of the 2 pair lists of .*in$"):
        read_inputs(str(folder))
    # One file alone with no rows is still its own error.
    with pytest.raises(InputError, match="input file has no rows"):
        read_inputs(str(folder / "part-0.parquet"))


def test_a_glob_is_its_matches_sorted(tmp_path: Path) -> None:
    _write(tmp_path / "2.csv", _rows("b", 1), "csv")
    _write(tmp_path / "1.csv", _rows("a", 1), "csv")
    _write(tmp_path / "other.jsonl", _rows("c", 1), "jsonl")
    pattern = str(tmp_path / "*.csv")
    assert expand_inputs(pattern) == [str(tmp_path / "1.csv"), str(tmp_path / "2.csv")]
    assert [r.url for r in read_inputs(pattern)] == [
        "http://127.0.0.1/a0.jpg",
        "http://127.0.0.1/b0.jpg",
    ]


def test_a_file_is_itself_even_when_its_name_looks_like_a_glob(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs[1].csv", ROWS, "csv")
    assert expand_inputs(str(path)) == [str(path)]


@pytest.mark.parametrize(
    ("layout", "given", "message"),
    [
        (
            {"a.csv": "csv", "b.parquet": "parquet"},
            "in",
            r"folder .*in holds pair lists of 2 formats \(csv: .*a\.csv; parquet: .*b\.parquet\): give files of one format",
        ),
        (
            {"a.csv": "csv", "b.jsonl": "jsonl"},
            "in/*",
            r"in/\* holds pair lists of 2 formats \(csv: .*a\.csv; jsonl: .*b\.jsonl\)",
        ),
        (
            {"notes.txt": None},
            "in",
            r"no pair list in folder .*in: expected files ending in \.csv, ",
        ),
        ({}, "in/*.parquet", r"no input file matches .*in/\*\.parquet$"),
        ({}, "in/missing.csv", r"input file not found: .*in/missing\.csv$"),
    ],
)
def test_unusable_folders_and_globs_are_one_error(
    layout: dict, given: str, message: str, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, fmt in layout.items():
        if fmt is None:
            (folder / name).write_text("x\n")
        else:
            _write(folder / name, ROWS, fmt)
    with pytest.raises(InputError, match=message):
        read_inputs(str(tmp_path / given))


def test_tsv_has_no_quoting_every_line_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text(
        "url\tcaption\n"
        'http://a.test/1.jpg\t"Best of" collection\n'
        'http://a.test/2.jpg\t"Untitled\n'
        "http://a.test/3.jpg\tthird\n"
        'http://a.test/4.jpg\t5" screen, "quoted"\n'
    )
    rows = read_pairs(str(path))
    assert [(r.url, r.caption, r.status) for r in rows] == [
        ("http://a.test/1.jpg", '"Best of" collection', None),
        ("http://a.test/2.jpg", '"Untitled', None),
        ("http://a.test/3.jpg", "third", None),
        ("http://a.test/4.jpg", '5" screen, "quoted"', None),
    ]


def test_a_broken_csv_quote_is_an_invalid_row_and_the_lines_after_it_are_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.csv"
    path.write_text(
        "url,caption\n"
        'http://a.test/1.jpg,"a caption, with a comma and a\nline break"\n'  # valid CSV
        'http://a.test/2.jpg,"unclosed\n'  # closed by the quote on the line after next
        "http://a.test/3.jpg,third\n"
        'http://a.test/4.jpg,"Best of" collection\n'  # text after the closing quote
        "http://a.test/5.jpg,fifth\n"
        'http://a.test/6.jpg,"never closed\n'
        "http://a.test/7.jpg,seventh\n"
    )
    rows = read_pairs(str(path))
    assert [(r.row_index, r.url, r.caption, r.status) for r in rows] == [
        (0, "http://a.test/1.jpg", "a caption, with a comma and a\nline break", None),
        (1, None, None, Status.INVALID_ROW),
        (2, "http://a.test/3.jpg", "third", None),
        (3, None, None, Status.INVALID_ROW),
        (4, "http://a.test/5.jpg", "fifth", None),
        (5, None, None, Status.INVALID_ROW),
        (6, "http://a.test/7.jpg", "seventh", None),
    ]
    assert rows[1].error_message.startswith("line 4: ")
    assert "not closed" in rows[1].error_message
    assert rows[3].error_message.startswith("line 6: ")
    assert rows[5].error_message.startswith("line 8: ")


@pytest.mark.parametrize("name", ["pairs.json", "pairs.jsonl"])
@pytest.mark.parametrize("indent", [None, 1])
def test_a_json_array_of_objects_is_read_as_rows(
    tmp_path: Path, name: str, indent: int | None
) -> None:
    items = [*ROWS, "not an object"]
    path = tmp_path / name
    path.write_text(json.dumps(items, indent=indent) + "\n")  # pandas' to_json, one line
    rows = read_pairs(str(path))
    assert [(r.row_index, r.url, r.caption, r.status) for r in rows] == [
        (0, ROWS[0]["url"], ROWS[0]["caption"], None),
        (1, ROWS[1]["url"], ROWS[1]["caption"], None),
        (2, None, None, Status.INVALID_ROW),
    ]
    assert rows[0].extra == {"license": "cc0"}
    assert rows[2].error_message == "item 2 of the JSON array: not a JSON object"


def test_a_broken_json_array_is_one_error_and_json_lines_starting_with_an_array_are_lines(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"url": "http://a.test/1.jpg", "caption": "one"},\n {"url": \n')
    with pytest.raises(InputError, match=r"broken.json: starts a JSON array that does not parse"):
        read_pairs(str(broken))
    lines = tmp_path / "lines.jsonl"
    lines.write_text('[1, 2]\n{"url": "http://a.test/1.jpg", "caption": "one"}\n')
    assert [r.status for r in read_pairs(str(lines))] == [Status.INVALID_ROW, None]
    with pytest.raises(InputError, match=r"column 'url' not found"):
        (tmp_path / "cols.json").write_text('[{"link": "http://a.test/1.jpg", "caption": "c"}]')
        read_pairs(str(tmp_path / "cols.json"))


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_a_compressed_list_cut_short_is_one_error(tmp_path: Path, suffix: str) -> None:
    import bz2
    import gzip
    import lzma

    import zstandard

    lines = (f"http://a.test/{i}.jpg,dog {i * 7919 % 10007}\n" for i in range(20000))
    data = ("url,caption\n" + "".join(lines)).encode()
    compress = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }[suffix]
    path = tmp_path / f"t.csv{suffix}"
    whole = compress(data)
    path.write_bytes(whole[: len(whole) // 2])  # rows lost, unless an error says so
    with pytest.raises(InputError, match=rf"cannot read {path}: "):
        read_pairs(str(path))
    with pytest.raises(InputError, match=rf"cannot read {path}: "):
        read_inputs(str(path))
    # Whole members (gzip members, bz2 streams, xz streams, zstd frames) one after the
    # other are one file, read whole.
    path.write_bytes(whole + compress(b"http://a.test/last.jpg,one more\n"))
    rows = read_pairs(str(path))
    assert len(rows) == 20001 and rows[-1].url == "http://a.test/last.jpg"
