"""``python -m pipeline.synthweb``: serve the loopback site, or write its URL list.

``serve`` prints the base URL of host 0 (one line) and serves until SIGINT or SIGTERM;
``urls`` writes the candidate pairs with their expected statuses, for the same port and
site options, so a demo can run one and feed the other to the downloader.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.config import prog_name
from pipeline.synthweb.site import Site, SiteSpec, reference_flags

DEFAULT_PORT = 8765
COLUMNS = ("url", "caption", "fault", "expected_status", "host")
OUT_SUFFIXES = (".parquet", ".csv", ".jsonl")


def _site_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("site")
    g.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port on every host (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="site seed: same seed, same URLs, captions and bytes (default 0)",
    )
    g.add_argument(
        "--images",
        type=int,
        default=200,
        help="normal image slots, besides one URL per fault kind (default 200)",
    )
    g.add_argument(
        "--hosts",
        type=int,
        default=4,
        help="number of hosts, served on 127.0.0.1..127.0.0.N (default 4)",
    )
    g.add_argument("--pages", type=int, default=20, help="HTML pages per host (default 20)")
    g.add_argument(
        "--fault-every",
        type=int,
        default=0,
        help="also make every Nth image slot a fault (default 0: one per kind only)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _site_options()
    parser = argparse.ArgumentParser(
        prog=prog_name("pipeline.synthweb", "wit-synthweb"),
        description="A deterministic generated website on loopback, with known faults, for tests and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the site until SIGINT/SIGTERM; prints the base URL",
        description="Serve the site on 127.0.0.1..N at one port. Prints the base URL of "
        "host 0 on one line, then serves until SIGINT or SIGTERM.",
    )
    serve.add_argument(
        "--warm", action="store_true", help="generate every image before printing the URL"
    )
    serve.add_argument(
        "--static",
        action="store_true",
        help="benchmark mode: only the images without a fault and robots.txt, from "
        "pre-built responses on a lean asyncio server (implies --warm)",
    )
    urls = sub.add_parser(
        "urls",
        parents=[common],
        help="write the URL list (url, caption, fault, expected_status, host index)",
        description="Write one row per image URL with its caption, fault kind and the "
        "status the downloader must record (no server is started; use the same --port "
        "and site options as serve). expected_status holds for the reference download "
        "settings, loopback allowed (the engine refuses it by default): python -m "
        f"pipeline.download --input OUT --output DIR {reference_flags()}",
    )
    urls.add_argument("--out", required=True, help="output file: .parquet, .csv or .jsonl")
    return parser


def _spec(args: argparse.Namespace) -> SiteSpec:
    return SiteSpec(
        seed=args.seed,
        n_images=args.images,
        n_hosts=args.hosts,
        n_pages=args.pages,
        fault_every=args.fault_every,
    )


def write_rows(rows: list[dict[str, Any]], out: str | Path) -> None:
    """Write pair rows by extension: Parquet, CSV (fault empty when none) or JSON lines."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise ValueError(f"--out must end in .parquet, .csv or .jsonl, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {c: pa.string() for c in COLUMNS} | {"host": pa.int32()}
        table = pa.table({c: pa.array([r[c] for r in rows], types[c]) for c in COLUMNS})
        pq.write_table(table, path)
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    else:
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({c: r[c] for c in COLUMNS}) + "\n")


def _serve(args: argparse.Namespace, spec: SiteSpec) -> int:
    from pipeline.synthweb.server import SynthWeb

    if args.static:
        return _serve_static(args, spec)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SynthWeb(spec, port=args.port) as web:
            if args.warm:
                web.warm()
            print(web.base_url(0), flush=True)
            hosts = ", ".join(web.base_url(k) for k in range(web.site.spec.n_hosts))
            print(
                f"synthweb: {len(web.site.entries)} images on {hosts}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            while not done.wait(0.5):
                pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


def _serve_static(args: argparse.Namespace, spec: SiteSpec) -> int:
    from pipeline.synthweb.site import Site
    from pipeline.synthweb.static import serve_static

    site = Site(spec)

    def ready() -> None:
        print(site.origin(0, args.port), flush=True)
        print(
            f"synthweb (static): {len(site.by_fault(None))} images; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve_static(site, args.port, on_ready=ready)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = _spec(args)
        if args.command == "urls" and Path(args.out).suffix.lower() not in OUT_SUFFIXES:
            raise ValueError(f"--out must end in .parquet, .csv or .jsonl, got {args.out}")
    except ValueError as e:
        parser.error(str(e))  # exits 2 with the usage line
    if args.command == "serve":
        return _serve(args, spec)
    rows = Site(spec).pair_rows(args.port)
    write_rows(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
