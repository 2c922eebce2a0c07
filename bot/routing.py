"""Routing of messages with a photo or document to enrollment, identification, or nothing."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ContextTypes

from bot.commands import parse_command
from bot.enroll import enroll_awaited_photo, enroll_from_caption
from bot.identify import identify_photo
from bot.photos import photo_of
from bot.request_log import logged_request
from bot.state import bot_state

logger = logging.getLogger(__name__)


async def photo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Route a photo or document to the first rule that applies.

    A caption command (``/enroll``, ``/celebrity``, ``/identify``) comes first. Next, a
    photo that the user's earlier ``/enroll`` in this chat awaits is enrolled. Next, any
    photo in a private chat is identified. A photo in a group without a command is ignored.
    """
    state = bot_state(context)
    message = update.effective_message
    photo = photo_of(message, max_bytes=state.settings.telegram_max_download_bytes)
    if photo is None:
        return

    command = parse_command(message.caption, context.bot.username)
    if command is not None and command.name in ("enroll", "celebrity"):
        await enroll_from_caption(update, context, photo, command)
        return

    if command is None:
        awaited = state.awaited_photos.pop((message.chat_id, update.effective_user.id))
        if awaited is not None:
            await enroll_awaited_photo(update, context, photo, awaited)
            return

    if (command is not None and command.name == "identify") or message.chat.type == "private":
        async with logged_request(update, "identify") as record:
            await identify_photo(update, context, photo, record)
        return
    logger.debug("update %d: photo without a command in chat %d ignored", update.update_id, message.chat_id)
