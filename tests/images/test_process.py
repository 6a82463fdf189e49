"""process_image: header checks, draft decode, modes, orientation, resize modes, encoding.

Every image is generated here; expected sizes come from img2dataset 1.47's resizer.py.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, TiffImagePlugin

from pipeline.config import ImageConfig
from pipeline.images import ImageResult, process_image
from pipeline.images import process as process_module
from pipeline.images.process import apply_draft, plan_resize
from pipeline.schema import Status

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0, block: int = 8) -> Image.Image:
    """Smooth random colours: compresses like a photo, unlike white noise."""
    rng = np.random.default_rng(seed)
    shape = (max(1, height // block), max(1, width // block), 3)
    small = rng.integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def decoded(result: ImageResult) -> Image.Image:
    assert result.status is Status.SUCCESS, result.error_message
    assert result.data is not None
    img = Image.open(io.BytesIO(result.data))
    img.load()
    return img


def config(**kwargs: object) -> ImageConfig:
    # PNG output keeps pixel values exact for the checks below.
    return ImageConfig(**{"encode_format": "png", **kwargs})  # type: ignore[arg-type]


def img2dataset_size(
    width: int, height: int, mode: str, size: int, only_bigger: bool
) -> tuple[int, int]:
    """Output size by img2dataset 1.47: albumentations smallest/longest_max_size, crop, pad."""
    if mode == "no":
        return width, height
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    if only_bigger and not side > size:
        return width, height
    scale = size / side
    if scale != 1.0:
        width, height = round(width * scale), round(height * scale)
    if mode in ("center_crop", "border"):
        return size, size
    return width, height


# --- resize modes -----------------------------------------------------------------------

SHAPES = [(400, 300), (300, 400), (300, 300), (1001, 333), (77, 1000), (100, 50), (256, 180)]
MODES = ["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]


@pytest.mark.parametrize("only_bigger", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_output_size_matches_img2dataset(
    width: int, height: int, mode: str, only_bigger: bool
) -> None:
    data = encode(noise(width, height), "PNG")
    cfg = config(image_size=256, resize_mode=mode, resize_only_if_bigger=only_bigger)
    result = process_image(data, cfg)
    expected = img2dataset_size(width, height, mode, 256, only_bigger)
    assert (result.width, result.height) == expected
    assert (result.original_width, result.original_height) == (width, height)
    assert decoded(result).size == expected


@pytest.mark.parametrize(
    ("mode", "landscape", "portrait", "square"),
    [
        ("keep_ratio", (341, 256), (256, 341), (256, 256)),
        ("keep_ratio_largest", (256, 192), (192, 256), (256, 256)),
        ("center_crop", (256, 256), (256, 256), (256, 256)),
        ("border", (256, 256), (256, 256), (256, 256)),
        ("no", (400, 300), (300, 400), (300, 300)),
    ],
)
def test_resize_mode_sizes(
    mode: str,
    landscape: tuple[int, int],
    portrait: tuple[int, int],
    square: tuple[int, int],
) -> None:
    cfg = config(image_size=256, resize_mode=mode)
    for (w, h), expected in [((400, 300), landscape), ((300, 400), portrait), ((300, 300), square)]:
        result = process_image(encode(noise(w, h), "JPEG"), cfg)
        assert (result.width, result.height) == expected, (mode, w, h)


def test_upscales_unless_resize_only_if_bigger() -> None:
    data = encode(noise(100, 50), "PNG")
    assert decoded(process_image(data, config(resize_mode="keep_ratio"))).size == (512, 256)
    kept = process_image(data, config(resize_mode="keep_ratio", resize_only_if_bigger=True))
    assert (kept.width, kept.height) == (100, 50)
    # img2dataset skips crop and border too for an image it does not shrink.
    for mode in ("center_crop", "border"):
        kept = process_image(data, config(resize_mode=mode, resize_only_if_bigger=True))
        assert (kept.width, kept.height) == (100, 50)
    shrunk = process_image(encode(noise(600, 300), "PNG"), config(resize_only_if_bigger=True))
    assert (shrunk.width, shrunk.height) == (512, 256)


def test_plan_resize_is_orientation_independent() -> None:
    cfg = ImageConfig(image_size=256, resize_mode="keep_ratio")
    assert plan_resize(1001, 333, cfg).scaled_size == (770, 256)
    assert plan_resize(333, 1001, cfg).scaled_size == (256, 770)
    assert plan_resize(256, 500, cfg).scaled_size is None  # scale 1.0: nothing to do
    assert plan_resize(256, 500, cfg).changes_nothing


def test_border_pads_white_and_centers() -> None:
    # 400x200 -> 256x128, then 64 white rows above and below (img2dataset pads white).
    data = encode(Image.new("RGB", (400, 200), BLACK), "PNG")
    out = np.asarray(decoded(process_image(data, config(resize_mode="border"))))
    assert out.shape == (256, 256, 3)
    assert (out[:64] == WHITE).all() and (out[192:] == WHITE).all()
    assert (out[64:192] == 0).all()
    # An odd padding puts the extra row at the bottom, as albumentations' pad does.
    data = encode(Image.new("RGB", (300, 102), BLACK), "PNG")  # -> 256x87, pad 169
    out = np.asarray(decoded(process_image(data, config(resize_mode="border"))))
    black_rows = np.flatnonzero((out == 0).all(axis=(1, 2)))
    assert (black_rows[0], 255 - black_rows[-1]) == (84, 85)
    assert (out[: black_rows[0]] == 255).all() and (out[black_rows[-1] + 1 :] == 255).all()


def test_center_crop_is_square_and_centered() -> None:
    img = Image.new("RGB", (512, 256), RED)
    img.paste(GREEN, (128, 0, 384, 256))
    out = decoded(process_image(encode(img, "PNG"), config(resize_mode="center_crop")))
    assert out.size == (256, 256)
    assert (np.asarray(out) == GREEN).all()
    portrait = decoded(
        process_image(encode(noise(300, 900), "PNG"), config(resize_mode="center_crop"))
    )
    assert portrait.size == (256, 256)


# --- draft (JPEG DCT scaling) -------------------------------------------------------------


def test_draft_decodes_big_jpeg_at_reduced_scale() -> None:
    data = encode(noise(3000, 2000), "JPEG", quality=85)
    cfg = ImageConfig(image_size=256, resize_mode="keep_ratio")
    plan = plan_resize(3000, 2000, cfg)
    assert plan.scaled_size == (384, 256)
    img = Image.open(io.BytesIO(data))
    scale, box = apply_draft(img, plan.scaled_size)
    img.load()
    assert scale == 4
    assert img.size == (750, 500)  # 1/8 would be 375x250: below the 384x256 needed
    assert box == (0, 0, 750.0, 500.0)


def test_draft_never_goes_below_needed_size() -> None:
    img = Image.open(io.BytesIO(encode(noise(700, 500), "JPEG")))
    scale, box = apply_draft(img, (358, 256))
    img.load()
    assert (scale, box) == (1, None)
    assert img.size == (700, 500)
    png = Image.open(io.BytesIO(encode(Image.new("RGB", (3000, 2000)), "PNG")))
    assert apply_draft(png, (384, 256)) == (1, None)


def test_process_image_uses_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    scales: list[int] = []

    def spy(img: ImageFile.ImageFile, size: tuple[int, int]) -> object:
        result = apply_draft(img, size)
        scales.append(result[0])
        return result

    monkeypatch.setattr(process_module, "apply_draft", spy)
    data = encode(noise(3000, 2000), "JPEG", quality=85)
    result = process_image(data, ImageConfig(image_size=256, resize_mode="center_crop"))
    assert scales == [4]
    assert decoded(result).size == (256, 256)
    # Upscaling never drafts.
    scales.clear()
    process_image(encode(noise(200, 100), "JPEG"), ImageConfig(image_size=256))
    assert scales == []


def test_drafted_output_matches_full_decode() -> None:
    # Features of ~50 source pixels: any shift from the reduced-scale mapping would show.
    data = encode(noise(2400, 1600, seed=3, block=48), "JPEG", quality=90)
    out = np.asarray(decoded(process_image(data, config())), dtype=np.float64)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((384, 256), Image.Resampling.LANCZOS)
    assert out.shape == (256, 384, 3)
    assert np.abs(out - np.asarray(full, dtype=np.float64)).mean() < 1.0


# --- orientation and modes -------------------------------------------------------------


def oriented_jpeg(orientation: int) -> bytes:
    img = Image.new("RGB", (300, 200), RED)
    img.paste(BLUE, (150, 0, 300, 200))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_rotates_to_portrait() -> None:
    data = oriented_jpeg(6)
    result = process_image(data, ImageConfig(resize_mode="no"))
    assert (result.original_width, result.original_height) == (300, 200)
    out = decoded(result)
    assert out.size == (200, 300) and result.reencoded
    # Orientation 6 displays rotated 90 degrees clockwise: the left (red) half ends on top.
    top, bottom = out.getpixel((100, 30)), out.getpixel((100, 270))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    resized = process_image(data, config(image_size=100, resize_mode="keep_ratio"))
    assert (resized.width, resized.height) == (100, 150)
    cropped = process_image(data, config(image_size=100, resize_mode="center_crop"))
    assert (cropped.width, cropped.height) == (100, 100)


def test_exif_orientation_1_keeps_bytes() -> None:
    data = oriented_jpeg(1)
    result = process_image(data, ImageConfig(resize_mode="no"))
    # Upright already: not re-encoded; only its EXIF block is gone (see below).
    assert not result.reencoded and len(result.data) < len(data)
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(result.data))), np.asarray(Image.open(io.BytesIO(data)))
    )


def mode_samples() -> list[tuple[str, bytes, tuple[int, int, int]]]:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    la = Image.new("LA", (64, 64), (0, 0))
    p = Image.new("P", (64, 64), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p_transparent = p.copy()
    one = Image.new("1", (64, 64), 1)
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    gray = Image.new("L", (64, 64), 77)
    wide = Image.fromarray(np.full((64, 64), 0x8000, dtype=np.uint16))
    assert wide.mode == "I;16"
    return [
        ("RGBA", encode(rgba, "PNG"), WHITE),
        ("LA", encode(la, "PNG"), WHITE),
        ("P", encode(p, "PNG"), BLUE),
        ("P+transparency", encode(p_transparent, "PNG", transparency=1), WHITE),
        ("GIF P", encode(p, "GIF"), BLUE),
        ("1", encode(one, "PNG"), WHITE),
        ("CMYK", encode(cmyk, "JPEG", quality=95), RED),
        ("CMYK TIFF", encode(cmyk, "TIFF"), RED),
        ("L", encode(gray, "PNG"), (77, 77, 77)),
        ("I;16", encode(wide, "PNG"), (128, 128, 128)),
        ("BMP", encode(Image.new("RGB", (64, 64), GREEN), "BMP"), GREEN),
    ]


@pytest.mark.parametrize(
    ("name", "data", "color"), mode_samples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_modes_become_rgb(name: str, data: bytes, color: tuple[int, int, int]) -> None:
    for cfg in (config(resize_mode="no"), config(image_size=32)):
        out = decoded(process_image(data, cfg))
        assert out.mode == "RGB", name
        pixel = np.asarray(out)[out.height // 2, out.width // 2].astype(int)
        assert np.abs(pixel - color).max() <= 3, (name, pixel)


def test_semi_transparent_pixels_blend_onto_white() -> None:
    data = encode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG")
    pixel = decoded(process_image(data, config(resize_mode="no"))).getpixel((4, 4))
    assert all(abs(c - 127) <= 1 for c in pixel)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_takes_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (120, 80), RED), Image.new("RGB", (120, 80), BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    result = process_image(data, config(image_size=40))
    out = decoded(result)
    assert out.size == (60, 40)
    r, _, b = out.getpixel((30, 20))
    assert r > 200 and b < 60
    assert result.original_format == fmt


# --- skipping re-encoding ----------------------------------------------------------------


def test_unchanged_image_keeps_original_bytes() -> None:
    jpeg = encode(noise(300, 256), "JPEG", quality=80)
    for cfg in (
        ImageConfig(resize_mode="no"),
        ImageConfig(image_size=256, resize_mode="keep_ratio"),  # smallest side already 256
        ImageConfig(image_size=512, resize_mode="keep_ratio", resize_only_if_bigger=True),
    ):
        result = process_image(jpeg, cfg)
        assert result.data == jpeg and not result.reencoded, cfg
        assert (result.width, result.height, result.ext) == (300, 256, "jpg")
    png = encode(noise(100, 80), "PNG")
    result = process_image(png, config(resize_mode="no"))
    assert result.data == png and not result.reencoded and result.ext == "png"


def test_format_or_mode_change_reencodes() -> None:
    jpeg = encode(noise(100, 80), "JPEG")
    as_webp = process_image(jpeg, ImageConfig(resize_mode="no", encode_format="webp"))
    assert as_webp.reencoded and decoded(as_webp).format == "WEBP"
    gray = encode(Image.new("L", (100, 80), 50), "JPEG")
    result = process_image(gray, ImageConfig(resize_mode="no"))
    assert result.reencoded and decoded(result).mode == "RGB"
    rgba_png = encode(Image.new("RGBA", (100, 80), (1, 2, 3, 4)), "PNG")
    assert process_image(rgba_png, config(resize_mode="no")).reencoded


@pytest.mark.parametrize(("ext", "pil_format"), [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encodings_decode_back_to_reported_size(ext: str, pil_format: str) -> None:
    data = encode(noise(500, 300), "PNG")
    result = process_image(data, ImageConfig(image_size=128, encode_format=ext, encode_quality=90))
    out = decoded(result)
    assert result.ext == ext and result.reencoded
    assert out.format == pil_format
    assert out.size == (result.width, result.height) == (213, 128)
    assert (result.original_format, result.original_width, result.original_height) == (
        "PNG",
        500,
        300,
    )


# --- failures ----------------------------------------------------------------------------


def test_html_is_not_an_image() -> None:
    result = process_image(b"<!DOCTYPE html><html><body>Not found</body></html>", ImageConfig())
    assert result.status is Status.NOT_IMAGE
    assert "<!DOCTYPE html" in (result.error_message or "")
    assert result.data is None and result.width is None


def test_empty_and_binary_garbage_are_not_images() -> None:
    assert process_image(b"", ImageConfig()).status is Status.NOT_IMAGE
    garbage = process_image(bytes(range(200, 256)) * 4, ImageConfig())
    assert garbage.status is Status.NOT_IMAGE
    assert "c8 c9 ca" in (garbage.error_message or "")


def test_unsupported_format_is_named() -> None:
    ico = encode(Image.new("RGB", (32, 32), RED), "ICO")
    result = process_image(ico, ImageConfig())
    assert result.status is Status.NOT_IMAGE
    assert "ICO" in (result.error_message or "")


def test_truncated_jpeg_is_a_decode_error() -> None:
    data = encode(noise(600, 400), "JPEG", quality=90)
    result = process_image(data[: len(data) * 2 // 3], ImageConfig())
    assert result.status is Status.DECODE_ERROR
    assert "truncated" in (result.error_message or "")
    assert (result.original_width, result.original_height) == (600, 400)


def test_corrupt_png_data_is_a_decode_error() -> None:
    data = bytearray(encode(noise(200, 200), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 400] = bytes(360)
    result = process_image(bytes(data), ImageConfig())
    assert result.status is Status.DECODE_ERROR
    assert result.error_message and ":" in result.error_message


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height RGB: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_header_only(20000, 20000)
    assert len(data) < 200

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("a bomb must be refused before decoding")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    max_pixels = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Pillow's bomb warning nor its error leaks
        result = process_image(data, ImageConfig())
    assert result.status is Status.TOO_LARGE
    assert result.error_message == (
        "decompression bomb: 20000 x 20000 = 400000000 pixels > cap 89478485"
    )
    assert (result.original_width, result.original_height) == (20000, 20000)
    assert max_pixels == Image.MAX_IMAGE_PIXELS


def test_own_pixel_cap_applies_below_pillows() -> None:
    data = encode(noise(300, 200), "PNG")
    result = process_image(data, ImageConfig(max_image_pixels=50_000))
    assert result.status is Status.TOO_LARGE
    assert process_image(data, ImageConfig(max_image_pixels=60_000)).status is Status.SUCCESS


def test_too_small() -> None:
    data = encode(noise(40, 20), "PNG")
    result = process_image(data, ImageConfig(min_image_size=32))
    assert result.status is Status.TOO_SMALL
    assert (result.original_width, result.original_height) == (40, 20)
    assert process_image(data, ImageConfig(min_image_size=20)).status is Status.SUCCESS


def test_bad_aspect_ratio_either_orientation() -> None:
    cfg = ImageConfig(max_aspect_ratio=3.0)
    for size in ((400, 100), (100, 400)):
        result = process_image(encode(noise(*size), "PNG"), cfg)
        assert result.status is Status.BAD_ASPECT_RATIO, size
    assert process_image(encode(noise(300, 100), "PNG"), cfg).status is Status.SUCCESS


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_mutated_bytes_never_raise() -> None:
    rng = random.Random(7)
    seeds = [
        encode(noise(120, 90), "JPEG"),
        encode(noise(120, 90), "PNG"),
        encode(noise(120, 90), "WEBP"),
        encode(noise(120, 90), "GIF"),
        oriented_jpeg(6),
    ]
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        result = process_image(bytes(data), ImageConfig(image_size=64))
        assert isinstance(result, ImageResult)
        assert (result.status is Status.SUCCESS) == (result.data is not None)


def test_short_prefixes_never_raise() -> None:
    jpeg = oriented_jpeg(6)
    png = encode(noise(30, 20), "PNG")
    for data in [jpeg[:n] for n in range(0, 40)] + [png[:n] for n in range(0, 60)]:
        result = process_image(data, ImageConfig())
        assert result.status in (Status.NOT_IMAGE, Status.DECODE_ERROR), data


def test_svg_is_named() -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>'
    result = process_image(svg, ImageConfig())
    assert result.status is Status.NOT_IMAGE
    assert result.error_message == "unsupported image format: SVG"


@pytest.mark.parametrize(
    ("mode", "fmt", "size", "status"),
    [
        ("keep_ratio", "jpg", (30000, 100), "too_large"),  # 76800 x 256: over JPEG's 65535
        ("keep_ratio_largest", "jpg", (30000, 100), "success"),  # 256 x 1 bounds both sides
        ("no", "webp", (20000, 64), "too_large"),  # over WebP's 16383
        ("no", "png", (20000, 64), "success"),  # PNG has no practical limit
    ],
)
def test_an_output_over_its_formats_side_limit_is_too_large_before_decoding(
    mode: str, fmt: str, size: tuple[int, int], status: str
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    config = ImageConfig(image_size=256, resize_mode=mode, encode_format=fmt)
    result = process_image(buf.getvalue(), config)
    assert result.status == status, result.error_message
    if status == "too_large":  # said as such, not as a decode error of the encoder's
        limit = {"jpg": 65535, "webp": 16383}[fmt]
        assert f"over the {fmt} limit of {limit} px" in result.error_message


def exif_jpeg() -> bytes:
    """A JPEG with camera tags, a sub-IFD of exposure tags and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS 5D\x00"  # Model, NUL-terminated as cameras write it
    exif[0x0112] = 1  # Orientation
    sub = exif.get_ifd(0x8769)
    sub[0x829A] = TiffImagePlugin.IFDRational(1, 250)  # ExposureTime
    sub[0x9003] = "2024:05:01 10:20:30"  # DateTimeOriginal
    sub[0x9286] = b"ASCII\x00\x00\x00a comment"  # UserComment
    sub[0x927C] = bytes(range(256))  # MakerNote: a private blob, left out
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"  # GPSLatitudeRef
    gps[2] = tuple(TiffImagePlugin.IFDRational(n, d) for n, d in ((48, 1), (51, 1), (2997, 100)))
    return encode(noise(64, 48), "JPEG", exif=exif.tobytes())


def test_extract_exif_names_tags_as_img2dataset_and_leaves_blobs_out() -> None:
    import json

    import exifread  # what img2dataset reads EXIF with

    data = exif_jpeg()
    result = process_image(data, ImageConfig(resize_mode="no", extract_exif=True))
    assert result.status is Status.SUCCESS and not result.reencoded
    tags = json.loads(result.exif)
    assert tags["Image Make"] == "Canon" and tags["Image Model"] == "EOS 5D"
    assert tags["EXIF ExposureTime"] == "1/250"
    assert tags["EXIF DateTimeOriginal"] == "2024:05:01 10:20:30"
    assert tags["EXIF UserComment"] == "a comment"
    assert tags["GPS GPSLatitudeRef"] == "N" and tags["GPS GPSLatitude"] == "[48, 51, 2997/100]"
    assert "EXIF MakerNote" not in tags
    assert all(isinstance(v, str) for v in tags.values())
    # Named as img2dataset's exifread names them (a few of its tags are layout, not values;
    # it leaves UserComment out without details, which we keep: it is text).
    theirs = exifread.process_file(io.BytesIO(data), details=False)
    assert set(tags) - set(theirs) == {"EXIF UserComment"}
    assert {k for k in theirs if not k.startswith(("Image ExifOffset", "Image GPSInfo"))} - set(
        tags
    ) <= {"EXIF MakerNote"}
    # Re-encoded output carries the same field; off (the default), no field.
    shrunk = process_image(data, ImageConfig(image_size=16, extract_exif=True))
    assert shrunk.reencoded and json.loads(shrunk.exif) == tags
    assert process_image(data, ImageConfig(resize_mode="no")).exif is None


def test_extract_exif_of_an_image_without_exif_is_an_empty_object() -> None:
    result = process_image(encode(noise(32, 32), "PNG"), ImageConfig(extract_exif=True))
    assert result.status is Status.SUCCESS and result.exif == "{}"


def test_a_kept_original_loses_its_metadata_not_its_pixels() -> None:
    # A JPEG already at its output size is kept as it came (no re-encode), but its EXIF (a
    # GPS position here), XMP, comment and anything appended after its end are removed;
    # its colour profile and every pixel stay.
    icc = srgb_profile()
    original = encode(
        noise(64, 48),
        "JPEG",
        exif=Image.open(io.BytesIO(exif_jpeg())).info["exif"],
        icc_profile=icc,
        comment=b"by someone",
    )
    original += b"appended payload"
    result = process_image(original, ImageConfig(resize_mode="no"))
    assert result.status is Status.SUCCESS and not result.reencoded
    kept = Image.open(io.BytesIO(result.data))
    assert not kept.getexif() and "comment" not in kept.info and "exif" not in kept.info
    assert kept.info.get("icc_profile") == icc
    assert result.data.endswith(b"\xff\xd9") and b"payload" not in result.data
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(Image.open(io.BytesIO(original))))
    # A JPEG without metadata is kept byte for byte; a PNG with a text chunk is re-encoded
    # (losslessly) without it.
    plain = encode(noise(64, 48), "JPEG")
    assert process_image(plain, ImageConfig(resize_mode="no")).data == plain
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    png = encode(noise(40, 30), "PNG", pnginfo=info)
    out = process_image(png, ImageConfig(resize_mode="no", encode_format="png"))
    assert out.status is Status.SUCCESS and out.reencoded
    again = Image.open(io.BytesIO(out.data))
    assert not getattr(again, "text", None)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(Image.open(io.BytesIO(png))))


def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_a_gif_frame_larger_than_its_screen_is_too_large_from_the_header() -> None:
    # Pillow's own bomb guard fires while it reads the frame descriptor (the header): that
    # is too_large, not "unreadable header".
    buf = io.BytesIO()
    Image.new("P", (10, 10)).save(buf, "GIF")
    gif = bytearray(buf.getvalue())
    flags = gif[10]
    descriptor = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while gif[descriptor] == 0x21:  # skip extension blocks up to the image descriptor
        descriptor += 2
        while gif[descriptor]:
            descriptor += gif[descriptor] + 1
        descriptor += 1
    assert gif[descriptor] == 0x2C
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 65535, 65535)
    result = process_image(bytes(gif), ImageConfig())
    assert result.status is Status.TOO_LARGE, result.error_message
    assert "decompression bomb" in result.error_message


def test_metadata_between_the_scans_of_a_progressive_jpeg_is_cut_and_the_image_kept() -> None:
    # A comment between two scans whose bytes hold an end marker (FF D9): cutting at the
    # first FF D9 after the first scan kept a fragment of the image, marked success.
    original = encode(noise(96, 64), "JPEG", progressive=True, quality=90)
    first = original.find(b"\xff\xda")
    second = original.find(b"\xff\xda", first + 2)
    assert first > 0 and second > first
    payload = b"by someone \xff\xd9 after"
    comment = b"\xff\xfe" + (2 + len(payload)).to_bytes(2, "big") + payload
    data = original[:second] + comment + original[second:]
    result = process_image(data, ImageConfig(resize_mode="no"))
    assert result.status is Status.SUCCESS and not result.reencoded
    assert b"by someone" not in result.data and result.data == original
    kept = Image.open(io.BytesIO(result.data))
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(Image.open(io.BytesIO(data))))
    # Restart markers inside a scan are part of it.
    with_restarts = encode(noise(96, 64), "JPEG", quality=90, restart_marker_blocks=1)
    assert b"\xff\xd0" in with_restarts
    assert process_image(with_restarts, ImageConfig(resize_mode="no")).data == with_restarts
