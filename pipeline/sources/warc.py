"""Candidates from WARC files (HTML responses) and WAT files (link metadata), streaming.

warcio parses each record (WARC headers, HTTP headers, chunked transfer and content
encodings). Record boundaries are found here, not by ``warcio.ArchiveIterator``, because
its iterator dies on the first bad record and takes the rest of the file with it. Here a
bad record costs only itself:

* gzip files are read member by member (a standard WARC compresses each record alone);
  a corrupt member is counted and reading resumes at the next gzip header. A member that
  starts inside a record (block compression) joins the one before it; a file compressed
  as one stream (``gzip file.warc``) is detected and streamed.
* in the decompressed stream, a record whose headers cannot be parsed is counted and
  reading resumes at the next line that starts a WARC record (``WARC/1.x``).
* a record whose payload cannot be used (a WAT record that is not WAT JSON, a body whose
  decoder raises) is counted and the next record is read normally, its boundary known
  from Content-Length. A body that is not in its declared Content-Encoding is read as
  stored (warcio's fallback: crawlers often store bodies decoded and keep the header).

Everything streams: one gzip member (at most ``MEMBER_LIMIT`` of a file without member
boundaries, which is then read as a stream) is in memory at a time. Per-file counters, all under ``warc.``, add up:
``warc.records = warc.records.html + warc.records.wat + warc.records.other + sum(warc.skip.*)``.
Extraction counters (``extract.*``, see ``pipeline.sources.html``) come on top.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from pipeline.curate.records import Candidate, SourceKind
from pipeline.sources.html import (
    ExtractConfig,
    HtmlPage,
    UrlResolver,
    image_candidate,
    is_html_content_type,
    may_have_images,
    resolve_url,
)
from pipeline.sources.pairs import InputError
from pipeline.stats.counters import Counters

_READ_SIZE = 1 << 20
_OUT_SIZE = 1 << 20  # bounded output per zlib call: a gzip bomb cannot blow up one call
_MAX_LINE = 64 * 1024  # a header line longer than this is not a header
_GZIP_MAGIC = b"\x1f\x8b\x08"
MEMBER_LIMIT = 64 * 1024 * 1024  # a member decompressing past this is a single-stream file
MAX_WAT_JSON_BYTES = 64 * 1024 * 1024


class SkipReason:
    """Why a record gave no candidates besides being of another kind (``warc.skip.*``)."""

    MALFORMED_RECORD = "malformed_record"  # WARC or HTTP headers unparseable, no length
    CORRUPT_GZIP = "corrupt_gzip"  # a gzip member that does not decompress
    BAD_CONTENT_ENCODING = "bad_content_encoding"  # chunked/gzip/br body that fails to decode
    BAD_JSON = "bad_json"  # a WAT metadata record that is not JSON of the WAT layout
    HTTP_STATUS = "http_status"  # an HTML response other than 200: not a page's content


# ---- bytes: plain or gzip, member by member -------------------------------------------


class _ChunkStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (wrapped in io.BufferedReader
    for fast readline)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


_DATA, _END, _CORRUPT = 0, 1, 2


def _gzip_events(raw: IO[bytes], first: bytes) -> Iterator[tuple[int, bytes]]:
    """Decompress concatenated gzip members: (_DATA, bytes) pieces, (_END, b"") after each
    complete member, (_CORRUPT, b"") for a member that fails (reading then resumes at the
    next gzip header). A file cut inside a member just ends after its last _DATA."""
    buf = first
    eof = False

    def more() -> bytes:
        return raw.read(_READ_SIZE)

    while True:
        while len(buf) < len(_GZIP_MAGIC) and not eof:
            chunk = more()
            buf += chunk
            eof = not chunk
        if not buf:
            return
        if not buf.startswith(_GZIP_MAGIC):
            stripped = buf.lstrip(b"\x00\r\n\t ")
            if len(stripped) < len(buf):
                buf = stripped  # padding between members or at the end is not damage
                continue
            yield _CORRUPT, b""
            buf = _skip_to_magic(buf, 1, more)
            continue
        d = zlib.decompressobj(31)
        try:
            while not d.eof:
                if not buf:
                    buf = more()
                    if not buf:
                        return  # cut inside a member: what was yielded stands
                out = d.decompress(buf, _OUT_SIZE)
                buf = d.unconsumed_tail
                if out:
                    yield _DATA, out
            buf = d.unused_data
            yield _END, b""
        except zlib.error:
            yield _CORRUPT, b""
            buf = _skip_to_magic(buf, 1, more)


def _skip_to_magic(buf: bytes, start: int, more: Callable[[], bytes]) -> bytes:
    """Drop bytes up to the next gzip header (returned with what follows it), or to EOF."""
    while True:
        i = buf.find(_GZIP_MAGIC, start)
        if i >= 0:
            return buf[i:]
        keep = buf[-(len(_GZIP_MAGIC) - 1) :]  # a header may straddle two reads
        nxt = more()
        if not nxt:
            return b""
        buf, start = keep + nxt, 0


def _record_streams(raw: IO[bytes], counters: Counters) -> Iterator[IO[bytes]]:
    """Decompressed streams to read records from: one per run of gzip members that starts
    on a record (one member per record in a standard WARC, so a damaged member never
    spills into the next), or one stream for a plain or single-stream gzip file.

    A member that does not start with ``WARC/`` continues the record before it (files
    compressed in fixed-size blocks), so it joins the run instead of starting one.
    """
    first = raw.read(_READ_SIZE)
    if not first.startswith(_GZIP_MAGIC):
        rest = iter(lambda: raw.read(_READ_SIZE), b"")
        yield io.BufferedReader(_ChunkStream(_chain([first], rest)), _READ_SIZE)
        return
    events = _gzip_events(raw, first)
    run: list[bytes] = []  # complete members of the current run
    member: list[bytes] = []  # the member being decompressed
    size = 0
    in_damage = False
    for kind, data in events:
        if kind == _DATA:
            if not member and run and _starts_record(data):
                yield io.BytesIO(b"".join(run))  # a record boundary: the run is whole
                run, size = [], 0
            member.append(data)
            size += len(data)
            if size > MEMBER_LIMIT:
                # A run this large is a file compressed as one stream (or in blocks): read
                # the rest as one stream (no member boundaries to resynchronise on).
                counters.add("warc.single_stream_gzip")
                pieces = run + member
                yield io.BufferedReader(
                    _ChunkStream(_chain(pieces, _stream_data(events, counters))), _READ_SIZE
                )
                return
        elif kind == _END:
            run.extend(member)
            member, in_damage = [], False
        else:
            if run:
                yield io.BytesIO(b"".join(run))
            run, member, size = [], [], 0
            if not in_damage:  # one count per damaged stretch, however many false starts
                counters.add("warc.records")
                counters.add("warc.skip." + SkipReason.CORRUPT_GZIP)
                in_damage = True
    if run or member:  # the file may end inside a member: parse what arrived
        yield io.BytesIO(b"".join(run + member))


def _starts_record(data: bytes) -> bool:
    head = data[:64].lstrip(b"\r\n")
    return head.startswith(b"WARC/") or (len(head) < 5 and b"WARC/".startswith(head))


def _stream_data(events: Iterator[tuple[int, bytes]], counters: Counters) -> Iterator[bytes]:
    for kind, data in events:
        if kind == _DATA:
            yield data
        elif kind == _CORRUPT:
            counters.add("warc.records")
            counters.add("warc.skip." + SkipReason.CORRUPT_GZIP)
            return


def _chain(first: Iterable[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


# ---- records ----------------------------------------------------------------------------


class _Lines:
    """A stream whose readline is capped: warcio reads header lines without a limit, and a
    line with no newline in a damaged file must not pull the whole file into memory."""

    __slots__ = ("_readline", "read")

    def __init__(self, stream: IO[bytes]) -> None:
        self.read = stream.read
        self._readline = stream.readline

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_LINE:
            size = _MAX_LINE
        return self._readline(size)


def iter_records(stream: IO[bytes], counters: Counters) -> Iterator[Any]:
    """warcio records (``ArcWarcRecord``, HTTP headers parsed) of one decompressed stream.

    The caller reads what it needs from ``record.content_stream()`` before asking for the
    next record; the rest of the record is then skipped by its Content-Length. Malformed
    records are counted and skipped up to the next ``WARC/`` line.
    """
    from warcio.exceptions import ArchiveLoadFailed
    from warcio.recordloader import ArcWarcRecordLoader
    from warcio.statusandheaders import StatusAndHeadersParserException

    loader = ArcWarcRecordLoader(verify_http=False, arc2warc=False)
    lines = _Lines(stream)
    resyncing = False

    def malformed() -> None:
        counters.add("warc.records")
        counters.add("warc.skip." + SkipReason.MALFORMED_RECORD)

    while True:
        line = lines.readline()
        if not line:
            return
        if not line.startswith(b"WARC/"):
            if line.strip() and not resyncing:  # blank lines separate records
                malformed()
                resyncing = True
            continue
        resyncing = False
        try:
            record = loader.parse_record_stream(
                lines, statusline=line, known_format="warc", no_record_parse=True
            )
        except (ArchiveLoadFailed, StatusAndHeadersParserException, EOFError, ValueError):
            malformed()
            resyncing = True
            continue
        length = record.rec_headers.get_header("Content-Length")
        if length is None or not length.strip().isdigit():
            malformed()  # without a length the record's end is unknown: resynchronise
            resyncing = True
            continue
        body = record.raw_stream
        try:
            record.http_headers = loader.load_http_headers(
                record.rec_type,
                record.rec_headers.get_header("WARC-Target-URI") or "",
                body,
                int(length),
            )
        except (StatusAndHeadersParserException, EOFError, ValueError):
            malformed()  # the length is known: skip exactly this record, no resync
            _drain(body)
            continue
        counters.add("warc.records")
        yield record
        _drain(body)
        if getattr(body, "limit", 0) > 0:  # the stream ended before Content-Length bytes
            counters.add("warc.truncated_records")


def _drain(body: Any) -> None:
    while body.read(_READ_SIZE):
        pass


def _http_status(record: Any) -> int | None:
    if record.http_headers is None:
        return None
    try:
        return int(record.http_headers.get_statuscode())
    except (TypeError, ValueError):
        return None


# ---- candidates ---------------------------------------------------------------------------


def _html_candidates(
    record: Any, config: ExtractConfig, counters: Counters
) -> list[Candidate] | None:
    """Candidates of an HTML response record; None when the record is not one."""
    if record.rec_type != "response" or record.http_headers is None:
        return None
    content_type = record.http_headers.get_header("Content-Type")
    if not is_html_content_type(content_type):
        identified = record.rec_headers.get_header("WARC-Identified-Payload-Type")
        if not (content_type is None and is_html_content_type(identified)):
            return None
    if _http_status(record) != 200:
        counters.add("warc.skip." + SkipReason.HTTP_STATUS)
        return []
    try:
        data = record.content_stream().read(config.max_html_bytes + 1)
    except Exception:  # decoders for gzip, deflate, br and chunked each raise their own types
        counters.add("warc.skip." + SkipReason.BAD_CONTENT_ENCODING)
        return []
    counters.add("warc.records.html")
    counters.add("warc.html_bytes", len(data))
    if len(data) > config.max_html_bytes:
        data = data[: config.max_html_bytes]
        counters.add("extract.html_cut")
    if not may_have_images(data):
        return []
    page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
    page = HtmlPage(data, page_url, content_type)
    return page.candidates(SourceKind.WARC.value, config, counters)


def _wat_candidates(
    record: Any, config: ExtractConfig, counters: Counters
) -> list[Candidate] | None:
    """Candidates of a WAT metadata record; None when the record is not one (a WAT file's
    records for requests, warcinfo and non-HTML responses carry no HTML-Metadata)."""
    if record.rec_type != "metadata":
        return None
    content_type = (record.rec_headers.get_header("Content-Type") or "").lower()
    if not content_type.startswith("application/json"):
        return None
    raw = record.raw_stream.read(MAX_WAT_JSON_BYTES + 1)
    try:
        if len(raw) > MAX_WAT_JSON_BYTES:
            raise ValueError("WAT record too large")
        envelope = json.loads(raw)["Envelope"]
        warc_header = envelope.get("WARC-Header-Metadata") or {}
        response = (envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata")
        html_meta = response.get("HTML-Metadata") if isinstance(response, dict) else None
        if not isinstance(html_meta, dict):
            return None  # a WAT record about something that is not an HTML page
        page_url = warc_header.get("WARC-Target-URI") or ""
        links = html_meta.get("Links") or []
        head = html_meta.get("Head") or {}
        status = str((response.get("Response-Message") or {}).get("Status", "200"))
        if not isinstance(links, list) or not isinstance(head, dict):
            raise ValueError("Links is not a list or Head is not an object")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        counters.add("warc.skip." + SkipReason.BAD_JSON)
        return []
    if status != "200":
        counters.add("warc.skip." + SkipReason.HTTP_STATUS)
        return []
    counters.add("warc.records.wat")
    base = page_url
    if isinstance(head.get("Base"), str):
        resolved, _ = resolve_url(head["Base"], page_url)
        base = resolved or page_url
    resolver = UrlResolver(base)
    out: list[Candidate] = []
    for link in links:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        attrs = {
            "src": _str_or_none(link.get("url")),
            "alt": _str_or_none(link.get("alt")),
            "title": _str_or_none(link.get("title")),
        }
        c = image_candidate(attrs, resolver, page_url, SourceKind.WAT.value, config, counters)
        if c is not None:
            out.append(c)
    return out


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def iter_candidates(
    path: str,
    config: ExtractConfig | None = None,
    counters: Counters | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[Candidate]:
    """Stream the candidates of one WARC or WAT file (gzip or plain; a local path or any
    fsspec URL), counting into ``counters`` as it goes (complete once exhausted).

    A file that cannot be opened raises ``InputError`` (one line naming the path); damage
    inside a readable file never raises, it is counted under ``warc.skip.*``.
    """
    import fsspec

    config = config or ExtractConfig()
    counters = counters if counters is not None else Counters()
    try:
        opened = fsspec.open(path, "rb", **(storage_options or {})).open()
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    counters.add("warc.files")
    with opened as raw:
        for stream in _record_streams(raw, counters):
            for record in iter_records(stream, counters):
                found = _html_candidates(record, config, counters)
                if found is None:
                    found = _wat_candidates(record, config, counters)
                if found is None:
                    counters.add("warc.records.other")
                    continue
                yield from found


def read_candidates(
    path: str, config: ExtractConfig | None = None
) -> tuple[list[Candidate], Counters]:
    """All candidates of one file and its counters (for files that fit in memory)."""
    counters = Counters()
    return list(iter_candidates(path, config, counters)), counters


WARC_SUFFIXES = (".warc", ".warc.gz", ".wat", ".wat.gz")


def expand_paths(
    patterns: Iterable[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Paths, folders and glob patterns (local or fsspec URLs) to a list of file paths:
    a file as given; a folder as its WARC and WAT files (names ending in
    ``.warc[.gz]``/``.wat[.gz]``, sorted, hidden and ``_``-prefixed files skipped, not
    recursive); a glob as the files it matches, sorted (folders it matches are skipped).

    A pattern that matches no file raises ``InputError``, on the driver: a typo must not
    produce an empty dataset quietly, and a folder must not reach a task that cannot open
    it.
    """
    from fsspec.core import url_to_fs

    out: list[str] = []
    for pattern in patterns:
        fs, root = url_to_fs(pattern, **(storage_options or {}))
        remote = "://" in pattern

        def shown(p: str, fs: Any = fs, remote: bool = remote) -> str:
            return fs.unstrip_protocol(p) if remote else p

        if any(ch in root for ch in "*?["):
            found = fs.glob(root, detail=True)
            matches = sorted(p for p, info in found.items() if info.get("type") != "directory")
            if not matches:
                raise InputError(f"no input file matches {pattern}")
            out.extend(shown(m) for m in matches)
        elif fs.isdir(root):
            files = sorted(
                info["name"]
                for info in fs.ls(root, detail=True)
                if info.get("type") == "file"
                and info["name"].rsplit("/", 1)[-1][:1] not in "._"
                and info["name"].lower().endswith(WARC_SUFFIXES)
            )
            if not files:
                raise InputError(
                    f"no WARC or WAT file in folder {pattern}: expected files ending in "
                    f"{', '.join(WARC_SUFFIXES)}"
                )
            out.extend(shown(p) for p in files)
        else:
            if not fs.exists(root):
                raise InputError(f"input file not found: {pattern}")
            out.append(pattern)
    return out
