"""One log line per handled request: update id, chat, user, command, faces found, outcome and time taken.

Photos, names and embeddings are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from telegram import Update

logger = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """Facts about one request; handlers fill in ``faces`` and ``outcome`` as they go.

    Attributes:
        outcome: a short word such as "match", "unknown", "no_face", "enrolled", "busy" or "error".
        started: ``time.perf_counter()`` when handling began.
    """

    update_id: int
    chat_type: str
    chat_id: int | None
    user_id: int | None
    command: str
    faces: int | None = None
    outcome: str = "ok"
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_update(cls, update: Update, command: str) -> RequestRecord:
        chat = update.effective_chat
        user = update.effective_user
        return cls(
            update_id=update.update_id,
            chat_type=chat.type if chat is not None else "none",
            chat_id=chat.id if chat is not None else None,
            user_id=user.id if user is not None else None,
            command=command,
        )


@contextlib.asynccontextmanager
async def logged_request(update: Update, command: str) -> AsyncIterator[RequestRecord]:
    """Yield a record for the request and log it when the block ends, with outcome "error" on an exception."""
    record = RequestRecord.from_update(update, command)
    try:
        yield record
    except Exception:
        record.outcome = "error"
        raise
    except BaseException:
        record.outcome = "cancelled"
        raise
    finally:
        logger.info(
            "update=%d chat_type=%s chat=%s user=%s command=%s faces=%s outcome=%s time=%.3fs",
            record.update_id,
            record.chat_type,
            record.chat_id,
            record.user_id,
            record.command,
            "-" if record.faces is None else record.faces,
            record.outcome,
            time.perf_counter() - record.started,
        )
