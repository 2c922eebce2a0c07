"""Sending replies and keeping a chat action ("typing", "sending photo") visible while work runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from telegram import Bot, Message, ReplyParameters
from telegram.error import TelegramError

logger = logging.getLogger(__name__)

# Telegram shows a chat action for 5 seconds or until the bot's next message.
CHAT_ACTION_REPEAT_S = 4.5


async def reply(bot: Bot, chat_id: int, message_id: int, text: str, **kwargs: Any) -> Message:
    """Send ``text`` to ``chat_id`` quoting message ``message_id``; still sent if that message was deleted."""
    return await bot.send_message(
        chat_id, text, reply_parameters=ReplyParameters(message_id, allow_sending_without_reply=True), **kwargs
    )


async def reply_photo(bot: Bot, chat_id: int, message_id: int, photo: bytes, caption: str, **kwargs: Any) -> Message:
    """Send a JPEG ``photo`` with ``caption`` to ``chat_id`` quoting message ``message_id``."""
    return await bot.send_photo(
        chat_id,
        photo,
        caption=caption,
        filename="faces.jpg",
        reply_parameters=ReplyParameters(message_id, allow_sending_without_reply=True),
        **kwargs,
    )


@contextlib.asynccontextmanager
async def chat_action(bot: Bot, chat_id: int, action: str) -> AsyncIterator[None]:
    """Show ``action`` in ``chat_id`` until the ``async with`` block ends, repeating it every few seconds.

    The first action is sent before the block starts, so that ending the block cannot
    cancel it while its request is still in flight.
    """
    if not await _send_chat_action(bot, chat_id, action):
        yield
        return
    task = asyncio.create_task(_repeat_chat_action(bot, chat_id, action))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _repeat_chat_action(bot: Bot, chat_id: int, action: str) -> None:
    while True:
        await asyncio.sleep(CHAT_ACTION_REPEAT_S)
        if not await _send_chat_action(bot, chat_id, action):
            return


async def _send_chat_action(bot: Bot, chat_id: int, action: str) -> bool:
    """Send one chat action and return whether it was sent."""
    try:
        await bot.send_chat_action(chat_id, action)
    except TelegramError as exc:
        # The action is cosmetic, so a failure ends the repetition but not the request.
        logger.warning("chat action %s in chat %d failed: %s", action, chat_id, exc)
        return False
    return True
