"""Image intake cases beyond ``test_images.py``: bombs of every allowed format, decoding-cost limits,
formats outside the allowlist, corrupt PNG data and EXIF-rotated photos of real faces.

Every case builds its own file. The bomb cases decode in a fresh Python process, because only
a new process's peak RSS shows whether the pixels of a bomb were ever allocated.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import blank_bilevel_png, png_chunk

from core.errors import InvalidImageError
from core.images import MAX_JPEG_SCANS, MAX_TIFF_SEGMENTS, load_image
from core.pipeline import FacePipeline
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = Settings()
LIMITS = {"max_bytes": DEFAULTS.max_image_bytes, "max_pixels": DEFAULTS.max_image_pixels}

# Decodes one file in a fresh interpreter and prints the error and the growth of peak RSS
# over the decode, measured after the imports. VmHWM is read rather than getrusage's
# ru_maxrss, because on Linux a child's ru_maxrss keeps the parent's RSS at fork time.
DECODE_AND_MEASURE = """
import json, re, sys, time
from core.errors import InvalidImageError
from core.images import load_image

def peak_rss_kib():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))

before = peak_rss_kib()
started = time.monotonic()
try:
    load_image(sys.argv[1], max_bytes=int(sys.argv[2]), max_pixels=int(sys.argv[3]))
    message = None
except InvalidImageError as exc:
    message = str(exc)
seconds = time.monotonic() - started
growth_kib = peak_rss_kib() - before
print(json.dumps({"message": message, "seconds": seconds, "peak_growth_mib": growth_kib / 1024}))
"""


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def decode_in_fresh_process(path: Path) -> dict[str, object]:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", DECODE_AND_MEASURE, str(path), str(LIMITS["max_bytes"]), str(LIMITS["max_pixels"])],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


# Bombs: small files that declare a huge image. Each builder returns the file content for a side x side image.


def png_bomb(side: int) -> bytes:
    return blank_bilevel_png(side)  # valid pixel data: 109 KB at 30000x30000


def bmp_bomb(side: int) -> bytes:
    """An 8-bit RLE BMP whose pixel data is only the end-of-bitmap code, so every pixel is palette entry 0."""
    palette = b"\x00\x00\x00\x00" * 256
    pixel_data = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixel_data), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset)
    return header + info + palette + pixel_data


def jpeg_bomb(side: int) -> bytes:
    """A 16x16 baseline JPEG whose frame header (SOF0) claims side x side."""
    data = bytearray(encode(Image.new("L", (16, 16), 0), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", side, side)  # after marker, length and precision
    return bytes(data)


def gif_bomb(side: int) -> bytes:
    """A 2x2 GIF whose logical screen and first image descriptor claim side x side."""
    data = bytearray(encode(Image.new("P", (2, 2), 0), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    descriptor = data.index(b",", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def tiff_bomb(side: int) -> bytes:
    """An 8x8 uncompressed TIFF whose ImageWidth and ImageLength tags claim side x side."""
    data = bytearray(encode(Image.new("L", (8, 8), 0), "TIFF"))
    (ifd_offset,) = struct.unpack_from("<I", data, 4)
    (entry_count,) = struct.unpack_from("<H", data, ifd_offset)
    for index in range(entry_count):
        entry = ifd_offset + 2 + 12 * index
        tag, value_type = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value_format = "<H" if value_type == 3 else "<I"
            struct.pack_into(value_format, data, entry + 8, side)
    return bytes(data)


def webp_bomb(side: int) -> bytes:
    """A 16x16 lossless WebP whose VP8L header claims side x side (WebP allows at most 16383)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (9, 9, 9)), "WEBP", lossless=True))
    header = data.index(b"VP8L") + 8
    assert data[header] == 0x2F  # the VP8L signature byte
    (bits,) = struct.unpack_from("<I", data, header + 1)
    bits = (bits & ~0x0FFFFFFF) | (side - 1) | ((side - 1) << 14)  # 14 bits width - 1, then 14 bits height - 1
    struct.pack_into("<I", data, header + 1, bits)
    return bytes(data)


BOMBS = [
    pytest.param(png_bomb, ".png", 8000, id="png-8000"),
    pytest.param(png_bomb, ".png", 30000, id="png-30000"),
    pytest.param(bmp_bomb, ".bmp", 8000, id="bmp-rle-8000"),
    pytest.param(bmp_bomb, ".bmp", 30000, id="bmp-rle-30000"),
    pytest.param(jpeg_bomb, ".jpg", 8000, id="jpeg-8000"),
    pytest.param(jpeg_bomb, ".jpg", 30000, id="jpeg-30000"),
    pytest.param(gif_bomb, ".gif", 8000, id="gif-8000"),
    pytest.param(gif_bomb, ".gif", 30000, id="gif-30000"),
    pytest.param(tiff_bomb, ".tif", 8000, id="tiff-8000"),
    pytest.param(tiff_bomb, ".tif", 30000, id="tiff-30000"),
    pytest.param(webp_bomb, ".webp", 8000, id="webp-8000"),
    pytest.param(webp_bomb, ".webp", 16383, id="webp-16383"),
]


@pytest.mark.parametrize(("make_bomb", "suffix", "side"), BOMBS)
def test_bomb_rejected_without_allocating(
    tmp_path: Path, make_bomb: Callable[[int], bytes], suffix: str, side: int
) -> None:
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(make_bomb(side))
    assert path.stat().st_size < 200_000

    result = decode_in_fresh_process(path)

    # 8000x8000 is over max_image_pixels but under Pillow's own limit, so maskid's check rejects it.
    # The larger sides are over Pillow's limit, whose error is reported in the same terms.
    assert result["message"] is not None, "the bomb decoded"
    assert f"{side * side:,} pixels" in result["message"]
    assert "over the pixel limit of 40,000,000 pixels" in result["message"]
    # Decoding would allocate at least one byte per pixel: 64 MB at 8000x8000.
    assert result["peak_growth_mib"] < 32
    assert result["seconds"] < 5.0


def test_fresh_process_measure_sees_a_decode(tmp_path: Path) -> None:
    # The control for the bomb cases: a 4000x4000 image under the pixel limit decodes and
    # needs 16 MB for Pillow's pixels plus 48 MB for the RGB array.
    path = tmp_path / "large.png"
    path.write_bytes(blank_bilevel_png(4000))

    result = decode_in_fresh_process(path)

    assert result["message"] is None
    assert result["peak_growth_mib"] > 32


def test_png_text_chunk_bomb(tmp_path: Path) -> None:
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(b"\x00" * 1_000_000) for _ in range(64)) + compressor.flush()
    image = encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")
    iend = image.rindex(b"IEND") - 4
    path = tmp_path / "text_bomb.png"
    path.write_bytes(image[:iend] + png_chunk(b"zTXt", b"comment\x00\x00" + text) + image[iend:])
    assert path.stat().st_size < 200_000  # 64 MB of text once inflated

    result = decode_in_fresh_process(path)

    assert result["message"] is not None
    assert "truncated or corrupt PNG image: Decompressed data too large" in result["message"]
    assert result["peak_growth_mib"] < 32


# Decoding-cost limits: files that are small in bytes and pixels but slow or large to parse.


def progressive_jpeg_with_scans(total_scans: int) -> bytes:
    """Return a 64x64 progressive JPEG whose last scan is repeated until it has ``total_scans`` scans.

    libjpeg-turbo warns about the repeated refinement scans and decodes each of them, which
    is how a crafted file makes decoding time grow with its scan count.
    """
    data = encode(Image.new("L", (64, 64), 0), "JPEG", progressive=True)
    written = data.count(b"\xff\xda")
    assert total_scans >= written
    last_scan = data[data.rindex(b"\xff\xda") : data.rindex(b"\xff\xd9")]
    end = data.rindex(b"\xff\xd9")
    return data[:end] + last_scan * (total_scans - written) + data[end:]


def test_jpeg_scan_limit_is_inclusive() -> None:
    decoded = load_image(progressive_jpeg_with_scans(MAX_JPEG_SCANS), **LIMITS)

    assert (decoded.width, decoded.height) == (64, 64)


def test_jpeg_with_too_many_scans_rejected() -> None:
    data = progressive_jpeg_with_scans(5000)  # about 70 KB
    started = time.monotonic()

    with pytest.raises(InvalidImageError, match=r"^'scans\.jpg': JPEG image has more than 100 scans") as raised:
        load_image(data, label="scans.jpg", **LIMITS)

    assert time.monotonic() - started < 1.0
    assert "baseline (non-progressive) JPEG" in str(raised.value)


def test_jpeg_scan_markers_inside_app_segment_not_counted() -> None:
    data = encode(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG")
    payload = b"\xff\xda" * 1000  # what an embedded thumbnail's scans look like to a byte search
    app15 = b"\xff\xef" + struct.pack(">H", len(payload) + 2) + payload
    decoded = load_image(data[:2] + app15 + data[2:], **LIMITS)

    assert (decoded.width, decoded.height) == (16, 16)


def one_row_strips_tiff(height: int, *, big: bool = False) -> bytes:
    """Return an uncompressed 8-bit grayscale TIFF of 1 x ``height`` pixels stored one row per strip.

    ``big`` writes BigTIFF, whose offsets and counts are 8 bytes wide.
    """
    offset_code, count_code, entry_code, offset_size = ("Q", "Q", "<HHQQ", 8) if big else ("I", "H", "<HHII", 4)
    value_type = 16 if big else 4  # LONG8 or LONG
    header = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 8)
    tags = 8
    ifd_size = struct.calcsize("<" + count_code) + tags * struct.calcsize(entry_code) + offset_size
    offsets_at = len(header) + ifd_size
    counts_at = offsets_at + offset_size * height
    pixels_at = counts_at + offset_size * height

    entries = [
        (256, value_type, 1, 1),  # ImageWidth
        (257, value_type, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # PhotometricInterpretation: black is zero
        (273, value_type, height, offsets_at),  # StripOffsets
        (278, value_type, 1, 1),  # RowsPerStrip
        (279, value_type, height, counts_at),  # StripByteCounts
    ]
    ifd = struct.pack("<" + count_code, tags) + b"".join(struct.pack(entry_code, *entry) for entry in entries)
    ifd += struct.pack("<" + offset_code, 0)
    offsets = np.arange(pixels_at, pixels_at + height, dtype=f"<u{offset_size}").tobytes()
    counts = np.ones(height, dtype=f"<u{offset_size}").tobytes()
    return header + ifd + offsets + counts + b"\x80" * height


def test_tiff_segment_limit_is_inclusive() -> None:
    decoded = load_image(one_row_strips_tiff(MAX_TIFF_SEGMENTS), **LIMITS)

    assert (decoded.width, decoded.height) == (1, MAX_TIFF_SEGMENTS)
    assert decoded.pixels[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
def test_tiff_with_too_many_strips_rejected(big: bool) -> None:
    data = one_row_strips_tiff(1_000_000, big=big)  # 9 MB classic, 17 MB BigTIFF
    started = time.monotonic()

    with pytest.raises(InvalidImageError, match=r"TIFF image has 1,000,000 strips or tiles, over the limit of 100,000"):
        load_image(data, **LIMITS)

    assert time.monotonic() - started < 1.0


# Formats that Pillow can read but intake does not allow.


def pillow_file(image_format: str, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, (16, 16), 200 if mode in ("1", "L", "F") else (200, 10, 10)), image_format)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(pillow_file("PPM"), "not a supported image", id="ppm"),
        pytest.param(pillow_file("TGA"), "not a supported image", id="tga"),
        pytest.param(pillow_file("PCX"), "not a supported image", id="pcx"),
        pytest.param(pillow_file("SGI"), "not a supported image", id="sgi"),
        pytest.param(pillow_file("DDS"), "not a supported image", id="dds"),
        pytest.param(pillow_file("ICNS"), "not a supported image", id="icns"),
        pytest.param(pillow_file("XBM", "1"), "not a supported image", id="xbm"),
        pytest.param(pillow_file("SPIDER", "F"), "not a supported image", id="spider"),
        pytest.param(pillow_file("EPS"), "unsupported format PostScript or EPS", id="eps"),
        pytest.param(pillow_file("ICO"), "unsupported format ICO", id="ico"),
        pytest.param(pillow_file("QOI"), "unsupported format QOI", id="qoi"),
        pytest.param(pillow_file("JPEG2000"), "unsupported format JPEG 2000", id="jpeg2000"),
        pytest.param(pillow_file("AVIF"), "unsupported format AVIF", id="avif"),
    ],
)
def test_pillow_format_outside_allowlist_rejected(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=rf"^'upload\.jpg': {message}") as raised:
        load_image(data, label="upload.jpg", **LIMITS)

    assert "Allowed formats are JPEG, PNG, WEBP, BMP, GIF, TIFF and MPO." in str(raised.value)


# Corrupt PNG image data. A bad CRC in the header chunk is covered in test_images.py.


def replace_idat(png: bytes, body: bytes, *, fix_crc: bool) -> bytes:
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", png, start)
    chunk = png_chunk(b"IDAT", body)
    if not fix_crc:
        chunk = chunk[:-4] + struct.pack(">I", zlib.crc32(b"IDAT" + body) ^ 1)
    return png[:start] + chunk + png[start + 12 + length :]


@pytest.mark.parametrize(
    "make_corrupt",
    [
        pytest.param(lambda png, body: replace_idat(png, body[:-1] + b"\x00", fix_crc=False), id="idat-bad-crc"),
        pytest.param(lambda png, body: replace_idat(png, b"\x78\x9c" + b"\xff" * 40, fix_crc=True), id="idat-bad-zlib"),
        pytest.param(lambda png, body: replace_idat(png, body[: len(body) // 3], fix_crc=True), id="idat-cut-short"),
    ],
)
def test_corrupt_png_image_data_rejected(make_corrupt: Callable[[bytes, bytes], bytes]) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = encode(Image.fromarray(noise), "PNG")
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", png, start)
    body = png[start + 8 : start + 8 + length]

    with pytest.raises(InvalidImageError, match=r"^'broken\.png': truncated or corrupt PNG image: ") as raised:
        load_image(make_corrupt(png, body), label="broken.png", **LIMITS)

    assert "\n" not in str(raised.value)


# EXIF orientation on a real photo: the pipeline must find the upright face.

# What a viewer does to the stored pixels for each EXIF orientation (Pillow's names). The tests
# store the inverse of that transform, as a camera held sideways does.
STORED_TRANSFORM = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # the viewer turns it 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="module")
def upright_canvas(datasets_dir: Path) -> Image.Image:
    """An LFW portrait on the left of a wider grey canvas, so that a turned photo has a different shape."""
    photo = Image.open(datasets_dir / "lfw" / "Alan_Greenspan" / "Alan_Greenspan_0001.jpg").convert("RGB")
    canvas = Image.new("RGB", (photo.width + 150, photo.height), (128, 128, 128))
    canvas.paste(photo, (0, 0))
    return canvas


@pytest.mark.datasets
@pytest.mark.parametrize("orientation", sorted(STORED_TRANSFORM))
def test_exif_rotated_photo_face_found(
    tmp_path: Path, pipeline: FacePipeline, upright_canvas: Image.Image, orientation: int
) -> None:
    upright = load_image(encode(upright_canvas, "JPEG", quality=95), **LIMITS)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation_{orientation}.jpg"
    upright_canvas.transpose(STORED_TRANSFORM[orientation]).save(path, "JPEG", quality=95, exif=exif)

    decoded = load_image(path, **LIMITS)
    faces = pipeline.analyze(decoded)
    reference = pipeline.analyze(upright)[0]

    assert (decoded.width, decoded.height) == (upright.width, upright.height)
    assert len(faces) == 1
    assert faces[0].detection.method == "mtcnn"
    left_eye, right_eye, nose, left_mouth, right_mouth = faces[0].detection.landmarks
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])  # eyes above mouth
    assert left_eye[0] < right_eye[0]  # not mirrored
    assert float(faces[0].embedding @ reference.embedding) > 0.9


def test_pillow_warning_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    # An EXIF block that announces 5 entries and holds none: Pillow warns "Corrupt EXIF data".
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encode(Image.new("RGB", (8, 8), (200, 0, 0)), "JPEG")

    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="core.images"):
        warnings.simplefilter("error")
        decoded = load_image(data[:2] + app1 + data[2:], label="exif.jpg", **LIMITS)

    assert (decoded.width, decoded.height) == (8, 8)
    assert any("Pillow warned while decoding 'exif.jpg': Corrupt EXIF data" in line for line in caplog.messages)
