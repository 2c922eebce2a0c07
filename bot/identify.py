"""Identification: /identify as a caption or a reply to a photo, and plain photos in private chats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from telegram import Message, Update
from telegram.constants import ChatAction
from telegram.ext import ContextTypes

from bot.admission import admit_photo_request
from bot.annotate import annotate_faces
from bot.messaging import chat_action, reply, reply_photo
from bot.photos import PhotoRef, PhotoRejectedError, download_photo, photo_of
from bot.replies import (
    BUSY,
    IDENTIFY_USAGE,
    MAX_CAPTION_LENGTH,
    NO_FACE,
    face_list_text,
    single_face_text,
)
from bot.request_log import RequestRecord, logged_request
from bot.state import TOP_K, bot_state
from bot.workload import BusyError
from core.service import Identification

logger = logging.getLogger(__name__)


async def identify_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/identify`` sent as text: identify the photo it replies to, or explain the usage."""
    message = update.effective_message
    async with logged_request(update, "identify") as record:
        photo = photo_of(message.reply_to_message, max_bytes=bot_state(context).settings.telegram_max_download_bytes)
        if photo is None:
            record.outcome = "usage"
            await reply(context.bot, message.chat_id, message.message_id, IDENTIFY_USAGE)
            return
        await identify_photo(update, context, photo, record)


async def identify_photo(
    update: Update, context: ContextTypes.DEFAULT_TYPE, photo: PhotoRef, record: RequestRecord
) -> None:
    """Identify every face of ``photo`` as seen from this chat and reply to the user's message."""
    state = bot_state(context)
    message = update.effective_message
    chat_id = message.chat_id
    user_id = update.effective_user.id
    if not await admit_photo_request(
        state, context.bot, user_id=user_id, chat_id=chat_id, message_id=message.message_id, record=record
    ):
        return

    try:
        with state.workload.slot():
            async with chat_action(context.bot, chat_id, ChatAction.TYPING):
                image = await download_photo(context.bot, photo, state.settings)
                identifications = await state.service.identify(image, top_k=TOP_K, chat_id=chat_id)
                annotated = None
                if len(identifications) > 1:
                    annotated = await asyncio.to_thread(annotate_faces, image, identifications)
    except BusyError:
        record.outcome = "busy"
        await reply(context.bot, chat_id, message.message_id, BUSY)
        return
    except PhotoRejectedError as exc:
        record.outcome = "rejected"
        await reply(context.bot, chat_id, message.message_id, str(exc))
        return

    record.faces = len(identifications)
    record.outcome = outcome_of(identifications)
    await send_identifications(context, message, identifications, annotated)


def outcome_of(identifications: Sequence[Identification]) -> str:
    """Return the log outcome: "no_face", "match", "unknown", or "M/N matched" for several faces."""
    if not identifications:
        return "no_face"
    matched = sum(1 for identification in identifications if identification.match is not None)
    if len(identifications) == 1:
        return "match" if matched else "unknown"
    return f"{matched}/{len(identifications)}_matched"


async def send_identifications(
    context: ContextTypes.DEFAULT_TYPE,
    message: Message,
    identifications: Sequence[Identification],
    annotated: bytes | None,
) -> None:
    """Reply with the result: a text for no face or one face, an annotated photo and a numbered list for several."""
    chat_id = message.chat_id
    if not identifications:
        await reply(context.bot, chat_id, message.message_id, NO_FACE)
        return
    if annotated is None:
        await reply(context.bot, chat_id, message.message_id, single_face_text(identifications[0]))
        return

    listing = face_list_text(identifications)
    caption = listing if len(listing) <= MAX_CAPTION_LENGTH else f"{len(identifications)} faces, numbered in the photo."
    async with chat_action(context.bot, chat_id, ChatAction.UPLOAD_PHOTO):
        await reply_photo(context.bot, chat_id, message.message_id, annotated, caption)
    if caption != listing:
        await reply(context.bot, chat_id, message.message_id, listing[:4096])
