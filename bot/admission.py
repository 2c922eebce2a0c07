"""The per-user rate limit in front of every photo request, with its reply."""

from __future__ import annotations

import logging

from telegram import Bot

from bot.messaging import reply
from bot.replies import rate_limited_text
from bot.request_log import RequestRecord
from bot.state import BotState

logger = logging.getLogger(__name__)


async def admit_photo_request(
    state: BotState, bot: Bot, *, user_id: int, chat_id: int, message_id: int, record: RequestRecord
) -> bool:
    """Return whether ``user_id`` may send another photo now; if not, explain the limit once per burst."""
    decision = state.rate_limiter.check(user_id)
    if decision.allowed:
        return True
    record.outcome = "rate_limited"
    if decision.first_rejection:
        settings = state.settings
        text = rate_limited_text(decision.retry_after_s, settings.telegram_rate_limit, settings.telegram_rate_window_s)
        await reply(bot, chat_id, message_id, text)
    return False
