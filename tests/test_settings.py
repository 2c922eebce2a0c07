"""Tests for reading settings from the environment, a ``.env`` file and keyword overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigurationError
from core.settings import DEFAULT_DB_PATH, InvalidSettingError, Settings, env_name

SECRET_TOKEN = "123456:AAH-secret-token-value"


def write_env_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_env_file_values_used(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_BATCH_SIZE=8", "MASKID_DEVICE=cuda:1", "# a comment")

    settings = Settings.from_env({}, env_file=env_file)

    assert settings.batch_size == 8
    assert settings.device == "cuda:1"


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_BATCH_SIZE=8", "MASKID_MATCH_THRESHOLD=0.3")

    settings = Settings.from_env({"MASKID_BATCH_SIZE": "16"}, env_file=env_file)

    assert settings.batch_size == 16
    assert settings.match_threshold == pytest.approx(0.3)


def test_overrides_win_over_environment_and_env_file(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_BATCH_SIZE=8", "MASKID_MIN_FACE_SIZE=30")

    settings = Settings.from_env({"MASKID_BATCH_SIZE": "16"}, env_file=env_file, batch_size=4, min_face_size=40)

    assert settings.batch_size == 4
    assert settings.min_face_size == 40


def test_none_overrides_ignored(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_DB=from-env-file.sqlite3")

    settings = Settings.from_env({"MASKID_BATCH_SIZE": "16"}, env_file=env_file, batch_size=None, db_path=None)

    assert settings.batch_size == 16
    assert settings.db_path == Path("from-env-file.sqlite3")


def test_env_file_none_not_read(tmp_path: Path) -> None:
    write_env_file(tmp_path, "MASKID_BATCH_SIZE=8")

    settings = Settings.from_env({}, env_file=None)

    assert settings.batch_size == 32


def test_missing_env_file_ignored(tmp_path: Path) -> None:
    settings = Settings.from_env({}, env_file=tmp_path / "absent.env")

    assert settings == Settings()


def test_empty_value_keeps_default(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_DEVICE=")

    settings = Settings.from_env({"MASKID_BATCH_SIZE": ""}, env_file=env_file)

    assert settings.batch_size == 32
    assert settings.device == "cpu"


def test_defaults_read_environ_and_cwd_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env_file(tmp_path, "MASKID_BATCH_SIZE=8", "MASKID_TORCH_THREADS=3")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKID_BATCH_SIZE", "12")
    monkeypatch.delenv("MASKID_TORCH_THREADS", raising=False)

    settings = Settings.from_env()

    assert settings.batch_size == 12
    assert settings.torch_threads == 3


@pytest.mark.parametrize(
    ("variable", "value", "field_name", "expected"),
    [
        ("MASKID_DB", "/data/gallery.sqlite3", "db_path", Path("/data/gallery.sqlite3")),
        ("MASKID_DATASETS", "/data/faces", "datasets_dir", Path("/data/faces")),
        ("TELEGRAM_BOT_TOKEN", SECRET_TOKEN, "telegram_token", SECRET_TOKEN),
        ("TELEGRAM_API_BASE_URL", "http://127.0.0.1:8081/bot", "telegram_api_base_url", "http://127.0.0.1:8081/bot"),
        ("MASKID_CACHE_DIR", "/data/cache", "cache_dir", Path("/data/cache")),
        ("MASKID_FACENET_GRAPH", "/data/graph_final.pb", "facenet_graph", Path("/data/graph_final.pb")),
        ("MASKID_MIN_DETECTION_PROBABILITY", "0.5", "min_detection_probability", 0.5),
    ],
    ids=["db", "datasets", "bot-token", "bot-api-url", "cache-dir", "facenet-graph", "float"],
)
def test_variable_sets_field(variable: str, value: str, field_name: str, expected: object) -> None:
    settings = Settings.from_env({variable: value}, env_file=None)

    assert getattr(settings, field_name) == expected
    assert env_name(field_name) == variable


@pytest.mark.parametrize(
    "variable",
    ["MASKID_DB_PATH", "MASKID_DATASETS_DIR", "MASKID_TELEGRAM_TOKEN"],
    ids=["db-path", "datasets-dir", "telegram-token"],
)
def test_generic_name_of_special_field_ignored(variable: str) -> None:
    settings = Settings.from_env({variable: "/somewhere"}, env_file=None)

    assert settings == Settings()


def test_path_value_expands_home() -> None:
    settings = Settings.from_env({"MASKID_DB": "~/gallery.sqlite3"}, env_file=None)

    assert settings.db_path == Path.home() / "gallery.sqlite3"


def test_default_db_path() -> None:
    assert Settings.from_env({}, env_file=None).db_path == DEFAULT_DB_PATH


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MASKID_BATCH_SIZE", "many"),
        ("MASKID_TORCH_THREADS", "2.5"),
        ("MASKID_MATCH_THRESHOLD", "high"),
        ("MASKID_MAX_IMAGE_BYTES", "20MB"),
    ],
    ids=["int-word", "int-fraction", "float-word", "int-with-unit"],
)
def test_unparsable_value_names_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{variable}='{value}' is not a valid"):
        Settings.from_env({variable: value}, env_file=None)


def test_unparsable_value_in_env_file_names_variable(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path, "MASKID_MIN_FACE_SIZE=big")

    with pytest.raises(ConfigurationError, match="MASKID_MIN_FACE_SIZE='big'"):
        Settings.from_env({}, env_file=env_file)


@pytest.mark.parametrize(
    ("field_name", "value", "message"),
    [
        ("device", "tpu", r"device \(MASKID_DEVICE\) must be 'cpu' or 'cuda"),
        ("torch_threads", -1, r"torch_threads \(MASKID_TORCH_THREADS\) must be 0"),
        ("batch_size", 0, r"batch_size \(MASKID_BATCH_SIZE\) must be at least 1"),
        ("min_face_size", 0, r"min_face_size \(MASKID_MIN_FACE_SIZE\) must be at least 1"),
        (
            "min_detection_probability",
            1.5,
            r"min_detection_probability \(MASKID_MIN_DETECTION_PROBABILITY\) must be in \[0, 1\]",
        ),
        ("match_threshold", -1.01, r"match_threshold \(MASKID_MATCH_THRESHOLD\) is a cosine similarity in \[-1, 1\]"),
        ("max_image_bytes", 0, r"max_image_bytes \(MASKID_MAX_IMAGE_BYTES\) must be positive"),
        ("max_image_pixels", -5, r"max_image_pixels \(MASKID_MAX_IMAGE_PIXELS\) must be positive"),
    ],
    ids=["device", "threads", "batch", "face-size", "probability", "threshold", "bytes", "pixels"],
)
def test_out_of_range_value_rejected(field_name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings(**{field_name: value})


def test_out_of_range_env_value_names_variable() -> None:
    with pytest.raises(ConfigurationError, match="MASKID_BATCH_SIZE"):
        Settings.from_env({"MASKID_BATCH_SIZE": "0"}, env_file=None)


def test_invalid_override_named_as_option() -> None:
    # The environment's value is valid; the override (a command-line option) is the one to fix.
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"MASKID_DEVICE": "cpu"}, env_file=None, device="tpu")

    assert str(raised.value) == (
        "device must be 'cpu' or 'cuda[:N]', got 'tpu'; the value was given as an option, which overrides MASKID_DEVICE"
    )
    assert isinstance(raised.value, InvalidSettingError)
    assert raised.value.from_option


@pytest.mark.parametrize("threshold", [-1.0, 1.0], ids=["minimum", "maximum"])
def test_match_threshold_accepts_bounds(threshold: float) -> None:
    assert Settings(match_threshold=threshold).match_threshold == threshold


def test_token_not_in_repr() -> None:
    settings = Settings.from_env({"TELEGRAM_BOT_TOKEN": SECRET_TOKEN}, env_file=None)

    assert settings.telegram_token == SECRET_TOKEN
    assert SECRET_TOKEN not in repr(settings)
    assert SECRET_TOKEN not in str(settings)
    assert "secret" not in repr(settings)


def test_replace_validates() -> None:
    settings = Settings()

    with pytest.raises(ConfigurationError, match=r"batch_size \(MASKID_BATCH_SIZE\) must be at least 1"):
        settings.replace(batch_size=0)
    assert settings.replace(batch_size=2).batch_size == 2


@pytest.mark.parametrize(("raw", "expected"), [("0", False), ("no", False), ("1", True), ("True", True)])
def test_boolean_setting_parsed(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"MASKID_DETECTION_RETRY": raw}, env_file=None)

    assert settings.detection_retry is expected


def test_invalid_boolean_setting_rejected() -> None:
    with pytest.raises(ConfigurationError, match="MASKID_FLIP='maybe' is not a valid bool"):
        Settings.from_env({"MASKID_FLIP": "maybe"}, env_file=None)
