"""Check, decode, resize and re-encode one downloaded image: the downloader's CPU hot path.

``process_image(data, config)`` turns the bytes of one HTTP body into an ``ImageResult``:
the encoded output, or a failure status with a message. Bad bytes never raise.

The order is chosen so that the cheap checks come first and the expensive work is as
small as possible:

1. Only the header is parsed. Unknown bytes are ``not_image``; a size over
   ``max_image_pixels`` is ``too_large`` before a single pixel is decoded.
2. Size and aspect-ratio filters run on the header's dimensions.
3. A JPEG that will be shrunk is decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT
   scaling, ``Image.draft``), never below the size the resize needs: the IDCT, colour
   conversion and resize then handle 4-64x fewer pixels. Decoding dominates the cost.
4. The pixels are decoded, flattened to RGB (transparency onto white), resized with an
   antialiasing filter, turned upright by their EXIF orientation, cropped or padded.
5. When nothing changed and the original is already in the output format, the original
   bytes are kept, without their metadata (EXIF, XMP, comments: a GPS position, a
   camera serial number): cut losslessly out of a JPEG, a PNG or WebP holding any is
   re-encoded. A re-encoded image never carries metadata.

Resize modes follow img2dataset 1.47 (``resizer.py``): ``keep_ratio`` and
``center_crop`` scale the smallest side to ``image_size``, ``keep_ratio_largest`` and
``border`` the largest; sizes are rounded with Python's ``round``. With
``resize_only_if_bigger`` an image whose relevant side is at most ``image_size`` is left
entirely alone, as img2dataset does: no upscale, and no crop or border either, so such
an image may come out neither square nor padded.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, ImageFile, TiffImagePlugin

from pipeline.config import ImageConfig
from pipeline.schema import Status

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# MPO (multi-picture JPEG from cameras) is a JPEG whose first image Pillow decodes.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}

# img2dataset 1.47 pads with white ([255, 255, 255] in resizer.py): the same here.
BORDER_FILL = (255, 255, 255)
# Transparent pixels are composited onto white, as img2dataset does.
ALPHA_BACKGROUND = (255, 255, 255)
# On 341x256 photos zlib level 1 takes ~7 ms, level 3 ~12 ms, level 6 ~28 ms, for files
# only 1% and 6% smaller: PNG output is chosen for losslessness, not size.
PNG_COMPRESS_LEVEL = 1
# Shrinking: Hamming-windowed sinc (support 1). After a JPEG draft the remaining factor
# is under 2, and on 1000x750 -> 341x256 photos Pillow's LANCZOS costs ~3 ms, BICUBIC
# ~2.1 ms and HAMMING ~1.35 ms, against ~2.9 ms for the drafted decode itself. Against
# a full-decode LANCZOS reference HAMMING scores ~37 dB PSNR, BICUBIC ~40, LANCZOS ~43,
# img2dataset's full-decode INTER_AREA ~39: HAMMING buys ~25% throughput for a little
# sharpness, with no aliasing.
SHRINK_RESAMPLE = Image.Resampling.HAMMING
# Growing (no draft, small images): LANCZOS, as img2dataset's default lanczos4.
GROW_RESAMPLE = Image.Resampling.LANCZOS
# Pillow box-reduces by an integer factor first while the remaining scale stays >= this
# (the default of Image.thumbnail): large PNG/WebP/GIF shrink at a fraction of the cost.
REDUCING_GAP = 2.0

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_PREFIX_LEN = 16  # what Pillow's format sniffers look at


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The outcome of processing one image body."""

    status: Status  # Status.SUCCESS or the class of failure
    error_message: str | None
    data: bytes | None  # encoded output (None on failure)
    ext: str | None  # "jpg" | "webp" | "png": the WebDataset extension of data
    original_format: str | None  # Pillow's format name, e.g. "JPEG"
    original_width: int | None
    original_height: int | None
    width: int | None  # of the output
    height: int | None
    reencoded: bool
    exif: str | None = None  # with extract_exif: the EXIF tags as a JSON object (exif_json)

    @classmethod
    def failure(
        cls,
        status: Status,
        message: str,
        original_format: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> ImageResult:
        return cls(
            status=status,
            error_message=message,
            data=None,
            ext=None,
            original_format=original_format,
            original_width=size[0] if size else None,
            original_height=size[1] if size else None,
            width=None,
            height=None,
            reencoded=False,
        )


@dataclass(frozen=True, slots=True)
class ResizePlan:
    """What the resize step does to an image of a given (stored) size.

    ``scaled_size`` is the keep-ratio size, in the same frame as the input size (None:
    keep the scale). ``square`` is True when the result is then center-cropped
    (center_crop) or padded (border) to ``image_size`` x ``image_size``.
    """

    scaled_size: tuple[int, int] | None
    square: bool

    @property
    def changes_nothing(self) -> bool:
        return self.scaled_size is None and not self.square


def plan_resize(width: int, height: int, config: ImageConfig) -> ResizePlan:
    """The img2dataset 1.47 resize decision for a ``width`` x ``height`` image.

    Orientation-independent: swapping width and height swaps ``scaled_size``.
    """
    mode, target = config.resize_mode, config.image_size
    if mode == "no":
        return ResizePlan(None, False)
    # keep_ratio and center_crop fit the smallest side; keep_ratio_largest and border the largest.
    fit_smallest = mode in ("keep_ratio", "center_crop")
    side = min(width, height) if fit_smallest else max(width, height)
    if config.resize_only_if_bigger and side <= target:
        # img2dataset skips the whole branch, crop and border included.
        return ResizePlan(None, False)
    square = mode in ("center_crop", "border")
    if side == target:  # albumentations skips a resize at scale 1.0
        return ResizePlan(None, square)
    scale = target / side
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    return ResizePlan(scaled, square)


def process_image(data: bytes, config: ImageConfig) -> ImageResult:
    """Check, decode, resize and encode one image body; never raises for bad bytes."""
    fmt: str | None = None
    size: tuple[int, int] | None = None
    try:
        opened = _open_header(data)
        if isinstance(opened, ImageResult):
            return opened
        img = opened
        fmt, size = img.format, img.size
        refused = _check_header(fmt or "", size, config)
        if refused is not None:
            return refused
        return _decode_resize_encode(data, img, config)
    except Image.DecompressionBombError as e:
        # Pillow's own guard, met only while decoding (GIF frames larger than the
        # screen, TIFF tiles): the header check above already passed.
        return ImageResult.failure(Status.TOO_LARGE, f"decompression bomb: {e}", fmt, size)
    except MemoryError:
        return ImageResult.failure(Status.TOO_LARGE, "out of memory while decoding", fmt, size)
    except Exception as e:
        # Untrusted bytes reach deep into C decoders: whatever they raise is this
        # image's fault, not a bug of ours, so it becomes a row and not a crash.
        return ImageResult.failure(Status.DECODE_ERROR, f"{type(e).__name__}: {e}", fmt, size)


def _open_header(data: bytes) -> ImageFile.ImageFile | ImageResult:
    """Parse the header only, with the plugins of the accepted formats.

    The plugins are called directly rather than through ``Image.open``: ``Image.open``
    warns above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that, before we can
    read the size, and silencing the warning with ``warnings.catch_warnings`` is not
    thread-safe. Our own cap (``max_image_pixels``) is applied by the caller instead.
    """
    if not data:
        return ImageResult.failure(Status.NOT_IMAGE, "not an image: empty body")
    prefix = data[:_PREFIX_LEN]
    for fmt in ACCEPTED_FORMATS:
        factory, accept = _opener(fmt)
        if accept is not None and not _accepts(accept, prefix):
            continue
        try:
            return factory(io.BytesIO(data), None)
        except Image.DecompressionBombError as e:
            # Pillow's own guard, met in a header (a GIF frame larger than its screen).
            return ImageResult.failure(Status.TOO_LARGE, f"decompression bomb: {e}", fmt)
        except Exception as e:
            return ImageResult.failure(
                Status.NOT_IMAGE,
                f"not an image: {fmt} signature but unreadable header ({type(e).__name__}: {e})",
                fmt,
            )
    other = _sniff_other_format(data)
    if other is not None:
        return ImageResult.failure(Status.NOT_IMAGE, f"unsupported image format: {other}", other)
    return ImageResult.failure(Status.NOT_IMAGE, f"not an image: starts with {_describe(prefix)}")


_openers: dict[str, tuple[Callable[..., Any], Callable[[bytes], Any] | None]] = {}


def _opener(fmt: str) -> tuple[Callable[..., Any], Callable[[bytes], Any] | None]:
    # Looked up on first use, not at import: WebP and TIFF are registered by Image.init().
    found = _openers.get(fmt)
    if found is None:
        if fmt not in Image.OPEN:
            Image.init()
        found = _openers[fmt] = Image.OPEN[fmt]
    return found


def _accepts(accept: Callable[[bytes], Any], prefix: bytes) -> bool:
    try:
        result = accept(prefix)
    except Exception:  # some sniffers index past a short prefix
        return False
    # Some sniffers return a string: "this format, but unsupported here, because ...".
    return bool(result) and not isinstance(result, str)


def _sniff_other_format(data: bytes) -> str | None:
    """Name the format of an image we do not accept, from its signature alone."""
    prefix = data[:_PREFIX_LEN]
    Image.init()
    for fmt in Image.ID:
        if fmt in ACCEPTED_FORMATS:
            continue
        accept = Image.OPEN[fmt][1]
        if accept is not None and _accepts(accept, prefix):
            return fmt
    # Logos and icons are often SVG, which Pillow does not read at all.
    head = data[:1024].lstrip()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _describe(prefix: bytes) -> str:
    """How the first bytes look, for an error message: text as text, binary as hex."""
    text = prefix.decode("utf-8", "replace")
    if "\ufffd" not in text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return repr(text)
    return f"bytes {prefix.hex(' ')}"


def _check_header(fmt: str, size: tuple[int, int], config: ImageConfig) -> ImageResult | None:
    width, height = size
    pixels = width * height
    if pixels > config.max_image_pixels:
        return ImageResult.failure(
            Status.TOO_LARGE,
            f"decompression bomb: {width} x {height} = {pixels} pixels > cap {config.max_image_pixels}",
            fmt,
            size,
        )
    short, long = min(width, height), max(width, height)
    if short <= 0:
        return ImageResult.failure(
            Status.DECODE_ERROR, f"empty image: {width} x {height}", fmt, size
        )
    if short < config.min_image_size:
        return ImageResult.failure(
            Status.TOO_SMALL,
            f"image too small: {width} x {height}, smallest side < {config.min_image_size}",
            fmt,
            size,
        )
    if long / short > config.max_aspect_ratio:
        return ImageResult.failure(
            Status.BAD_ASPECT_RATIO,
            f"aspect ratio {long / short:.3g} > {config.max_aspect_ratio:g} ({width} x {height})",
            fmt,
            size,
        )
    return None


def apply_draft(
    img: ImageFile.ImageFile, size: tuple[int, int]
) -> tuple[int, tuple[float, float, float, float] | None]:
    """Ask a JPEG decoder to decode at 1/2, 1/4 or 1/8 scale, never smaller than ``size``.

    Call before ``load()``. Returns the scale divisor (1 when nothing was drafted) and
    the box of the whole original image in the reduced image's coordinates, for
    ``Image.resize(box=...)``: the reduced size is rounded up, and the box keeps the
    mapping from original to output pixels exact.
    """
    if _FORMAT_ALIASES.get(img.format or "", img.format) != "JPEG":
        return 1, None
    original_width = img.width
    drafted = img.draft("RGB", size)
    if drafted is None:  # already loaded, or drafted before
        return 1, None
    box = drafted[1]
    scale = round(original_width / box[2])
    return scale, (box if scale > 1 else None)


# The longest side each output format can hold (PNG's is 2^31 - 1: no practical limit).
_MAX_SIDE = {"jpg": 65535, "webp": 16383}


def _decode_resize_encode(
    data: bytes, img: ImageFile.ImageFile, config: ImageConfig
) -> ImageResult:
    fmt = img.format or ""
    original_size = img.size
    plan = plan_resize(*original_size, config)
    side = max((config.image_size,) * 2 if plan.square else plan.scaled_size or original_size)
    limit = _MAX_SIDE.get(config.encode_format)
    if limit is not None and side > limit:
        # Checked before the pixels are decoded: the encoder would fail after all that work
        # (an image that already is in the output format cannot be over its limit).
        return ImageResult.failure(
            Status.TOO_LARGE,
            f"output side {side} px is over the {config.encode_format} limit of {limit} px "
            f"(from {original_size[0]} x {original_size[1]}); a resize mode that bounds both "
            "sides (keep_ratio_largest, center_crop, border) or --max-aspect-ratio avoids it",
            fmt,
            original_size,
        )

    box: tuple[float, float, float, float] | None = None
    if plan.scaled_size is not None and _shrinks(original_size, plan.scaled_size):
        _, box = apply_draft(img, plan.scaled_size)

    img.load()  # frame 0 of an animation; raises on truncated or corrupt data
    if img.width * img.height > config.max_image_pixels:
        # A GIF frame may extend past the logical screen given in the header.
        return ImageResult.failure(
            Status.TOO_LARGE,
            f"decompression bomb: first frame {img.width} x {img.height} > cap {config.max_image_pixels}",
            fmt,
            original_size,
        )
    transpose = _orientation_transpose(img)
    exif = exif_json(img) if config.extract_exif else None
    target_fmt = _PIL_FORMAT[config.encode_format]
    if (
        plan.changes_nothing
        and transpose is None
        and fmt == target_fmt
        and img.mode == "RGB"
        and "transparency" not in img.info
        and not getattr(img, "is_animated", False)
    ):
        kept = without_metadata(data, img)
        if kept is not None:
            return _success(
                kept, config, fmt, original_size, original_size, reencoded=False, exif=exif
            )

    out: Image.Image = _to_rgb_or_l(img)
    if plan.scaled_size is not None:
        shrink = plan.scaled_size[0] < original_size[0]
        resample = SHRINK_RESAMPLE if shrink else GROW_RESAMPLE
        out = out.resize(plan.scaled_size, resample, box=box, reducing_gap=REDUCING_GAP)
    if out.mode != "RGB":
        out = out.convert("RGB")  # L: after the resize, which then handles one band
    if transpose is not None:
        out = out.transpose(transpose)
    if plan.square:
        out = _square(out, config.image_size, crop=config.resize_mode == "center_crop")

    buf = io.BytesIO()
    if config.encode_format == "jpg":
        out.save(buf, "JPEG", quality=config.encode_quality)
    elif config.encode_format == "webp":
        out.save(buf, "WEBP", quality=config.encode_quality)
    else:
        out.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return _success(buf.getvalue(), config, fmt, original_size, out.size, reencoded=True, exif=exif)


def _success(
    data: bytes,
    config: ImageConfig,
    fmt: str,
    original_size: tuple[int, int],
    size: tuple[int, int],
    *,
    reencoded: bool,
    exif: str | None = None,
) -> ImageResult:
    return ImageResult(
        status=Status.SUCCESS,
        error_message=None,
        data=data,
        ext=config.encode_format,
        original_format=fmt,
        original_width=original_size[0],
        original_height=original_size[1],
        width=size[0],
        height=size[1],
        reencoded=reencoded,
        exif=exif,
    )


# JPEG segments kept from an original: JFIF (APP0), the ICC colour profile (APP2) and
# Adobe's colour transform (APP14) change how the pixels look; EXIF and XMP (APP1), IPTC
# (APP13), comments and the other APPn segments are metadata: a GPS position, a camera
# serial number, an author's name.
_JPEG_KEPT_APPS = {0xE0, 0xEE}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def without_metadata(data: bytes, img: Image.Image) -> bytes | None:
    """An original kept as it came, without its metadata: a JPEG with its metadata segments
    and anything after its end removed (lossless: the entropy-coded data is untouched); a
    PNG or WebP as it is when it holds no EXIF, XMP or text. None: it must be re-encoded."""
    if img.format == "JPEG":
        return _strip_jpeg(data)
    if any(k in img.info for k in ("exif", "xmp", "XML:com.adobe.xmp", "comment")):
        return None
    if getattr(img, "text", None):  # PNG tEXt/zTXt/iTXt chunks
        return None
    return data


def _strip_jpeg(data: bytes) -> bytes | None:
    """``data`` without its metadata segments (wherever they sit, between the scans of a
    progressive JPEG too) and without anything after its end marker; None when its marker
    structure cannot be followed (the image is then re-encoded)."""
    if data[:2] != b"\xff\xd8":
        return None
    out = [data[:2]]
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # end of image: what follows is no part of it
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker in _JPEG_STANDALONE:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        if pos + 4 > n:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            return None
        segment = data[pos : pos + 2 + length]
        is_app = 0xE0 <= marker <= 0xEF
        icc = marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\0"
        if marker != 0xFE and (not is_app or marker in _JPEG_KEPT_APPS or icc):
            out.append(segment)
        pos += 2 + length
        if marker == 0xDA:  # a scan: entropy-coded data up to the next marker
            end = pos
            while True:
                end = data.find(b"\xff", end)
                if end < 0 or end + 1 >= n:
                    return None  # cut short: no end marker
                follower = data[end + 1]
                if follower == 0x00 or 0xD0 <= follower <= 0xD7:
                    end += 2  # a stuffed 0xFF byte, or a restart marker: still the scan
                    continue
                break
            out.append(data[pos:end])
            pos = end
    return None


# EXIF pointers to sub-directories (read as their own groups) and blobs that are no tag
# values: the maker's private block and the embedded thumbnail, as exifread's details=False.
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_EXIF_SKIPPED = {_EXIF_IFD, _GPS_IFD, _INTEROP_IFD, 0x927C, 0x0201, 0x0202}


def exif_json(img: Image.Image) -> str | None:
    """The image's EXIF tags as img2dataset writes them: a JSON object of text values named
    as exifread names them ("Image Make", "EXIF DateTimeOriginal", "GPS GPSLatitude"),
    "{}" for an image without EXIF, None when its EXIF block cannot be read."""
    try:
        exif = img.getexif()
        groups = [("Image", dict(exif), ExifTags.TAGS)]
        if _EXIF_IFD in exif:
            groups.append(("EXIF", dict(exif.get_ifd(_EXIF_IFD)), ExifTags.TAGS))
        if _GPS_IFD in exif:
            groups.append(("GPS", dict(exif.get_ifd(_GPS_IFD)), ExifTags.GPSTAGS))
        tags: dict[str, str] = {}
        for group, values, names in groups:
            for tag, value in values.items():
                if tag in _EXIF_SKIPPED or value is None:
                    continue
                text = _exif_text(value)
                if text is not None:
                    tags[f"{group} {names.get(tag, f'Tag 0x{tag:04X}')}"] = text
        return json.dumps(tags, ensure_ascii=False)
    except Exception:
        return None  # a malformed block: the pixels are still good


def _exif_text(value: Any) -> str | None:
    """A tag value as text: rationals as "n/d", sequences as "[a, b]", bytes when they are
    printable text (None otherwise: binary blobs are left out)."""
    if isinstance(value, bytes):
        # UserComment-style text names its encoding in 8 bytes first.
        head, body = value[:8], value[8:]
        if head == b"UNICODE\0":
            text = body.decode("utf-16", "replace")
        else:
            text = (body if head in (b"ASCII\0\0\0", b"\0" * 8) else value).decode("latin-1")
        return _printable(text.replace("\0", ""))
    if isinstance(value, tuple | list):
        parts = [_exif_text(v) for v in value]
        return None if None in parts else f"[{', '.join(p for p in parts if p is not None)}]"
    if isinstance(value, TiffImagePlugin.IFDRational):
        num, den = value.numerator, value.denominator
        return str(num) if den == 1 else f"{num}/{den}"
    return _printable(str(value).replace("\0", ""))


def _printable(text: str) -> str | None:
    text = text.strip()
    return text if all(c.isprintable() or c.isspace() for c in text) else None


def _shrinks(size: tuple[int, int], target: tuple[int, int]) -> bool:
    return target[0] < size[0] and target[1] < size[1]


def _orientation_transpose(img: Image.Image) -> Image.Transpose | None:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:
        # A malformed EXIF block does not make the pixels bad: keep the stored orientation.
        return None
    return _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Flatten any decoded mode to RGB, or L for grayscale (widened to RGB after resizing)."""
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" not in img.info:
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        flat.paste(rgba, (0, 0), rgba)  # the alpha band is the mask
        return flat
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own conversion clips 16-bit values at 255 (nearly all white): keep
        # the top 8 bits instead. A 32-bit "I" image holding 8-bit values is kept as is.
        import numpy as np

        wide = np.clip(np.asarray(img).astype(np.int32, copy=False), 0, 65535)
        if mode.startswith("I;16") or wide.max(initial=0) > 255:
            wide >>= 8
        return Image.fromarray(wide.astype(np.uint8))
    # P, 1, CMYK, YCbCr, F, ...: Pillow's conversions (CMYK without colour management).
    return img.convert("RGB")


def _square(img: Image.Image, side: int, *, crop: bool) -> Image.Image:
    """Center-crop, or pad with BORDER_FILL, to side x side (albumentations' offsets)."""
    width, height = img.size
    if crop:
        left, top = (width - side) // 2, (height - side) // 2
        return img.crop((left, top, left + side, top + side))
    if (width, height) == (side, side):
        return img
    canvas = Image.new("RGB", (side, side), BORDER_FILL)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas
