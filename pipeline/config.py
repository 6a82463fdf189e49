"""Typed configuration: one frozen dataclass per component, loadable from TOML or YAML.

A config file holds the same settings as the command line, as flat keys named like the
flags (``image_size = 256`` or ``image-size: 256``). Unknown keys and bad values are
configuration errors, reported with the offending key.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "webp", "png")
PROJECT_UA = "wit-builder/0.1 (image-text dataset builder; opt-out token: wit-builder)"
DEFAULT_OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


class ConfigError(ValueError):
    """A bad setting: the message names the setting and what is wrong with it."""


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    min_image_size: int = 0
    max_aspect_ratio: float = math.inf
    # Refused from the header, before any pixel is decoded (decompression bombs).
    max_image_pixels: int = 89_478_485
    # img2dataset's ``exif`` field (its default is on; ours is off: the tags may hold a GPS
    # position or a camera's serial number).
    extract_exif: bool = False

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(
                f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}"
            )
        if self.encode_format not in ENCODE_FORMATS:
            raise ConfigError(
                f"encode_format must be one of {', '.join(ENCODE_FORMATS)}, got {self.encode_format!r}"
            )
        if not 0 <= self.encode_quality <= 100:
            raise ConfigError(f"encode_quality must be in 0..100, got {self.encode_quality}")
        if self.min_image_size < 0:
            raise ConfigError(f"min_image_size must be >= 0, got {self.min_image_size}")
        if not self.max_aspect_ratio >= 1:
            raise ConfigError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if self.max_image_pixels <= 0:
            raise ConfigError(f"max_image_pixels must be positive, got {self.max_image_pixels}")


@dataclass(frozen=True)
class FetchConfig:
    timeout: float = 10.0  # seconds: connect, and each read
    total_timeout: float = 0.0  # seconds for one attempt, all hops; 0 means 3 x timeout
    retries: int = 2  # extra attempts after the first, on connection errors, 429 and 5xx
    backoff_base: float = 0.5  # seconds; attempt n waits base * 2**n, with full jitter
    backoff_max: float = 30.0
    max_retry_after: float = 60.0  # a longer Retry-After ends the retries
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    per_host_connections: int = 8
    host_delay: float = 0.0  # seconds between the starts of two requests to one host
    allow_networks: tuple[str, ...] = ()
    respect_robots: bool = False
    opt_out_directives: tuple[str, ...] = DEFAULT_OPT_OUT_DIRECTIVES
    user_agent: str = PROJECT_UA

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.max_redirects < 0:
            raise ConfigError(f"max_redirects must be >= 0, got {self.max_redirects}")
        if self.max_bytes <= 0:
            raise ConfigError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.per_host_connections <= 0:
            raise ConfigError(
                f"per_host_connections must be positive, got {self.per_host_connections}"
            )
        if self.host_delay < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("host_delay, backoff_base and backoff_max must be >= 0")
        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"allow_networks: {net!r} is not a CIDR network") from None


@dataclass(frozen=True)
class DownloadConfig:
    url_col: str = "url"
    caption_col: str = "caption"
    samples_per_shard: int = 10_000
    processes: int = 0  # 0: one per CPU core
    threads: int = 32
    decode_threads: int = 2
    fetch: FetchConfig = field(default_factory=FetchConfig)
    image: ImageConfig = field(default_factory=ImageConfig)

    def __post_init__(self) -> None:
        if self.samples_per_shard <= 0:
            raise ConfigError(f"samples_per_shard must be positive, got {self.samples_per_shard}")
        if self.processes < 0:
            raise ConfigError(f"processes must be >= 0 (0: one per CPU core), got {self.processes}")
        if self.threads <= 0:
            raise ConfigError(f"threads must be positive, got {self.threads}")
        if self.decode_threads <= 0:
            raise ConfigError(f"decode_threads must be positive, got {self.decode_threads}")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Coerce a value read from a file or argv to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        raise ConfigError(f"{name} must be a list or a comma-separated string, got {value!r}")
    if isinstance(value, bool) and isinstance(default, int | float):
        # bool is an int in Python: true would silently become 1 (a 1-pixel image_size).
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}")
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}") from None
    return str(value) if isinstance(default, str) else value


def build_config(cls: type, settings: Mapping[str, Any]) -> Any:
    """Build a (possibly nested) config dataclass from flat settings named like its fields.

    Nested dataclass fields (``fetch``, ``image``) take their own fields from the same flat
    mapping. Unknown keys raise ConfigError.
    """
    flat = {k.replace("-", "_"): v for k, v in settings.items()}
    used: set[str] = set()

    def make(c: type) -> Any:
        kwargs: dict[str, Any] = {}
        defaults = c()
        for f in fields(c):
            default = getattr(defaults, f.name)
            if dataclasses.is_dataclass(default):
                kwargs[f.name] = make(type(default))
            elif f.name in flat and flat[f.name] is not None:
                kwargs[f.name] = _coerce(f.name, flat[f.name], default)
                used.add(f.name)
        return c(**kwargs)

    result = make(cls)
    unknown = sorted(set(flat) - used - {k for k, v in flat.items() if v is None})
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return result


def load_settings(path: str | Path) -> dict[str, Any]:
    """Read flat settings from a TOML or YAML file (by extension)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            raise ConfigError(f"config file must be .toml, .yaml or .yml: {p}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config file {p}: {e}") from None
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        if type(e).__module__.startswith("yaml"):
            raise ConfigError(f"cannot parse config file {p}: {e}") from None
        raise
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    # Sections ([fetch], [image]) are accepted and flattened: the names are unique.
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


# Help text for every setting, shared by every entry point that exposes them as flags.
HELP: dict[str, str] = {
    "url_col": "input column holding the image URL (default: url)",
    "caption_col": "input column holding the caption (default: caption)",
    "samples_per_shard": "input rows per shard (default: 10000)",
    "processes": "worker processes, one shard each at a time; 0 = one per CPU core (default: 0)",
    "threads": "fetch threads per process (default: 32)",
    "decode_threads": "of those, how many decode, resize and encode at once (default: 2)",
    "timeout": "seconds to connect and for each read (default: 10)",
    "total_timeout": "seconds for one attempt including redirects; 0 = 3 x timeout (default: 0)",
    "retries": "extra attempts on connection errors, 429 and 5xx (default: 2)",
    "backoff_base": "first backoff in seconds, doubled each retry, with full jitter (default: 0.5)",
    "backoff_max": "longest backoff in seconds (default: 30)",
    "max_retry_after": "a longer Retry-After gives up instead of waiting (default: 60)",
    "max_redirects": "redirects followed per URL, each hop re-checked (default: 5)",
    "max_bytes": "bytes per image, enforced while streaming (default: 20000000)",
    "per_host_connections": "simultaneous requests per host and process (default: 8)",
    "host_delay": "seconds between the starts of two requests to one host (default: 0)",
    "allow_networks": "comma-separated CIDRs of non-public addresses that may be fetched, "
    "e.g. 127.0.0.0/8 (default: none; loopback, private, link-local, multicast and "
    "reserved addresses are refused)",
    "respect_robots": "honour robots.txt, fetched once per host and cached (default: false)",
    "opt_out_directives": "X-Robots-Tag directives that refuse an image "
    "(default: noai,noimageai,noindex,noimageindex)",
    "user_agent": "User-Agent header (default names the project and its opt-out token)",
    "image_size": "target size in pixels for the resize mode (default: 256)",
    "resize_mode": "no | keep_ratio | keep_ratio_largest | center_crop | border (default: keep_ratio)",
    "resize_only_if_bigger": "leave an image that already fits untouched: no upscale, and no "
    "crop or border either, as img2dataset (default: false)",
    "encode_format": "jpg | webp | png (default: jpg)",
    "encode_quality": "JPEG/WebP quality 0-100 (default: 95)",
    "min_image_size": "refuse images whose smaller side is below this (default: 0)",
    "max_aspect_ratio": "refuse images with a larger long/short side ratio (default: inf)",
    "max_image_pixels": "refuse images with more pixels, read from the header before decoding "
    "(default: 89478485)",
    "extract_exif": "write each image's EXIF tags as a JSON text field `exif`, as img2dataset "
    "does by default; the tags may include a GPS position (default: false)",
}

# The build job's settings (pipeline.spark.build.BuildConfig and the stage configs it nests).
HELP.update(
    {
        "output": "output directory or fsspec URL such as s3://bucket/ds (default: data/demo)",
        "warc": "WARC/WAT files or globs, local or fsspec URLs",
        "pairs": "pair lists (Parquet, CSV, TSV, JSONL or a JSON array)",
        "crawl": "seed pages to crawl",
        "queries": "a saved query list (Parquet, JSON list or text); default: build one",
        "engine": "download engine: native (default) or img2dataset (its pyspark distributor, "
        "behind our address guard as a loopback proxy; it refuses respect_robots and ignores "
        "the byte cap, politeness and backoff settings: see docs/CONFIG.md)",
        "sample_sheet": "images on the dataset card's contact sheet (default: 24)",
        "caption_sources": "texts that may become a caption, in order of preference "
        "(default: alt,figcaption,title)",
        "lazy_src_attributes": "attributes read when src is missing or a data: placeholder "
        "(default: data-src,data-lazy-src,data-original)",
        "max_url_length": "longer image URLs are skipped (default: 2048)",
        "max_html_bytes": "HTML documents are parsed up to this many bytes (default: 5000000)",
        "max_depth": "crawl: link hops from a seed (default: 2)",
        "max_pages": "crawl: pages visited, seeds included (default: 100)",
        "same_host": "crawl: follow links only to the seeds' hosts (default: true)",
        "follow_nofollow": "crawl: also follow rel=nofollow links (default: false)",
        "min_chars": "captions shorter than this are dropped (default: 5, as LAION)",
        "max_chars": "captions longer than this are dropped (default: 1000)",
        "fix_text": "repair mojibake and entities with ftfy (default: true)",
        "boilerplate_words": "captions made only of these are dropped (image, photo, logo ...)",
        "drop_file_names": "drop captions that are file names such as IMG_1234.jpg (default: true)",
        "drop_urls": "drop captions that are URLs (default: true)",
        "languages": "keep only captions in these languages, e.g. en (default: any)",
        "keep_unknown_language": "keep captions whose language cannot be told (default: true)",
        "key": "candidate dedup key: url (one pair per image) or url_caption (default: url)",
        "drop_params": "query parameters removed when URLs are normalized (utm_*, fbclid ...)",
        "rewrite_urls": "replace candidate URLs by their normalized form (default: true)",
        "unigram_source": "query list unigrams: wordfreq, corpus or none (default: wordfreq)",
        "min_unigram_count": "unigrams need at least this count (default: 100, as CLIP)",
        "wordfreq_lang": "wordfreq language (default: en)",
        "wordfreq_list": "wordfreq list: large or small (default: large)",
        "wordfreq_corpus_words": "nominal corpus size that turns wordfreq frequencies into counts",
        "corpus_files": "text files: corpus unigrams and PMI bigrams",
        "bigrams": "add bigrams with a high PMI from corpus_files (default: true)",
        "min_bigram_pmi": "bigram PMI threshold (default: 30, MetaCLIP's)",
        "min_bigram_count": "bigrams need at least this count (default: 1)",
        "title_files": "files of titles (e.g. Wikipedia articles), one per line",
        "wordnet": "add WordNet 3.0 lemmas (default: true)",
        "wordnet_dir": "WordNet 3.0 database folder (default: /usr/share/wordnet)",
        "wordnet_mode": "lemmas (every synset lemma) or names (one per synset)",
        "numbers": "add the numbers 0..99 (default: true)",
        "lowercase": "match and store queries lowercased (default: true)",
        "boundary": "query match boundaries: metaclip or alnum (default: metaclip)",
        "max_per_query": "balancing: t, the per-query target of MetaCLIP's rule, met in "
        "expectation for pairs that match one query, exceeded where pairs match several "
        "(default: 20000, as CLIP)",
        "seed": "balancing draw seed: reruns with one seed keep the same pairs (default: 0)",
        "exact": "image dedup: drop byte-identical images (default: true)",
        "near": "image dedup: drop pHash near-duplicates (default: true)",
        "max_hamming": "image dedup: pHash bits that may differ (default: 4 of 64)",
    }
)


def prog_name(module: str, script: str) -> str:
    """The usage line's command: the installed ``script`` (wit-download, ...) when that is
    what runs, else ``python -m module``."""
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


class CliParser(argparse.ArgumentParser):
    """argparse with one error line (not usage + error) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def iter_settings(cls: type) -> list[tuple[str, Any]]:
    """(name, default) of every leaf setting of a (nested) config dataclass."""
    out: list[tuple[str, Any]] = []
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(iter_settings(type(value)))
        else:
            out.append((f.name, value))
    return out


def add_setting_flags(
    parser: Any,
    cls: type,
    skip: Iterable[str] = (),
    help_texts: Mapping[str, str] = HELP,
    metavars: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per setting of ``cls``; unset flags stay None (the file decides).

    A name shared by nested configs (``threads`` of the crawler and of the downloader) is
    one flag that sets them all, as a config file's key does."""
    seen: set[str] = set(skip)  # skipped: the caller has flags of its own for those
    for name, default in iter_settings(cls):
        if name in seen:
            continue
        seen.add(name)
        flag = "--" + name.replace("_", "-")
        help_text = help_texts.get(name, name)
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                dest=name,
                default=None,
                nargs="?",
                const="true",
                metavar="BOOL",
                help=help_text,
            )
        else:
            metavar = {"allow_networks": "CIDR,...", **(metavars or {})}.get(
                name, name.upper().split("_")[-1]
            )
            parser.add_argument(flag, dest=name, default=None, metavar=metavar, help=help_text)


def settings_from_args(args: Any, cls: type) -> dict[str, Any]:
    """Flags that were given, as flat settings, to lay over a config file's."""
    return {
        name: getattr(args, name)
        for name, _ in iter_settings(cls)
        if getattr(args, name, None) is not None
    }
