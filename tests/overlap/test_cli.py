"""python -m pipeline.overlap: a good run, and every fail-fast path as one line and exit 2,
before anything is written."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.overlap.__main__ import build_parser, job_from_args, main
from tests.overlap.conftest import Scenario
from tests.overlap.layouts import write_cifar10, write_imagefolder


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_run_from_the_command_line_with_a_config_file(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "overlap.toml"
    cfg.write_text("threshold = 0.9\ncalibration-items = 20\n[search]\nprocesses = 1\ntop_k = 2\n")
    out = tmp_path / "report"
    code, stdout, err = _run(
        ["--eval", "cifar10", "--eval-root", f"cifar10:{scenario.cifar}", "--eval", f"pets=imagefolder:{scenario.pets}",
         "--train", str(scenario.ours), "--train", str(scenario.i2d), "--out", str(out),
         "--predictions", f"cifar10:{scenario.cifar_predictions}", "--config", str(cfg),
         "--contact-pairs", "4"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "cifar10: 3 of 60 items overlap (5.00%), All - Clean +3.42%" in stdout
    assert "pets: 4 of 30 items overlap (13.33%)\n" in stdout  # no predictions: no accuracy
    assert (stdout + err).count("report: ") == 1
    assert stdout.endswith(f"report: {out / 'report.md'}\n")
    report = json.loads((out / "report.json").read_text())
    assert report["pets"]["acc_all"] is None and report["cifar10"]["threshold"] == pytest.approx(
        0.9
    )
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["top_k"] == 2 and run["config"]["contact_pairs"] == 4


def test_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for flag in ("--eval", "--eval-root", "--train", "--out", "--detector", "--precision", "--threshold",
                 "--predictions", "--checkpoint", "--model-config", "--templates",
                 "--zeroshot-batch", "--zeroshot-device", "--spark", "--top-k", "--config"):  # fmt: skip
        assert flag in out


@pytest.fixture
def base(scenario: Scenario, tmp_path: Path) -> dict[str, str]:
    return {"train": str(scenario.ours), "out": str(tmp_path / "never-written")}


CASES: list[tuple[str, list[str], str]] = [
    (
        "unknown eval set",
        ["--eval", "imagenet21k"],
        r"--eval 'imagenet21k': expected NAME, NAME:PATH .* one of imagenet, cifar10",
    ),
    (
        "eval path missing",
        ["--eval", "cifar10:{tmp}/nope"],
        r"nope does not exist; expected the CIFAR-10 binary release: PATH/test_batch\.bin",
    ),
    (
        "no path, no root",
        ["--eval", "stl10"],
        r"eval set stl10: not found \(no --eval-root given\); give --eval stl10:PATH .*test_X\.bin",
    ),
    (
        "wrong layout",
        ["--eval", "imagenet:{tmp}/pets"],
        r"eval set imagenet: no synset folders \(n01440764, \.\.\.\) in .*pets; expected ILSVRC2012 val as a class-folder tree",
    ),
    (
        "malformed cifar",
        ["--eval", "cifar10:{tmp}/badcifar"],
        r"test_batch\.bin is 3000 bytes, not a whole number of 3073-byte records",
    ),
    (
        "same set twice",
        ["--eval", "cifar10:{tmp}/c", "--eval", "cifar10:{tmp}/c"],
        r"eval set cifar10 given twice; name one of them ALIAS=cifar10:PATH",
    ),
    (
        "two eval roots",
        ["--eval", "cifar10", "--eval-root", "{tmp}", "--eval-root", "{tmp}/x"],
        r"--eval-root DIR given twice",
    ),
    (
        "train missing",
        ["--eval", "cifar10:{tmp}/c", "--train", "{tmp}/nothing"],
        r"training data .*nothing: no such folder",
    ),
    (
        "train without shards",
        ["--eval", "cifar10:{tmp}/c", "--train", "{tmp}/c"],
        r"no shards found: expected .*/shards/\*\.tar \(wit-builder download\) or .*/\*\.tar \(img2dataset output\)",
    ),
    (
        "checkpoint missing",
        ["--eval", "cifar10:{tmp}/c", "--checkpoint", "{tmp}/m.pt"],
        r"--checkpoint .*/m\.pt: no such file$",
    ),
    (
        "checkpoint and predictions",
        ["--eval", "cifar10:{tmp}/c", "--checkpoint", "{tmp}/m.pt", "--predictions", "{tmp}/p.csv"],
        r"give --predictions FILE or --checkpoint FILE, not both",
    ),
    (
        "model config without checkpoint",
        ["--eval", "cifar10:{tmp}/c", "--model-config", "{tmp}/tiny.json"],
        r"--model-config and --templates need --checkpoint FILE",
    ),
    (
        "templates without checkpoint",
        ["--eval", "cifar10:{tmp}/c", "--templates", "{tmp}/t.txt"],
        r"--model-config and --templates need --checkpoint FILE",
    ),
    (
        "embedding detector",
        ["--eval", "cifar10:{tmp}/c", "--detector", "embedding:clip"],
        r"detector embedding:clip: unknown embedding model; available: "
        r"embedding:open_clip:CONFIG_JSON:CHECKPOINT",
    ),
    (
        "torchscript detector, missing file",
        ["--eval", "cifar10:{tmp}/c", "--detector", "torchscript:{tmp}/sscd.pt"],
        r"detector torchscript:.*/sscd\.pt: no such file .*/sscd\.pt$",
    ),
    (
        "unknown detector",
        ["--eval", "cifar10:{tmp}/c", "--detector", "sift"],
        r"detector 'sift': unknown; available: phash",
    ),
    (
        "precision out of range",
        ["--eval", "cifar10:{tmp}/c", "--precision", "1.5"],
        r"precision must be in \(0, 1\], got 1\.5",
    ),
    (
        "precision and threshold",
        ["--eval", "cifar10:{tmp}/c", "--precision", "0.9", "--threshold", "0.8"],
        r"give --precision \(calibrate a threshold\) or --threshold, not both",
    ),
    (
        "precision and threshold in a config file",
        ["--eval", "cifar10:{tmp}/c", "--config", "{tmp}/both.toml"],
        r"config file .*both\.toml: give precision \(calibrate a threshold\) or threshold, "
        r"not both$",
    ),
    (
        "infinite threshold",
        ["--eval", "cifar10:{tmp}/c", "--threshold", "inf"],
        r"threshold must be a finite similarity",
    ),
    (
        "threshold above 1",
        ["--eval", "cifar10:{tmp}/c", "--threshold", "2"],
        r"threshold must be a finite similarity in \[-1, 1\], got 2\.0$",
    ),
    (
        "threshold below -1",
        [
            "--eval",
            "cifar10:{tmp}/c",
            "--detector",
            "torchscript:{tmp}/sscd.pt",
            "--threshold=-1.5",
        ],
        r"threshold must be a finite similarity in \[-1, 1\], got -1\.5$",
    ),
    (
        "negative phash threshold",
        ["--eval", "cifar10:{tmp}/c", "--threshold=-1"],
        r"threshold must be in \[0, 1\] for the phash detector .*, got -1\.0$",
    ),
    (
        "NaN threshold",
        ["--eval", "cifar10:{tmp}/c", "--threshold", "nan"],
        r"threshold must be a finite similarity in \[-1, 1\], got nan$",
    ),
    (
        "NaN threshold under --check",
        ["--check", "--eval", "cifar10:{tmp}/c", "--threshold", "NaN"],
        r"threshold must be a finite similarity in \[-1, 1\], got NaN$",
    ),
    (
        "threshold above 1 in a config file",
        ["--eval", "cifar10:{tmp}/c", "--config", "{tmp}/high.toml"],
        r"threshold must be a finite similarity in \[-1, 1\], got 1\.5$",
    ),
    (
        "NaN threshold in a config file, under --check",
        ["--check", "--eval", "cifar10:{tmp}/c", "--config", "{tmp}/nan.toml"],
        r"threshold must be a finite similarity in \[-1, 1\], got nan$",
    ),
    (
        "bool top_k in a config file",
        ["--eval", "cifar10:{tmp}/c", "--config", "{tmp}/topk.toml"],
        r"top_k must be a int, got True$",
    ),
    (
        "unknown hash",
        ["--eval", "cifar10:{tmp}/c", "--hashes", "phash,colorhash"],
        r"hashes: unknown colorhash",
    ),
    (
        "bad number",
        ["--eval", "cifar10:{tmp}/c", "--top-k", "many"],
        r"top_k must be a int, got 'many'",
    ),
    (
        "config unknown key",
        ["--eval", "cifar10:{tmp}/c", "--config", "{tmp}/bad.toml"],
        r"unknown setting\(s\): colour",
    ),
    (
        "predictions without name, two sets",
        [
            "--eval",
            "cifar10:{tmp}/c",
            "--eval",
            "pets=imagefolder:{tmp}/pets",
            "--predictions",
            "{tmp}/p.csv",
        ],
        r"--predictions FILE without a name needs exactly one --eval",
    ),
    (
        "predictions for a name that is no eval set, one set",
        ["--eval", "pets=imagefolder:{tmp}/pets", "--predictions", "imagenet:{tmp}/cols.csv"],
        r"--predictions imagenet:.*cols\.csv: imagenet is not an --eval set \(pets\); ",
    ),
    (
        "predictions for a misspelt name, two sets",
        [
            "--eval",
            "cifar10:{tmp}/c",
            "--eval",
            "pets=imagefolder:{tmp}/pets",
            "--predictions",
            "pest:{tmp}/cols.csv",
        ],
        r"--predictions pest:.*: pest is not an --eval set \(cifar10, pets\); ",
    ),
    (
        "eval root for a name that is no eval set",
        ["--eval", "cifar10", "--eval-root", "cifar100:{tmp}/c"],
        r"--eval-root cifar100:.*: cifar100 is not an --eval set \(cifar10\); ",
    ),
    (
        "predictions file missing",
        ["--eval", "cifar10:{tmp}/c", "--predictions", "{tmp}/none.csv"],
        r"predictions file .*none\.csv: not found",
    ),
    (
        "predictions wrong columns",
        ["--eval", "cifar10:{tmp}/c", "--predictions", "cifar10:{tmp}/cols.csv"],
        r"missing column\(s\) prediction; expected columns id and prediction",
    ),
    (
        "one-item set cannot be calibrated",
        ["--eval", "one=imagefolder:{tmp}/one"],
        r"eval set one: 1 item\(s\), too few to calibrate a threshold; give --threshold",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_fail_fast_with_one_clear_line(
    case: str,
    args: list[str],
    message: str,
    base: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    import re

    write_cifar10(tmp_path / "c", 3)
    write_imagefolder(tmp_path / "pets", ["cat", "dog"], 1)
    write_imagefolder(tmp_path / "one", ["x"], 1)
    (tmp_path / "badcifar").mkdir()
    (tmp_path / "badcifar" / "test_batch.bin").write_bytes(b"\0" * 3000)
    (tmp_path / "badcifar" / "batches.meta.txt").write_text("a\n")
    (tmp_path / "bad.toml").write_text("colour = 'red'\n")
    (tmp_path / "both.toml").write_text("[calibration]\nprecision = 0.9\nthreshold = 0.8\n")
    (tmp_path / "high.toml").write_text("threshold = 1.5\n")
    (tmp_path / "nan.toml").write_text("threshold = nan\n")
    (tmp_path / "topk.toml").write_text("top_k = true\n")
    (tmp_path / "cols.csv").write_text("id,pred\n0,1\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--train" not in argv:
        argv += ["--train", base["train"]]
    argv += ["--out", base["out"]]
    code, out, err = _run(argv, capsys)
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert out == ""
    assert not Path(base["out"]).exists(), "fail-fast paths must not write anything"


@pytest.mark.parametrize(
    ("in_file", "flags", "calibrate", "value"),
    [
        ("threshold = 0.9", ["--precision", "0.95"], True, 0.95),
        ("precision = 0.95", ["--threshold", "0.8"], False, 0.8),
        ("threshold = 0.9", [], False, 0.9),
        ("precision = 0.95", [], True, 0.95),
    ],
)
def test_the_command_line_chooses_between_precision_and_threshold_over_the_file(
    in_file: str, flags: list[str], calibrate: bool, value: float, tmp_path: Path
) -> None:
    """``value`` is the precision calibrated to, or the threshold given."""
    cfg = tmp_path / "overlap.toml"
    cfg.write_text(in_file + "\n")
    argv = ["--eval", "cifar10", "--train", str(tmp_path), "--out", str(tmp_path / "report")]
    config = job_from_args(build_parser().parse_args([*argv, "--config", str(cfg), *flags])).config
    assert config.calibrate is calibrate
    assert (config.precision if calibrate else config.threshold) == value


def test_missing_required_options_are_one_line(capsys: pytest.CaptureFixture) -> None:
    code, _, err = _run(["--eval", "cifar10"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "required: --train, --out" in err


def test_check_validates_the_inputs_without_the_training_data(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Before a build: --train and --checkpoint do not exist yet, and are not read.
    out = tmp_path / "report"
    base = ["--check", "--train", str(tmp_path / "not-built"), "--out", str(out)]
    code, stdout, err = _run(
        [*base, "--eval", f"pets=imagefolder:{scenario.pets}",
         "--checkpoint", str(tmp_path / "not-trained.pt")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert stdout == "check: ok: pets (30 items); detector phash(phash+dhash, 16x16)\n"
    assert not out.exists()
    # What a full run would refuse, --check refuses: a missing eval set, a bad option.
    code, _, err = _run([*base, "--eval", f"imagefolder:{tmp_path / 'none'}"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(
        [*base, "--eval", f"imagefolder:{scenario.pets}", "--detector", "nonsense"], capsys
    )
    assert code == 2 and err.startswith("error: ") and "nonsense" in err
    assert not out.exists()


def test_a_file_name_with_a_colon_is_a_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_imagefolder(tmp_path / "pets", ["cat", "dog"], 1)
    Path("pets:run1.csv").write_text("id,prediction\n")  # reads as NAME:FILE, but exists
    args = build_parser().parse_args(
        ["--eval", "imagefolder:pets", "--predictions", "pets:run1.csv", "--train", ".",
         "--out", "out"]
    )  # fmt: skip
    assert job_from_args(args).predictions == {"imagefolder": Path("pets:run1.csv")}


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_an_out_that_is_a_file_is_one_line_before_any_work(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture, check: bool
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    argv = ["--eval", f"cifar10:{scenario.cifar}", "--train", str(scenario.ours)]
    argv += ["--threshold", "0.9", *(["--check"] if check else [])]
    for out, message in (
        (afile, f"error: --out {afile}: exists and is not a folder\n"),
        (afile / "sub", f"error: --out {afile / 'sub'}: is inside {afile}, which exists and "
         "is not a folder\n"),
    ):  # fmt: skip
        code, stdout, err = _run([*argv, "--out", str(out)], capsys)
        assert (code, stdout, err) == (2, "", message)
    assert afile.read_text() == "mine"


def test_no_training_image_searched_is_an_error(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Training shards that hold no readable image: nothing was searched, so a report of
    "0 of N items overlap" would be a lie."""
    garbage, empty = tmp_path / "garbage", tmp_path / "empty"
    garbage.mkdir()
    (garbage / "00000.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    empty.mkdir()
    tarfile.open(empty / "00000.tar", "w").close()
    for train, damaged in ((garbage, 1), (empty, 0)):
        out = tmp_path / f"out-{train.name}"
        code, stdout, err = _run(
            ["--eval", f"cifar10:{scenario.cifar}", "--train", str(train), "--out", str(out),
             "--threshold", "0.9", "--processes", "1"],
            capsys,
        )  # fmt: skip
        assert code == 2 and stdout == ""
        last = err.splitlines()[-1]
        assert last == (
            f"error: no training image could be read from the 1 shard(s) of --train {train} "
            f"(damaged tars {damaged}, skipped damaged members 0, undecodable images 0, "
            "samples without an image 0): nothing was searched, no report written"
        )
        assert not out.exists()


def test_an_eval_set_with_no_decodable_image_is_a_warning(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken"
    for i, c in enumerate(("cat", "dog", "dog")):
        (broken / c).mkdir(parents=True, exist_ok=True)
        (broken / c / f"{i}.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--eval", f"imagefolder:{broken}", "--train", str(scenario.ours), "--out", str(out),
         "--threshold", "0.9", "--processes", "1", "--contact-pairs", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "imagefolder: 0 of 3 items overlap (0.00%)" in stdout
    warning = (
        "imagefolder: none of its 3 eval images could be decoded, so none was searched: "
        "its 0 overlap means nothing"
    )
    assert f"warning: {warning}\n" in err
    assert f"- Warning: {warning}" in (out / "report.md").read_text()


def test_check_verifies_the_model_config_and_the_zeroshot_device(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--check refuses what the run with --checkpoint would refuse, the checkpoint aside
    (it may not be trained yet)."""
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    out = tmp_path / "report"
    base = ["--check", "--eval", f"cifar10:{scenario.cifar}", "--train", str(tmp_path / "x"),
            "--out", str(out), "--checkpoint", str(tmp_path / "not-trained.pt")]  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 32,')
    for extra, message in (
        (["--model-config", str(tmp_path / "none.json")],
         f"error: --model-config {tmp_path / 'none.json'}: no such file\n"),
        (["--model-config", str(bad)],
         f"error: model config {bad}: not an open_clip model config: "),
    ):  # fmt: skip
        code, stdout, err = _run([*base, *extra], capsys)
        assert code == 2 and stdout == "" and err.startswith(message), err
        assert err.count("\n") == 1
    import torch

    if not torch.cuda.is_available():
        code, _, err = _run([*base, "--zeroshot-device", "cuda"], capsys)
        assert (code, err) == (2, "error: zeroshot_device cuda: CUDA is not available here\n")
    assert not out.exists()


def test_a_calibration_that_cannot_reach_its_target_is_a_warning(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    # An unreached target (eval sets with many near-identical items) puts the threshold
    # above every score: the console and the report must say that 0 overlap means nothing.
    # (Real planted copies nearly always leave some recall: the outcome is forced here.)
    import dataclasses

    from pipeline.overlap import run as run_module

    real = run_module.calibrate

    def unreached(*args, **kwargs):
        cal = real(*args, **kwargs)
        return dataclasses.replace(cal, reached=False, threshold=1.0000001, recall=0.0)

    monkeypatch.setattr(run_module, "calibrate", unreached)
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--eval", f"pets=imagefolder:{scenario.pets}", "--train", str(scenario.ours),
         "--out", str(out), "--processes", "1", "--contact-pairs", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "pets: 0 of 30 items overlap" in stdout
    warning = (
        "pets: no threshold reaches precision 0.99 on its planted copies, so nothing can be "
        "called overlap (its 0 overlap means nothing): give --threshold, or a lower --precision"
    )
    assert err.count(f"warning: {warning}\n") == 1
    assert f"- Warning: {warning}" in (out / "report.md").read_text()
