"""End-to-end tests: ``maskid bot`` as a real subprocess, long polling a fake Bot API server on 127.0.0.1.

One bot process serves the whole module, so the tests share its gallery and run in file
order. Each test uses its own users and chats. Real LFW and group photos go through
enrollment with consent, identification in private chats and groups, /me and /forget.
Start-up errors run their own short-lived processes.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_environment import cli_environment
from fake_bot_api import TOKEN, ApiCall, FakeBotApi, group_chat, make_user, private_chat
from PIL import Image

from bot.replies import NO_FACE

pytestmark = pytest.mark.datasets

ADMIN = make_user(900, "Root", "Admin")
ALAN = make_user(101, "Alan", "Greenspan")
ANGELA = make_user(102, "Angela", "Merkel")
BOB = make_user(103, "Bob", "Builder")
GROUP_A = group_chat(-100201, "group A")
GROUP_B = group_chat(-100202, "group B")
GROUP_PHOTO = "smoke/deepface_tests_dataset/selfie-many-people.jpg"  # four faces, 600 px wide, 604 px high
STARTUP_TIMEOUT_S = 120


@dataclass
class RunningBot:
    """The bot process, the fake server it polls, and the file that collects its log."""

    api: FakeBotApi
    process: subprocess.Popen[bytes]
    log_path: Path
    datasets: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def photo(self, relative: str, **options: Any) -> Any:
        return self.api.add_file((self.datasets / relative).read_bytes(), **options)

    def lfw(self, name: str, number: int) -> Any:
        return self.photo(f"lfw/{name}/{name}_{number:04d}.jpg")

    def ask(self, chat: dict[str, Any], user: dict[str, Any], **content: Any) -> tuple[dict[str, Any], ApiCall]:
        """Send a message and wait for the bot's reply to it."""
        message = self.api.send_message(chat, user, **content)
        return message, self.api.wait_for_reply(message)

    def consent(self, user: dict[str, Any], question: ApiCall) -> ApiCall:
        """Press "yes" under a consent question and return the bot's reply about the enrollment."""
        calls_before = len(self.api.calls())
        self.api.press_button(user, question.result, question.button_data()[0])
        return self.api.wait_for(
            lambda call: call.method == "sendMessage" and call.reply_to == question.reply_to, after=calls_before
        )


def bot_environment(api: FakeBotApi, folder: Path, cache_dir: Path) -> dict[str, str]:
    environment = cli_environment(folder / "gallery.sqlite3", cache_dir)
    environment.update(
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE_URL=api.base_url,
        TELEGRAM_API_FILE_URL=api.file_url,
        MASKID_TELEGRAM_ADMIN_IDS=str(ADMIN["id"]),
        OMP_NUM_THREADS="1",
    )
    return environment


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path, datasets_dir: Path) -> Iterator[RunningBot]:
    folder = tmp_path_factory.mktemp("bot-e2e")
    log_path = folder / "bot.log"
    with FakeBotApi() as api, log_path.open("wb") as log:
        # The working folder is the temporary one, so a developer's .env is not read.
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "bot"],
            cwd=folder,
            env=bot_environment(api, folder, model_cache_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            running = RunningBot(api, process, log_path, datasets_dir)
            try:
                api.wait_for(lambda call: call.method == "getUpdates", timeout=STARTUP_TIMEOUT_S)
            except TimeoutError:
                pytest.fail(f"the bot did not start polling; its log:\n{running.log()}")
            yield running
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_start_registers_menu_and_logs_ready(bot: RunningBot) -> None:
    commands = bot.api.calls("setMyCommands")[0].params["commands"]

    assert [command["command"] for command in commands] == ["identify", "enroll", "me", "forget", "cancel", "help"]
    assert bot.api.calls("deleteWebhook")
    assert "bot @maskid_test_bot is ready (long polling)" in bot.log()


def test_admin_adds_public_figures(bot: RunningBot) -> None:
    for name in ("Al_Sharpton", "Adrien_Brody"):
        person = name.replace("_", " ")

        _, answer = bot.ask(private_chat(ADMIN), ADMIN, caption=f"/celebrity {person}", photo=bot.lfw(name, 1))

        assert answer.text == f"Added {person} as a public figure. I will recognise them in every chat."


def test_enroll_with_consent_then_identify_private(bot: RunningBot) -> None:
    chat = private_chat(ALAN)
    _, question = bot.ask(chat, ALAN, caption="/enroll", photo=bot.lfw("Alan_Greenspan", 1))
    enrolled = bot.consent(ALAN, question)
    _, answer = bot.ask(chat, ALAN, photo=bot.lfw("Alan_Greenspan", 2))

    assert "I need your consent" in question.text
    assert question.button_data()[0].startswith("consent:yes:")
    assert enrolled.text.startswith("Enrolled you as Alan Greenspan.")
    assert re.match(r"Alan Greenspan: similarity 0\.\d\d \(a match needs 0\.\d\d\)\.\n", answer.text)
    assert "Mask: " in answer.text
    assert "Next candidates: " in answer.text
    typing = [call for call in bot.api.calls("sendChatAction") if call.chat_id == ALAN["id"]]
    assert typing and typing[0].params["action"] == "typing"
    assert typing[-1].time < answer.time


def test_group_reply_identify_and_chat_scope(bot: RunningBot) -> None:
    own_photo = bot.api.send_message(GROUP_A, ANGELA, photo=bot.lfw("Angela_Merkel", 1))
    _, question = bot.ask(GROUP_A, ANGELA, text="/enroll", reply_to=own_photo)
    enrolled = bot.consent(ANGELA, question)

    photo_in_a = bot.api.send_message(GROUP_A, BOB, photo=bot.lfw("Angela_Merkel", 2))
    _, in_group_a = bot.ask(GROUP_A, BOB, text="/identify", reply_to=photo_in_a)
    photo_in_b = bot.api.send_message(GROUP_B, BOB, photo=bot.lfw("Angela_Merkel", 2))
    _, in_group_b = bot.ask(GROUP_B, BOB, text="/identify@maskid_test_bot", reply_to=photo_in_b)
    _, in_own_private = bot.ask(private_chat(ANGELA), ANGELA, photo=bot.lfw("Angela_Merkel", 3))
    _, in_other_private = bot.ask(private_chat(BOB), BOB, photo=bot.lfw("Angela_Merkel", 3))

    assert enrolled.text.startswith("Enrolled you as Angela Merkel.")
    assert not [call for call in bot.api.calls() if call.reply_to == photo_in_a["message_id"]]
    assert in_group_a.text.startswith("Angela Merkel: similarity")
    assert not in_group_b.text.startswith("Angela Merkel")
    assert in_own_private.text.startswith("Angela Merkel: similarity")
    assert not in_other_private.text.startswith("Angela Merkel")


def test_me_and_forget(bot: RunningBot) -> None:
    chat = private_chat(ALAN)
    _, me_before = bot.ask(chat, ALAN, text="/me")
    _, question = bot.ask(chat, ALAN, text="/forget")
    calls_before = len(bot.api.calls())
    bot.api.press_button(ALAN, question.result, question.button_data()[0])
    deleted = bot.api.wait_for(lambda call: call.method == "editMessageText", after=calls_before)
    _, me_after = bot.ask(chat, ALAN, text="/me")
    _, answer = bot.ask(chat, ALAN, photo=bot.lfw("Alan_Greenspan", 2))

    # One photo gives one template, plus synthetic-mask templates when the gallery adds them.
    templates = r"(1 face template|\d+ face templates)"
    assert re.search(rf"^- Alan Greenspan: 1 photo enrolled, {templates}.*; first ", me_before.text, re.MULTILINE)
    assert "Your consent to storing face templates, given " in me_before.text
    assert re.search(rf"{templates} of Alan Greenspan", question.text)
    assert question.button_data()[0].startswith("forget:yes:")
    assert re.match(rf"Deleted: Alan Greenspan \(1 photo, {templates}\); your consent record\.", deleted.text)
    assert me_after.text == "I store nothing about you."
    assert not answer.text.startswith("Alan Greenspan")


def test_document_upload_identified(bot: RunningBot) -> None:
    _, answer = bot.ask(
        private_chat(BOB), BOB, document=bot.lfw("Al_Sharpton", 2), file_name="sharpton.jpg", mime_type="image/jpeg"
    )

    assert answer.text.startswith("Al Sharpton: similarity")


def test_non_image_document_rejected_without_download(bot: RunningBot) -> None:
    text_file = bot.api.add_file(b"meeting notes\n", suffix="txt")
    broken = bot.api.add_file(b"\xff\xd8\xff\xe0 not really a JPEG", suffix="jpg")

    _, text_answer = bot.ask(private_chat(BOB), BOB, document=text_file, file_name="notes.txt", mime_type="text/plain")
    _, broken_answer = bot.ask(private_chat(BOB), BOB, document=broken, file_name="broken.jpg")

    assert text_answer.text == "'notes.txt' is a text/plain file, not an image. Send a photo, or a JPEG or PNG file."
    assert not [call for call in bot.api.calls("getFile") if call.params["file_id"] == text_file.file_id]
    assert broken_answer.text.startswith("I cannot use this file: 'broken.jpg': truncated or corrupt")


def test_oversize_file_rejected_before_download(bot: RunningBot) -> None:
    declared = bot.api.add_file(b"x", declared_size=30 * 2**20)

    _, answer = bot.ask(private_chat(BOB), BOB, document=declared, file_name="huge.png", mime_type="image/png")

    assert answer.text.startswith("'huge.png' is 30.0 MB, over the 20.0 MB that I can download.")
    assert not [call for call in bot.api.calls("getFile") if call.params["file_id"] == declared.file_id]


def test_multi_face_photo_annotated(bot: RunningBot) -> None:
    photo, answer = bot.ask(private_chat(BOB), BOB, photo=bot.photo(GROUP_PHOTO))

    lines = answer.text.splitlines()
    annotated = Image.open(io.BytesIO(answer.files["photo"]))
    actions = [call.params["action"] for call in bot.api.calls("sendChatAction") if call.chat_id == BOB["id"]]
    assert answer.method == "sendPhoto"
    assert lines[0] == "4 faces, numbered in the photo:"
    assert [line.split(".")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert annotated.format == "JPEG"
    assert annotated.size == (600, 604)
    assert "upload_photo" in actions
    assert photo["message_id"] == answer.reply_to


def test_photo_without_face(bot: RunningBot) -> None:
    output = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 120, 150)).save(output, format="JPEG")

    _, answer = bot.ask(private_chat(BOB), BOB, photo=bot.api.add_file(output.getvalue()))

    assert answer.text == NO_FACE


def test_help_answers_while_identifications_queued(bot: RunningBot) -> None:
    users = [make_user(300 + number, f"Load{number}") for number in range(6)]
    photos = [
        bot.api.send_message(private_chat(user), user, photo=bot.lfw("Colin_Powell", number + 1))
        for number, user in enumerate(users)
    ]
    help_message = bot.api.send_message(private_chat(BOB), BOB, text="/help")

    help_reply = bot.api.wait_for_reply(help_message)
    photo_replies = [bot.api.wait_for_reply(photo, timeout=60) for photo in photos]

    help_latency = help_reply.time - bot.api.added_at(help_message["message_id"])
    assert "What I store" in help_reply.text
    assert help_latency < 2.0, f"/help took {help_latency:.2f} s behind {len(photos)} photos"
    # At least one photo was still in model work when the /help reply arrived.
    assert max(reply.time for reply in photo_replies) > help_reply.time


def test_request_log_lines_without_token(bot: RunningBot) -> None:
    log = bot.log()

    assert TOKEN not in log
    assert TOKEN.split(":")[1] not in log
    assert "command=identify faces=1 outcome=match time=" in log
    assert "chat_type=supergroup" in log
    assert "command=identify faces=4 outcome=" in log


def test_sigterm_stops_cleanly(bot: RunningBot) -> None:
    bot.process.terminate()
    exit_code = bot.process.wait(timeout=30)

    log = bot.log()
    assert exit_code == 0
    assert "received SIGTERM" in log
    assert "bot stopped" in log
    assert "Traceback" not in log


# Start-up errors, each in its own short process.


def run_bot_process(environment: dict[str, str], cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *options, "bot"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )


def test_missing_token_is_one_line_error(tmp_path: Path, model_cache_dir: Path) -> None:
    environment = cli_environment(tmp_path / "gallery.sqlite3", model_cache_dir)
    environment.pop("TELEGRAM_BOT_TOKEN", None)

    run = run_bot_process(environment, tmp_path)

    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "maskid: error: TELEGRAM_BOT_TOKEN is not set; create a bot with @BotFather in Telegram and put its token "
        "in the environment or in .env as TELEGRAM_BOT_TOKEN=..."
    ]


def test_token_from_env_file_is_checked(tmp_path: Path, model_cache_dir: Path) -> None:
    environment = cli_environment(tmp_path / "gallery.sqlite3", model_cache_dir)
    environment.pop("TELEGRAM_BOT_TOKEN", None)
    (tmp_path / ".env").write_text("TELEGRAM_BOT_TOKEN=12345:not-a-real-token\n")

    run = run_bot_process(environment, tmp_path)

    assert run.returncode == 1
    assert "TELEGRAM_BOT_TOKEN is malformed (22 characters)" in run.stderr
    assert "not-a-real-token" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_rejected_token_is_one_line_error(tmp_path: Path, model_cache_dir: Path) -> None:
    other_token = "987654321:AAEanotherTokenTheServerDoesNotKnow1"
    with FakeBotApi() as api:
        environment = bot_environment(api, tmp_path, model_cache_dir)
        environment["TELEGRAM_BOT_TOKEN"] = other_token

        run = run_bot_process(environment, tmp_path, "-vv")

    assert run.returncode == 1, run.stderr[-3000:]
    # Debug lines from other threads may follow the error line, or even share it.
    assert (
        "maskid: error: the Bot API rejected the token (401 Unauthorized); check TELEGRAM_BOT_TOKEN, "
        "or create a new token with @BotFather"
    ) in run.stderr
    # Debug logging shows every request URL and the error's traceback, with the token replaced.
    assert "<bot token>" in run.stderr
    assert other_token.split(":")[1] not in run.stderr


def test_unreachable_api_is_one_line_error(tmp_path: Path, model_cache_dir: Path) -> None:
    with FakeBotApi() as api:
        environment = bot_environment(api, tmp_path, model_cache_dir)
    # The server has stopped, so nothing listens on its port any more.

    run = run_bot_process(environment, tmp_path)

    assert run.returncode == 1
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"maskid: error: cannot reach the Bot API at {api.origin}: ")
    assert last_line.endswith("check the network and TELEGRAM_API_BASE_URL")


def test_python_m_bot_alias(tmp_path: Path, model_cache_dir: Path) -> None:
    environment = cli_environment(tmp_path / "gallery.sqlite3", model_cache_dir)
    environment["TELEGRAM_BOT_TOKEN"] = "malformed"

    run = subprocess.run(
        [sys.executable, "-m", "bot", "-v"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )

    assert run.returncode == 1
    assert run.stderr.startswith("maskid: error: TELEGRAM_BOT_TOKEN is malformed")


def test_help_lists_bot_command(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0
    assert "    bot " in run.stdout
