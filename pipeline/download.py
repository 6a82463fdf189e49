"""python -m pipeline.download --input FILE|DIR|GLOB --output DIR: pair lists to WebDataset shards.

Every input row ends as exactly one ledger row (DIR/ledger/*.parquet) with a status;
every success as one sample in DIR/shards/NNNNN.tar. Reruns skip committed shards.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from pipeline.config import (
    CliParser,
    ConfigError,
    DownloadConfig,
    add_setting_flags,
    build_config,
    load_settings,
    prog_name,
    settings_from_args,
)
from pipeline.sources.pairs import InputError


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog=prog_name("pipeline.download", "wit-download"),
        description="Download the images of a pair list (Parquet, CSV, TSV, JSONL) into WebDataset "
        "tar shards + Parquet (img2dataset layout), with a ledger row for every input row.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="pair list: .parquet, .csv, .tsv or .jsonl; or a folder of them (one format, "
        "read in name order) or a quoted glob",
    )
    p.add_argument("--output", required=True, help="output directory (reruns resume it)")
    p.add_argument("--config", help="TOML or YAML file with the same settings as the flags")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_setting_flags(p, DownloadConfig)
    return p


def check_output(output: str) -> None:
    """Raises ConfigError for a URL: the engine writes (and locks, and resumes) a local
    folder; pyarrow would fail on it deep in the plan, after a stray ./s3:/... folder."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", output):
        raise ConfigError(
            f"--output {output} is a URL, but the download engine writes a local folder: "
            "give a local --output, or build with jobs/build_wit.py --pairs FILE "
            f"--output {output}, which stages the dataset locally and uploads it"
        )


def config_from_args(args: argparse.Namespace) -> DownloadConfig:
    settings = load_settings(args.config) if args.config else {}
    settings.update(settings_from_args(args, DownloadConfig))
    return build_config(DownloadConfig, settings)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.engine import run_download, summary_text

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output(args.output)
        config = config_from_args(args)
        summary = run_download(args.input, args.output, config, show_progress=not args.no_progress)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary.stats))
    if not summary.ok:
        for sid, err in sorted(summary.failed_shards.items()):
            print(f"error: shard {sid} failed: {err} (rerun to retry it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
