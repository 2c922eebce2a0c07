"""Handler-level tests: the bot's Application in this process, a real gallery and pipeline, a fake Bot API server.

Each test builds the Application with :func:`bot.app.build_application` and hands it
updates directly with ``Application.process_update``, so no polling is involved and a
test reads the bot's replies from the fake server as soon as the handler returns.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bot_harness import Harness, HarnessFactory, jpeg_bytes, make_harness_factory
from fake_bot_api import group_chat, make_user, private_chat
from PIL import Image

from bot.replies import BUSY, ERROR, IDENTIFY_USAGE, NO_FACE
from bot.runner import start_receiving
from bot.state import STATE_KEY
from core.images import load_image
from core.pipeline import FacePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADMIN = make_user(500, "Root", "Admin")
ADA = make_user(601, "Ada", "Lovelace")
GRACE = make_user(602, "Grace", "Hopper")
GROUP = group_chat(-1001, "lab")


@pytest.fixture
def harness_factory(tmp_path: Path, model_cache_dir: Path, pipeline: FacePipeline) -> HarnessFactory:
    """Return ``make(**settings_overrides)``, an async context manager that yields a started :class:`Harness`."""
    return make_harness_factory(tmp_path / "bot.sqlite3", model_cache_dir, pipeline, admin_ids=(ADMIN["id"],))


@pytest.fixture
async def harness(harness_factory: HarnessFactory) -> AsyncIterator[Harness]:
    async with harness_factory() as started:
        yield started


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Commands without photos.


async def test_help_reply_and_request_log(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.request_log")

    message = await harness.send(private_chat(ADA), ADA, text="/help")

    assert "What I store" in harness.reply(message).text
    assert "/stats" not in harness.reply(message).text
    assert "chat_type=private" in caplog.text
    assert "command=help faces=- outcome=ok" in caplog.text


async def test_help_for_admin_lists_admin_commands(harness: Harness) -> None:
    message = await harness.send(private_chat(ADMIN), ADMIN, text="/start")

    assert "/celebrity NAME" in harness.reply(message).text


async def test_stats_denied_for_user(harness: Harness) -> None:
    message = await harness.send(private_chat(ADA), ADA, text="/stats")

    assert harness.reply(message).text == "Only admins can use /stats."


async def test_stats_for_admin(harness: Harness) -> None:
    message = await harness.send(private_chat(ADMIN), ADMIN, text="/stats")

    text = harness.reply(message).text
    assert "People: 0" in text
    assert f"Model: {harness.service.model_id}" in text
    assert f"unmasked {harness.service.thresholds.unmasked:.2f}" in text


async def test_identify_without_photo_explains_usage(harness: Harness) -> None:
    message = await harness.send(GROUP, ADA, text="/identify")

    assert harness.reply(message).text == IDENTIFY_USAGE


async def test_group_photo_without_command_ignored(harness: Harness) -> None:
    message = await harness.send(GROUP, ADA, photo=harness.photo())

    assert harness.replies(message) == []
    assert harness.api.calls("getFile") == []


async def test_forget_with_nothing_stored(harness: Harness) -> None:
    message = await harness.send(private_chat(ADA), ADA, text="/forget")

    assert harness.reply(message).text == "I store nothing about you."


# Admin rules for enrollment.


async def test_celebrity_denied_for_user(harness: Harness) -> None:
    message = await harness.send(private_chat(ADA), ADA, caption="/celebrity Grace Hopper", photo=harness.photo())

    assert harness.reply(message).text == "Only admins can add public figures."
    assert harness.api.calls("getFile") == []


async def test_enroll_other_name_denied_for_user(harness: Harness) -> None:
    message = await harness.send(GROUP, ADA, caption="/enroll Grace Hopper", photo=harness.photo())

    assert "Only admins can enroll someone under another name" in harness.reply(message).text
    assert "as Ada Lovelace" in harness.reply(message).text


async def test_enroll_reply_to_others_photo_denied(harness: Harness) -> None:
    photo_message = await harness.send(GROUP, GRACE, photo=harness.photo())

    command = await harness.send(GROUP, ADA, text="/enroll", reply_to=photo_message)

    assert "only photos that you sent yourself" in harness.reply(command).text
    assert len(harness.state.consent_requests) == 0
    assert harness.api.calls("getFile") == []


# Consent.


async def test_consent_refused_stores_nothing(harness: Harness) -> None:
    message = await harness.send(private_chat(ADA), ADA, caption="/enroll", photo=harness.photo())
    question = harness.reply(message)
    yes, no = question.button_data()

    await harness.press(ADA, question.result, no)

    edits = harness.api.calls("editMessageText")
    assert yes.startswith("consent:yes:")
    assert edits[-1].text == "Understood: nothing was stored."
    assert harness.api.calls("getFile") == []
    assert (await harness.service.store.counts())["people"] == 0
    assert await harness.state.consent.given_at(ADA["id"]) is None


async def test_consent_button_of_other_user(harness: Harness) -> None:
    message = await harness.send(GROUP, ADA, caption="/enroll", photo=harness.photo())
    question = harness.reply(message)

    await harness.press(GRACE, question.result, question.button_data()[0])

    answer = harness.api.calls("answerCallbackQuery")[-1]
    assert answer.text == "Only the user who sent /enroll can answer this."
    assert answer.params["show_alert"] is True
    assert await harness.state.consent.given_at(GRACE["id"]) is None
    assert await harness.state.consent.given_at(ADA["id"]) is None


async def test_consent_button_expires(harness_factory: HarnessFactory) -> None:
    async with harness_factory(telegram_conversation_timeout_s=0.2) as harness:
        message = await harness.send(private_chat(ADA), ADA, caption="/enroll", photo=harness.photo())
        question = harness.reply(message)
        await asyncio.sleep(0.3)

        await harness.press(ADA, question.result, question.button_data()[0])

        assert "expired" in harness.api.calls("answerCallbackQuery")[-1].text
        assert await harness.state.consent.given_at(ADA["id"]) is None


async def test_consent_given_then_no_face(harness: Harness) -> None:
    message = await harness.send(private_chat(ADA), ADA, caption="/enroll", photo=harness.photo())
    question = harness.reply(message)

    await harness.press(ADA, question.result, question.button_data()[0])

    replies = harness.replies(message)
    assert await harness.state.consent.given_at(ADA["id"]) is not None
    assert replies[-1].text == NO_FACE + " Nothing was stored."
    assert (await harness.service.store.counts())["people"] == 0


# /enroll followed by a photo.


async def test_enroll_waits_then_times_out(harness_factory: HarnessFactory) -> None:
    async with harness_factory(telegram_conversation_timeout_s=0.3) as harness:
        command = await harness.send(GROUP, ADA, text="/enroll")
        prompt = harness.reply(command)
        await asyncio.sleep(0.5)
        late_photo = await harness.send(GROUP, ADA, photo=harness.photo())

        replies = harness.replies(command)
        assert "within 0.3 seconds" in prompt.text
        assert prompt.params["reply_markup"]["force_reply"] is True
        assert len(replies) == 2
        assert replies[1].text.startswith("No photo arrived in time")
        assert harness.replies(late_photo) == []


async def test_cancel_stops_waiting(harness: Harness) -> None:
    await harness.send(private_chat(ADA), ADA, text="/enroll")
    cancel = await harness.send(private_chat(ADA), ADA, text="/cancel")
    photo = await harness.send(private_chat(ADA), ADA, photo=harness.photo())

    assert harness.reply(cancel).text.startswith("Cancelled")
    # In a private chat the photo is now identified instead of enrolled.
    assert harness.reply(photo).text == NO_FACE


@pytest.mark.datasets
async def test_enroll_awaited_photo(harness: Harness, datasets_dir: Path) -> None:
    await harness.state.consent.grant(ADA["id"])
    data = (datasets_dir / "lfw/Angela_Merkel/Angela_Merkel_0001.jpg").read_bytes()

    command = await harness.send(private_chat(ADA), ADA, text="/enroll")
    photo = await harness.send(private_chat(ADA), ADA, photo=harness.photo(data))

    assert "Send the photo of yourself" in harness.reply(command).text
    assert harness.reply(photo).text.startswith("Enrolled you as Ada Lovelace.")
    summaries = await harness.service.user_summary(ADA["id"])
    assert [summary.person.name for summary in summaries] == ["Ada Lovelace"]


@pytest.mark.datasets
async def test_admin_enrolls_other_person_by_reply(harness: Harness, datasets_dir: Path) -> None:
    await harness.state.consent.grant(ADMIN["id"])
    data = (datasets_dir / "lfw/Angela_Merkel/Angela_Merkel_0001.jpg").read_bytes()
    photo_message = await harness.send(GROUP, GRACE, photo=harness.photo(data))

    command = await harness.send(GROUP, ADMIN, text="/enroll Angela Merkel", reply_to=photo_message)

    assert harness.reply(command).text.startswith("Enrolled Angela Merkel.")
    people = await harness.service.store.find_people("Angela Merkel")
    assert [(person.source, person.owner_id) for person in people] == [("telegram", ADMIN["id"])]


# /forget buttons.


async def test_forget_cancel_keeps_consent(harness: Harness) -> None:
    await harness.state.consent.grant(ADA["id"])
    message = await harness.send(private_chat(ADA), ADA, text="/forget")
    question = harness.reply(message)

    await harness.press(GRACE, question.result, question.button_data()[0])
    await harness.press(ADA, question.result, question.button_data()[1])

    assert harness.api.calls("answerCallbackQuery")[0].text == "Only the user who sent /forget can answer this."
    assert harness.api.calls("editMessageText")[-1].text == "Cancelled: nothing was deleted."
    assert await harness.state.consent.given_at(ADA["id"]) is not None


async def test_forget_deletes_consent(harness: Harness) -> None:
    await harness.state.consent.grant(ADA["id"])
    message = await harness.send(private_chat(ADA), ADA, text="/forget")
    question = harness.reply(message)

    await harness.press(ADA, question.result, question.button_data()[0])

    assert harness.api.calls("editMessageText")[-1].text.startswith("Deleted: your consent record.")
    assert await harness.state.consent.given_at(ADA["id"]) is None


# Photo checks, limits and load.


async def test_size_checked_again_after_get_file(harness_factory: HarnessFactory) -> None:
    async with harness_factory(telegram_max_download_bytes=5000) as harness:
        # The message under-reports the size; getFile reports the real one.
        photo = harness.photo(jpeg_bytes(800, 800) + b"\0" * 6000, declared_size=100)

        message = await harness.send(private_chat(ADA), ADA, photo=photo)

        assert "over the 0.0 MB that I can download" in harness.reply(message).text
        assert len(harness.api.calls("getFile")) == 1


async def test_rate_limit_replies_once_per_burst(harness_factory: HarnessFactory) -> None:
    async with harness_factory(telegram_rate_limit=2, telegram_rate_window_s=0.5) as harness:
        text_file = harness.api.add_file(b"not a photo", suffix="txt")
        chat = private_chat(ADA)
        messages = [
            await harness.send(chat, ADA, document=text_file, file_name="notes.txt", mime_type="text/plain")
            for _ in range(4)
        ]
        await asyncio.sleep(0.6)
        after_window = await harness.send(chat, ADA, document=text_file, file_name="notes.txt", mime_type=None)

        assert "not an image" in harness.reply(messages[0]).text
        assert "not an image" in harness.reply(messages[1]).text
        assert "at most 2 every 0.5 seconds" in harness.reply(messages[2]).text
        assert harness.replies(messages[3]) == []
        assert "'notes.txt': not a supported image" in harness.reply(after_window).text


async def test_busy_reply_and_help_while_queued(harness_factory: HarnessFactory) -> None:
    async with harness_factory(telegram_max_queued=1) as harness:
        release = threading.Event()
        blocker = asyncio.ensure_future(harness.service.run_model(release.wait, 30))
        try:
            queued, queued_task = harness.send_later(private_chat(ADA), ADA, photo=harness.photo())
            for _ in range(100):
                if harness.state.workload.pending == 1:
                    break
                await asyncio.sleep(0.01)

            rejected = await harness.send(private_chat(GRACE), GRACE, photo=harness.photo())
            started = time.perf_counter()
            help_message = await harness.send(private_chat(GRACE), GRACE, text="/help")
            help_time = time.perf_counter() - started

            assert harness.state.workload.pending == 1
            assert harness.reply(rejected).text == BUSY
            assert "What I store" in harness.reply(help_message).text
            assert help_time < 2.0, f"/help took {help_time:.2f} s while a photo waited for the model"
            assert harness.replies(queued) == []
        finally:
            release.set()
            await blocker
        await queued_task

        assert harness.reply(queued).text == NO_FACE
        assert harness.state.workload.pending == 0
        actions = [call.params["action"] for call in harness.api.calls("sendChatAction")]
        assert "typing" in actions


async def test_unexpected_error_apologises(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.request_log")

    async def broken_identify(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("model crashed")

    monkeypatch.setattr(harness.service, "identify", broken_identify)

    message = await harness.send(private_chat(ADA), ADA, photo=harness.photo())

    assert harness.reply(message).text == ERROR
    assert "outcome=error" in caplog.text
    assert f"(chat {ADA['id']}, user {ADA['id']}) failed: model crashed" in caplog.text


# Webhook mode.


async def test_webhook_checks_secret_token(harness_factory: HarnessFactory, unused_tcp_port: int) -> None:
    url = "https://bot.example.invalid/maskid-hook"
    secret = "test-secret_123"
    async with harness_factory(
        telegram_webhook_url=url, telegram_webhook_port=unused_tcp_port, telegram_webhook_secret=secret
    ) as harness:
        mode = await start_receiving(harness.application, harness.application.bot_data[STATE_KEY].settings)
        await harness.application.start()
        try:
            message = harness.api.build_message(private_chat(ADA), ADA, text="/help")
            update = harness.api.add_update({"message": message}, queue=False)
            endpoint = f"http://127.0.0.1:{unused_tcp_port}/maskid-hook"
            async with httpx.AsyncClient() as client:
                missing = await client.post(endpoint, json=update)
                wrong = await client.post(endpoint, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
                right = await client.post(endpoint, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
            for _ in range(200):
                if harness.replies(message):
                    break
                await asyncio.sleep(0.01)
        finally:
            await harness.application.updater.stop()
            await harness.application.stop()

        registered = harness.api.calls("setWebhook")[0]
        assert mode.startswith(f"webhook on 127.0.0.1:{unused_tcp_port}")
        assert registered.params["url"] == url
        assert registered.params["secret_token"] == secret
        assert missing.status_code == 403
        assert wrong.status_code == 403
        assert right.status_code == 200
        assert "What I store" in harness.reply(message).text


# The gray test photo is a real JPEG without a face.


def test_gray_photo_has_no_face(pipeline: FacePipeline) -> None:
    image = load_image(jpeg_bytes(), max_bytes=10**6, max_pixels=10**7)

    assert pipeline.analyze(image) == []
    assert np.asarray(Image.open(io.BytesIO(jpeg_bytes()))).shape == (240, 320, 3)
