"""WIT's query list (CLIP section 2.2) built the way MetaCLIP's ``build_metadata.py`` does.

Sources, deduplicated into one list that remembers every entry's source(s):

- ``number``: "0" to "99", with which MetaCLIP seeds its list.
- ``unigram``: words occurring at least ``min_unigram_count`` (100) times in a reference
  corpus. Offline the reference is wordfreq's English list standing in for English
  Wikipedia: wordfreq gives a word's frequency f (its share of all tokens), and we read it
  as the count ``f x wordfreq_corpus_words`` in a nominal corpus of 4e9 words (about
  English Wikipedia's size when CLIP was built). "At least 100 times" is then
  ``f >= 2.5e-8`` (Zipf >= 1.4): ~197k words. wordfreq's "large" list stops at f = 1e-8,
  so thresholds below ``1e-8 x corpus_words`` cannot be honoured (a warning says so).
  wordfreq stores multi-digit numbers as zero patterns ("00", "0.0"); those are not
  words and are left out. Or the reference is a user corpus (text files).
- ``bigram``: word pairs of a user corpus with pointwise mutual information at least
  ``min_bigram_pmi``, counted in the same single pass as its unigrams. PMI is nltk's
  (which MetaCLIP calls): ``log2(n(a b) * N / (n(a) * n(b)))``, N the corpus's token
  count. MetaCLIP's threshold, 30, is on Wikipedia's ~4e9 tokens; PMI cannot exceed
  ``log2(N)``, so a smaller corpus needs a lower threshold (a warning gives the bound).
- ``title``: titles from user files, one per line (e.g. Wikipedia articles above a
  search volume, selected by the user); underscores read as spaces, as in Wikipedia dumps.
- ``wordnet``: WordNet 3.0 from a local folder through nltk's ``WordNetCorpusReader``:
  every lemma of every synset (``lemmas``), or one head word per synset (``names``, what
  MetaCLIP's ``build_metadata.py`` takes from ``synset.name()``); underscores to spaces.

Every entry is NFC-normalized, whitespace-collapsed and (``lowercase``, default)
lowercased, and needs at least one letter or digit (MetaCLIP drops single punctuation
marks; we also drop symbol and emoji tokens). Entries are sorted, so an entry's id (its
row) depends only on the set of entries. Saved as Parquet: ``entry``, ``source``
(list), ``unigram_count``, ``bigram_count``, ``pmi`` (null where unknown).

``python -m pipeline.curate.queries --output queries.parquet [--corpus FILE ...]``
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import ConfigError, build_config, load_settings

log = logging.getLogger(__name__)

SOURCES = ("number", "unigram", "bigram", "title", "wordnet", "file")
UNIGRAM_SOURCES = ("wordfreq", "corpus", "none")
WORDNET_MODES = ("lemmas", "names")
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDFREQ_FLOOR = 1e-8  # the smallest frequency in wordfreq's "large" lists

QUERY_SCHEMA = pa.schema(
    [
        pa.field("entry", pa.string(), nullable=False),
        pa.field("source", pa.list_(pa.string()), nullable=False),
        pa.field("unigram_count", pa.int64()),
        pa.field("bigram_count", pa.int64()),
        pa.field("pmi", pa.float64()),
    ]
)
CONFIG_METADATA_KEY = b"wit.query_config"

# The lexicographer file names of WordNet 3.0 (lexnames(5WN)). Debian's wordnet-base
# leaves the `lexnames` file out, and nltk's reader will not start without it.
WORDNET_LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
_WORDNET_FILES = ("index.noun", "index.verb", "index.adj", "index.adv", "data.noun")

# Corpus tokens: letter/digit runs, joined by an inner apostrophe or period ("don't",
# "u.s"), as wordfreq tokenizes English. Anything else separates tokens.
_TOKEN = re.compile(r"[^\W_]+(?:['.][^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})
_SMASHED_NUMBER = re.compile(r"\d[\d.,]+")  # wordfreq's multi-digit numbers, all zeros
_HAS_ALNUM = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class QueryConfig:
    unigram_source: str = "wordfreq"  # "wordfreq", "corpus" (corpus_files) or "none"
    min_unigram_count: int = 100  # CLIP: "all words occurring at least 100 times"
    wordfreq_lang: str = "en"
    wordfreq_list: str = "large"
    wordfreq_corpus_words: int = 4_000_000_000  # nominal corpus size, see module docstring
    corpus_files: tuple[str, ...] = ()  # text files: corpus unigrams and PMI bigrams
    bigrams: bool = True  # PMI bigrams from corpus_files (none without them)
    min_bigram_pmi: float = 30.0  # MetaCLIP's, for a Wikipedia-sized corpus
    min_bigram_count: int = 1  # MetaCLIP keeps every bigram seen; raise it on small corpora
    title_files: tuple[str, ...] = ()
    wordnet: bool = True
    wordnet_dir: str = DEFAULT_WORDNET_DIR
    wordnet_mode: str = "lemmas"  # "lemmas" (every synset lemma) or "names" (one per synset)
    numbers: bool = True  # "0".."99"
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.unigram_source not in UNIGRAM_SOURCES:
            raise ConfigError(
                f"unigram_source must be one of {', '.join(UNIGRAM_SOURCES)}, "
                f"got {self.unigram_source!r}"
            )
        if self.unigram_source == "corpus" and not self.corpus_files:
            raise ConfigError("unigram_source 'corpus' needs corpus_files")
        if self.wordnet_mode not in WORDNET_MODES:
            raise ConfigError(
                f"wordnet_mode must be one of {', '.join(WORDNET_MODES)}, got {self.wordnet_mode!r}"
            )
        if self.min_unigram_count < 1 or self.min_bigram_count < 1:
            raise ConfigError("min_unigram_count and min_bigram_count must be >= 1")
        if self.wordfreq_corpus_words <= 0:
            raise ConfigError(
                f"wordfreq_corpus_words must be positive, got {self.wordfreq_corpus_words}"
            )
        if math.isnan(self.min_bigram_pmi):
            raise ConfigError("min_bigram_pmi must be a number")


def normalize_entry(text: str, lowercase: bool = True) -> str | None:
    """An entry as stored: NFC, one space between words, lowercased; None if it holds no
    letter or digit (punctuation, symbols, emoji)."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if lowercase:
        text = text.lower()
    return text if _HAS_ALNUM.search(text) else None


# -- sources ----------------------------------------------------------------------------


def wordfreq_unigrams(
    lang: str = "en",
    wordlist: str = "large",
    corpus_words: int = 4_000_000_000,
    min_count: int = 100,
) -> dict[str, int]:
    """wordfreq's words with a nominal count ``round(f x corpus_words) >= min_count``."""
    import wordfreq  # optional dependency, imported where used

    if min_count / corpus_words < WORDFREQ_FLOOR:
        log.warning(
            "wordfreq lists stop at frequency %.0e: a threshold of %d in %d words asks for "
            "less, so rarer words are missing",
            WORDFREQ_FLOOR,
            min_count,
            corpus_words,
        )
    out: dict[str, int] = {}
    for word, freq in wordfreq.get_frequency_dict(lang, wordlist).items():
        count = round(freq * corpus_words)
        if count >= min_count and not _SMASHED_NUMBER.search(word):
            out[word] = count
    return out


def _open_text(path: str) -> Any:
    import fsspec  # local paths, URLs (s3://...) and .gz/.bz2/... alike

    return fsspec.open(path, "rt", encoding="utf-8", errors="replace", compression="infer")


def iter_lines(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        if "://" not in path and not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        with _open_text(path) as f:
            yield from f


@dataclass
class CorpusCounts:
    """Unigram and bigram counts of a corpus, from one pass. Counts add (``a + b``)."""

    unigrams: Counter = field(default_factory=Counter)
    bigrams: Counter = field(default_factory=Counter)  # (a, b) -> count
    tokens: int = 0

    def __add__(self, other: CorpusCounts) -> CorpusCounts:
        return CorpusCounts(
            self.unigrams + other.unigrams,
            self.bigrams + other.bigrams,
            self.tokens + other.tokens,
        )


def tokenize(line: str, lowercase: bool = True) -> Iterator[tuple[str, bool]]:
    """Tokens of a line, each with whether it follows the previous token across whitespace
    only (a bigram never spans punctuation or a line break)."""
    line = line.translate(_APOSTROPHES)
    if lowercase:
        line = line.lower()
    prev_end = -1
    for m in _TOKEN.finditer(line):
        start = m.start()
        yield m.group(), prev_end >= 0 and line[prev_end:start].isspace()
        prev_end = m.end()


def count_corpus(lines: Iterable[str], lowercase: bool = True) -> CorpusCounts:
    """Count unigrams and adjacent bigrams in one pass over the lines."""
    counts = CorpusCounts()
    unigrams, bigrams = counts.unigrams, counts.bigrams
    for line in lines:
        prev: str | None = None
        tokens: list[str] = []
        for token, joined in tokenize(line, lowercase):
            tokens.append(token)
            if joined and prev is not None:
                bigrams[prev, token] += 1
            prev = token
        unigrams.update(tokens)
        counts.tokens += len(tokens)
    return counts


def bigram_pmi(n_ab: int, n_a: int, n_b: int, n: int) -> float:
    """nltk's ``BigramAssocMeasures.pmi``: ``log2(n_ab * n) - log2(n_a * n_b)``."""
    return math.log2(n_ab * n) - math.log2(n_a * n_b)


def pmi_bigrams(
    counts: CorpusCounts, min_pmi: float, min_count: int = 1
) -> dict[str, tuple[int, float]]:
    """``"a b" -> (count, pmi)`` for bigrams with count >= min_count and pmi >= min_pmi."""
    uni, n = counts.unigrams, counts.tokens
    out: dict[str, tuple[int, float]] = {}
    for (a, b), n_ab in counts.bigrams.items():
        if n_ab >= min_count:
            pmi = bigram_pmi(n_ab, uni[a], uni[b], n)
            if pmi >= min_pmi:
                out[f"{a} {b}"] = (n_ab, pmi)
    if not out and counts.bigrams and n > 1:
        log.warning(
            "no bigram reaches PMI %.1f: on %d tokens PMI is at most %.1f; lower min_bigram_pmi",
            min_pmi,
            n,
            math.log2(n),
        )
    return out


def read_titles(paths: Iterable[str]) -> list[str]:
    """Titles, one per line; underscores are spaces (Wikipedia's dump spelling)."""
    return [s for line in iter_lines(paths) if (s := line.strip().replace("_", " "))]


def missing_wordnet_files(wordnet_dir: str) -> list[str]:
    """The WordNet 3.0 database files that ``wordnet_dir`` lacks (none: it can be read)."""
    return [name for name in _WORDNET_FILES if not (Path(wordnet_dir) / name).is_file()]


def open_wordnet(wordnet_dir: str = DEFAULT_WORDNET_DIR) -> Any:
    """nltk's ``WordNetCorpusReader`` on a local WordNet 3.0 database folder.

    Two adjustments let it read Debian's ``wordnet-base``: the missing ``lexnames`` file
    is supplied from ``WORDNET_LEXNAMES``, and the mapping to nltk's own downloadable
    WordNet (used only for the Open Multilingual Wordnet) is skipped, since nltk would
    look for that download.
    """
    root = Path(wordnet_dir)
    missing = missing_wordnet_files(wordnet_dir)
    if missing:
        raise FileNotFoundError(
            f"no WordNet 3.0 database in {root} (missing {', '.join(missing)}): install "
            "Debian's wordnet-base (apt-get install wordnet-base) or give wordnet_dir, "
            "a folder holding index.noun, data.noun and the other database files"
        )
    import warnings

    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    resolved = str(root.resolve())
    # nltk >= 3.9 reads only below its data paths; this folder was named explicitly.
    if resolved not in nltk.data.path:
        nltk.data.path.append(resolved)
    has_lexnames = (root / "lexnames").is_file()

    class LocalWordNetReader(WordNetCorpusReader):
        def open(self, file: str) -> Any:
            if file == "lexnames" and not has_lexnames:
                return io.StringIO(
                    "".join(f"{i:02d}\t{name}\t0\n" for i, name in enumerate(WORDNET_LEXNAMES))
                )
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")
        return LocalWordNetReader(resolved, None)


def wordnet_entries(
    wordnet_dir: str = DEFAULT_WORDNET_DIR, mode: str = "lemmas", lowercase: bool = True
) -> list[str]:
    """WordNet entries, underscores as spaces: every synset lemma, or each synset's head."""
    reader = open_wordnet(wordnet_dir)
    if mode == "lemmas" and lowercase:
        names: Iterable[str] = reader.all_lemma_names()  # the index: lowercased, and fast
    elif mode == "lemmas":
        names = (name for ss in reader.all_synsets() for name in ss.lemma_names())
    elif mode == "names":
        # "dog.n.01" -> "dog"; rsplit keeps lemmas holding a period ("st._david").
        names = (ss.name().rsplit(".", 2)[0] for ss in reader.all_synsets())
    else:
        raise ConfigError(f"wordnet_mode must be one of {', '.join(WORDNET_MODES)}, got {mode!r}")
    return sorted({name.replace("_", " ") for name in names})


# -- the list ---------------------------------------------------------------------------


@dataclass
class _Row:
    sources: set[str] = field(default_factory=set)
    unigram_count: int | None = None
    bigram_count: int | None = None
    pmi: float | None = None


class QueryListBuilder:
    """Collects entries from sources, merging duplicates; ``table()`` sorts them."""

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase
        self.rows: dict[str, _Row] = {}
        self.dropped = Counter()  # source -> entries with no letter or digit

    def add(self, source: str, text: str, **known: Any) -> None:
        entry = normalize_entry(text, self.lowercase)
        if entry is None:
            self.dropped[source] += 1
            return
        row = self.rows.get(entry)
        if row is None:
            row = self.rows[entry] = _Row()
        row.sources.add(source)
        for name, value in known.items():
            old = getattr(row, name)
            # Two spellings that normalize alike ("Dog", "dog") add their counts.
            setattr(row, name, value if old is None or name == "pmi" else old + value)

    def table(self) -> pa.Table:
        entries = sorted(self.rows)
        rows = [self.rows[e] for e in entries]
        order = {s: i for i, s in enumerate(SOURCES)}
        return pa.Table.from_pydict(
            {
                "entry": entries,
                "source": [sorted(r.sources, key=lambda s: order.get(s, 99)) for r in rows],
                "unigram_count": [r.unigram_count for r in rows],
                "bigram_count": [r.bigram_count for r in rows],
                "pmi": [r.pmi for r in rows],
            },
            schema=QUERY_SCHEMA,
        )


def build_queries(config: QueryConfig | None = None) -> pa.Table:
    """The query list of ``config``'s sources, deduplicated, in ``QUERY_SCHEMA``."""
    config = config or QueryConfig()
    builder = QueryListBuilder(config.lowercase)
    if config.numbers:
        for i in range(100):
            builder.add("number", str(i))
    corpus: CorpusCounts | None = None
    if config.corpus_files and (config.unigram_source == "corpus" or config.bigrams):
        corpus = count_corpus(iter_lines(config.corpus_files), config.lowercase)
    if config.unigram_source == "wordfreq":
        unigrams = wordfreq_unigrams(
            config.wordfreq_lang,
            config.wordfreq_list,
            config.wordfreq_corpus_words,
            config.min_unigram_count,
        )
        for word, count in unigrams.items():
            builder.add("unigram", word, unigram_count=count)
    elif config.unigram_source == "corpus" and corpus is not None:
        for word, count in corpus.unigrams.items():
            if count >= config.min_unigram_count:
                builder.add("unigram", word, unigram_count=count)
    if config.bigrams and corpus is not None:
        bigrams = pmi_bigrams(corpus, config.min_bigram_pmi, config.min_bigram_count)
        for pair, (count, pmi) in bigrams.items():
            builder.add("bigram", pair, bigram_count=count, pmi=pmi)
    for title in read_titles(config.title_files):
        builder.add("title", title)
    if config.wordnet:
        for name in wordnet_entries(config.wordnet_dir, config.wordnet_mode, config.lowercase):
            builder.add("wordnet", name)
    table = builder.table()
    meta = json.dumps(dataclasses.asdict(config), sort_keys=True).encode()
    return table.replace_schema_metadata({CONFIG_METADATA_KEY: meta})


def source_counts(table: pa.Table) -> dict[str, int]:
    """Entries per source (an entry with several sources counts under each)."""
    counts: Counter = Counter()
    for sources in table.column("source").to_pylist():
        counts.update(sources)
    return {s: counts[s] for s in SOURCES if counts[s]} | {
        s: n for s, n in sorted(counts.items()) if s not in SOURCES
    }


def save_queries(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write the list as Parquet; a local file appears whole or not at all."""
    import pyarrow.parquet as pq

    path = str(path)
    if "://" in path:
        import fsspec

        with fsspec.open(path, "wb") as f:
            pq.write_table(table, f)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def load_queries(path: str | os.PathLike[str], lowercase: bool = False) -> pa.Table:
    """A query list in ``QUERY_SCHEMA``, row order kept (it gives the entry ids); see
    ``load_query_list``."""
    return load_query_list(path, lowercase)[0]


def load_query_list(
    path: str | os.PathLike[str], lowercase: bool = False
) -> tuple[pa.Table, dict[str, int]]:
    """A query list in ``QUERY_SCHEMA``, and what loading changed in it.

    Reads our Parquet, a JSON list of strings (MetaCLIP's released ``metadata.json``) or
    a text file with one entry per line (source ``file`` for the last two). Every entry
    is normalized as built lists are and as captions are matched (``normalize_entry``:
    NFC, one space between words, and lowercased when ``lowercase``: pass the matcher's
    setting): an entry with stray spaces or in NFD would otherwise never match a cleaned
    caption. Blank lines are skipped; entries without a letter or digit are dropped;
    entries equal to an earlier one once normalized are dropped (the first keeps its
    place). The counts: ``entries`` kept, ``changed`` by normalizing, ``dropped`` (no
    letter or digit), ``repeats``.

    Raises FileNotFoundError for a missing local file and ``InputError`` (one line) for
    a list that cannot be read or has the wrong shape.
    """
    from pipeline.sources.pairs import InputError

    path = str(path)
    if "://" not in path and not Path(path).is_file():
        raise FileNotFoundError(f"query list not found: {path}")
    try:
        table = _read_query_file(path)
    except InputError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"query list not found: {path}") from None
    except (OSError, ValueError, EOFError) as e:  # pyarrow's errors are ValueErrors too
        raise InputError(f"cannot read the query list {path}: {type(e).__name__}: {e}") from None
    keep: list[int] = []
    entries: list[str] = []
    seen: set[str] = set()
    counts = {"entries": 0, "changed": 0, "dropped": 0, "repeats": 0}
    for i, given in enumerate(table.column("entry").to_pylist()):
        if not given.strip():
            continue
        entry = normalize_entry(given, lowercase)
        if entry is None:
            counts["dropped"] += 1
            continue
        if entry in seen:
            counts["repeats"] += 1
            continue
        seen.add(entry)
        counts["changed"] += entry != given
        keep.append(i)
        entries.append(entry)
    counts["entries"] = len(entries)
    if len(keep) < table.num_rows:
        table = table.take(pa.array(keep, pa.int64()))
    table = table.set_column(0, QUERY_SCHEMA.field("entry"), pa.array(entries, pa.string()))
    return table, counts


def _read_query_file(path: str) -> pa.Table:
    """The list as written, in ``QUERY_SCHEMA`` (entries not yet normalized)."""
    from pipeline.sources.pairs import InputError

    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as f:
                table = pq.read_table(f)
        else:
            table = pq.read_table(path)
        if "entry" not in table.column_names:
            raise InputError(
                f"{path}: a query list needs an 'entry' column; columns are: "
                f"{', '.join(table.column_names) or '(none)'}"
            )
        if not pa.types.is_string(table.column("entry").type) and not pa.types.is_large_string(
            table.column("entry").type
        ):
            raise InputError(
                f"{path}: the 'entry' column holds {table.column('entry').type}, not text"
            )
        if table.column("entry").null_count:
            raise InputError(f"{path}: null entries")
        columns = {}
        for f in QUERY_SCHEMA:
            if f.name in table.column_names:
                columns[f.name] = table.column(f.name).cast(f.type)
            elif f.name == "source":
                columns[f.name] = pa.array([["file"]] * table.num_rows, f.type)
            else:
                columns[f.name] = pa.nulls(table.num_rows, f.type)
        return pa.table(columns, schema=QUERY_SCHEMA).replace_schema_metadata(table.schema.metadata)
    with _open_text(path) as f:
        if suffix == ".json":
            data = json.load(f)
            if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
                raise InputError(f"{path}: a JSON query list must be a list of strings")
            raw: Sequence[str] = data
        else:
            raw = [line.rstrip("\r\n") for line in f]
    n = len(raw)
    return pa.table(
        {
            "entry": list(raw),
            "source": [["file"]] * n,
            "unigram_count": pa.nulls(n, pa.int64()),
            "bigram_count": pa.nulls(n, pa.int64()),
            "pmi": pa.nulls(n, pa.float64()),
        },
        schema=QUERY_SCHEMA,
    )


def query_entries(table: pa.Table) -> list[str]:
    """The entries in id order (entry id = row)."""
    return table.column("entry").to_pylist()


# -- command line -----------------------------------------------------------------------

_HELP = {
    "unigram_source": "wordfreq | corpus | none: where unigrams come from (default: wordfreq)",
    "min_unigram_count": "keep words seen at least this often (default: 100)",
    "wordfreq_lang": "wordfreq language (default: en)",
    "wordfreq_list": "wordfreq list: large | small | best (default: large)",
    "wordfreq_corpus_words": "nominal corpus size turning wordfreq frequencies into counts "
    "(default: 4000000000, about English Wikipedia)",
    "corpus_files": "text files (local, URL, .gz) for corpus unigrams and PMI bigrams",
    "bigrams": "add PMI bigrams from the corpus files (default: true)",
    "min_bigram_pmi": "keep bigrams with PMI (log2) at least this (default: 30, MetaCLIP's "
    "value for Wikipedia; at most log2(corpus tokens))",
    "min_bigram_count": "keep bigrams seen at least this often (default: 1)",
    "title_files": "title lists, one per line (e.g. Wikipedia articles above a search volume)",
    "wordnet": "add WordNet lemmas (default: true)",
    "wordnet_dir": f"WordNet 3.0 database folder (default: {DEFAULT_WORDNET_DIR})",
    "wordnet_mode": "lemmas (every synset lemma) | names (one head word per synset, as "
    "MetaCLIP) (default: lemmas)",
    "numbers": "add 0..99 as MetaCLIP does (default: true)",
    "lowercase": "lowercase every entry (default: true; wordfreq is lowercased)",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.curate.queries",
        description="Build the WIT query list (unigrams, PMI bigrams, titles, WordNet).",
    )
    parser.add_argument("--output", required=True, help="Parquet file to write")
    parser.add_argument("--config", help="TOML or YAML file with these settings")
    for f in dataclasses.fields(QueryConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, dest=f.name, nargs="?", const="true", metavar="BOOL", help=_HELP[f.name]
            )
        elif f.name.endswith("_files"):
            parser.add_argument(flag, dest=f.name, nargs="+", metavar="FILE", help=_HELP[f.name])
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.split("_")[-1].upper(),
                                help=_HELP[f.name])  # fmt: skip
    args = parser.parse_args(argv)
    settings = load_settings(args.config) if args.config else {}
    settings.update(
        {f.name: getattr(args, f.name) for f in dataclasses.fields(QueryConfig)
         if getattr(args, f.name) is not None}
    )  # fmt: skip
    try:
        config = build_config(QueryConfig, settings)
        table = build_queries(config)
    except (ConfigError, FileNotFoundError) as e:
        parser.error(str(e))
    save_queries(table, args.output)
    counts = source_counts(table)
    print(f"{table.num_rows:,} entries -> {args.output}")
    for source, n in counts.items():
        print(f"  {source:<8}{n:>10,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
