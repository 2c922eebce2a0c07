"""Draw numbered face boxes with names on a copy of a photo, for replies about group photos."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from bot.replies import face_label
from core.images import DecodedImage
from core.service import Identification

logger = logging.getLogger(__name__)

JPEG_QUALITY = 88
# Telegram scales photos down to 2560 px on the longer side, so larger copies only cost upload time.
MAX_SIDE = 2560

_MATCH_COLOR = (46, 204, 64)
_UNKNOWN_COLOR = (255, 133, 27)
_TEXT_COLOR = (0, 0, 0)


def annotate_faces(image: DecodedImage, identifications: Sequence[Identification]) -> bytes:
    """Return a JPEG copy of ``image`` with each face boxed and labelled "N name score", N counting from 1.

    Matched faces are green and unknown faces orange. This is CPU work, so call it off the event loop.
    """
    canvas = Image.fromarray(image.pixels)
    scale = min(1.0, MAX_SIDE / max(canvas.size))
    if scale < 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.Resampling.LANCZOS)

    draw = ImageDraw.Draw(canvas)
    short_side = min(canvas.size)
    line_width = max(2, round(short_side / 200))
    font = ImageFont.load_default(size=max(12, round(short_side / 30)))

    for number, identification in enumerate(identifications, start=1):
        x1, y1, x2, y2 = (value * scale for value in identification.face.box)
        color = _MATCH_COLOR if identification.match is not None else _UNKNOWN_COLOR
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line_width)
        _draw_label(draw, font, f"{number} {face_label(identification)}", (x1, y1), color, canvas.size)

    output = io.BytesIO()
    canvas.save(output, format="JPEG", quality=JPEG_QUALITY)
    return output.getvalue()


def _draw_label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    corner: tuple[float, float],
    color: tuple[int, int, int],
    size: tuple[int, int],
) -> None:
    """Write ``text`` on a filled box above the face box, or inside it when there is no room above."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 6
    x = min(max(0.0, corner[0]), max(0.0, size[0] - width))
    y = corner[1] - height if corner[1] - height >= 0 else max(0.0, corner[1])
    draw.rectangle((x, y, x + width, y + height), fill=color)
    draw.text((x + 3 - left, y + 3 - top), text, fill=_TEXT_COLOR, font=font)
