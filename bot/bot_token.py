"""The bot token: its format check, and a logging filter that keeps it out of every log line.

The token is part of every Bot API URL, and httpx and python-telegram-bot log those URLs
(httpx at INFO, python-telegram-bot at DEBUG), so the filter replaces it wherever it appears.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Final

from core.errors import ConfigurationError
from core.settings import env_name

logger = logging.getLogger(__name__)

# @BotFather issues "<bot id>:<35 characters>". The Bot API does not document the format,
# so the check only rejects what cannot be a token: it allows 30 to 100 characters after the colon.
TOKEN_PATTERN: Final = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{30,100}")
REDACTED: Final = "<bot token>"


def check_token(token: str | None) -> str:
    """Return the token without surrounding blanks, or raise ConfigurationError if it is missing or malformed.

    The error never contains the token, only its length.
    """
    variable = env_name("telegram_token")
    if token is None or not token.strip():
        raise ConfigurationError(
            f"{variable} is not set; create a bot with @BotFather in Telegram and put its token "
            f"in the environment or in .env as {variable}=..."
        )
    token = token.strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise ConfigurationError(
            f"{variable} is malformed ({len(token)} characters): a bot token is the bot id, a colon and "
            "about 35 letters, digits, '-' or '_', as @BotFather shows it; copy the whole token again"
        )
    return token


class RedactTokenFilter(logging.Filter):
    """Replace the bot token in a record's message and traceback with :data:`REDACTED`.

    The token is also matched as it appears in request URLs, with its colon percent-encoded.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self._forms = (token, token.replace(":", "%3A"), token.replace(":", "%3a"))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(form in message for form in self._forms):
            record.msg = self._redact(message)
            record.args = None
        if record.exc_info and not record.exc_text:
            # Handlers reuse exc_text instead of formatting the traceback again.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True

    def _redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text


def install_token_redaction(token: str) -> Callable[[], None]:
    """Add a :class:`RedactTokenFilter` to every handler of the root logger; return a function that removes it.

    NOTE: handlers added to the root logger later, or attached to other loggers, are not covered.
    """
    redactor = RedactTokenFilter(token)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redactor)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(redactor)

    return remove
