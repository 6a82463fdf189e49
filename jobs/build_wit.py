"""spark-submit jobs/build_wit.py [options]: build a WIT-style dataset on Spark.

With no source given it builds the demo: it serves the synthweb on loopback (port 8766,
so that every run selects the same pairs) for the duration of the job, crawls it, and
writes data/demo/. `python jobs/build_wit.py` starts a local session; under spark-submit
the session (and --master) come from spark-submit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # spark-submit runs the file

from pipeline.config import (
    HELP,
    CliParser,
    ConfigError,
    add_setting_flags,
    build_config,
    load_settings,
)
from pipeline.sources.pairs import InputError

# The download engine's `processes` (pipeline.download) has no use here: each shard is one
# Spark task running the engine in one process. Accepted, with a note, so that one config
# file serves both the download and this job.
PROCESSES_HELP = (
    "ignored: each shard is one Spark task, so the Spark master sets the parallelism "
    "(--master local[N], spark-submit --master, executors and cores)"
)
PROCESSES_NOTE = (
    "note: {given} is ignored on Spark: each shard is one Spark task; set the parallelism "
    "with the Spark master (--master local[N], or spark-submit's --master, --num-executors, "
    "--executor-cores)"
)

# The demo honours robots.txt (the synthweb's reference settings), which engine
# img2dataset cannot: its demo runs without it, and says so.
DEMO_ROBOTS_NOTE = (
    "note: the demo honours robots.txt with engine native; engine img2dataset cannot "
    "read it, so this demo downloads without it"
)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.spark.build import BuildConfig

    p = CliParser(
        prog="spark-submit jobs/build_wit.py",
        description="Extract, clean, deduplicate, match, balance, download and deduplicate "
        "image-text pairs into a WIT-style dataset. No source: the loopback demo.",
    )
    p.add_argument(
        "--warc",
        nargs="+",
        default=None,
        metavar="PATH",
        help="WARC/WAT files or globs (local or fsspec URLs)",
    )
    p.add_argument(
        "--pairs",
        nargs="+",
        default=None,
        metavar="PATH",
        help="pair lists (Parquet, CSV, TSV, JSONL), folders of them or globs",
    )
    p.add_argument("--crawl", nargs="+", default=None, metavar="URL", help="seed pages to crawl")
    p.add_argument("--output", default=None, help="output directory (default: data/demo)")
    p.add_argument(
        "--queries",
        default=None,
        help="a saved query list (Parquet, JSON list or text); default: build one",
    )
    p.add_argument(
        "--build-queries",
        action="store_true",
        help="build the query list (the default when --queries is not given)",
    )
    p.add_argument("--config", help="TOML or YAML file with the same settings as the flags")
    p.add_argument(
        "--master", default=None, help="Spark master when run with python (default: local[*])"
    )
    add_setting_flags(
        p,
        BuildConfig,
        skip=("output", "warc", "pairs", "crawl", "queries"),
        help_texts={**HELP, "processes": PROCESSES_HELP},
    )
    return p


def ignored_settings_note(args: argparse.Namespace, config: object) -> str | None:
    """The note lines to print for settings this run accepts but cannot honour, else None:
    ``processes`` (flag or config file), and with engine img2dataset the settings it
    ignores (``config``: the BuildConfig made of ``args``). Raises ConfigError for one
    that must not be ignored: robots.txt asked for with engine img2dataset."""
    notes = []
    if args.processes is not None:
        notes.append(PROCESSES_NOTE.format(given="--processes"))
    elif args.config and load_settings(args.config).get("processes") is not None:
        notes.append(PROCESSES_NOTE.format(given=f"processes in {args.config}"))
    if config.engine == "img2dataset":
        from pipeline.spark.img2dataset_engine import check_config

        notes += check_config(config.download)
        if not (config.warc or config.pairs or config.crawl):
            notes.append(DEMO_ROBOTS_NOTE)
    return "\n".join(notes) or None


def config_from_args(args: argparse.Namespace) -> object:
    from pipeline.config import settings_from_args
    from pipeline.spark.build import BuildConfig

    settings = load_settings(args.config) if args.config else {}
    for name in ("warc", "pairs", "crawl"):
        if getattr(args, name):
            settings[name] = tuple(getattr(args, name))
    for name in ("output", "queries"):
        if getattr(args, name):
            settings[name] = getattr(args, name)
    settings.update(
        {
            k: v
            for k, v in settings_from_args(args, BuildConfig).items()
            if k not in ("warc", "pairs", "crawl", "output", "queries")
        }
    )
    if args.build_queries:
        if args.queries:
            raise ConfigError("--queries and --build-queries exclude each other")
        settings["queries"] = ""  # build, whatever a config file says
    return build_config(BuildConfig, settings)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.demo import DEMO_PORT, demo_config, demo_web
    from pipeline.spark.build import ShardsFailed, check_query_inputs, run_build
    from pipeline.spark.session import get_session

    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        note = ignored_settings_note(args, config)
        check_query_inputs(config)  # a missing file is one line now, not a traceback later
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    demo = not (config.warc or config.pairs or config.crawl)
    spark = get_session("build_wit", master=args.master)
    try:
        if demo:
            with demo_web() as web:
                if web.port != DEMO_PORT:
                    print(
                        f"note: port {DEMO_PORT} is taken, the demo web serves on {web.port}; "
                        "balancing draws from a hash of each URL, so the selection differs "
                        f"from a run on {DEMO_PORT}",
                        file=sys.stderr,
                    )
                config = demo_config(config, web)
                stats = run_build(spark, config)
        else:
            stats = run_build(spark, config)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ShardsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from pipeline.stats.funnel import Funnel, Stage

    f = stats["funnel"]
    funnel = Funnel(
        f["start"]["name"],
        f["start"]["count"],
        [Stage(s["name"], s["count"], s["drops"]) for s in f["stages"]],
    )
    print("\n" + funnel.markdown())
    # A URL joined as text: Path() would fold s3:// into s3:/.
    print(f"\ndataset: {config.output} (card: {config.output.rstrip('/')}/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
