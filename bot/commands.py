"""Bot commands: the menu shown in Telegram clients, and parsing a command out of a caption.

python-telegram-bot's CommandHandler reads commands from message text only, so a photo
whose caption is ``/identify`` or ``/enroll NAME`` is parsed here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from telegram import BotCommand

logger = logging.getLogger(__name__)

# The command menu shown to every user. Admin commands are listed in /help for admins only.
MENU = (
    BotCommand("identify", "name the faces in a photo: reply to it, or use as its caption"),
    BotCommand("enroll", "enroll your face: reply to your photo, or use as its caption"),
    BotCommand("me", "what I store about you"),
    BotCommand("forget", "delete everything I store about you"),
    BotCommand("cancel", "stop a pending /enroll"),
    BotCommand("help", "what I do, what I store and how to delete it"),
)

_COMMAND = re.compile(r"/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<bot>[A-Za-z0-9_]+))?(?:\s+(?P<args>.*))?", re.DOTALL)


@dataclass(frozen=True)
class ParsedCommand:
    """A command at the start of a text: its name in lower case and the text after it."""

    name: str
    args: str


def parse_command(text: str | None, bot_username: str | None) -> ParsedCommand | None:
    """Parse ``/name[@bot] args`` at the start of ``text``.

    Returns None when ``text`` does not start with a command, or when the command is
    addressed to another bot with ``@other_bot``.
    """
    if not text:
        return None
    match = _COMMAND.fullmatch(text.strip())
    if match is None:
        return None
    addressed_to = match.group("bot")
    if addressed_to is not None and (bot_username is None or addressed_to.casefold() != bot_username.casefold()):
        return None
    return ParsedCommand(match.group("name").lower(), (match.group("args") or "").strip())
