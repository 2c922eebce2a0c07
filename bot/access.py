"""Access rules: which users are admins, and whom a user may enroll under which name."""

from __future__ import annotations

import logging

from telegram import Chat, User

from bot.conversations import EnrollTarget
from core.settings import Settings
from core.storage.records import MAX_NAME_LENGTH

logger = logging.getLogger(__name__)


class NotAllowedError(Exception):
    """The user may not do this; ``str(error)`` is the reply for the user."""


def is_admin(settings: Settings, user_id: int | None) -> bool:
    """Return whether ``user_id`` is listed in ``telegram_admin_ids``."""
    return user_id is not None and user_id in settings.telegram_admin_ids


def enroll_target(settings: Settings, user: User, chat: Chat, name_text: str, *, public: bool) -> EnrollTarget:
    """Decide who a photo is enrolled as, from the command's text after ``/enroll`` or ``/celebrity``.

    A user enrolls themself under their Telegram full name, in this chat. Only admins may
    give another name (someone else, owned by the admin and visible in this chat) or add a
    public figure (source "dataset", visible in every chat).

    Raises:
        NotAllowedError: the user is not an admin, or the name is missing or too long.
    """
    name = " ".join(name_text.split())
    if len(name) > MAX_NAME_LENGTH:
        raise NotAllowedError(f"The name is {len(name)} characters long; use at most {MAX_NAME_LENGTH}.")
    admin = is_admin(settings, user.id)

    if public:
        if not admin:
            raise NotAllowedError("Only admins can add public figures.")
        if not name:
            raise NotAllowedError("Give the public figure's name: /celebrity NAME, with a photo.")
        return EnrollTarget(name, "dataset", owner_id=None, chat_id=None, self_enrolled=False)

    own_name = user.full_name
    if not name or name.casefold() == own_name.casefold():
        return EnrollTarget(own_name, "telegram", owner_id=user.id, chat_id=chat.id, self_enrolled=True)
    if not admin:
        raise NotAllowedError(
            f"Only admins can enroll someone under another name. Send /enroll without a name "
            f"to enroll yourself as {own_name}."
        )
    return EnrollTarget(name, "telegram", owner_id=user.id, chat_id=chat.id, self_enrolled=False)
