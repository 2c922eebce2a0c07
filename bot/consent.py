"""Users' consent to storing a face template, kept in the gallery's settings table.

A user gives consent once, with an inline button, before their first enrollment; /forget
deletes it together with their templates, so the next enrollment requests it again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core.storage import GalleryStore

logger = logging.getLogger(__name__)

_KEY_PREFIX = "telegram.consent."


class ConsentRegistry:
    """Consent records in ``store``: one settings key per user, holding the time consent was given."""

    def __init__(self, store: GalleryStore) -> None:
        self._store = store

    async def given_at(self, user_id: int) -> datetime | None:
        """Return when ``user_id`` gave consent (UTC), or None if they have not."""
        value = await self._store.get_setting(_key(user_id))
        return None if value is None else datetime.fromisoformat(value)

    async def grant(self, user_id: int) -> None:
        """Record that ``user_id`` consents to storing their face template, as of now."""
        await self._store.set_setting(_key(user_id), datetime.now(UTC).isoformat(timespec="seconds"))
        logger.info("user %d gave consent to storing face templates", user_id)

    async def revoke(self, user_id: int) -> bool:
        """Delete the consent record of ``user_id``; return False if there was none."""
        deleted = await self._store.delete_setting(_key(user_id))
        if deleted:
            logger.info("user %d: consent record deleted", user_id)
        return deleted


def _key(user_id: int) -> str:
    return f"{_KEY_PREFIX}{int(user_id)}"
