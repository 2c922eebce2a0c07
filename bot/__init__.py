"""The maskid Telegram bot: enroll and identify faces in chats, on python-telegram-bot 22.

``maskid bot`` and ``python -m bot`` start it; :func:`bot.runner.run_bot` does the work.
The bot imports :mod:`core`, never the other way round.
"""
