"""The dataset card: DIR/README.md with the funnel as a table and a chart, and a contact
sheet of sample images with their captions, so a person can see what was built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.stats.funnel import Funnel


def _samples(out: Path, n: int) -> list[tuple[bytes, str]]:
    """The first ``n`` samples of the final dataset (duplicates left out), in shard order."""
    import pyarrow.parquet as pq

    from pipeline.shards.reader import find_shards, iter_samples

    final_path = out / "final.parquet"
    if not final_path.is_file():
        return []
    keep = set(pq.ParquetFile(final_path).read(columns=["key"]).column("key").to_pylist())
    if not keep:
        return []
    picked: list[tuple[bytes, str]] = []
    for sample in iter_samples(find_shards(out)):
        if sample.key in keep:
            picked.append((sample.image, sample.caption))
            if len(picked) >= n:
                break
    return picked


def write_report(
    out: str | Path, funnel: Funnel, stats: dict[str, Any], sample_sheet: int = 24
) -> None:
    from pipeline.shards.contact_sheet import contact_sheet

    out = Path(out)
    funnel.plot(out / "funnel.png")
    drawn = contact_sheet(
        _samples(out, sample_sheet),
        out / "contact_sheet.png",
        n=sample_sheet,
        title="sample of the final dataset",
    )
    q = stats.get("queries", {})
    dl = stats.get("download", {})
    dd = stats.get("dedup", {})
    share = q.get("share_matched")
    top_before = ", ".join(f"{e} ({n:,})" for e, n in q.get("top_entries_before", [])[:10])
    top_after = ", ".join(f"{e} ({n:,})" for e, n in q.get("top_entries_after", [])[:10])
    loaded = q.get("list_loaded")  # a given list: what normalizing it changed
    loaded_line = (
        [
            f"- the list given: {loaded['changed']:,} entries normalized as captions are "
            f"matched, {loaded['dropped']:,} dropped (no letter or digit), "
            f"{loaded['repeats']:,} repeats dropped"
        ]
        if loaded
        else []
    )
    lines = [
        f"# Dataset card: {out.name}",
        "",
        "Built by wit-builder (`spark-submit jobs/build_wit.py`): candidates extracted, captions",
        "cleaned, candidates deduplicated, matched against a WIT-style query list and balanced",
        f"with MetaCLIP's rule at t = {q.get('max_per_query', '?'):,} pairs per query (a pair is kept",
        "with probability 1 - prod(1 - t / max(count, t)) over its queries: a query ends near t",
        "when its pairs match nothing else, above t when they are kept for other queries too),",
        "images downloaded, exact and near duplicates removed. Every candidate's fate is in",
        "`candidates/`; every selected pair's download status in `ledger/`; the final samples",
        "in `final.parquet`.",
        "",
        "## Funnel",
        "",
        funnel.markdown(),
        "",
        "![funnel](funnel.png)",
        "",
        "## Queries",
        "",
        f"- {q.get('entries', 0):,} entries; {q.get('entries_matched', 0):,} matched at least one caption",
        *loaded_line,
        f"- share of clean, unique pairs that matched a query: {100 * share:.1f}%"
        if share is not None
        else "- no pairs",
        f"- most matched before balancing: {top_before or '-'}",
        f"- most matched after: {top_after or '-'}",
        "",
        "## Download",
        "",
        f"- {dl.get('successes', 0):,} of {dl.get('rows', 0):,} selected pairs downloaded;"
        f" {dl.get('bytes_downloaded', 0) / 1e6:.1f} MB read, {dl.get('bytes_written', 0) / 1e6:.1f} MB written",
        "- by status: "
        + ", ".join(
            f"{k} {v:,}"
            for k, v in sorted(dl.get("status_counts", {}).items(), key=lambda kv: -kv[1])
        ),
        f"- duplicates removed: {dd.get('exact', 0):,} exact (same bytes), {dd.get('near', 0):,} near (pHash)",
        "",
        "## Samples",
        "",
        f"![{drawn} samples](contact_sheet.png)",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
