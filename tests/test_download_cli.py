"""python -m pipeline.download: clear errors for bad input, and kill -9 at any moment loses
nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.download import main
from pipeline.engine import ledger_rows
from pipeline.shards.layout import make_key
from pipeline.synthweb.server import SynthWeb
from pipeline.synthweb.site import SiteSpec

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pairs_csv(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.csv"
    p.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a cat\n")
    return p


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url-col", "link"], "column 'link' not found; columns are: url, caption"),
        (["--resize-mode", "stretch"], "resize_mode must be one of"),
        (["--image-size", "big"], "image_size must be a int"),
        (["--allow-networks", "10.0.0.0/40"], "not a CIDR"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--config", "missing.toml"], "config file not found"),
    ],
)
def test_bad_options_give_one_error_line(
    args: list[str], message: str, pairs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _out, err = _run(
        ["--input", str(pairs_csv), "--output", str(tmp_path / "o"), *args], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and message in lines[0]


@pytest.mark.parametrize("url", ["s3://bkt/x", "gs://bkt/x/", "file:///tmp/x"])
def test_a_url_output_is_one_error_line_and_creates_nothing(
    url: str, pairs_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = _run(["--input", str(pairs_csv), "--output", url], capsys)
    assert code == 2
    assert err == (
        f"error: --output {url} is a URL, but the download engine writes a local folder: give "
        f"a local --output, or build with jobs/build_wit.py --pairs FILE --output {url}, "
        "which stages the dataset locally and uploads it\n"
    )
    assert list(work.iterdir()) == []  # no stray ./s3:/bkt/x


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "input file is empty"),
        ("pairs.xls", b"\xd0\xcf\x11\xe0", "cannot tell the format"),
        ("broken.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("missing.jsonl", None, "input file not found"),
    ],
)
def test_bad_input_files_give_one_error_line(
    name: str, content: bytes | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, _, err = _run(["--input", str(path), "--output", str(tmp_path / "o")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    # Nothing made of the output but its run lock: no empty plan, ledger or shard folders.
    assert [p.name for p in (tmp_path / "o").iterdir()] == [".lock"]


def test_help_describes_every_flag(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for flag in (
        "--image-size",
        "--resize-mode",
        "--allow-networks",
        "--max-bytes",
        "--respect-robots",
        "--config",
    ):
        assert flag in out


def test_config_file_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with SynthWeb(SiteSpec(seed=5, n_images=4, n_hosts=1, n_pages=1)) as web:
        rows = [r for r in web.pair_rows() if r["fault"] is None]
        pairs = tmp_path / "p.jsonl"
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
        import json

        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "image-size: 64\nresize-mode: center_crop\nencode-format: webp\nallow-networks: [127.0.0.0/8]\n"
        )
        code, out, err = _run(
            [
                "--input",
                str(pairs),
                "--output",
                str(tmp_path / "o"),
                "--config",
                str(cfg),
                "--image-size",
                "48",
                "--no-progress",
            ],
            capsys,
        )
        assert code == 0, err
        assert "success" in out and "total" in out
        with tarfile.open(tmp_path / "o" / "shards" / "00000.tar") as tf:
            images = [n for n in tf.getnames() if n.endswith(".webp")]
        assert len(images) == len(rows)
        assert {(r["width"], r["height"]) for r in ledger_rows(tmp_path / "o")} == {(48, 48)}
        assert not (tmp_path / "o" / "_tmp").exists()  # no scratch folder left, empty or not


@pytest.mark.parametrize("given", ["folder", "glob"])
def test_a_folder_or_glob_downloads_its_files_in_name_order_and_resumes(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # Loopback is refused by default: every row gets its ledger row without a connection.
    urls = {name: [f"http://127.0.0.1:9/{name}-{i}.jpg" for i in range(3)] for name in "ba"}
    for name, file_urls in urls.items():
        pq.write_table(
            pa.Table.from_pylist([{"url": u, "caption": f"cap {u}"} for u in file_urls]),
            folder / f"part-{name}.parquet",
        )
    (folder / "_SUCCESS").write_text("")
    source = str(folder) if given == "folder" else str(folder / "part-*.parquet")
    argv = ["--input", source, "--output", str(tmp_path / "o"), "--samples-per-shard", "4",
            "--processes", "1", "--no-progress"]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    ledger = sorted(ledger_rows(tmp_path / "o"), key=lambda r: r["row_index"])
    # one ledger row per input row, in file-name order, keys and shards following that order
    assert [r["url"] for r in ledger] == urls["a"] + urls["b"]
    assert [r["row_index"] for r in ledger] == list(range(6))
    assert [r["key"] for r in ledger] == [make_key(i // 4, i % 4, 4) for i in range(6)]
    assert {r["status"] for r in ledger} == {"blocked_address"}
    code, _, err = _run(argv, capsys)  # a rerun resumes: nothing left to do
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["rows_this_run"] == 0
    pq.write_table(
        pa.Table.from_pylist([{"url": "http://127.0.0.1:9/c.jpg", "caption": "c"}]),
        folder / "part-c.parquet",
    )
    code, _, err = _run(argv, capsys)  # a file more is another input
    assert code == 2 and "planned from a different input" in err, err


def _invariants(out: Path, n_rows: int) -> None:
    ledger = list(ledger_rows(out))
    assert sorted(r["row_index"] for r in ledger) == list(range(n_rows))
    successes = {r["key"] for r in ledger if r["status"] == "success"}
    members: Counter = Counter()
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:  # every tar is readable
            for m in tf.getmembers():
                tf.extractfile(m).read()
                members[m.name.rsplit(".", 1)[0]] += 1
    assert set(members) == successes
    assert all(v == 3 for v in members.values())  # jpg, txt, json once each


@pytest.mark.slow
def test_kill_9_at_any_moment_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with SynthWeb(SiteSpec(seed=11, n_images=36, n_hosts=2, n_pages=1)) as web:
        web.warm()
        rows = [
            r for r in web.pair_rows() if r["fault"] in (None, "not_found", "html_as_image", "noai")
        ]
        pairs = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        out = tmp_path / "out"
        cmd = [
            sys.executable, "-m", "pipeline.download", "--input", str(pairs), "--output", str(out),
            "--allow-networks", "127.0.0.0/8", "--samples-per-shard", "4", "--threads", "2",
            "--processes", "2", "--per-host-connections", "1", "--host-delay", "0.03",
            "--image-size", "64", "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        kills = 0
        for delay in (1.2, 0.7, 1.9, 0.4):  # spawn start-up, mid-shard, between commits
            proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # workers die with it (PR_SET_PDEATHSIG)
                kills += 1
            proc.wait()
        assert kills >= 1
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        _invariants(out, len(rows))
        assert not (out / "_tmp").exists()  # no half-written leftovers
