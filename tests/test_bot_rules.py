"""Unit tests of the bot's rules without Telegram: token check, log redaction, limits, access, parsing, settings."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from telegram import Chat, User

from bot.access import NotAllowedError, enroll_target, is_admin
from bot.bot_token import REDACTED, RedactTokenFilter, check_token
from bot.commands import ParsedCommand, parse_command
from bot.conversations import ExpiringMap
from bot.photos import PhotoRef, PhotoRejectedError, check_photo
from bot.ratelimit import RateLimiter
from bot.workload import BusyError, WorkloadLimit
from core.errors import ConfigurationError
from core.settings import Settings

TOKEN = "123456789:AAEfakeTokenForMaskidTests_abcdefgh"
ADMIN_ID = 500


class FakeClock:
    """A monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Token.


def test_check_token_accepts_botfather_format() -> None:
    assert check_token(f"  {TOKEN}\n") == TOKEN


@pytest.mark.parametrize("token", [None, "", "   "])
def test_check_token_missing(token: str | None) -> None:
    with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN is not set"):
        check_token(token)


@pytest.mark.parametrize(
    "token",
    ["abc", "123456789", "123456789:short", "bot123456789:AAEfakeTokenForMaskidTests_abcdefgh", TOKEN + " extra"],
)
def test_check_token_malformed(token: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed") as raised:
        check_token(token)
    assert token not in str(raised.value)


def test_redaction_filter_hides_token_in_message_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactTokenFilter(TOKEN))
    test_logger = logging.getLogger("tests.redaction")
    test_logger.addHandler(handler)
    test_logger.propagate = False
    try:
        test_logger.warning("POST https://api.telegram.org/bot%s/getMe", TOKEN)
        try:
            raise RuntimeError(f"failed at /bot{TOKEN}/getUpdates")
        except RuntimeError:
            test_logger.exception("request failed")
    finally:
        test_logger.removeHandler(handler)

    output = stream.getvalue()
    assert TOKEN not in output
    assert f"/bot{REDACTED}/getMe" in output
    assert f"/bot{REDACTED}/getUpdates" in output


def test_redaction_filter_hides_percent_encoded_token() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: POST %s",
        (f"https://x/bot{TOKEN.replace(':', '%3A')}/getMe",),
        None,
    )

    RedactTokenFilter(TOKEN).filter(record)

    assert record.getMessage() == f"HTTP Request: POST https://x/bot{REDACTED}/getMe"


# Rate limit and workload bound.


def test_rate_limiter_allows_limit_then_rejects() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 60.0, clock=clock)

    first, second, third, fourth = (limiter.check(7) for _ in range(4))

    assert first.allowed
    assert second.allowed
    assert not third.allowed
    assert third.first_rejection
    assert third.retry_after_s == pytest.approx(60.0)
    assert not fourth.allowed
    assert not fourth.first_rejection


def test_rate_limiter_window_slides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 60.0, clock=clock)
    limiter.check(7)
    clock.now += 30
    limiter.check(7)

    clock.now += 20
    rejected = limiter.check(7)
    clock.now += 10.5
    allowed = limiter.check(7)

    assert not rejected.allowed
    assert rejected.retry_after_s == pytest.approx(10.0)
    assert allowed.allowed


def test_rate_limiter_counts_users_separately() -> None:
    limiter = RateLimiter(1, 60.0, clock=FakeClock())

    assert limiter.check(1).allowed
    assert limiter.check(2).allowed
    assert not limiter.check(1).allowed


def test_workload_limit_rejects_when_full() -> None:
    workload = WorkloadLimit(2)

    with workload.slot(), workload.slot():
        assert workload.pending == 2
        with pytest.raises(BusyError), workload.slot():
            pass
    assert workload.pending == 0


def test_workload_slot_released_on_error() -> None:
    workload = WorkloadLimit(1)

    with pytest.raises(ValueError), workload.slot():
        raise ValueError("model failed")
    assert workload.pending == 0


# Conversations.


def test_expiring_map_drops_entries_after_ttl() -> None:
    clock = FakeClock()
    entries: ExpiringMap[str, str] = ExpiringMap(10.0, clock=clock)
    entries.put("a", "photo")

    clock.now += 9.9
    assert entries.get("a") == "photo"
    clock.now += 0.2
    assert entries.get("a") is None
    assert len(entries) == 0


def test_expiring_map_pop_if_only_removes_same_value() -> None:
    entries: ExpiringMap[str, list[int]] = ExpiringMap(10.0, clock=FakeClock())
    old, new = [1], [2]
    entries.put("a", old)
    entries.put("a", new)

    assert not entries.pop_if("a", old)
    assert entries.pop_if("a", new)
    assert entries.get("a") is None


# Access rules.


def make_user(user_id: int, first: str, last: str | None = None) -> User:
    return User(user_id, first, is_bot=False, last_name=last)


@pytest.fixture
def admin_settings() -> Settings:
    return Settings(telegram_admin_ids=(ADMIN_ID,))


GROUP = Chat(-1001, "supergroup")


def test_is_admin(admin_settings: Settings) -> None:
    assert is_admin(admin_settings, ADMIN_ID)
    assert not is_admin(admin_settings, ADMIN_ID + 1)
    assert not is_admin(admin_settings, None)


@pytest.mark.parametrize("name_text", ["", "  ", "ada LOVELACE"])
def test_user_enrolls_self_under_full_name(admin_settings: Settings, name_text: str) -> None:
    target = enroll_target(admin_settings, make_user(1, "Ada", "Lovelace"), GROUP, name_text, public=False)

    assert target.name == "Ada Lovelace"
    assert target.source == "telegram"
    assert target.owner_id == 1
    assert target.chat_id == GROUP.id
    assert target.self_enrolled
    assert not target.public


def test_user_cannot_enroll_other_name(admin_settings: Settings) -> None:
    with pytest.raises(NotAllowedError, match="Only admins"):
        enroll_target(admin_settings, make_user(1, "Ada"), GROUP, "Grace Hopper", public=False)


def test_user_cannot_add_public_figure(admin_settings: Settings) -> None:
    with pytest.raises(NotAllowedError, match="Only admins"):
        enroll_target(admin_settings, make_user(1, "Ada"), GROUP, "Grace Hopper", public=True)


def test_admin_enrolls_other_person_in_chat(admin_settings: Settings) -> None:
    target = enroll_target(admin_settings, make_user(ADMIN_ID, "Root"), GROUP, " Grace   Hopper ", public=False)

    assert target.name == "Grace Hopper"
    assert target.owner_id == ADMIN_ID
    assert target.chat_id == GROUP.id
    assert not target.self_enrolled


def test_admin_adds_public_figure(admin_settings: Settings) -> None:
    target = enroll_target(admin_settings, make_user(ADMIN_ID, "Root"), GROUP, "Grace Hopper", public=True)

    assert target.source == "dataset"
    assert target.owner_id is None
    assert target.chat_id is None
    assert target.public


def test_public_figure_needs_name(admin_settings: Settings) -> None:
    with pytest.raises(NotAllowedError, match="/celebrity NAME"):
        enroll_target(admin_settings, make_user(ADMIN_ID, "Root"), GROUP, "", public=True)


def test_enroll_name_length_limit(admin_settings: Settings) -> None:
    with pytest.raises(NotAllowedError, match="at most 200"):
        enroll_target(admin_settings, make_user(ADMIN_ID, "Root"), GROUP, "x" * 201, public=False)


# Caption commands.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/identify", ParsedCommand("identify", "")),
        ("/Enroll  Grace Hopper ", ParsedCommand("enroll", "Grace Hopper")),
        ("/enroll@maskid_test_bot Grace", ParsedCommand("enroll", "Grace")),
        ("/identify@Maskid_Test_Bot", ParsedCommand("identify", "")),
        ("/identify@other_bot", None),
        ("identify", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_command(text: str | None, expected: ParsedCommand | None) -> None:
    assert parse_command(text, "maskid_test_bot") == expected


# Photo checks before download.


def test_check_photo_rejects_non_image_mime_type() -> None:
    photo = PhotoRef("f", "u", 100, "notes.txt", "text/plain", is_document=True)

    with pytest.raises(PhotoRejectedError, match="not an image"):
        check_photo(photo, max_bytes=1000)


def test_check_photo_rejects_oversize_file() -> None:
    photo = PhotoRef("f", "u", 30 * 2**20, "big.png", "image/png", is_document=True)

    with pytest.raises(PhotoRejectedError, match=r"30\.0 MB, over the 20\.0 MB"):
        check_photo(photo, max_bytes=20 * 2**20)


def test_check_photo_accepts_unknown_size_and_type() -> None:
    check_photo(PhotoRef("f", "u", None, "photo"), max_bytes=1000)


# Settings.


def test_telegram_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "MASKID_TELEGRAM_ADMIN_IDS": "12, 34 56",
            "MASKID_TELEGRAM_RATE_LIMIT": "3",
            "MASKID_TELEGRAM_CONVERSATION_TIMEOUT_S": "2.5",
            "MASKID_TELEGRAM_WEBHOOK_URL": "https://bot.example.org/hook",
            "MASKID_TELEGRAM_WEBHOOK_SECRET": "abc_DEF-123",
        },
        env_file=None,
    )

    assert settings.telegram_admin_ids == (12, 34, 56)
    assert settings.telegram_rate_limit == 3
    assert settings.telegram_conversation_timeout_s == 2.5
    assert settings.telegram_webhook_url == "https://bot.example.org/hook"
    assert "abc_DEF-123" not in repr(settings)


def test_env_example_lists_valid_telegram_settings(caplog: pytest.LogCaptureFixture) -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"

    settings = Settings.from_env({}, env_file=example)

    assert "ignoring unknown setting" not in caplog.text
    assert settings.telegram_max_download_bytes == 20 * 2**20


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MASKID_TELEGRAM_ADMIN_IDS", "12, alice", "list of whole numbers"),
        ("MASKID_TELEGRAM_RATE_LIMIT", "0", "telegram_rate_limit"),
        ("MASKID_TELEGRAM_MAX_QUEUED", "0", "telegram_max_queued"),
        ("MASKID_TELEGRAM_RATE_WINDOW_S", "0", "telegram_rate_window_s"),
        ("MASKID_TELEGRAM_WEBHOOK_PORT", "70000", "telegram_webhook_port"),
        ("MASKID_TELEGRAM_WEBHOOK_URL", "http://bot.example.org/hook", "https://"),
        ("MASKID_TELEGRAM_WEBHOOK_SECRET", "has space", "telegram_webhook_secret"),
    ],
)
def test_invalid_telegram_setting(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.from_env({variable: value}, env_file=None)
    if variable.endswith("SECRET"):
        assert value not in str(raised.value)
