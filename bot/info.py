"""/start and /help for everyone, /stats for admins."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ContextTypes

from bot.access import is_admin
from bot.messaging import reply
from bot.replies import help_text, stats_text
from bot.request_log import logged_request
from bot.state import bot_state

logger = logging.getLogger(__name__)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/start`` and ``/help``: what the bot does, what it stores and how to delete it."""
    message = update.effective_message
    async with logged_request(update, "help"):
        admin = is_admin(bot_state(context).settings, update.effective_user.id)
        await reply(context.bot, message.chat_id, message.message_id, help_text(admin=admin))


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/stats`` for admins: gallery size, model, threshold and photo requests in flight."""
    message = update.effective_message
    async with logged_request(update, "stats") as record:
        state = bot_state(context)
        if not is_admin(state.settings, update.effective_user.id):
            record.outcome = "denied"
            await reply(context.bot, message.chat_id, message.message_id, "Only admins can use /stats.")
            return
        service = state.service
        text = stats_text(
            await service.store.counts(),
            model_id=service.model_id,
            thresholds=service.thresholds,
            indexed=len(service.index),
            pending=state.workload.pending,
            max_pending=state.workload.max_pending,
        )
        await reply(context.bot, message.chat_id, message.message_id, text)
