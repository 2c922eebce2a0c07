"""Short-lived state between two updates: /enroll waiting for its photo, consent and /forget buttons.

Entries expire after ``telegram_conversation_timeout_s``. They live in memory only, so after
a restart the user starts again.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from telegram import CallbackQuery

from bot.photos import PhotoRef
from bot.request_log import RequestRecord
from core.storage import Source

logger = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class _UserRequest(Protocol):
    user_id: int


R = TypeVar("R", bound=_UserRequest)

# Entries kept before expired ones are swept on the next put.
_SWEEP_AT = 1_000


@dataclass(frozen=True)
class EnrollTarget:
    """The person a photo is enrolled as, and the chats where that person is visible.

    Attributes:
        owner_id: the enrolling user; None for a public figure.
        chat_id: the chat the templates are visible in (besides the owner's private chat);
            None makes them visible in every chat.
        self_enrolled: the user enrolls themself, under their own name.
    """

    name: str
    source: Source
    owner_id: int | None
    chat_id: int | None
    self_enrolled: bool

    @property
    def public(self) -> bool:
        return self.chat_id is None


@dataclass(frozen=True)
class AwaitedPhoto:
    """An /enroll without a photo: the next photo of ``user_id`` in ``chat_id`` is enrolled as ``target``."""

    target: EnrollTarget
    user_id: int
    chat_id: int
    command_message_id: int


@dataclass(frozen=True)
class ConsentRequest:
    """A photo held back until ``user_id`` answers the consent question; replies quote ``reply_to_id``."""

    target: EnrollTarget
    photo: PhotoRef
    user_id: int
    chat_id: int
    reply_to_id: int


@dataclass(frozen=True)
class ForgetRequest:
    """A /forget waiting for ``user_id`` to confirm."""

    user_id: int


class ExpiringMap(Generic[K, V]):
    """A dict whose entries vanish ``ttl_s`` seconds after they were put.

    Args:
        clock: monotonic time source in seconds, replaceable in tests.
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key``, replacing an earlier entry and restarting its time."""
        if len(self._entries) >= _SWEEP_AT:
            self._sweep()
        self._entries[key] = (self._clock() + self.ttl_s, value)

    def get(self, key: K) -> V | None:
        """Return the live value under ``key``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def pop(self, key: K) -> V | None:
        """Remove and return the live value under ``key``, or None."""
        value = self.get(key)
        if value is not None:
            del self._entries[key]
        return value

    def pop_if(self, key: K, value: V) -> bool:
        """Remove the entry under ``key`` if it is ``value`` itself, live or expired; return whether it was."""
        entry = self._entries.get(key)
        if entry is None or entry[1] is not value:
            return False
        del self._entries[key]
        return True

    def remove_where(self, predicate: Callable[[V], bool]) -> int:
        """Remove every entry whose value matches ``predicate``; return how many."""
        keys = [key for key, (_, value) in self._entries.items() if predicate(value)]
        for key in keys:
            del self._entries[key]
        return len(keys)

    def _sweep(self) -> None:
        now = self._clock()
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
        logger.debug("swept %d expired conversation entries", len(expired))


def new_token() -> str:
    """Return a short random id for callback data, which Telegram limits to 64 bytes."""
    return secrets.token_urlsafe(9)


async def claim_answer(
    query: CallbackQuery,
    pending: ExpiringMap[str, R],
    record: RequestRecord,
    *,
    yes_prefix: str,
    no_prefix: str,
    expired_text: str,
    command: str,
) -> tuple[R, bool] | None:
    """Take the pending request that a yes/no button responds to, or reply why it cannot be taken.

    Returns the request and whether the answer was "yes". Returns None, with
    ``record.outcome`` set, when the request has expired or another user pressed
    the button; the request stays pending in the second case.
    """
    agreed = query.data.startswith(yes_prefix)
    token = query.data.removeprefix(yes_prefix if agreed else no_prefix)
    request = pending.get(token)
    if request is None:
        record.outcome = "expired"
        await query.answer(expired_text, show_alert=True)
        await query.edit_message_reply_markup(None)
        return None
    if query.from_user.id != request.user_id:
        record.outcome = "denied"
        await query.answer(f"Only the user who sent {command} can answer this.", show_alert=True)
        return None
    pending.pop(token)
    await query.answer()
    return request, agreed
