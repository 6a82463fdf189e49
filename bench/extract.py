"""python -m bench.extract: candidate extraction throughput on generated WARC and WAT files.

Files are written first (not timed) in Common Crawl's shape: per page a request, a
response (an HTML page of ~40 KB with scripts, styles, text, ~30 images of which most
have alt text, figures, srcset, lazy loading and tracking pixels) and a metadata record,
each record its own gzip member; WAT files hold one JSON metadata record per page.

Measured in one process, each repeat running every reader over the same files in turn:

* ``warcio``: ``warcio.ArchiveIterator`` reading every record and every response body,
  no parsing: the reading floor of the library.
* ``records``: this project's record reader (``iter_records``), same work: the cost of
  resynchronising framing over warcio's.
* ``warc``: full extraction (``iter_candidates``): read, decode, parse, resolve, count.
* ``parse``: selectolax parsing and ``<img>`` attribute reads of the same HTML bodies held
  in memory: the parsing floor.
* ``wat``: full extraction from the WAT files.
* ``warc x N``: full extraction over N worker processes, one file each at a time (as
  Spark's local[N] runs one task per core), workers started and warmed before timing.

MB/s counts compressed file bytes (what a job reads from storage) and, separately,
uncompressed HTML bytes. CPU seconds (of this process, or summed over the workers) are
reported beside wall seconds: on a shared machine other load stretches wall time but
hardly CPU time, so MB per CPU-second is the figure to extrapolate from. Prints a table
(median of repeats) and writes bench/results/extract.json.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "mountain",
    "river",
    "city",
    "garden",
    "house",
    "street",
    "market",
    "beach",
    "forest",
    "bridge",
    "station",
    "museum",
    "festival",
    "concert",
    "portrait",
    "family",
    "wedding",
    "kitchen",
    "recipe",
    "chocolate",
    "bicycle",
    "football",
    "harbor",
    "island",
    "village",
    "castle",
    "church",
    "library",
    "sunset",
    "winter",
    "summer",
    "spring",
    "autumn",
]
_CAPTIONS = (
    "{a} {b} near the {c}",
    "A view of the {a} and the {b}",
    "{a} {b} {c}",
    "Photo of the {a} at the {b} festival",
    "IMG_{n:04d}.jpg",
    "image",
    "logo",
    "The {a} {b} in {c}",
)


def _sentence(r: random.Random, n: int) -> str:
    return " ".join(r.choice(_WORDS) for _ in range(n)).capitalize() + "."


def make_page(r: random.Random, page_id: int, host: str) -> bytes:
    """One HTML page shaped like a typical crawled article page (~40 KB)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_sentence(r, 6)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='stylesheet' href='/static/site.css'>",
        "<style>" + "".join(f".c{i}{{margin:{i}px;padding:{i % 7}px}}" for i in range(250)) + "</style>",
        "<script>" + "var d=[" + ",".join(str(r.randrange(10**6)) for _ in range(2500)) + "];</script>",
        "</head><body><header><nav><ul>",
    ]  # fmt: skip
    parts += [f"<li><a href='/section/{i}/'>{r.choice(_WORDS)}</a></li>" for i in range(25)]
    parts.append("</ul></nav><img src='/static/logo.png' alt='logo'></header><main><article>")
    for i in range(30):
        parts.append("<p>" + " ".join(_sentence(r, r.randint(8, 20)) for _ in range(4)) + "</p>")
        a, b, c = r.choice(_WORDS), r.choice(_WORDS), r.choice(_WORDS)
        caption = r.choice(_CAPTIONS).format(a=a, b=b, c=c, n=r.randrange(10**4))
        src = f"/media/{page_id}/{i}.jpg"
        kind = r.random()
        if kind < 0.45:
            parts.append(f"<img src='{src}' alt='{caption}' width='640' height='480'>")
        elif kind < 0.6:
            parts.append(f"<figure><img src='{src}'><figcaption>{caption}</figcaption></figure>")
        elif kind < 0.7:
            parts.append(f"<img srcset='{src}?w=320 320w, {src}?w=1024 1024w' alt='{caption}'>")
        elif kind < 0.8:
            parts.append(
                "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' "
                f"data-src='//cdn.{host}{src}' alt='{caption}'>"
            )
        else:
            parts.append(f"<img src='https://ads.example.net/px?i={i}' width='1' height='1'>")
        if i % 3 == 0:
            parts.append(f"<a href='/article/{r.randrange(10**6)}.html'>{_sentence(r, 4)}</a>")
    parts.append("</article></main><footer>")
    parts += [f"<a href='https://partner{i}.example.org/'>partner {i}</a>" for i in range(20)]
    parts.append("</footer></body></html>")
    return "\n".join(parts).encode()


def write_files(directory: Path, n_files: int, pages_per_file: int, seed: int) -> dict:
    """WARC and WAT files in Common Crawl's shape; returns their sizes."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from pipeline.sources.html import HtmlPage

    r = random.Random(seed)
    sizes = {"warc": [], "wat": [], "html_bytes": 0, "pages": 0}
    for f in range(n_files):
        warc_path = directory / f"CC-BENCH-{f:05d}.warc.gz"
        wat_path = directory / f"CC-BENCH-{f:05d}.warc.wat.gz"
        with open(warc_path, "wb") as wf, open(wat_path, "wb") as tf:
            warc_writer, wat_writer = WARCWriter(wf, gzip=True), WARCWriter(tf, gzip=True)
            for p in range(pages_per_file):
                host = f"site{r.randrange(500)}.example.com"
                uri = f"https://{host}/article/{f}-{p}.html"
                body = make_page(r, p, host)
                sizes["html_bytes"] += len(body)
                sizes["pages"] += 1
                req = StatusAndHeaders(
                    f"GET /article/{f}-{p}.html HTTP/1.1", [("Host", host)], is_http_request=True
                )
                warc_writer.write_record(
                    warc_writer.create_warc_record(uri, "request", http_headers=req)
                )
                resp = StatusAndHeaders(
                    "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
                )
                warc_writer.write_record(
                    warc_writer.create_warc_record(
                        uri, "response", payload=io.BytesIO(body), http_headers=resp
                    )
                )
                meta = f"fetchTimeMs: {r.randrange(50, 900)}\r\n".encode()
                warc_writer.write_record(
                    warc_writer.create_warc_record(
                        uri,
                        "metadata",
                        payload=io.BytesIO(meta),
                        warc_content_type="application/warc-fields",
                    )
                )
                wat_writer.write_record(
                    wat_writer.create_warc_record(
                        uri,
                        "metadata",
                        payload=io.BytesIO(json.dumps(_wat_json(uri, body, HtmlPage)).encode()),
                        warc_content_type="application/json",
                    )
                )
        sizes["warc"].append(warc_path.stat().st_size)
        sizes["wat"].append(wat_path.stat().st_size)
    return sizes


def _wat_json(uri: str, body: bytes, page_cls: type) -> dict:
    """The WAT envelope of a page: its <img> and <a> links, as Common Crawl writes them."""
    page = page_cls(body, uri)
    links = []
    for node in page.tree.css("img, a[href]"):
        a = node.attributes
        if node.tag == "img":
            link = {"path": "IMG@/src", "url": a.get("src") or ""}
            if a.get("alt"):
                link["alt"] = a["alt"]
        else:
            link = {"path": "A@/href", "url": a.get("href"), "text": node.text()}
        links.append(link)
    return {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": uri},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200"},
                    "HTML-Metadata": {"Head": {"Title": "t"}, "Links": links},
                }
            },
        }
    }


# ---- readers under test ----------------------------------------------------------------------


def run_warcio(paths: list[str]) -> dict:
    from warcio.archiveiterator import ArchiveIterator

    records = 0
    for path in paths:
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                records += 1
                if rec.rec_type == "response":
                    rec.content_stream().read()
    return {"records": records}


def run_records(paths: list[str]) -> dict:
    from pipeline.sources.warc import _record_streams, iter_records
    from pipeline.stats.counters import Counters

    counters = Counters()
    for path in paths:
        with open(path, "rb") as f:
            for stream in _record_streams(f, counters):
                for rec in iter_records(stream, counters):
                    if rec.rec_type == "response":
                        rec.content_stream().read()
    return {"records": counters["warc.records"]}


def run_extract(paths: list[str]) -> dict:
    from pipeline.sources.warc import iter_candidates
    from pipeline.stats.counters import Counters

    counters = Counters()
    n = 0
    for path in paths:
        for _ in iter_candidates(path, counters=counters):
            n += 1
    return {"records": counters["warc.records"], "candidates": n, "counters": counters.to_dict()}


def _read_bodies(paths: list[str]) -> list[tuple[str, bytes]]:
    from warcio.archiveiterator import ArchiveIterator

    bodies = []
    for path in paths:
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                if rec.rec_type == "response":
                    uri = rec.rec_headers.get_header("WARC-Target-URI")
                    bodies.append((uri, rec.content_stream().read()))
    return bodies


def run_parse(bodies: list[tuple[str, bytes]]) -> dict:
    from selectolax.lexbor import LexborHTMLParser

    images = 0
    for _, body in bodies:
        tree = LexborHTMLParser(body.decode("utf-8", "replace"))
        for img in tree.css("img"):
            img.attributes  # noqa: B018 - the attribute read is part of the work
            images += 1
    return {"records": len(bodies), "images": images}


def _extract_one(path: str) -> tuple[int, int, float]:
    cpu = time.process_time()
    out = run_extract([path])
    return out["records"], out["candidates"], time.process_time() - cpu


def _warm_up(_: int) -> int:
    """Import everything a worker needs, so timing starts with workers ready (as Spark's
    executors are once a job runs)."""
    import selectolax.lexbor  # noqa: F401
    import warcio.recordloader  # noqa: F401

    import pipeline.sources.warc  # noqa: F401

    return os.getpid()


def run_parallel(pool: object, paths: list[str]) -> dict:
    results = pool.map(_extract_one, paths, chunksize=1)  # type: ignore[attr-defined]
    return {
        "records": sum(r[0] for r in results),
        "candidates": sum(r[1] for r in results),
        "worker_cpu_s": sum(r[2] for r in results),
    }


def _timed(fn: Callable[[], dict]) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds (this process, or the workers') and the reader's output.
    CPU time is what other load on the machine does not inflate much."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, out.get("worker_cpu_s", cpu), out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.extract", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--files", type=int, default=4, help="WARC (and WAT) files (default: 4)")
    p.add_argument("--pages", type=int, default=400, help="pages per file (default: 400)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--processes", type=int, default=2, help="processes for the parallel run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(RESULTS / "extract.json"), help="results JSON")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        sizes = write_files(directory, args.files, args.pages, args.seed)
        print(f"generated {args.files} WARC + WAT files in {time.perf_counter() - t0:.1f}s")
        warcs = sorted(str(x) for x in directory.glob("*.warc.gz") if ".wat." not in x.name)
        wats = sorted(str(x) for x in directory.glob("*.wat.gz"))
        bodies = _read_bodies(warcs)
        warc_bytes, wat_bytes, html_bytes = (
            sum(sizes["warc"]),
            sum(sizes["wat"]),
            sizes["html_bytes"],
        )

        runs: dict[str, tuple[Callable[[], dict], int]] = {
            "warcio": (lambda: run_warcio(warcs), warc_bytes),
            "records": (lambda: run_records(warcs), warc_bytes),
            "warc": (lambda: run_extract(warcs), warc_bytes),
            "parse": (lambda: run_parse(bodies), warc_bytes),
            "wat": (lambda: run_extract(wats), wat_bytes),
        }
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(args.processes)
        pool.map(_warm_up, range(args.processes * 4), chunksize=1)
        runs[f"warc x {args.processes}"] = (lambda: run_parallel(pool, warcs), warc_bytes)
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu_times: dict[str, list[float]] = {k: [] for k in runs}
        outputs: dict[str, dict] = {}
        try:
            for _ in range(args.repeats):
                for name, (fn, _) in runs.items():
                    elapsed, cpu, out = _timed(fn)
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
                    outputs[name] = out
        finally:
            pool.close()
            pool.join()

    rows = []
    for name, (_, file_bytes) in runs.items():
        t = statistics.median(times[name])
        records = outputs[name]["records"]
        rows.append(
            {
                "reader": name,
                "seconds": t,
                "seconds_all": times[name],
                "records": records,
                "records_per_s": records / t,
                "file_mb_per_s": file_bytes / t / 1e6,
                "html_mb_per_s": (html_bytes / t / 1e6) if name != "wat" else None,
                "candidates": outputs[name].get("candidates"),
                "candidates_per_s": (outputs[name].get("candidates") or 0) / t or None,
                "cpu_seconds": statistics.median(cpu_times[name]),
                "cpu_seconds_all": cpu_times[name],
                "file_mb_per_cpu_s": file_bytes / statistics.median(cpu_times[name]) / 1e6,
                "records_per_cpu_s": records / statistics.median(cpu_times[name]),
            }
        )
    print(
        f"\n{args.files} files x {args.pages} pages; WARC {warc_bytes / 1e6:.1f} MB gz, "
        f"HTML {html_bytes / 1e6:.1f} MB, WAT {wat_bytes / 1e6:.1f} MB gz; "
        f"median of {args.repeats}\n"
    )
    header = (
        f"{'reader':<12}{'wall s':>8}{'records/s':>11}{'file MB/s':>11}{'HTML MB/s':>11}"
        f"{'cands/s':>10}{'CPU s':>8}{'MB/CPU-s':>10}{'rec/CPU-s':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        html_rate = f"{r['html_mb_per_s']:.1f}" if r["html_mb_per_s"] else "-"
        cands = f"{r['candidates_per_s']:,.0f}" if r["candidates_per_s"] else "-"
        print(
            f"{r['reader']:<12}{r['seconds']:>8.2f}{r['records_per_s']:>11,.0f}"
            f"{r['file_mb_per_s']:>11.1f}{html_rate:>11}{cands:>10}"
            f"{r['cpu_seconds']:>8.2f}{r['file_mb_per_cpu_s']:>10.1f}{r['records_per_cpu_s']:>11,.0f}"
        )
    result = {
        "command": "python -m bench.extract "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "files": args.files,
        "pages_per_file": args.pages,
        "repeats": args.repeats,
        "warc_bytes": warc_bytes,
        "wat_bytes": wat_bytes,
        "html_bytes": html_bytes,
        "pages": sizes["pages"],
        "cpu_count": os.cpu_count(),
        # Other work on the machine slows every reader alike; the ratios between readers
        # in one run hold better than the absolute figures.
        "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
        "extract_counters": outputs["warc"].get("counters"),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
