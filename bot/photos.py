"""Photos from Telegram messages: pick the file, check its size and type, download and decode it.

Both compressed photos and images sent as documents (uncompressed files) are accepted.
The declared file size is checked before anything is downloaded, against the Bot API's
download limit (``telegram_max_download_bytes``), and again after ``getFile`` and after
the download.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from telegram import Bot, Message
from telegram.error import TelegramError

from core.errors import InvalidImageError
from core.images import DecodedImage, load_image
from core.settings import Settings

logger = logging.getLogger(__name__)

# Document MIME types that are never images; anything else (including none) is decoded and checked.
_IMAGE_MIME_PREFIX = "image/"


class PhotoRejectedError(Exception):
    """The photo cannot be used; ``str(error)`` is the reply for the user."""


@dataclass(frozen=True)
class PhotoRef:
    """The file of a photo or image document in a message, before it is downloaded.

    Attributes:
        label: a name for messages: the document's file name, or "photo".
        file_size: size in bytes as Telegram reports it; None when not reported.
        mime_type: the document's MIME type; None for a compressed photo or when not reported.
    """

    file_id: str
    file_unique_id: str
    file_size: int | None
    label: str
    mime_type: str | None = None
    is_document: bool = False


def photo_of(message: Message | None, *, max_bytes: int) -> PhotoRef | None:
    """Return the photo or document of ``message``, or None when it has neither.

    Of a compressed photo's sizes, the largest one within ``max_bytes`` is taken, so a photo
    whose biggest size is over the limit still works at a smaller size.
    """
    if message is None:
        return None
    if message.photo:
        sizes = sorted(message.photo, key=lambda size: size.width * size.height)
        fitting = [size for size in sizes if size.file_size is None or size.file_size <= max_bytes]
        chosen = fitting[-1] if fitting else sizes[-1]
        return PhotoRef(chosen.file_id, chosen.file_unique_id, chosen.file_size, "photo")
    document = message.document
    if document is not None:
        return PhotoRef(
            document.file_id,
            document.file_unique_id,
            document.file_size,
            document.file_name or "file",
            document.mime_type,
            is_document=True,
        )
    return None


def check_photo(photo: PhotoRef, *, max_bytes: int) -> None:
    """Reject a file that is not an image by its MIME type, or that is over ``max_bytes``, before any download.

    Raises:
        PhotoRejectedError: with the reply for the user.
    """
    if photo.mime_type is not None and not photo.mime_type.startswith(_IMAGE_MIME_PREFIX):
        raise PhotoRejectedError(
            f"{photo.label!r} is a {photo.mime_type} file, not an image. Send a photo, or a JPEG or PNG file."
        )
    if photo.file_size is not None and photo.file_size > max_bytes:
        raise PhotoRejectedError(_too_large(photo.label, photo.file_size, max_bytes))


async def download_photo(bot: Bot, photo: PhotoRef, settings: Settings) -> DecodedImage:
    """Download ``photo`` and decode it off the event loop.

    Raises:
        PhotoRejectedError: the file is too large, cannot be downloaded, or is not a usable image.
    """
    max_bytes = settings.telegram_max_download_bytes
    check_photo(photo, max_bytes=max_bytes)
    try:
        telegram_file = await bot.get_file(photo.file_id)
        if telegram_file.file_size is not None and telegram_file.file_size > max_bytes:
            raise PhotoRejectedError(_too_large(photo.label, telegram_file.file_size, max_bytes))
        data = bytes(await telegram_file.download_as_bytearray())
    except TelegramError as exc:
        logger.warning("download of file %s failed: %s", photo.file_unique_id, exc)
        raise PhotoRejectedError(
            f"I could not download {photo.label!r} from Telegram ({exc.message}). Please send it again."
        ) from exc
    if len(data) > max_bytes:
        raise PhotoRejectedError(_too_large(photo.label, len(data), max_bytes))

    try:
        return await asyncio.to_thread(
            load_image,
            data,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            label=photo.label,
        )
    except InvalidImageError as exc:
        logger.info("file %s is not a usable image: %s", photo.file_unique_id, exc)
        raise PhotoRejectedError(f"I cannot use this file: {exc}") from exc


def _too_large(label: str, size: int, max_bytes: int) -> str:
    return (
        f"{label!r} is {_megabytes(size)}, over the {_megabytes(max_bytes)} that I can download. "
        "Send it as a photo (compressed), or as a smaller file."
    )


def _megabytes(size: int) -> str:
    # Telegram states its limits in MB of 2**20 bytes ("20 MB" is 20,971,520 bytes).
    return f"{size / 2**20:.1f} MB"
