"""Status codes and Arrow schemas shared by every stage.

Every input candidate ends as exactly one ledger row carrying one of these statuses.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class Status(StrEnum):
    """Outcome of one candidate. ``success`` or the class of failure."""

    SUCCESS = "success"
    INVALID_ROW = "invalid_row"  # the input row itself cannot be parsed (bad CSV/JSON line)
    INVALID_URL = "invalid_url"  # malformed, or a scheme other than http/https
    INVALID_CAPTION = "invalid_caption"  # empty, missing or undecodable caption text
    BLOCKED_ADDRESS = "blocked_address"  # resolves to a non-public address not allowed
    HTTP_ERROR = "http_error"  # a final 4xx/5xx answer
    TIMEOUT = "timeout"  # connect, read or total deadline exceeded
    CONNECTION_ERROR = "connection_error"  # DNS, refused, reset, truncated body
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"  # bytes or pixels over the cap (bombs), or an output side over
    # its format's limit (JPEG 65535 px, WebP 16383)
    NOT_IMAGE = "not_image"  # the body is not a recognised image format
    DECODE_ERROR = "decode_error"  # an image header, but the pixels cannot be decoded
    TOO_SMALL = "too_small"  # smaller than --min-image-size
    BAD_ASPECT_RATIO = "bad_aspect_ratio"  # beyond --max-aspect-ratio
    OPT_OUT = "opt_out"  # X-Robots-Tag noai/noimageai, or robots.txt disallows
    # A bug of ours met on this row (its message names the exception): the row is kept and
    # its shard still commits, instead of one row failing the shard on every rerun.
    INTERNAL_ERROR = "internal_error"


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

# What the engine writes of every sample (its JSON in the tar, its row in the shard
# Parquet), in order; typed as the ledger types them. The input's other columns follow,
# and one named as any of these is kept as ``input_<name>``.
SAMPLE_FIELDS: tuple[str, ...] = (
    "key", "url", "caption", "status", "error_message", "width", "height",
    "original_width", "original_height", "sha256", "num_bytes", "http_status",
)  # fmt: skip
# With --extract-exif, every sample also has img2dataset's ``exif``: a JSON object of the
# image's EXIF tags as text (null when they cannot be read). An input column so named is
# kept as ``input_exif`` either way.
EXIF_FIELD = "exif"
RESERVED_FIELDS: tuple[str, ...] = (*SAMPLE_FIELDS, EXIF_FIELD)


def sample_fields(extract_exif: bool) -> tuple[str, ...]:
    """The fields the engine writes of every sample, given the extract_exif setting."""
    return RESERVED_FIELDS if extract_exif else SAMPLE_FIELDS


# One row per input row, written per shard under DIR/ledger/NNNNN.parquet.
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_message", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("attempts", pa.int32()),
        pa.field("final_url", pa.string()),
        pa.field("num_bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # Set by the dedup stage: the kept key this sample duplicates, and how.
        pa.field("duplicate_of", pa.string()),
        pa.field("duplicate_kind", pa.string()),
    ]
)
