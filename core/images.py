"""Image intake: turn the bytes or file of a photo into an RGB pixel array, or raise InvalidImageError.

The CLI and the bot pass every photo through :func:`load_image`. It checks the byte size
before reading and accepts only an allowlist of formats. It checks the pixel count from
the image header before any pixel data is decoded, so a small file that declares a huge
image is rejected without allocating its pixels. Before Pillow parses the file, it rejects a
JPEG with more than MAX_JPEG_SCANS scans and a TIFF with more than MAX_TIFF_SEGMENTS strips or
tiles, whose decoding time or memory grows with those counts. Every rejection is an
:class:`~core.errors.InvalidImageError` whose message is one line naming the file or
label, the reason and, where there is one, the fix.

No process-wide Pillow setting is changed: ``Image.MAX_IMAGE_PIXELS`` keeps its value
and ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from core.errors import InvalidImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO")  # MPO is what many phones write for JPEG

# Pillow has no separate opener for MPO because its JPEG plugin returns MpoImageFile for
# MPO files. Passing "MPO" in `formats=` makes Image.open raise KeyError (Pillow 13.0)
# when the earlier formats do not match, so it is left out here.
_PILLOW_OPEN_FORMATS = tuple(name for name in ALLOWED_FORMATS if name != "MPO")

# Signatures of the allowed formats and the Pillow class that parses each, used only to
# report why Pillow could not identify a file that starts like an allowed format.
_ALLOWED_SIGNATURES: tuple[tuple[bytes, int, str, type[ImageFile.ImageFile]], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG", PngImagePlugin.PngImageFile),
    (b"\xff\xd8\xff", 0, "JPEG", JpegImagePlugin.JpegImageFile),
    (b"GIF87a", 0, "GIF", GifImagePlugin.GifImageFile),
    (b"GIF89a", 0, "GIF", GifImagePlugin.GifImageFile),
    (b"BM", 0, "BMP", BmpImagePlugin.BmpImageFile),
    (b"II*\x00", 0, "TIFF", TiffImagePlugin.TiffImageFile),
    (b"MM\x00*", 0, "TIFF", TiffImagePlugin.TiffImageFile),
    (b"WEBP", 8, "WEBP", WebPImagePlugin.WebPImageFile),
)

# Signatures of common formats that are not allowed, so the error can name them.
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF-", 0, "PDF"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xffO\xffQ", 0, "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "JPEG XL"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"qoif", 0, "QOI"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"%!PS", 0, "PostScript or EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),  # the binary header of DOS EPS files
)

# A JPEG's decoding time grows with the number of scans times the pixel count, because each
# scan passes over every block, and a scan can be a few bytes of end-of-band runs. Measured
# with Pillow 13.0 and libjpeg-turbo 3.2 on a 2000x2000 image: 6 scans took 0.01 s, 5,006
# scans (94 KB) took 12.7 s. Pillow 13.0's progressive encoder wrote 10 scans for a color image
# and 6 for a grayscale one. NOTE: 100 is an estimate that leaves room for encoders with their
# own scan scripts, not a count taken from them.
MAX_JPEG_SCANS = 100

# Pillow builds one Python tile record per TIFF strip or tile while it opens the file, before
# the pixel limit can be checked. Measured with Pillow 13.0: an 18 MB TIFF of 1x2,000,000
# pixels in 2,000,000 one-row strips reached 794 MB peak RSS and took 7.8 s. A 40-megapixel
# photo stored one row per strip has fewer than 100,000 strips unless it is under 400 pixels wide.
MAX_TIFF_SEGMENTS = 100_000

_TIFF_STRIP_OFFSETS = 273
_TIFF_TILE_OFFSETS = 324

# Brands of the ISO base media `ftyp` box (bytes 8..12) used by HEIF and AVIF files.
_FTYP_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"hevm": "HEIC",
    b"hevs": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}

_SIXTEEN_BIT_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_DIRECT_RGB_MODES = frozenset({"RGB", "RGBX", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"})

# warnings.catch_warnings() swaps the process-wide warning filters and is not
# thread-safe, so calls from several threads would restore each other's filters. The
# lock makes this module's own calls take turns.
# NOTE: catch_warnings() used by other code in another thread can still interleave with it.
_DECODE_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)  # eq=False because comparing or hashing the pixel array is not meaningful
class DecodedImage:
    """A decoded photo with the facts needed to identify and describe it."""

    pixels: np.ndarray = field(repr=False)
    """(H, W, 3) uint8 RGB, C-contiguous, with the EXIF orientation applied."""

    sha256: str
    """Hex SHA-256 of the original bytes (the file as sent), used to skip re-enrollment."""

    format: str
    """Pillow format name, one of ALLOWED_FORMATS, for example "JPEG"."""

    source: str | None
    """The path the image came from, or a label supplied by the caller. For messages only."""

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] != 3 or self.pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be an (H, W, 3) uint8 array, got {self.pixels.shape} {self.pixels.dtype}")
        if not self.pixels.flags.c_contiguous:
            raise ValueError("pixels must be C-contiguous")

    @property
    def width(self) -> int:
        """Width in pixels, after the EXIF orientation is applied."""
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels, after the EXIF orientation is applied."""
        return int(self.pixels.shape[0])


def load_image(
    source: bytes | Path | str,
    *,
    max_bytes: int,
    max_pixels: int,
    label: str | None = None,
) -> DecodedImage:
    """Decode a photo from bytes or from a file path (a ``str`` is a path) into RGB pixels.

    The byte size is checked before the file is read, and width x height is checked
    against ``max_pixels`` from the image header before pixel data is decoded. Images
    over Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default) are rejected by its
    decompression-bomb check even when ``max_pixels`` is larger.

    Only the first frame of a GIF or MPO and the first page of a TIFF are decoded.
    Transparent areas are composited over white, and 16-bit and 32-bit grayscale is
    scaled to 0..255 (see :func:`_scale_to_uint8`). Embedded ICC color profiles are not
    applied. Images of any size down to 1x1 are returned.

    Decoding holds a module lock, so concurrent calls decode one image at a time.

    Args:
        source: The encoded image, or the path of an image file.
        max_bytes: Largest accepted size of the encoded image, in bytes.
        max_pixels: Largest accepted width x height of the decoded image.
        label: Name for messages and ``DecodedImage.source``, for example the name of a
            file that a chat user sent. Defaults to the path. Bytes without a label are
            called "image data" in messages and get a ``source`` of None.

    Raises:
        InvalidImageError: The file cannot be read, or it is empty, too large, not an
            allowed format, truncated or corrupt, over the scan or strip limit, or in an
            unsupported color mode.
        ValueError: ``max_bytes`` or ``max_pixels`` is below 1.
        TypeError: ``source`` is not bytes, str or Path.
    """
    _validate_limits(max_bytes=max_bytes, max_pixels=max_pixels)

    if isinstance(source, bytes):
        source_text = label
        name = _display_name(label)
        _check_byte_size(len(source), max_bytes, name)
        data = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        source_text = label if label is not None else str(path)
        name = _display_name(source_text)
        data = _read_file(path, max_bytes, name)
    else:
        raise TypeError(f"source must be bytes, str or Path, got {type(source).__name__}")

    return _decode(data, max_pixels=max_pixels, name=name, source=source_text)


def read_image_bytes(path: Path, *, max_bytes: int, label: str | None = None) -> bytes:
    """Read an image file after checking, with ``stat``, that it is a regular file of at most ``max_bytes``.

    The size is checked again after reading, because the file may grow in between, and
    at most ``max_bytes + 1`` bytes are ever read. ``label`` names the file in messages
    in place of the path.

    Raises:
        InvalidImageError: The path is missing, a directory, not a regular file, not
            readable, or larger than ``max_bytes``.
        ValueError: ``max_bytes`` is below 1.
    """
    _validate_limits(max_bytes=max_bytes, max_pixels=1)

    return _read_file(Path(path), max_bytes, _display_name(label if label is not None else str(path)))


def _display_name(source: str | None) -> str:
    """Quote a path or label for messages, so that spaces and line breaks in it stay visible."""
    return repr(source) if source is not None else "image data"


def _validate_limits(*, max_bytes: int, max_pixels: int) -> None:
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels!r}")


def _read_file(path: Path, max_bytes: int, name: str) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise _file_error(name, exc) from exc

    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"{name}: is a directory, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidImageError(f"{name}: not a regular file. Pass the path of an image file.")
    _check_byte_size(info.st_size, max_bytes, name)

    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise _file_error(name, exc) from exc

    _check_byte_size(len(data), max_bytes, name)
    return data


def _file_error(name: str, exc: OSError) -> InvalidImageError:
    """Build the error for a failed stat or open, with the fix for the usual causes."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return InvalidImageError(f"{name}: file not found. Check the path.")
    if isinstance(exc, IsADirectoryError):
        return InvalidImageError(f"{name}: is a directory, not an image file.")
    if isinstance(exc, PermissionError):
        return InvalidImageError(f"{name}: permission denied. Make the file readable for this user.")
    return InvalidImageError(f"{name}: cannot read the file: {exc.strerror or exc}.")


def _check_byte_size(size: int, max_bytes: int, name: str) -> None:
    if size > max_bytes:
        raise InvalidImageError(
            f"{name}: file size {size:,} bytes is over the limit of {max_bytes:,} bytes. "
            "Compress or scale the image down."
        )


def _decode(data: bytes, *, max_pixels: int, name: str, source: str | None) -> DecodedImage:
    """Decode ``data``, which has passed the byte-size check, into a DecodedImage."""
    if not data:
        raise InvalidImageError(f"{name}: empty file (0 bytes).")

    with _DECODE_LOCK, warnings.catch_warnings(record=True) as pillow_warnings:
        # Pillow reports damage that it decodes around, such as corrupt EXIF data, as
        # warnings. They are recorded and logged below, so that a process running with
        # warnings as errors still gets a DecodedImage or an InvalidImageError.
        warnings.simplefilter("always")
        # Pillow warns between Image.MAX_IMAGE_PIXELS and twice that, and raises above it.
        # This filter, which takes precedence over the one above, turns the warning into an
        # exception, which the steps below catch.
        warnings.simplefilter("error", Image.DecompressionBombWarning)

        _check_segment_counts(data, name)
        image = _open(data, max_pixels=max_pixels, name=name)
        with image:
            _check_pixel_count(image.size, max_pixels, name)

            _load_first_frame(image, max_pixels=max_pixels, name=name)

            image_format = str(image.format)
            mode = image.mode
            oriented = _apply_exif_orientation(image, name)

    for caught in pillow_warnings:
        logger.debug("Pillow warned while decoding %s: %s", name, caught.message)
    pixels = _to_rgb_array(oriented, name)

    logger.debug(
        "Decoded %s: %dx%d %s, mode %s, %d bytes", name, pixels.shape[1], pixels.shape[0], image_format, mode, len(data)
    )
    return DecodedImage(
        pixels=pixels,
        sha256=hashlib.sha256(data).hexdigest(),
        format=image_format,
        source=source,
    )


def _check_segment_counts(data: bytes, name: str) -> None:
    """Reject a JPEG with too many scans or a TIFF with too many strips or tiles, before Pillow parses it."""
    if data.startswith(b"\xff\xd8\xff"):
        scans = _count_jpeg_scans(data, stop_after=MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise InvalidImageError(
                f"{name}: JPEG image has more than {MAX_JPEG_SCANS} scans, the limit that bounds its decoding time. "
                "Save it again as a baseline (non-progressive) JPEG."
            )
    elif data[:2] in (b"II", b"MM") and data[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+"):
        segments = _count_tiff_segments(data)
        if segments > MAX_TIFF_SEGMENTS:
            raise InvalidImageError(
                f"{name}: TIFF image has {segments:,} strips or tiles, over the limit of {MAX_TIFF_SEGMENTS:,}. "
                "Save it again as PNG or JPEG."
            )


def _count_jpeg_scans(data: bytes, *, stop_after: int) -> int:
    """Count the start-of-scan markers of the first image in JPEG ``data``.

    Counting ends at the image's end-of-image marker, at the end of ``data``, or once the
    count passes ``stop_after``. Marker segments are skipped by their length field, so a
    thumbnail inside an APP segment is not counted. In entropy-coded data a 0xFF byte is
    followed by 0x00 (a stuffed byte) or a restart marker, and any other pair is a marker.
    """
    scans = 0
    position = 2  # after the start-of-image marker
    while scans <= stop_after:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            position += 2
            continue
        if marker == 0xD9:  # end of image
            break
        if marker == 0xDA:
            scans += 1
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + max(length, 2)
    return scans


def _count_tiff_segments(data: bytes) -> int:
    """Return the larger of the StripOffsets and TileOffsets value counts in the first IFD of TIFF ``data``.

    Reads classic TIFF and BigTIFF headers the way Pillow 13.0 does: bytes 0-1 give the byte
    order, and byte 2 is 43 for BigTIFF and anything else for classic TIFF. Returns 0 when
    the header or IFD is cut short, so that Pillow reports the damage.
    """
    endian = "<" if data[:2] == b"II" else ">"
    if data[2] == 43:
        offset_format, count_format, entry_format, entry_size = "Q", "Q", "HHQQ", 20
        ifd_offset_at = 8
    else:
        offset_format, count_format, entry_format, entry_size = "I", "H", "HHII", 12
        ifd_offset_at = 4

    try:
        (ifd_offset,) = struct.unpack_from(endian + offset_format, data, ifd_offset_at)
        (entry_count,) = struct.unpack_from(endian + count_format, data, ifd_offset)
    except (struct.error, OverflowError):  # OverflowError: an offset past the largest ssize_t
        return 0
    entries_start = ifd_offset + struct.calcsize(endian + count_format)
    available = max(0, (len(data) - entries_start) // entry_size)
    entries = data[entries_start : entries_start + min(entry_count, available) * entry_size]

    segments = 0
    for tag, _type, value_count, _value in struct.iter_unpack(endian + entry_format, entries):
        if tag in (_TIFF_STRIP_OFFSETS, _TIFF_TILE_OFFSETS):
            segments = max(segments, value_count)
    return segments


def _open(data: bytes, *, max_pixels: int, name: str) -> ImageFile.ImageFile:
    """Open ``data`` with Pillow, trying only the allowed formats. Reads the header, not the pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=_PILLOW_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data, name) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _decompression_bomb_error(exc, max_pixels, name) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _corrupt_error(name, None, exc) from exc

    if image.format not in ALLOWED_FORMATS:
        image.close()
        raise _unsupported_format_error(name, str(image.format))
    return image


def _check_pixel_count(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{name}: {width}x{height} image ({width * height:,} pixels) is over the pixel limit "
            f"of {max_pixels:,} pixels. Scale the image down."
        )


def _load_first_frame(image: ImageFile.ImageFile, *, max_pixels: int, name: str) -> None:
    """Decode the pixels of the current frame, which Image.open leaves at the first frame or page."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _decompression_bomb_error(exc, max_pixels, name) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise _corrupt_error(name, str(image.format), exc) from exc


def _apply_exif_orientation(image: Image.Image, name: str) -> Image.Image:
    """Return a copy of ``image`` turned upright according to its EXIF orientation tag.

    A photo whose EXIF block cannot be parsed is kept as stored and a warning is logged,
    because the pixels themselves decoded fine.
    """
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error) as exc:
        logger.warning("Cannot apply the EXIF orientation of %s, keeping it as stored: %s", name, exc)
        return image.copy()


def _to_rgb_array(image: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded image of any supported mode to an (H, W, 3) uint8 C-contiguous array."""
    if image.mode in _SIXTEEN_BIT_GRAY_MODES or image.mode in {"I", "F"}:
        gray = _scale_to_uint8(np.asarray(image), image.mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))

    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgb = _composite_over_white(image)
    elif image.mode in _DIRECT_RGB_MODES:
        rgb = image.convert("RGB")
    else:
        raise InvalidImageError(f"{name}: unsupported color mode {image.mode!r}. Convert the image to RGB.")

    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _composite_over_white(image: Image.Image) -> Image.Image:
    """Flatten alpha or palette transparency onto a white background."""
    if image.mode == "La":
        image = image.convert("LA")  # Pillow 13 has no direct conversion from premultiplied La to RGBA

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale to uint8 linearly, without clipping.

    The full range maps to 0..255 with rounding: 0..65535 for the 16-bit modes and for
    "I" (the mode Pillow uses for 16-bit TIFFs and PNGs as well), and 0..1 or 0..255 for
    "F", whichever contains the values. Values outside that range make the image's own
    minimum..maximum map to 0..255 instead. NaN and infinity become 0.
    """
    if mode in _SIXTEEN_BIT_GRAY_MODES:
        wide = values.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)

    floats = values.astype(np.float32)
    floats[~np.isfinite(floats)] = 0.0
    if floats.size == 0:
        return floats.astype(np.uint8)

    low = float(floats.min())
    high = float(floats.max())
    full_scale = _nominal_full_scale(mode, low, high)
    if low < 0.0 or high > full_scale:
        full_scale = high - low if high > low else 1.0
        floats -= low

    return np.rint(floats * (255.0 / full_scale)).astype(np.uint8)


def _nominal_full_scale(mode: str, low: float, high: float) -> float:
    if mode != "F":
        return 65535.0
    return 1.0 if low >= 0.0 and high <= 1.0 else 255.0


def _unidentified_error(data: bytes, name: str) -> InvalidImageError:
    """Explain why Pillow could not identify ``data``: unsupported format, corrupt header, or not an image."""
    unsupported = _sniff_unsupported_format(data)
    if unsupported is not None:
        return _unsupported_format_error(name, unsupported)

    for signature, offset, format_name, plugin_class in _ALLOWED_SIGNATURES:
        if data[offset : offset + len(signature)] != signature:
            continue
        # The plugin raises the parse error that Image.open swallows, such as a bad CRC.
        try:
            plugin_class(io.BytesIO(data)).close()
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
            return _corrupt_error(name, format_name, exc)
        return InvalidImageError(f"{name}: truncated or corrupt {format_name} image. Pillow cannot identify it.")

    return InvalidImageError(f"{name}: not a supported image. {_allowed_formats_sentence()}")


def _sniff_unsupported_format(data: bytes) -> str | None:
    """Name a common non-allowed format from the first bytes of ``data``, or return None."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return _FTYP_BRANDS.get(brand, f"ISO base media, brand {brand.decode('latin-1')!r}")

    for signature, offset, format_name in _UNSUPPORTED_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return format_name

    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def _decompression_bomb_error(exc: Exception, max_pixels: int, name: str) -> InvalidImageError:
    """Report Pillow's decompression-bomb check in the terms of the pixel limit."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    limit = min(max_pixels, pillow_limit) if pillow_limit is not None else max_pixels

    # Pillow's message reads "Image size (N pixels) exceeds limit of M pixels, ..." (Pillow 13.0).
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match is None:
        return InvalidImageError(
            f"{name}: image is over the pixel limit of {limit:,} pixels ({_one_line(exc)}). Scale the image down."
        )
    return InvalidImageError(
        f"{name}: image of {int(match.group(1)):,} pixels is over the pixel limit of {limit:,} pixels. "
        "Scale the image down."
    )


def _corrupt_error(name: str, format_name: str | None, exc: BaseException) -> InvalidImageError:
    image = f"{format_name} image" if format_name else "image"
    return InvalidImageError(f"{name}: truncated or corrupt {image}: {_one_line(exc)}.")


def _unsupported_format_error(name: str, format_name: str) -> InvalidImageError:
    return InvalidImageError(
        f"{name}: unsupported format {format_name}. Convert it to JPEG or PNG. {_allowed_formats_sentence()}"
    )


def _allowed_formats_sentence() -> str:
    return f"Allowed formats are {', '.join(ALLOWED_FORMATS[:-1])} and {ALLOWED_FORMATS[-1]}."


def _one_line(exc: BaseException) -> str:
    """Return the message of ``exc`` on one line, without a trailing period."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rstrip(".")
