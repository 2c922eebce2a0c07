"""Tests for image intake. Every case writes its own image file into ``tmp_path`` with Pillow or raw bytes."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import resource
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidImageError
from core.images import ALLOWED_FORMATS, DecodedImage, load_image, read_image_bytes

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
LIMITS = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def save(image: Image.Image, path: Path, image_format: str, **options: object) -> Path:
    image.save(path, image_format, **options)
    return path


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, *, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """Assemble a PNG from an already compressed IDAT, for layouts that Pillow cannot write."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def compress_rows(rows: Iterator[bytes]) -> bytes:
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for row in rows]
    parts.append(compressor.flush())
    return b"".join(parts)


def blank_bilevel_png(side: int) -> bytes:
    """Return a valid all-black 1-bit PNG of side x side pixels, compressed as far as zlib goes.

    The rows are compressed a thousand at a time, so the raw pixels are never in memory
    at once. At 30000x30000 the file is 109 KB, and Pillow would need 900 MB to decode it
    because its mode "1" uses one byte per pixel.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then 8 pixels per byte
    batches = (row * min(1000, side - start) for start in range(0, side, 1000))
    return raw_png(side, side, bit_depth=1, color_type=0, idat=compress_rows(batches))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def pixel(decoded: DecodedImage, x: int = 0, y: int = 0) -> tuple[int, ...]:
    return tuple(int(value) for value in decoded.pixels[y, x])


def assert_color(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> None:
    difference = np.abs(np.array(actual) - np.array(expected))
    assert difference.max() <= tolerance, f"color {actual} differs from {expected} by more than {tolerance}"


# Files that must be rejected. Each builder writes a file and returns its path.


def make_empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    return path


def make_text_named_jpg(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jpg"
    path.write_text("These are meeting notes, not a photo.\n")
    return path


def make_truncated_jpeg(tmp_path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def make_png_with_bad_crc(tmp_path: Path) -> Path:
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR chunk's CRC: signature 8 + length 4 + type 4 + body 13
    path = tmp_path / "bad_crc.png"
    path.write_bytes(bytes(data))
    return path


def make_svg(tmp_path: Path) -> Path:
    path = tmp_path / "face.svg"
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>\n')
    return path


def make_svg_with_xml_prolog(tmp_path: Path) -> Path:
    path = tmp_path / "face.jpg"
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>\n')
    return path


def ftyp_file(path: Path, major_brand: bytes) -> Path:
    """Write the start of an ISO base media file: an ftyp box, then filler where the meta box would be."""
    ftyp_box = struct.pack(">I", 24) + b"ftyp" + major_brand + struct.pack(">I", 0) + b"mif1" + major_brand
    path.write_bytes(ftyp_box + b"\x00" * 64)
    return path


def make_heic(tmp_path: Path) -> Path:
    return ftyp_file(tmp_path / "IMG_0001.HEIC", b"heic")


def make_avif(tmp_path: Path) -> Path:
    return ftyp_file(tmp_path / "photo.jpg", b"avif")


def make_mp4(tmp_path: Path) -> Path:
    return ftyp_file(tmp_path / "clip.jpg", b"mp42")


def make_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    return path


def make_html(tmp_path: Path) -> Path:
    path = tmp_path / "download.jpg"
    path.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    return path


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        pytest.param(make_empty, r"'.*empty\.jpg': empty file \(0 bytes\)", id="empty"),
        pytest.param(
            make_text_named_jpg,
            r"'.*notes\.jpg': not a supported image\. Allowed formats are JPEG, PNG, WEBP, BMP, GIF, TIFF and MPO",
            id="text-named-jpg",
        ),
        pytest.param(
            make_truncated_jpeg, r"truncated or corrupt JPEG image: image file is truncated", id="truncated-jpeg"
        ),
        pytest.param(make_png_with_bad_crc, r"truncated or corrupt PNG image: .*checksum.*IHDR", id="png-bad-crc"),
        pytest.param(
            make_svg,
            r"'.*face\.svg': unsupported format SVG\. Convert it to JPEG or PNG\. Allowed formats are JPEG,",
            id="svg",
        ),
        pytest.param(make_svg_with_xml_prolog, r"unsupported format SVG", id="svg-xml-prolog"),
        pytest.param(
            make_heic, r"'.*IMG_0001\.HEIC': unsupported format HEIC\. Convert it to JPEG or PNG\.", id="heic"
        ),
        pytest.param(make_avif, r"unsupported format AVIF", id="avif"),
        pytest.param(make_mp4, r"unsupported format ISO base media, brand 'mp42'\.", id="mp4"),
        pytest.param(make_pdf, r"unsupported format PDF", id="pdf"),
        pytest.param(make_html, r"unsupported format HTML", id="html"),
    ],
)
def test_load_image_rejects(tmp_path: Path, make_file: Callable[[Path], Path], message: str) -> None:
    path = make_file(tmp_path)

    with pytest.raises(InvalidImageError, match=message) as raised:
        load_image(path, **LIMITS)

    assert "\n" not in str(raised.value)


def test_errors_chain_the_decoder_error(tmp_path: Path) -> None:
    path = make_truncated_jpeg(tmp_path)

    with pytest.raises(InvalidImageError) as raised:
        load_image(path, **LIMITS)

    assert isinstance(raised.value.__cause__, OSError)


def test_error_names_label_on_one_line() -> None:
    with pytest.raises(InvalidImageError, match=r"^'bad\\nname\.jpg': empty file") as raised:
        load_image(b"", label="bad\nname.jpg", **LIMITS)

    assert "\n" not in str(raised.value)


def test_unlabelled_bytes_are_called_image_data() -> None:
    with pytest.raises(InvalidImageError, match=r"^image data: not a supported image"):
        load_image(b"plain text", **LIMITS)


# Files that must decode.


def test_png_named_jpg_decodes_as_png(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (6, 4), GREEN), tmp_path / "photo.jpg", "PNG")

    decoded = load_image(path, **LIMITS)

    assert decoded.format == "PNG"
    assert (decoded.width, decoded.height) == (6, 4)
    assert_color(pixel(decoded), GREEN)


@pytest.mark.parametrize("size", [(1, 1), (5, 3)], ids=["1x1", "5x3"])
def test_tiny_images_decode(tmp_path: Path, size: tuple[int, int]) -> None:
    path = save(Image.new("RGB", size, BLUE), tmp_path / "tiny.png", "PNG")

    decoded = load_image(path, **LIMITS)

    assert decoded.pixels.shape == (size[1], size[0], 3)
    assert_color(pixel(decoded), BLUE)


def test_decoded_image_contract(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (7, 5), RED), tmp_path / "red.png", "PNG")

    decoded = load_image(path, **LIMITS)

    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (5, 7, 3)
    assert decoded.pixels.flags.c_contiguous
    assert (decoded.width, decoded.height) == (7, 5)
    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert decoded.source == str(path)
    assert decoded.format in ALLOWED_FORMATS


def test_label_sets_source(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (3, 3), RED), "PNG")
    path = tmp_path / "download.tmp"
    path.write_bytes(data)

    from_path = load_image(path, label="selfie.png", **LIMITS)
    from_bytes = load_image(data, label="selfie.png", **LIMITS)
    unlabelled = load_image(data, **LIMITS)

    assert from_path.source == "selfie.png"
    assert from_bytes.source == "selfie.png"
    assert unlabelled.source is None
    assert from_bytes.sha256 == from_path.sha256 == hashlib.sha256(data).hexdigest()


def test_str_path_is_a_path(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (3, 3), RED), tmp_path / "red.png", "PNG")

    decoded = load_image(str(path), **LIMITS)

    assert decoded.source == str(path)


def test_debug_log_per_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(Image.new("RGB", (9, 4), RED), tmp_path / "logged.png", "PNG")

    with caplog.at_level(logging.DEBUG, logger="core.images"):
        load_image(path, **LIMITS)

    messages = [record.getMessage() for record in caplog.records if record.name == "core.images"]
    assert len(messages) == 1
    assert "9x4" in messages[0]
    assert "PNG" in messages[0]


# Color modes. Each builder returns the path of a file whose top-left pixel must decode to the expected RGB.


def palette_image(indices: np.ndarray, palette: list[int]) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette)
    return image


def premultiplied_gray_alpha_tiff(path: Path, gray: int, alpha: int) -> Path:
    """Write a TIFF that Pillow opens in mode "La", which Pillow cannot write itself.

    Pillow writes LA with ExtraSamples = 2 (unassociated alpha). Patching the tag to 1
    (associated alpha) makes the same samples premultiplied.
    """
    data = encode(Image.new("LA", (4, 4), (gray, alpha)), "TIFF")
    unassociated = struct.pack("<HHIH", 338, 3, 1, 2)  # tag ExtraSamples, type SHORT, count 1, value 2
    assert data.count(unassociated) == 1
    path.write_bytes(data.replace(unassociated, struct.pack("<HHIH", 338, 3, 1, 1)))
    assert Image.open(path).mode == "La"
    return path


MODE_CASES = [
    pytest.param(lambda p: save(Image.new("L", (4, 4), 100), p / "a.png", "PNG"), (100, 100, 100), 0, id="L"),
    pytest.param(lambda p: save(Image.new("LA", (4, 4), (0, 0)), p / "a.png", "PNG"), WHITE, 0, id="LA-transparent"),
    pytest.param(lambda p: save(Image.new("LA", (4, 4), (0, 255)), p / "a.png", "PNG"), (0, 0, 0), 0, id="LA-opaque"),
    pytest.param(lambda p: save(palette_image(np.zeros((4, 4)), [*BLUE, *RED]), p / "a.png", "PNG"), BLUE, 0, id="P"),
    pytest.param(
        lambda p: save(palette_image(np.zeros((4, 4)), [*BLUE, *RED]), p / "a.png", "PNG", transparency=0),
        WHITE,
        0,
        id="P-transparency",
    ),
    pytest.param(
        lambda p: save(Image.new("RGBA", (4, 4), (255, 0, 0, 128)), p / "a.png", "PNG"),
        (255, 127, 127),
        1,
        id="RGBA-half-over-white",
    ),
    pytest.param(
        lambda p: save(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), p / "a.png", "PNG"), WHITE, 0, id="RGBA-transparent"
    ),
    pytest.param(
        lambda p: save(Image.new("RGB", (4, 4), (1, 2, 3)), p / "a.png", "PNG", transparency=(1, 2, 3)),
        WHITE,
        0,
        id="RGB-tRNS",
    ),
    pytest.param(
        lambda p: save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), p / "a.jpg", "JPEG", quality=95),
        RED,
        3,
        id="CMYK-JPEG",
    ),
    pytest.param(
        lambda p: save(Image.new("CMYK", (4, 4), (255, 0, 255, 0)), p / "a.tif", "TIFF"), GREEN, 0, id="CMYK-TIFF"
    ),
    pytest.param(lambda p: save(Image.new("1", (4, 4), 1), p / "a.png", "PNG"), WHITE, 0, id="bilevel-PNG"),
    pytest.param(lambda p: save(Image.new("1", (4, 4), 0), p / "a.bmp", "BMP"), (0, 0, 0), 0, id="bilevel-BMP"),
    pytest.param(
        lambda p: save(Image.new("YCbCr", (4, 4), (128, 128, 128)), p / "a.tif", "TIFF"),
        (128, 128, 128),
        1,
        id="YCbCr-TIFF",
    ),
    pytest.param(
        lambda p: save(Image.new("PA", (4, 4), (0, 0)), p / "a.tif", "TIFF"), WHITE, 0, id="PA-transparent-TIFF"
    ),
    pytest.param(lambda p: premultiplied_gray_alpha_tiff(p / "a.tif", 100, 128), (227, 227, 227), 1, id="La-half-TIFF"),
    pytest.param(
        lambda p: save(Image.new("LAB", (4, 4), (128, 128, 128)), p / "a.tif", "TIFF"),
        (119, 119, 119),
        1,
        id="LAB-gray-TIFF",
    ),
    pytest.param(
        lambda p: save(Image.new("I;16", (4, 4), 32768), p / "a.png", "PNG"), (128, 128, 128), 0, id="I;16-PNG"
    ),
    pytest.param(lambda p: save(Image.new("I;16B", (4, 4), 65535), p / "a.tif", "TIFF"), WHITE, 0, id="I;16B-TIFF"),
    pytest.param(lambda p: save(Image.new("I", (4, 4), 32768), p / "a.tif", "TIFF"), (128, 128, 128), 0, id="I-TIFF"),
    pytest.param(
        lambda p: save(Image.new("F", (4, 4), 0.5), p / "a.tif", "TIFF"), (128, 128, 128), 0, id="F-0-to-1-TIFF"
    ),
    pytest.param(
        lambda p: save(Image.new("F", (4, 4), 200.0), p / "a.tif", "TIFF"), (200, 200, 200), 0, id="F-0-to-255-TIFF"
    ),
    pytest.param(
        lambda p: save(Image.new("RGBA", (4, 4), (0, 0, 255, 255)), p / "a.webp", "WEBP", lossless=True),
        BLUE,
        0,
        id="RGBA-WEBP",
    ),
]


@pytest.mark.parametrize(("make_file", "expected", "tolerance"), MODE_CASES)
def test_color_mode_converts_to_rgb(
    tmp_path: Path, make_file: Callable[[Path], Path], expected: tuple[int, int, int], tolerance: int
) -> None:
    decoded = load_image(make_file(tmp_path), **LIMITS)

    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (4, 4, 3)
    assert decoded.pixels.flags.c_contiguous
    assert_color(pixel(decoded), expected, tolerance)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        pytest.param([-5, 70000], np.int32, id="I"),
        pytest.param([-1.0, 3.0], np.float32, id="F"),
    ],
)
def test_out_of_range_gray_is_stretched(tmp_path: Path, values: list[float], dtype: type) -> None:
    row = np.array([[values[0], (values[0] + values[1]) / 2, values[1]]], dtype=dtype)
    path = save(Image.fromarray(row), tmp_path / "wide.tif", "TIFF")

    decoded = load_image(path, **LIMITS)

    low, middle, high = decoded.pixels[0, :, 0].tolist()
    assert low == 0
    assert middle in (127, 128)
    assert high == 255


def test_palette_transparency_only_where_marked(tmp_path: Path) -> None:
    indices = np.zeros((4, 6))
    indices[:, 3:] = 1  # left half index 0 (transparent red), right half index 1 (opaque blue)
    path = save(palette_image(indices, [*RED, *BLUE]), tmp_path / "p.png", "PNG", transparency=0)

    decoded = load_image(path, **LIMITS)

    assert_color(pixel(decoded, x=0), WHITE)
    assert_color(pixel(decoded, x=5), BLUE)


def test_sixteen_bit_gray_scales_without_clipping(tmp_path: Path) -> None:
    gradient = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path = save(Image.fromarray(gradient), tmp_path / "gradient16.png", "PNG")
    assert Image.open(path).mode == "I;16"

    decoded = load_image(path, **LIMITS)

    gray = decoded.pixels[:, :, 0].astype(np.int32)
    expected = np.rint(gradient / 257.0)  # 65535 / 255 = 257
    assert np.abs(gray - expected).max() <= 1
    assert gray.min() == 0
    assert gray.max() == 255
    assert len(np.unique(gray)) == 256  # every level is used, so nothing was clipped to 255
    assert np.array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    # Pillow cannot write 16-bit RGB PNGs, so the file is assembled by hand: one row of
    # two pixels, big-endian samples, filter byte 0.
    samples = [0xFF00, 0x8000, 0x0100, 0x0000, 0xFFFF, 0x7FFF]
    row = b"\x00" + struct.pack(">6H", *samples)
    path = tmp_path / "rgb16.png"
    path.write_bytes(raw_png(2, 1, bit_depth=16, color_type=2, idat=zlib.compress(row)))

    decoded = load_image(path, **LIMITS)

    assert decoded.format == "PNG"
    assert decoded.pixels.shape == (1, 2, 3)
    assert_color(pixel(decoded, x=0), (255, 128, 1), tolerance=1)
    assert_color(pixel(decoded, x=1), (0, 255, 127), tolerance=1)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in (RED, GREEN, BLUE)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 3

    decoded = load_image(path, **LIMITS)

    assert decoded.format == "GIF"
    assert_color(pixel(decoded), RED)


def test_multipage_tiff_first_page(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    first = Image.new("RGB", (10, 6), GREEN)
    first.save(path, "TIFF", save_all=True, append_images=[Image.new("RGB", (4, 4), BLUE)])
    assert Image.open(path).n_frames == 2

    decoded = load_image(path, **LIMITS)

    assert decoded.format == "TIFF"
    assert decoded.pixels.shape == (6, 10, 3)
    assert_color(pixel(decoded), GREEN)


def test_mpo_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (8, 6), RED).save(path, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 6), BLUE)])

    decoded = load_image(path, **LIMITS)

    assert decoded.format == "MPO"
    assert_color(pixel(decoded), RED, tolerance=3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates the stored image 90 degrees clockwise
    path = save(stored, tmp_path / "rotated.jpg", "JPEG", exif=exif, quality=95)

    decoded = load_image(path, **LIMITS)

    assert decoded.pixels.shape == (40, 20, 3)
    assert_color(pixel(decoded, x=10, y=5), RED, tolerance=8)  # the left half is now on top
    assert_color(pixel(decoded, x=10, y=35), BLUE, tolerance=8)


# Limits.


@pytest.mark.parametrize(
    ("side", "max_pixels"),
    [
        pytest.param(30000, MAX_PIXELS, id="30000x30000-over-pillow-error-limit"),
        pytest.param(10000, 200_000_000, id="10000x10000-over-pillow-warning-limit"),
        pytest.param(3000, 1_000_000, id="3000x3000-over-max-pixels"),
    ],
)
def test_pixel_bomb_fails_fast(tmp_path: Path, side: int, max_pixels: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(blank_bilevel_png(side))
    assert path.stat().st_size < 200_000
    filters_before = list(warnings.filters)
    pillow_limit_before = Image.MAX_IMAGE_PIXELS
    rss_before = peak_rss_mib()
    started = time.monotonic()

    with pytest.raises(InvalidImageError, match=rf"'.*bomb\.png': .*{side * side:,} pixels.* over the pixel limit"):
        load_image(path, max_bytes=MAX_BYTES, max_pixels=max_pixels)

    assert time.monotonic() - started < 2.0
    assert peak_rss_mib() - rss_before < 100  # decoding would need side * side bytes (900 MB at 30000)
    assert warnings.filters == filters_before
    assert pillow_limit_before == Image.MAX_IMAGE_PIXELS


def test_concurrent_calls_restore_warning_filters(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (32, 32), RED), tmp_path / "shared.png", "PNG")
    filters_before = list(warnings.filters)

    with ThreadPoolExecutor(max_workers=8) as executor:
        decoded = list(executor.map(lambda _: load_image(path, **LIMITS), range(64)))

    assert all(image.width == 32 for image in decoded)
    assert warnings.filters == filters_before


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    # The IDAT is not valid zlib, so only a check made before decoding can report the pixel limit.
    path = tmp_path / "header_only.png"
    path.write_bytes(raw_png(50, 40, bit_depth=8, color_type=2, idat=b"not zlib data"))

    with pytest.raises(InvalidImageError, match=r"50x40 image \(2,000 pixels\) is over the pixel limit of 1,999"):
        load_image(path, max_bytes=MAX_BYTES, max_pixels=1999)
    with pytest.raises(InvalidImageError, match=r"truncated or corrupt PNG image"):
        load_image(path, max_bytes=MAX_BYTES, max_pixels=2000)


def test_pixel_limit_is_inclusive(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (50, 40), RED), tmp_path / "exact.png", "PNG")

    decoded = load_image(path, max_bytes=MAX_BYTES, max_pixels=2000)

    assert (decoded.width, decoded.height) == (50, 40)


def test_byte_limit(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (16, 16), RED), tmp_path / "small.png", "PNG")
    size = path.stat().st_size

    assert load_image(path, max_bytes=size, max_pixels=MAX_PIXELS).width == 16
    with pytest.raises(InvalidImageError, match=rf"file size {size:,} bytes is over the limit of {size - 1:,} bytes"):
        load_image(path, max_bytes=size - 1, max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidImageError, match=r"^image data: file size .* over the limit"):
        load_image(path.read_bytes(), max_bytes=size - 1, max_pixels=MAX_PIXELS)


def test_byte_limit_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as file:
        file.truncate(4 * 1024**3)  # sparse: 4 GiB by stat, no disk blocks

    def fail_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened before its size was checked")

    monkeypatch.setattr(Path, "open", fail_open)

    with pytest.raises(InvalidImageError, match=r"file size 4,294,967,296 bytes is over the limit"):
        read_image_bytes(path, max_bytes=MAX_BYTES)


def test_read_image_bytes_returns_file_content(tmp_path: Path) -> None:
    path = tmp_path / "any.bin"
    path.write_bytes(b"\x01\x02\x03")

    assert read_image_bytes(path, max_bytes=3) == b"\x01\x02\x03"


# Paths that cannot be read.


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.jpg"

    with pytest.raises(InvalidImageError, match=r"'.*absent\.jpg': file not found\. Check the path\."):
        load_image(path, **LIMITS)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"is a directory, not an image file"):
        load_image(tmp_path, **LIMITS)


def test_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)

    with pytest.raises(InvalidImageError, match=r"not a regular file"):
        load_image(path, **LIMITS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (4, 4), RED), tmp_path / "private.png", "PNG")
    path.chmod(0)

    with pytest.raises(InvalidImageError, match=r"permission denied"):
        load_image(path, **LIMITS)


def test_permission_error_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (4, 4), RED), tmp_path / "private.png", "PNG")

    def deny_open(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny_open)

    with pytest.raises(
        InvalidImageError, match=r"'.*private\.png': permission denied\. Make the file readable"
    ) as raised:
        load_image(path, **LIMITS)

    assert isinstance(raised.value.__cause__, PermissionError)


# Programming errors stay ordinary exceptions.


def test_wrong_source_type() -> None:
    with pytest.raises(TypeError, match=r"source must be bytes, str or Path, got int"):
        load_image(42, **LIMITS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_bytes", "max_pixels", "message"),
    [
        pytest.param(0, MAX_PIXELS, r"max_bytes must be at least 1, got 0", id="max-bytes-0"),
        pytest.param(MAX_BYTES, 0, r"max_pixels must be at least 1, got 0", id="max-pixels-0"),
    ],
)
def test_invalid_limits(max_bytes: int, max_pixels: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(b"x", max_bytes=max_bytes, max_pixels=max_pixels)


def test_decoded_image_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        DecodedImage(pixels=np.zeros((4, 4), np.uint8), sha256="0" * 64, format="PNG", source=None)
