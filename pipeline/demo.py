"""python -m pipeline.demo: the download engine alone, end to end on the loopback synthweb.

Serves the generated site on 127.0.0.1..127.0.0.N for the duration of the run, writes
its pair list, downloads it with the reference settings, prints the summary, and checks
every URL's status against the outcome the site says it must produce.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DEMO_SPEC_ARGS = {"seed": 0, "n_images": 200, "n_hosts": 4, "n_pages": 20, "stall_seconds": 8.0}
# The build demo's port. Balancing draws each pair from a hash of its URL, and the URLs
# hold the port: a fixed port makes every `make demo` select the same pairs. (Next to
# `python -m pipeline.synthweb serve`'s 8765, so both can run at once.)
DEMO_PORT = 8766
# This demo's output: a folder of its own, since it empties it first and `make demo` (the
# build demo) writes data/demo.
DOWNLOAD_DEMO_OUTPUT = "data/demo-download"


@contextlib.contextmanager
def demo_web(port: int = DEMO_PORT, **spec_changes: Any) -> Iterator[Any]:
    """The synthweb on loopback for the duration of a demo build, images made up front.

    Served on ``port`` when it is free on every host, else on a free one (``web.port``
    tells which; the caller says so, since the demo's selection then differs)."""
    from pipeline.synthweb.server import SynthWeb
    from pipeline.synthweb.site import SiteSpec

    spec = SiteSpec(**{**DEMO_SPEC_ARGS, **spec_changes})
    with SynthWeb(spec, port=port, fallback_port=True) as web:
        web.warm()
        yield web


def demo_config(config: Any, web: Any) -> Any:
    """The build config for the demo: crawl every host of ``web`` from its index page, with
    the synthweb's reference download settings (loopback allowed, robots.txt honoured), and
    a small per-query cap so that balancing shows in a small dataset. Settings the user
    changed from their defaults are kept. With engine img2dataset robots.txt stays off:
    that engine refuses it (the job notes that the demo goes without it)."""
    from pipeline.spark.build import BuildConfig
    from pipeline.spark.img2dataset_engine import REFUSED
    from pipeline.synthweb.site import REFERENCE_SETTINGS

    default = BuildConfig()
    refused = REFUSED if config.engine == "img2dataset" else {}
    fetch = dataclasses.replace(
        config.download.fetch,
        **{
            k: v
            for k, v in REFERENCE_SETTINGS.items()
            if hasattr(config.download.fetch, k)
            and k not in refused
            and getattr(config.download.fetch, k) == getattr(default.download.fetch, k)
        },
    )
    download = dataclasses.replace(
        config.download,
        fetch=fetch,
        samples_per_shard=64
        if config.download.samples_per_shard == default.download.samples_per_shard
        else config.download.samples_per_shard,
    )
    crawler = dataclasses.replace(config.crawler, max_pages=max(config.crawler.max_pages, 200))
    balance = config.balance
    if balance == default.balance:
        balance = dataclasses.replace(balance, max_per_query=25)
    seeds = tuple(web.base_url(h) + "/" for h in range(web.site.spec.n_hosts))
    return dataclasses.replace(
        config, crawl=seeds, download=download, crawler=crawler, balance=balance
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--output",
        default=DOWNLOAD_DEMO_OUTPUT,
        help=f"output directory, emptied first (default: {DOWNLOAD_DEMO_OUTPUT})",
    )
    p.add_argument(
        "--images", type=int, default=200, help="normal images on the site (default: 200)"
    )
    p.add_argument("--hosts", type=int, default=4, help="loopback hosts (default: 4)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default: 2)")
    return p


# What this demo writes in its --output: the only things it may delete there.
_DEMO_ENTRIES = frozenset({"pairs.parquet", "download"})


def _foreign_entries(out: Path) -> list[str]:
    """What ``out`` holds that this demo did not write (``out`` itself when it is a file)."""
    if not out.exists():
        return []
    if not out.is_dir():
        return [out.name]
    return sorted(e.name for e in out.iterdir() if e.name not in _DEMO_ENTRIES)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.engine import ledger_rows, run_download, summary_text
    from pipeline.synthweb.server import SynthWeb
    from pipeline.synthweb.site import SiteSpec, reference_config

    args = build_parser().parse_args(argv)
    out = Path(args.output)
    foreign = _foreign_entries(out)
    if foreign:
        print(
            f"error: --output {out} holds what this demo did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), and the demo "
            "empties its output first: give a new folder or one of its earlier outputs",
            file=sys.stderr,
        )
        return 2
    if out.exists():
        import shutil

        shutil.rmtree(out)  # the demo always starts afresh: a new site means a new port
    out.mkdir(parents=True)
    spec = SiteSpec(seed=0, n_images=args.images, n_hosts=args.hosts, n_pages=5, stall_seconds=8.0)
    print(f"synthweb: generating {args.images} images and the fault URLs...", file=sys.stderr)
    with SynthWeb(spec) as web:
        web.warm()
        rows = web.pair_rows()
        pairs = out / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), pairs)
        print(
            f"synthweb: serving {len(rows)} image URLs on {web.base_url(0)} .. {web.base_url(args.hosts - 1)}"
        )
        base = reference_config()
        config = dataclasses.replace(
            base, processes=args.processes, threads=16, samples_per_shard=64
        )
        summary = run_download(str(pairs), out / "download", config)
    print(summary_text(summary.stats))
    got = {r["url"]: r for r in ledger_rows(out / "download")}
    wrong = [r for r in rows if got[r["url"]]["status"] != r["expected_status"]]
    faults = Counter(r["fault"] for r in rows if r["fault"])
    print(
        f"\nground truth: {len(rows) - len(wrong)}/{len(rows)} URLs got the status the site expects "
        f"({len(faults)} fault kinds, every one handled)"
        if not wrong
        else ""
    )
    for r in wrong:
        g = got[r["url"]]
        print(
            f"MISMATCH {r['fault']}: expected {r['expected_status']}, got {g['status']} ({g['error_message']})"
        )
    print(f"\nshards: {out / 'download' / 'shards'}  ledger: {out / 'download' / 'ledger'}")
    return 1 if wrong or not summary.ok else 0


if __name__ == "__main__":
    sys.exit(main())
