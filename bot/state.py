"""The bot's shared state, kept in ``application.bot_data`` and reached from every handler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from telegram.ext import ContextTypes

from bot.consent import ConsentRegistry
from bot.conversations import AwaitedPhoto, ConsentRequest, ExpiringMap, ForgetRequest
from bot.ratelimit import RateLimiter
from bot.workload import WorkloadLimit
from core.service import FaceService
from core.settings import Settings

logger = logging.getLogger(__name__)

STATE_KEY = "maskid"

# Candidates ranked per face: the best one and the next two shown in replies.
TOP_K = 3


@dataclass
class BotState:
    """Everything the handlers share. Handlers run on one event loop, so no locks are needed."""

    settings: Settings
    service: FaceService
    rate_limiter: RateLimiter
    workload: WorkloadLimit
    consent: ConsentRegistry
    awaited_photos: ExpiringMap[tuple[int, int], AwaitedPhoto] = field(init=False)
    consent_requests: ExpiringMap[str, ConsentRequest] = field(init=False)
    forget_requests: ExpiringMap[str, ForgetRequest] = field(init=False)
    timers: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        timeout = self.settings.telegram_conversation_timeout_s
        self.awaited_photos = ExpiringMap(timeout)
        self.consent_requests = ExpiringMap(timeout)
        self.forget_requests = ExpiringMap(timeout)

    def start_timer(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` (a timeout notice) in the background until it ends or :meth:`cancel_timers`.

        Application.create_task is not used because Application.stop waits for its tasks,
        which would hold a shutdown for a whole conversation timeout.
        """
        task = asyncio.create_task(coroutine)
        self.timers.add(task)
        task.add_done_callback(self.timers.discard)

    async def cancel_timers(self) -> None:
        """Cancel every running timer and wait until they have stopped."""
        tasks = list(self.timers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @classmethod
    def create(cls, settings: Settings, service: FaceService) -> BotState:
        """Build the state from ``settings`` around an opened ``service``."""
        return cls(
            settings=settings,
            service=service,
            rate_limiter=RateLimiter(settings.telegram_rate_limit, settings.telegram_rate_window_s),
            workload=WorkloadLimit(settings.telegram_max_queued),
            consent=ConsentRegistry(service.store),
        )


def bot_state(context: ContextTypes.DEFAULT_TYPE) -> BotState:
    """Return the state stored by :func:`bot.app.build_application`."""
    return context.application.bot_data[STATE_KEY]
