"""wit_pipeline: build a WIT-style dataset, check it against evaluation sets, train a dual
encoder on what is left, and report zero-shot accuracy by overlap split.

Five tasks, in order, each one of the project's commands:

0. ``check``: ``pipeline.overlap --check`` and ``training.run --check`` check the eval
   sets, the model and the options before anything is built, so a mistyped path or model
   name fails in seconds, not after hours of building.
1. ``build``: ``spark-submit jobs/build_wit.py`` through the ``spark_default`` connection
   (its host is the master: ``local[4]``, ``yarn``, ``spark://HOST:PORT``...). With no
   ``build_args`` it builds the embedded demo.
2. ``overlap``: ``python -m pipeline.overlap`` splits each eval set into Overlap / Clean /
   All against the new shards and writes ``decontaminate.parquet``.
3. ``train``: ``python -m training.run`` on the shards, leaving out the build's image
   duplicates and the overlap, with zero-shot evaluation on the same eval sets.
4. ``report``: ``pipeline.overlap`` again, with the last checkpoint's zero-shot
   predictions: accuracy on Overlap, Clean and All, as CLIP's section 5.

Every task is a rerun-safe command: the build resumes committed shards, the overlap
reports are rewritten whole, and the training run continues from its last checkpoint
(``--resume auto``: a retry goes on where it stopped, a rerun after success has nothing
left to train and evaluates again; to train anew, give another ``run`` folder). Run
parameters (``output``, ``eval``, ``build_args``, ``overlap_args``, ``run``,
``train_args``) come from the trigger's conf; ``output``, ``run`` and the paths in the
``*_args`` lists may be relative to the repository (the build's are made absolute for
spark-submit, which runs elsewhere). This file holds only the DAG (nothing runs when it
is parsed).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, task

REPO = Path(__file__).resolve().parents[1]
# The interpreter Airflow runs with: the project's environment, whose bin/ holds pyspark's
# spark-submit and whose python the commands below run with.
PYTHON = sys.executable
BIN = str(Path(PYTHON).parent)


def _in_repo_args(args: list[str]) -> list[str]:
    """The build's arguments with each relative path that names something in the
    repository (a file, a folder, or a glob matching one) made absolute: spark-submit runs
    in the worker's folder, the other tasks in the repository's."""
    out = []
    for a in args:
        relative = a and not a.startswith("-") and "://" not in a and not Path(a).is_absolute()
        try:
            named = relative and any(REPO.glob(a))
        except (ValueError, NotImplementedError):  # not a pattern pathlib takes: not a path
            named = False
        out.append(str(REPO / a) if named else a)
    return out


def _overlap_argv(params: dict, out: str) -> list[str]:
    """pipeline.overlap on the dataset and the run's eval sets, its report in ``out``."""
    argv = [PYTHON, "-m", "pipeline.overlap", "--train", params["output"], "--out", out]
    for spec in params["eval"]:
        argv += ["--eval", spec]
    return argv + list(params["overlap_args"])


def _train_argv(params: dict) -> list[str]:
    """training.run on the dataset less its image duplicates and the overlap, with
    zero-shot evaluation on the run's eval sets."""
    out, run = params["output"], params["run"]
    # --resume auto: a retry continues from the run's last checkpoint, and a rerun after
    # success finds nothing left to train; a new model needs a new ``run`` folder.
    argv = [PYTHON, "-m", "training.run", "--train-data", out, "--output", run, "--resume", "auto"]
    argv += ["--exclude", f"{out}/dedup/duplicates.parquet"]
    argv += ["--exclude", f"{out}/overlap/decontaminate.parquet"]
    for spec in params["eval"]:
        argv += ["--zeroshot", spec]
    return argv + list(params["train_args"])


with DAG(
    dag_id="wit_pipeline",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    render_template_as_native_obj=True,
    # spark-submit runs in the worker's folder, the other tasks in the repository's: the
    # build gets its output as an absolute path, so both mean the same folder.
    user_defined_macros={"in_repo": lambda path: str(REPO / path), "in_repo_args": _in_repo_args},
    tags=["wit"],
    params={
        "output": Param("data/wit", type="string", description="the dataset's folder"),
        "build_args": Param(
            [],
            type="array",
            description="more jobs/build_wit.py arguments, e.g. ['--warc', 's3://b/*.warc.gz']; "
            "none: the demo",
        ),
        "eval": Param(
            [],
            type="array",
            minItems=1,
            description="eval sets as pipeline.overlap --eval takes them: NAME or NAME:PATH "
            "(at least one)",
        ),
        "overlap_args": Param(
            [], type="array", description="more pipeline.overlap arguments (e.g. --threshold)"
        ),
        "run": Param("runs/wit", type="string", description="the training run's folder"),
        "train_args": Param(
            ["--model", "tiny", "--steps", "100"],
            type="array",
            description="training.run arguments besides the data, exclusions and eval sets",
        ),
    },
) as dag:

    @task.bash(cwd=str(REPO))
    def check(params: dict) -> str:
        # The eval sets and the overlap and training options, before hours of building
        # (nothing is read of the dataset or the checkpoint, which do not exist yet).
        overlap = [*_overlap_argv(params, f"{params['output']}/overlap"), "--check"]
        return f"{shlex.join(overlap)} && {shlex.join([*_train_argv(params), '--check'])}"

    build = SparkSubmitOperator(
        task_id="build",
        conn_id="spark_default",
        application=str(REPO / "jobs" / "build_wit.py"),
        application_args="{{ ['--output', in_repo(params.output)] + in_repo_args(params.build_args) }}",
        name="wit-build",
        # Spark's start-up logs at WARN, as `make demo` runs it.
        conf={
            "spark.driver.extraJavaOptions": "-Dlog4j2.configurationFile=file:"
            f"{REPO / 'pipeline' / 'spark' / 'log4j2.properties'}"
        },
        # The hook runs spark-submit from this PATH; the driver's python is this one.
        env_vars={"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )

    @task.bash(cwd=str(REPO))
    def overlap(params: dict) -> str:
        return shlex.join(_overlap_argv(params, f"{params['output']}/overlap"))

    @task.bash(cwd=str(REPO))
    def train(params: dict) -> str:
        return shlex.join(_train_argv(params))

    @task.bash(cwd=str(REPO))
    def report(params: dict) -> str:
        run = params["run"]
        # The newest checkpoint of the run just trained (names sort by step).
        latest = f'"$(ls -1 {shlex.quote(run)}/checkpoints/step_*.pt | tail -n 1)"'
        return f"{shlex.join(_overlap_argv(params, f'{run}/overlap'))} --checkpoint {latest}"

    check() >> build >> overlap() >> train() >> report()
