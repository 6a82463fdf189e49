"""The query list: corpus unigrams and PMI bigrams by hand, titles, WordNet, wordfreq."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import ConfigError
from pipeline.curate.queries import (
    QUERY_SCHEMA,
    QueryConfig,
    bigram_pmi,
    build_queries,
    count_corpus,
    load_queries,
    load_query_list,
    main,
    normalize_entry,
    pmi_bigrams,
    query_entries,
    save_queries,
    source_counts,
    wordfreq_unigrams,
    wordnet_entries,
)

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "index.noun").is_file(), reason="Debian wordnet-base is not installed"
)

# 16 tokens. The comma keeps "big the" from being a bigram; a line break would too.
CORPUS = "New York is big\nnew york is old\nthe dog is big, the cat is old\n"
# unigrams: new 2, york 2, is 4, big 2, old 2, the 2, dog 1, cat 1
# bigrams: new york 2, york is 2, is big 2, is old 2, the dog 1, dog is 1, the cat 1, cat is 1
# PMI = log2(n_ab * N / (n_a * n_b)), N = 16:
#   new york: log2(2*16 / (2*2)) = 3;  the dog, the cat: log2(1*16 / (2*1)) = 3
#   york is, is big, is old: log2(2*16 / (2*4)) = 2;  dog is, cat is: log2(16 / (1*4)) = 2


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return str(path)


def bare(**kwargs: object) -> QueryConfig:
    """A config with only the sources a test names."""
    base = {"unigram_source": "none", "wordnet": False, "numbers": False}
    return QueryConfig(**(base | kwargs))  # type: ignore[arg-type]


def rows(table: pa.Table) -> dict[str, dict]:
    return {r["entry"]: r for r in table.to_pylist()}


def test_corpus_counts_one_pass() -> None:
    counts = count_corpus(CORPUS.splitlines())
    assert counts.tokens == 16
    assert counts.unigrams == {
        "new": 2, "york": 2, "is": 4, "big": 2, "old": 2, "the": 2, "dog": 1, "cat": 1,
    }  # fmt: skip
    assert counts.bigrams["new", "york"] == 2
    assert ("big", "the") not in counts.bigrams  # the comma breaks the chain
    assert ("big", "new") not in counts.bigrams  # so does the line break
    assert sum(counts.bigrams.values()) == 12


def test_bigram_pmi_by_hand() -> None:
    counts = count_corpus(CORPUS.splitlines())
    by_hand = {"new york": 3.0, "the dog": 3.0, "the cat": 3.0}
    got = pmi_bigrams(counts, min_pmi=3.0, min_count=1)
    assert got.keys() == by_hand.keys()
    for pair, pmi in by_hand.items():
        assert got[pair][1] == pytest.approx(pmi)
    assert pmi_bigrams(counts, min_pmi=3.0, min_count=2) == {"new york": (2, pytest.approx(3.0))}
    assert len(pmi_bigrams(counts, min_pmi=2.0)) == 8


def test_pmi_is_nltks() -> None:
    from nltk.metrics import BigramAssocMeasures

    for n_ab, n_a, n_b, n in [(2, 2, 2, 16), (1, 2, 1, 16), (7, 50, 90, 10_000)]:
        assert bigram_pmi(n_ab, n_a, n_b, n) == pytest.approx(
            BigramAssocMeasures.pmi(n_ab, (n_a, n_b), n)
        )


def test_corpus_unigrams_and_bigrams(corpus: str) -> None:
    config = bare(
        unigram_source="corpus", corpus_files=(corpus,), min_unigram_count=2, min_bigram_pmi=3.0
    )
    table = build_queries(config)
    assert table.schema == QUERY_SCHEMA.with_metadata(table.schema.metadata)
    got = rows(table)
    assert set(got) == {
        "new", "york", "is", "big", "old", "the", "new york", "the dog", "the cat",
    }  # fmt: skip
    assert got["is"]["unigram_count"] == 4 and got["is"]["source"] == ["unigram"]
    assert got["new york"]["bigram_count"] == 2
    assert got["new york"]["pmi"] == pytest.approx(3.0)
    assert got["new york"]["unigram_count"] is None
    assert query_entries(table) == sorted(got)  # ids follow the sorted entries


def test_titles_merge_with_other_sources(tmp_path: Path, corpus: str) -> None:
    titles = tmp_path / "titles.txt"
    titles.write_text("New_York\n\n  Hot   Dog \nEiffel Tower\n!!!\n", encoding="utf-8")
    table = build_queries(
        bare(corpus_files=(corpus,), min_bigram_pmi=3.0, title_files=(str(titles),))
    )
    got = rows(table)
    assert got["new york"]["source"] == ["bigram", "title"]
    assert got["hot dog"]["source"] == ["title"]
    assert "eiffel tower" in got
    assert "!!!" not in got  # no letter or digit
    assert "new" not in got  # no unigram source
    assert source_counts(table) == {"bigram": 3, "title": 3}


def test_numbers_and_normalization() -> None:
    table = build_queries(bare(numbers=True))
    assert query_entries(table) == sorted(str(i) for i in range(100))
    assert normalize_entry("  Hot\u00a0 DOG ") == "hot dog"
    assert normalize_entry("Cafe\u0301") == "café"  # NFC
    assert normalize_entry("Dog", lowercase=False) == "Dog"
    assert normalize_entry("😂") is None and normalize_entry("--") is None


@needs_wordnet
def test_wordnet_lemmas() -> None:
    entries = set(wordnet_entries(str(WORDNET)))
    assert {"dog", "hot dog", "frankfurter", "new york", "ice cream"} <= entries
    assert len(entries) == 147_306  # every lemma of WordNet 3.0
    assert not any("_" in e for e in entries)


def write_tiny_wordnet(folder: Path) -> None:
    """A three-synset WordNet 3.0 database in the real file format (offsets are bytes)."""
    synsets = [("dog", "domestic_dog"), ("frank", "hot_dog", "Frankfurter"), ("hotdog", "hot_dog")]
    header = "  1 A tiny WordNet in the format of wndb(5WN), without a lexnames file.\n"
    lines, offsets, at = [], [], len(header.encode())
    for words in synsets:
        lemmas = " ".join(f"{w} 0" for w in words)
        line = f"{at:08d} 05 n {len(words):02x} {lemmas} 000 | a gloss  \n"
        offsets.append(at)
        lines.append(line)
        at += len(line.encode())
    index: dict[str, list[int]] = {}
    for words, offset in zip(synsets, offsets, strict=True):
        for w in words:
            index.setdefault(w.lower(), []).append(offset)
    folder.mkdir()
    (folder / "data.noun").write_text(header + "".join(lines))
    (folder / "index.noun").write_text(
        header
        + "".join(
            f"{lemma} n {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
            for lemma, offs in sorted(index.items())
        )
    )
    for pos in ("verb", "adj", "adv"):
        (folder / f"data.{pos}").write_text(header)
        (folder / f"index.{pos}").write_text(header)
    for pos in ("noun", "verb", "adj", "adv"):
        (folder / f"{pos}.exc").write_text("")


def test_wordnet_modes_on_a_tiny_database(tmp_path: Path) -> None:
    folder = tmp_path / "wn"
    write_tiny_wordnet(folder)
    lemmas = {"dog", "domestic dog", "frank", "hot dog", "frankfurter", "hotdog"}
    assert set(wordnet_entries(str(folder))) == lemmas
    assert set(wordnet_entries(str(folder), lowercase=False)) == lemmas - {"frankfurter"} | {
        "Frankfurter"
    }
    # MetaCLIP's choice: one head word per synset, so "hot dog" is not among them.
    assert wordnet_entries(str(folder), mode="names") == ["dog", "frank", "hotdog"]


def test_wordnet_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_entries(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        build_queries(bare(wordnet=True, wordnet_dir=str(tmp_path / "nowhere")))


def test_wordfreq_unigrams() -> None:
    words = wordfreq_unigrams()  # 4e9 nominal words, at least 100 times
    assert words["the"] == pytest.approx(0.0537 * 4e9, rel=0.01)
    assert "dog" in words and "zqxjvwk" not in words
    assert min(words.values()) >= 100
    assert "00" not in words and "0.0" not in words  # wordfreq's smashed numbers
    assert "3" in words
    assert 150_000 < len(words) < 250_000
    # A bigger threshold keeps fewer words; the frequent stay.
    fewer = wordfreq_unigrams(min_count=100_000)
    assert "the" in fewer and len(fewer) < len(words) / 4


def test_save_load_roundtrip(tmp_path: Path, corpus: str) -> None:
    table = build_queries(bare(corpus_files=(corpus,), min_bigram_pmi=2.0, numbers=True))
    path = tmp_path / "sub" / "queries.parquet"
    save_queries(table, path)
    loaded = load_queries(path)
    assert loaded.equals(table)
    meta = json.loads(loaded.schema.metadata[b"wit.query_config"])
    assert meta["min_bigram_pmi"] == 2.0
    assert not list(path.parent.glob("*.tmp-*"))


def test_load_metaclip_json_and_text(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps(["Dog", "hot dog", "Dog", ""]))
    table = load_queries(tmp_path / "metadata.json")
    assert query_entries(table) == ["Dog", "hot dog"]  # order kept: it gives the ids
    assert table.column("source").to_pylist() == [["file"], ["file"]]
    (tmp_path / "q.txt").write_text("b\na\n\nb\n")
    assert query_entries(load_queries(tmp_path / "q.txt")) == ["b", "a"]
    pa.parquet.write_table(pa.table({"entry": ["x", "y"]}), tmp_path / "min.parquet")
    minimal = load_queries(tmp_path / "min.parquet")
    assert minimal.schema.names == QUERY_SCHEMA.names
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="list of strings"):
        load_queries(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_queries(tmp_path / "absent.parquet")


@pytest.mark.parametrize("fmt", ["txt", "json", "parquet"])
def test_a_loaded_list_is_normalized_as_captions_are_matched(tmp_path: Path, fmt: str) -> None:
    from pipeline.curate.clean import clean_text
    from pipeline.curate.match import Matcher

    given = ["dog ", "  cat", "Cafe\u0301", "hot  dog", "Dog", "cat", "***", "", "Cat\u00a0Tree"]
    path = tmp_path / f"q.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(given) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(given))
    else:
        pa.parquet.write_table(pa.table({"entry": given}), path)
    table, counts = load_query_list(path, lowercase=True)
    entries = query_entries(table)
    assert entries == ["dog", "cat", "caf\u00e9", "hot dog", "cat tree"]
    assert counts == {"entries": 5, "changed": 5, "dropped": 1, "repeats": 2}
    assert table.schema.names == QUERY_SCHEMA.names and table.num_rows == 5
    matcher = Matcher(entries)
    found = {
        caption: [entries[i] for i in matcher.match(clean_text(caption))]
        for caption in ("a dog here", "a cat here", "Caf\u00e9 cr\u00e8me", "hot dog stand")
    }
    assert found == {
        "a dog here": ["dog"],
        "a cat here": ["cat"],
        "Caf\u00e9 cr\u00e8me": ["caf\u00e9"],
        "hot dog stand": ["dog", "hot dog"],
    }
    # Case is kept when matching keeps it (MetaCLIP's list has "Dog" and "dog").
    kept_case = query_entries(load_queries(path))
    assert kept_case == ["dog", "cat", "Caf\u00e9", "hot dog", "Dog", "Cat Tree"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.parquet", {"query": ["dog"]}, r"needs an 'entry' column; columns are: query"),
        ("q.parquet", {"entry": [1, 2]}, r"'entry' column holds int64, not text"),
        ("q.parquet", b"PAR1 not parquet", r"cannot read the query list .*q.parquet: "),
        ("q.json", '{"a": 1}', r"a JSON query list must be a list of strings"),
        ("q.json", '["dog", 3]', r"a JSON query list must be a list of strings"),
        ("q.json", '["dog",', r"cannot read the query list .*q.json: JSONDecodeError"),
    ],
)
def test_an_unusable_list_is_one_input_error(
    tmp_path: Path, name: str, content: object, message: str
) -> None:
    from pipeline.sources.pairs import InputError

    path = tmp_path / name
    if isinstance(content, dict):
        pa.parquet.write_table(pa.table(content), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as raised:
        load_queries(path)
    assert "\n" not in str(raised.value)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unigram_source"):
        QueryConfig(unigram_source="wikipedia")
    with pytest.raises(ConfigError, match="corpus_files"):
        QueryConfig(unigram_source="corpus")
    with pytest.raises(ConfigError, match="wordnet_mode"):
        QueryConfig(wordnet_mode="synsets")
    with pytest.raises(ConfigError):
        QueryConfig(min_bigram_pmi=math.nan)


def test_cli(tmp_path: Path, corpus: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.parquet"
    rc = main(
        ["--output", str(out), "--unigram-source", "corpus", "--corpus-files", corpus,
         "--min-unigram-count", "2", "--min-bigram-pmi", "3", "--wordnet", "false"]
    )  # fmt: skip
    assert rc == 0
    assert "unigram" in capsys.readouterr().out
    got = set(query_entries(load_queries(out)))
    assert {"new york", "is", "0", "99"} <= got and "cat" not in got
    with pytest.raises(SystemExit):
        main(["--output", str(out), "--unigram-source", "corpus"])
