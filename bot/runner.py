"""Run the bot: check the token, open the gallery, load the models, receive updates until SIGINT or SIGTERM.

Updates arrive by long polling, or by webhook when ``telegram_webhook_url`` is set. The
bot runs inside the caller's event loop, so ``maskid bot`` starts it with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from urllib.parse import urlsplit

import numpy as np
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import Application

from bot.app import ALLOWED_UPDATES, build_application
from bot.bot_token import REDACTED, check_token, install_token_redaction
from bot.commands import MENU
from bot.state import STATE_KEY, BotState
from core.errors import ConfigurationError, MaskidError
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings, env_name

logger = logging.getLogger(__name__)

# Seconds one getUpdates request waits for new updates on the Bot API server.
POLL_TIMEOUT_S = 10

# httpx logs every request URL at INFO, and those URLs contain the token.
_QUIET_LOGGERS = ("httpx", "httpcore")


class BotStartError(MaskidError):
    """The bot could not start: the Bot API rejected the token or could not be reached."""


async def run_bot(settings: Settings) -> None:
    """Run the bot until SIGINT or SIGTERM, then stop it cleanly.

    Raises:
        ConfigurationError: the token is missing or malformed, or a webhook setting is invalid.
        BotStartError: the Bot API server rejected the token or could not be reached.
    """
    token = check_token(settings.telegram_token)
    remove_redaction = install_token_redaction(token)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    stop = _stop_event()
    try:
        service = FaceService.from_settings(settings, workers=settings.telegram_model_workers)
        async with service:
            application = build_application(settings, service, token)
            await _serve(application, settings, service, stop)
    finally:
        _remove_stop_handlers()
        remove_redaction()


async def _serve(application: Application, settings: Settings, service: FaceService, stop: asyncio.Event) -> None:
    try:
        await application.initialize()
    except InvalidToken:
        # python-telegram-bot's message for this error contains the token, so it is not shown.
        raise BotStartError(
            f"the Bot API rejected the token (401 Unauthorized); check {env_name('telegram_token')}, "
            "or create a new token with @BotFather"
        ) from None
    except NetworkError as exc:
        reason = exc.message.replace(application.bot.token, REDACTED)
        raise BotStartError(
            f"cannot reach the Bot API at {_api_origin(settings)}: {reason}; check the network "
            f"and {env_name('telegram_api_base_url')}"
        ) from None

    try:
        logger.info("loading the models")
        await service.run_model(warm_up, service.pipeline)
        await application.bot.set_my_commands(list(MENU))
        mode = await start_receiving(application, settings)
        await application.start()
        logger.info("bot @%s is ready (%s); stop it with Ctrl-C or SIGTERM", application.bot.username, mode)
        await stop.wait()
        logger.info("stopping the bot")
    finally:
        await _stop_application(application)
    logger.info("bot stopped")


async def _stop_application(application: Application) -> None:
    """Stop receiving, let running handlers finish, then release the HTTP connections."""
    state: BotState = application.bot_data[STATE_KEY]
    await state.cancel_timers()
    if application.updater is not None and application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()


async def start_receiving(application: Application, settings: Settings) -> str:
    """Start long polling, or the webhook server when a webhook URL is set; return a description for the log."""
    updater = application.updater
    url = settings.telegram_webhook_url
    if url is None:
        await updater.start_polling(timeout=POLL_TIMEOUT_S, allowed_updates=list(ALLOWED_UPDATES))
        return "long polling"

    secret = settings.telegram_webhook_secret
    if secret is None:
        secret = secrets.token_urlsafe(32)
        logger.info("no webhook secret token set, so a random one is used for this run")
    try:
        await updater.start_webhook(
            listen=settings.telegram_webhook_listen,
            port=settings.telegram_webhook_port,
            url_path=urlsplit(url).path.strip("/"),
            webhook_url=url,
            secret_token=secret,
            allowed_updates=list(ALLOWED_UPDATES),
        )
    except (OSError, TelegramError) as exc:
        raise BotStartError(
            f"cannot start the webhook on {settings.telegram_webhook_listen}:{settings.telegram_webhook_port} "
            f"for {url}: {exc}; check {env_name('telegram_webhook_port')} and {env_name('telegram_webhook_url')}"
        ) from None
    except RuntimeError as exc:
        # python-telegram-bot raises RuntimeError when its webhook extra (tornado) is missing.
        raise ConfigurationError(f"webhook mode is unavailable: {exc}") from None
    return f"webhook on {settings.telegram_webhook_listen}:{settings.telegram_webhook_port} for {url}"


def warm_up(pipeline: FacePipeline) -> None:
    """Load the detector and embedder now, so that the first user does not wait for them."""
    pipeline.detector.detect(np.zeros((64, 64, 3), dtype=np.uint8))
    size = pipeline.alignment.size
    pipeline.embedder.embed(np.zeros((1, size, size, 3), dtype=np.uint8))


def _stop_event() -> asyncio.Event:
    """Return an event that SIGINT and SIGTERM set, so the bot stops cleanly instead of being killed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, _on_signal, signal_number, stop)
    return stop


def _on_signal(signal_number: signal.Signals, stop: asyncio.Event) -> None:
    logger.info("received %s", signal_number.name)
    stop.set()


def _remove_stop_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signal_number)


def _api_origin(settings: Settings) -> str:
    """Return the Bot API server's scheme, host and port, leaving out the path where the token goes."""
    base_url = settings.telegram_api_base_url or "https://api.telegram.org/bot"
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"
