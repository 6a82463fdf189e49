"""The Airflow DAG: it loads without import errors, and `airflow dags test` runs the
stages on the demo (a real Airflow 3 with SQLite, Spark in local mode), stopping at the
first failing one."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


def _airflow_env(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "SCARF_ANALYTICS": "false",
        # The spark_default connection, as a user would point it at a cluster.
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # Every Python process below runs sealed from the network, as this one does.
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "sealed"), str(REPO)]),
    }


def _airflow(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    return subprocess.run(
        cmd, env=_airflow_env(home), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# Airflow reads AIRFLOW_HOME when imported: the DAG is loaded in a process of its own, so
# this test process (and the user's ~/airflow) never see it.
# Build arguments as a user writes them: paths relative to the repository among others.
BUILD_ARGS = ["--seed", "1", "--queries", "pyproject.toml", "--warc", "jobs/*.py"]
BUILD_ARGS += ["s3://b/x.warc.gz", "local[2]"]

_LOAD = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS)
dag = bag.dags.get("wit_pipeline")
print(json.dumps({
    "errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} if dag else None,
    "params": sorted(dag.params) if dag else None,
    # The build's arguments as Airflow renders them, for a relative and an absolute output.
    "build_args": [
        dag.get_template_env().from_string(dag.get_task("build").application_args).render(
            params={"output": out, "build_args": BUILD_ARGS}
        )
        for out in ("data/wit", "/abs/wit")
    ] if dag else None,
}))
"""


def test_the_dag_loads_with_its_stages_in_order(tmp_path: Path) -> None:
    code = _LOAD.replace("DAGS", repr(str(DAGS))).replace("BUILD_ARGS", repr(BUILD_ARGS))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_airflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert loaded["downstream"] == {
        "check": ["build"],
        "build": ["overlap"],
        "overlap": ["train"],
        "train": ["report"],
        "report": [],
    }
    assert loaded["params"] == ["build_args", "eval", "output", "overlap_args", "run", "train_args"]
    # spark-submit does not run in the repository: a relative output is made absolute there.
    # ... and so is a relative path naming something in the repository (a glob too).
    rendered = ["--seed", "1", "--queries", str(REPO / "pyproject.toml"), "--warc"]
    rendered += [str(REPO / "jobs/*.py"), "s3://b/x.warc.gz", "local[2]"]
    assert loaded["build_args"] == [
        ["--output", str(REPO / "data" / "wit"), *rendered],
        ["--output", "/abs/wit", *rendered],
    ]


def _eval_set(root: Path) -> Path:
    for c in ("circle", "square"):
        (root / c).mkdir(parents=True)
        for j in range(4):
            r = random.Random(f"{c}{j}")
            img = Image.new("RGB", (64, 64), tuple(r.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            box = (r.randrange(20), r.randrange(20), 40 + r.randrange(20), 40 + r.randrange(20))
            fill = tuple(r.randrange(256) for _ in range(3))
            (draw.ellipse if c == "circle" else draw.rectangle)(box, fill=fill)
            img.save(root / c / f"{j}.png")
    return root


def test_airflow_runs_the_pipeline_on_the_demo_and_stops_at_a_failing_stage(
    tmp_path: Path,
) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    migrated = _airflow(home, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    evals = _eval_set(tmp_path / "eval")
    out, run = tmp_path / "data", tmp_path / "run"
    conf = {
        "output": str(out),
        "run": str(run),
        "eval": [f"shapes=imagefolder:{evals}"],
        "overlap_args": ["--threshold", "0.9"],
        "train_args": ["--model", "tiny", "--steps", "6", "--batch-size", "16"],
    }
    done = _airflow(home, "dags", "test", "wit_pipeline", "-c", json.dumps(conf))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # spark-submit's start-up at WARN (pipeline/spark/log4j2.properties), not INFO.
    assert not re.search(r"\d\d:\d\d:\d\d INFO \w+:", done.stdout + done.stderr)
    # build: the demo's funnel; overlap: the report and its exclusion list; train: a run
    # that excluded them and evaluated zero-shot; report: accuracy by overlap split.
    funnel = json.loads((out / "stats.json").read_text())["funnel"]
    assert funnel["start"]["count"] > funnel["stages"][-1]["count"] > 0
    assert (out / "overlap" / "decontaminate.parquet").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["zeroshot"]) == {"shapes"}
    shapes = json.loads((run / "overlap" / "report.json").read_text())["shapes"]
    assert shapes["n_all"] == 8
    assert shapes["zeroshot"]["checkpoint"] == str(run / "checkpoints" / "step_00000006.pt")
    assert shapes["acc_all"] == shapes["zeroshot"]["top1"] == summary["zeroshot"]["shapes"]

    # A stage that fails fails the run, and the stages after it never start: a missing
    # eval set, or a model with no config, stops the run at the check, before the build.
    # The run folder holds the run just trained: fewer steps than it has done cannot
    # resume it (a new run there would leave the report reading the old checkpoints).
    for bad, message in (
        ({"eval": [f"imagefolder:{tmp_path}/none"]}, "does not exist"),
        ({"train_args": ["--model", "ViT-H-99"]}, "--model ViT-H-99: no config"),
        ({"train_args": ["--steps", "3"]}, "the run is at step 6, past the 3 steps asked for"),
    ):
        wrong = {**conf, "output": str(tmp_path / "data2"), **bad}
        failed = _airflow(home, "dags", "test", "wit_pipeline", "-c", json.dumps(wrong))
        assert failed.returncode != 0
        assert message in failed.stdout + failed.stderr
        assert not (tmp_path / "data2").exists()


def test_a_run_without_eval_sets_is_refused_before_any_stage(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    assert _airflow(home, "db", "migrate").returncode == 0
    conf = {"output": str(tmp_path / "data"), "eval": []}
    proc = _airflow(home, "dags", "test", "wit_pipeline", "-c", json.dumps(conf))
    assert proc.returncode != 0
    assert "eval" in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists()
