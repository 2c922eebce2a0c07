"""The ``maskid bot`` subcommand: run the Telegram bot until Ctrl-C or SIGTERM.

The bot package is imported only when this command runs, so the other commands do not
load python-telegram-bot.
"""

from __future__ import annotations

import argparse
import logging

from cli.commands import CommandResult
from core.settings import Settings

logger = logging.getLogger(__name__)


def add_bot_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``maskid bot`` on the ``subcommands`` of the main parser and return its parser."""
    parser = subcommands.add_parser(
        "bot",
        help="run the Telegram bot",
        description=(
            "Run the Telegram bot with the token in TELEGRAM_BOT_TOKEN. It receives updates by long polling, "
            "or by webhook when MASKID_TELEGRAM_WEBHOOK_URL is set, and stops cleanly on Ctrl-C or SIGTERM. "
            "It logs at info level, and -vv adds debug messages."
        ),
    )
    parser.set_defaults(handler=run_bot_command)
    return parser


async def run_bot_command(args: argparse.Namespace, settings: Settings) -> CommandResult:
    from bot.runner import run_bot

    # A long-running service logs its start, requests and stop by default.
    if args.verbose == 0:
        logging.getLogger().setLevel(logging.INFO)
    await run_bot(settings)
    return CommandResult("")
