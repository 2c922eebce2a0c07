"""Build the python-telegram-bot Application: Bot API URLs, concurrency, handlers and the error handler."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import NetworkError, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.account import FORGET_NO, FORGET_YES, forget_button, forget_command, me_command
from bot.enroll import CONSENT_NO, CONSENT_YES, cancel_command, consent_button, enroll_command
from bot.identify import identify_command
from bot.info import help_command, stats_command
from bot.messaging import reply
from bot.replies import ERROR
from bot.routing import photo_message
from bot.state import STATE_KEY, BotState
from core.service import FaceService
from core.settings import Settings

logger = logging.getLogger(__name__)

# Update types requested from Telegram. Edited messages and other types are not handled.
ALLOWED_UPDATES = (Update.MESSAGE, Update.CALLBACK_QUERY)


def build_application(settings: Settings, service: FaceService, token: str) -> Application:
    """Create the Application for ``token`` with every handler, around an opened ``service``.

    Updates are handled concurrently: model work waits on the service's worker pool, so
    /help and other light commands get their replies while photos are being identified. All
    shared state lives on the event loop thread, which makes this safe.
    """
    builder = ApplicationBuilder().token(token).concurrent_updates(True)
    if settings.telegram_api_base_url:
        builder = builder.base_url(settings.telegram_api_base_url)
    if settings.telegram_api_file_url:
        builder = builder.base_file_url(settings.telegram_api_file_url)
    application = builder.build()
    application.bot_data[STATE_KEY] = BotState.create(settings, service)
    add_handlers(application)
    return application


def add_handlers(application: Application) -> None:
    """Register the command, photo and button handlers and the error handler."""
    # New messages only: an edited message would otherwise run its command again.
    new = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler(["start", "help"], help_command, filters=new),
            CommandHandler("identify", identify_command, filters=new),
            CommandHandler(["enroll", "celebrity"], enroll_command, filters=new),
            CommandHandler("cancel", cancel_command, filters=new),
            CommandHandler("me", me_command, filters=new),
            CommandHandler("forget", forget_command, filters=new),
            CommandHandler("stats", stats_command, filters=new),
            MessageHandler(new & (filters.PHOTO | filters.Document.ALL), photo_message),
            CallbackQueryHandler(consent_button, pattern=f"^({CONSENT_YES}|{CONSENT_NO})"),
            CallbackQueryHandler(forget_button, pattern=f"^({FORGET_YES}|{FORGET_NO})"),
        ]
    )
    application.add_error_handler(on_error)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an error with the ids involved and, for a user's update, apologise in the chat."""
    error = context.error
    if not isinstance(update, Update):
        # Errors outside a handler, such as a failed getUpdates; python-telegram-bot retries those.
        if isinstance(error, NetworkError):
            logger.warning("Bot API request failed: %s", error)
        else:
            logger.error("error outside an update", exc_info=error)
        return

    chat = update.effective_chat
    user = update.effective_user
    logger.error(
        "update %d (chat %s, user %s) failed: %s",
        update.update_id,
        chat.id if chat else None,
        user.id if user else None,
        error,
        exc_info=error,
    )
    message = update.effective_message
    if message is None or chat is None:
        return
    try:
        await reply(context.bot, chat.id, message.message_id, ERROR)
    except TelegramError as exc:
        logger.warning("update %d: apology to chat %d failed: %s", update.update_id, chat.id, exc)
