"""The bot's Application in the test process, wired to a fake Bot API server and driven update by update.

Handler-level tests build it with :func:`make_harness_factory` and hand it updates
directly with ``Application.process_update``, so no polling is involved and a test reads
the bot's replies from the fake server as soon as the handler returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_bot_api import TOKEN, ApiCall, FakeBotApi, FileRef
from PIL import Image
from telegram import Update
from telegram.ext import Application

from bot.app import build_application
from bot.state import STATE_KEY, BotState
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.storage import SqliteGalleryStore


def jpeg_bytes(width: int = 320, height: int = 240) -> bytes:
    """A plain gray JPEG without a face."""
    output = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(output, format="JPEG")
    return output.getvalue()


@dataclass
class Harness:
    """The bot's Application wired to a fake Bot API server, driven update by update."""

    api: FakeBotApi
    application: Application
    service: FaceService
    db_path: Path

    @property
    def state(self) -> BotState:
        return self.application.bot_data[STATE_KEY]

    async def process(self, update: dict[str, Any]) -> None:
        await self.application.process_update(Update.de_json(update, self.application.bot))

    async def send(self, chat: dict[str, Any], user: dict[str, Any], **content: Any) -> dict[str, Any]:
        """Hand the bot a message and wait until its handler has finished; return the message."""
        message = self.api.build_message(chat, user, **content)
        await self.process(self.api.add_update({"message": message}, queue=False))
        return message

    def send_later(self, chat: dict[str, Any], user: dict[str, Any], **content: Any) -> tuple[dict, asyncio.Task]:
        """Hand the bot a message in a background task, as concurrent updates are handled."""
        message = self.api.build_message(chat, user, **content)
        update = self.api.add_update({"message": message}, queue=False)
        return message, asyncio.create_task(self.process(update))

    async def press(self, user: dict[str, Any], bot_message: dict[str, Any], data: str) -> None:
        await self.process(self.api.add_update(self.api.build_button_press(user, bot_message, data), queue=False))

    def replies(self, message: dict[str, Any]) -> list[ApiCall]:
        return [
            call
            for call in self.api.calls()
            if call.method in ("sendMessage", "sendPhoto")
            and call.chat_id == message["chat"]["id"]
            and call.reply_to == message["message_id"]
        ]

    def reply(self, message: dict[str, Any]) -> ApiCall:
        replies = self.replies(message)
        assert len(replies) == 1, f"expected one reply, got {[call.text for call in replies]}"
        return replies[0]

    def photo(self, data: bytes | None = None, **options: Any) -> FileRef:
        return self.api.add_file(jpeg_bytes() if data is None else data, **options)


HarnessFactory = Callable[..., contextlib.AbstractAsyncContextManager[Harness]]


def make_harness_factory(
    db_path: Path, model_cache_dir: Path, pipeline: FacePipeline, *, admin_ids: tuple[int, ...]
) -> HarnessFactory:
    """Return ``make(**settings_overrides)``, an async context manager that yields a started :class:`Harness`."""

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Harness]:
        with FakeBotApi() as api:
            settings = Settings(
                db_path=db_path,
                cache_dir=model_cache_dir,
                telegram_token=TOKEN,
                telegram_api_base_url=api.base_url,
                telegram_api_file_url=api.file_url,
                telegram_admin_ids=admin_ids,
                **overrides,
            )
            service = FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline, workers=1)
            async with service:
                application = build_application(settings, service, TOKEN)
                async with application:
                    yield Harness(api, application, service, settings.db_path)

    return make
