"""python -m bench.curate: curation throughput (clean, match, balance) at 10k, 100k, 1M rows.

The query list is the offline default (wordfreq unigrams + WordNet lemmas + 0..99, ~290k
entries). Captions are synthetic alt texts drawn from wordfreq's frequencies (Zipf-like
words, WordNet multi-word names, capitals, punctuation, numbers), generated once before
timing; each size takes the first N. Stages are timed separately on one core, each on
the same rows, in the order a job runs them, by CPU time (what a stage costs on a core
of its own, steadier on a shared machine) and by wall time:

- clean: ``pipeline.curate.clean.CaptionCleaner`` over candidates (when that module is
  there; building the candidate objects is not timed),
- match: ``Matcher.match_arrow`` (MetaCLIP boundaries, the default; ``alnum`` too),
- count: ``EntryCounts.from_matches`` (pass 1's per-task work),
- balance: pair keys, then ``Balancer.decide_batch`` (pass 2's per-task work).

t scales with the pool as if it were a 400M-row pool cut down (t = 20,000 x N / 400M,
at least 1), so the share of pairs whose draw needs a hash is like a real run's. Each
repeat runs every size; the median of the repeats is reported. Prints a table and
writes bench/results/curate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
FULL_T, FULL_POOL = 20_000, 400_000_000


def synthetic_captions(n: int, seed: int, entries: Sequence[str]) -> list[str]:
    """Alt-text-like captions: frequent words, some WordNet names, marks, numbers, 5% junk."""
    import wordfreq

    rng = random.Random(seed)
    freqs = wordfreq.get_frequency_dict("en", "large")
    vocab = [w for w in list(freqs)[:60_000] if w.isalpha()]
    cum = []
    total = 0.0
    for w in vocab:
        total += freqs[w]
        cum.append(total)
    multi = [e for e in entries if " " in e and e.replace(" ", "").isalpha()]
    seps = [" "] * 12 + [", ", " - ", " | ", ": ", " & "]
    ends = [""] * 6 + [".", "!", " ...", " (photo)", " - stock image"]
    out = []
    for _ in range(n):
        if rng.random() < 0.05:  # junk a clean stage may drop and matching will not find
            junk = rng.choice(["IMG_{:04d}", "DSC{:05d}", "{:012x}", "P{:07d}.JPG"])
            out.append(junk.format(rng.randrange(10**7)))
            continue
        k = rng.randint(2, 14)
        words = rng.choices(vocab, cum_weights=cum, k=k)
        if rng.random() < 0.35:
            words.insert(rng.randrange(k), rng.choice(multi))
        if rng.random() < 0.15:
            words.insert(rng.randrange(k), str(rng.randint(1, 2030)))
        if rng.random() < 0.3:
            words = [w.capitalize() for w in words]
        else:
            words[0] = words[0].capitalize()
        text = words[0]
        for w in words[1:]:
            text += rng.choice(seps) + w
        out.append(text + rng.choice(ends))
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def timed2(fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """((wall seconds, CPU seconds of this process), result). CPU time is what a stage
    costs on a core of its own; wall time also counts waiting for a core the machine's
    other work holds."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - w0, time.process_time() - c0), result


def load_cleaner() -> tuple[Callable[[list[str]], Callable[[], int]] | None, str]:
    """The clean stage if ``pipeline/curate/clean.py`` is there; else None and why not."""
    try:
        from pipeline.curate.clean import CaptionCleaner, CleanConfig
        from pipeline.curate.records import Candidate
    except ImportError as e:
        return None, f"not measured: {e}"

    def make(captions: list[str]) -> Callable[[], int]:
        cands = [
            Candidate(url=None, caption=c, caption_source="alt", page_url=None, source="warc")
            for c in captions
        ]
        return lambda: sum(1 for _ in CaptionCleaner(CleanConfig())(cands))

    return make, "pipeline.curate.clean.CaptionCleaner(CleanConfig())"


def run_once(
    captions: list[str],
    urls: list[str],
    matchers: dict[str, Any],
    make_clean: Callable[[list[str]], Callable[[], int]] | None,
) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """One pass of every stage over these rows: (wall, CPU) seconds per stage, and what
    balancing did."""
    import numpy as np
    import pyarrow as pa

    from pipeline.curate.balance import BalanceConfig, Balancer, EntryCounts, pair_key

    n = len(captions)
    secs: dict[str, tuple[float, float]] = {}
    if make_clean is not None:
        secs["clean"] = timed2(make_clean(captions))[0]
    arr = pa.array(captions, pa.string())
    for b, matcher in matchers.items():
        secs[f"match_{b}"], m = timed2(lambda matcher=matcher: matcher.match_arrow(arr))
        if b == "metaclip":
            matched = m
    n_entries = len(matchers["metaclip"])
    secs["count"], counts = timed2(lambda: EntryCounts.from_matches(matched, n_entries))
    t = max(1, round(FULL_T * n / FULL_POOL))

    def balance() -> Any:
        keys = [pair_key(u, c) for u, c in zip(urls, captions, strict=True)]
        return Balancer(counts, BalanceConfig(max_per_query=t)).decide_batch(keys, matched)

    secs["balance"], batch = timed2(balance)
    facts = {
        "max_per_query": t,
        "matched_share": counts.matched_pairs / n,
        "kept_share": float(np.mean(batch.keep)),
        "mean_matches_per_pair": float(counts.counts.sum() / n),
        "entries_matched": int(np.count_nonzero(counts.counts)),
        "head_entries": int(np.count_nonzero(counts.counts > t)),
    }
    return secs, facts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.curate", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="rows per run, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-alnum", action="store_true", help="skip the alnum boundary rule")
    p.add_argument("--no-clean", action="store_true", help="skip the clean stage")
    p.add_argument("--output", default=str(RESULTS / "curate.json"))
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    load_start = os.getloadavg()  # other work on the machine skews timings: recorded

    from pipeline.curate.match import MatchConfig, Matcher
    from pipeline.curate.queries import QueryConfig, build_queries, query_entries, source_counts

    setup: dict[str, Any] = {}
    setup["build_queries_s"], table = timed(lambda: build_queries(QueryConfig()))
    entries = query_entries(table)
    setup["entries"] = len(entries)
    setup["sources"] = source_counts(table)
    print(f"query list: {len(entries):,} entries {setup['sources']} "
          f"in {setup['build_queries_s']:.1f} s")  # fmt: skip

    boundaries = ["metaclip"] if args.no_alnum else ["metaclip", "alnum"]
    matchers = {}
    for b in boundaries:
        setup[f"matcher_build_s_{b}"], matchers[b] = timed(
            lambda b=b: Matcher(entries, MatchConfig(boundary=b))
        )
        blob = pickle.dumps(matchers[b])
        setup[f"matcher_pickle_bytes_{b}"] = len(blob)
        setup[f"matcher_unpickle_s_{b}"], _ = timed(lambda blob=blob: pickle.loads(blob))
        print(f"matcher ({b}): built in {setup[f'matcher_build_s_{b}']:.2f} s, pickles to "
              f"{len(blob) / 1e6:.1f} MB, unpickles (rebuilds) in "
              f"{setup[f'matcher_unpickle_s_{b}']:.2f} s")  # fmt: skip

    n_max = max(sizes)
    setup["generate_s"], captions = timed(lambda: synthetic_captions(n_max, args.seed, entries))
    urls = [f"https://img{i % 997}.example.com/{i}.jpg" for i in range(n_max)]
    print(f"{n_max:,} synthetic captions in {setup['generate_s']:.1f} s, e.g. {captions[:3]}")

    make_clean, clean_note = (None, "skipped") if args.no_clean else load_cleaner()
    print(f"clean: {clean_note}")

    stages = (["clean"] if make_clean else []) + [f"match_{b}" for b in boundaries]
    stages += ["count", "balance"]
    clocks = ("cpu", "wall")
    runs = {c: {n: {s: [] for s in stages} for n in sizes} for c in clocks}
    facts: dict[int, dict[str, Any]] = {}
    for rep in range(args.repeats):
        for n in sizes:
            secs, facts[n] = run_once(captions[:n], urls[:n], matchers, make_clean)
            for stage, (wall, cpu) in secs.items():
                runs["wall"][n][stage].append(wall)
                runs["cpu"][n][stage].append(cpu)
            print(f"repeat {rep + 1} n={n:>9,} us/row cpu (wall): "
                  + "  ".join(f"{s} {1e6 * c / n:.2f} ({1e6 * w / n:.2f})"
                              for s, (w, c) in secs.items()), flush=True)  # fmt: skip

    per_row = {
        c: {n: {s: 1e6 * statistics.median(runs[c][n][s]) / n for s in stages} for n in sizes}
        for c in clocks
    }
    core = ["match_metaclip", "count", "balance"]
    header = f"{'rows':>10}" + "".join(f"{s:>16}" for s in stages) + f"{'match+count+bal':>17}"
    for c in clocks:
        print(f"\nus per row, {c} time (median of {args.repeats} repeats, one core)")
        print(header)
        print("-" * len(header))
        for n in sizes:
            row = per_row[c][n]
            total = sum(row[s] for s in core)
            print(f"{n:>10,}" + "".join(f"{row[s]:>16.2f}" for s in stages) + f"{total:>17.2f}")
    small, big = min(sizes), max(sizes)
    cpu = per_row["cpu"]
    flat = {s: cpu[big][s] / cpu[small][s] for s in stages if cpu[small][s] > 0}
    print(f"\ncpu cost per row at {big:,} / at {small:,}: "
          + ", ".join(f"{s} {r:.2f}x" for s, r in flat.items()))  # fmt: skip
    print()
    for n in sizes:
        f = facts[n]
        print(f"{n:>10,}: t={f['max_per_query']}, matched {100 * f['matched_share']:.1f}%, "
              f"kept {100 * f['kept_share']:.1f}%, {f['mean_matches_per_pair']:.1f} entries/pair, "
              f"{f['entries_matched']:,} entries seen, {f['head_entries']:,} over t")  # fmt: skip

    out = {
        "command": ("python -m bench.curate " + " ".join(argv or [])).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "setup": setup,
        "clean": clean_note,
        "stages": stages,
        "repeats": args.repeats,
        "us_per_row_median": {c: {str(n): per_row[c][n] for n in sizes} for c in clocks},
        "cpu_ratio_largest_to_smallest": flat,
        "seconds_all_runs": {c: {str(n): runs[c][n] for n in sizes} for c in clocks},
        "facts": {str(n): facts[n] for n in sizes},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
