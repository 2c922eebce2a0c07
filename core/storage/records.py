"""Records that go into and come out of a gallery store, and the input checks shared by all backends.

Output records are frozen dataclasses. Arrays inside a :class:`TemplateMatrix` are
read-only, so a matrix can be shared between the matcher and the store's callers.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import numpy as np

Source = Literal["dataset", "cli", "telegram"]
TemplateKind = Literal["original", "synthetic"]
ImageStatus = Literal["enrolled", "no_face"]

SOURCES: Final[tuple[str, ...]] = ("dataset", "cli", "telegram")
ORIGINAL: Final = "original"
SYNTHETIC: Final = "synthetic"
KINDS: Final[tuple[str, ...]] = (ORIGINAL, SYNTHETIC)

# Value in TemplateMatrix.chat_ids for a template visible in every chat (NULL in the database).
# Telegram never assigns chat id 0, so enroll rejects chat_id=0.
ANY_CHAT: Final = 0
# Value in TemplateMatrix.owner_ids for a template without an owner (NULL in the database).
NO_OWNER: Final = 0

MAX_NAME_LENGTH: Final = 200

_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Person:
    """A person in the gallery. ``owner_id`` is the Telegram user id of a self-enrolled user, otherwise None."""

    id: int
    name: str
    source: Source
    owner_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class PersonSummary:
    """A person with the number of their enrolled images and templates."""

    person: Person
    image_count: int
    template_count: int
    synthetic_count: int


@dataclass(frozen=True)
class StoredImage:
    """An enrolled image as the gallery recorded it, enough to embed it again under another model.

    Attributes:
        image_id: the image row.
        person: whose photo it is.
        sha256: lowercase hex SHA-256 of the file bytes at enrollment.
        path: where the file was read from, as given then (relative paths are relative to
            the working folder of that run); None for photos that were not read from a file.
        chat_id: chat the templates were enrolled in; None when visible in every chat.
    """

    image_id: int
    person: Person
    sha256: str
    path: str | None
    chat_id: int | None


@dataclass(frozen=True)
class ImageRecord:
    """An input image: lowercase hex SHA-256 of its file bytes, optional path, size in pixels."""

    sha256: str
    path: str | None
    width: int
    height: int


@dataclass(frozen=True)
class NewTemplate:
    """A face descriptor to enroll.

    Attributes:
        embedding: ``np.float32`` vector of shape ``(D,)`` with finite values.
        box: Face box ``(x1, y1, x2, y2)`` in pixels of the source image.
        detection_probability: Detector confidence in ``[0, 1]``.
        kind: ``"original"`` for a face as photographed, ``"synthetic"`` for a copy with a drawn-on mask.
        parent_index: For a synthetic template, the index of its original template in the
            same ``enroll`` call; None for an original.
    """

    embedding: np.ndarray
    box: tuple[float, float, float, float]
    detection_probability: float
    kind: TemplateKind = "original"
    parent_index: int | None = None


@dataclass(frozen=True)
class Enrollment:
    """Ids of the rows one ``enroll`` call wrote, with ``template_ids`` in the order of the input templates.

    ``already_enrolled`` is True, ``image_id`` the earlier row's and ``template_ids``
    empty, when the person already had this image under the model and nothing was written.
    """

    person_id: int
    image_id: int
    template_ids: tuple[int, ...]
    created_person: bool
    already_enrolled: bool = False


@dataclass(frozen=True)
class RemovedPerson:
    """A deleted person and how many of their images and templates were deleted with them."""

    person: Person
    image_count: int
    template_count: int


@dataclass(frozen=True, eq=False)
class TemplateMatrix:
    """Templates of one model as parallel arrays, one row per template, in ascending template id.

    Construction checks that all arrays have N rows and marks them read-only.

    Attributes:
        template_ids: ``int64`` array of shape ``(N,)``.
        person_ids: ``int64`` array of shape ``(N,)``.
        vectors: ``float32`` array of shape ``(N, D)``. ``D`` is 0 only when the store
            has no template of the requested model at all.
        kinds: Unicode array of shape ``(N,)`` with ``"original"`` or ``"synthetic"``.
        chat_ids: ``int64`` array of shape ``(N,)``; :data:`ANY_CHAT` marks a template visible in every chat.
        owner_ids: ``int64`` array of shape ``(N,)``, the enrolling user's id, :data:`NO_OWNER` when none.
    """

    template_ids: np.ndarray
    person_ids: np.ndarray
    vectors: np.ndarray
    kinds: np.ndarray
    chat_ids: np.ndarray
    owner_ids: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.template_ids)
        if self.vectors.ndim != 2 or self.vectors.dtype != np.float32:
            raise ValueError(f"vectors must be a float32 (N, D) array, got {self.vectors.dtype} {self.vectors.shape}")

        for name in ("template_ids", "person_ids", "vectors", "kinds", "chat_ids", "owner_ids"):
            array = getattr(self, name)
            if len(array) != count:
                raise ValueError(f"{name} has {len(array)} rows, expected {count} like template_ids")
            array.setflags(write=False)

    @classmethod
    def empty(cls, dim: int = 0) -> TemplateMatrix:
        """Return a matrix with no rows whose ``vectors`` have shape ``(0, dim)``."""
        return cls(
            template_ids=np.empty(0, dtype=np.int64),
            person_ids=np.empty(0, dtype=np.int64),
            vectors=np.empty((0, dim), dtype=np.float32),
            kinds=np.empty(0, dtype=f"<U{max(map(len, KINDS))}"),
            chat_ids=np.empty(0, dtype=np.int64),
            owner_ids=np.empty(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.template_ids)

    @property
    def dim(self) -> int:
        """Length ``D`` of each vector."""
        return self.vectors.shape[1]

    def visible_in(self, chat_id: int) -> np.ndarray:
        """Return a boolean mask of shape ``(N,)`` of the templates a query from ``chat_id`` may see.

        See :func:`visible_in_chat` for the rule.
        """
        return visible_in_chat(chat_id, self.chat_ids, self.owner_ids)


@dataclass(frozen=True)
class TemplateFingerprint:
    """Summary of one model's stored templates that changes whenever a template is added or deleted.

    Template ids are AUTOINCREMENT and never reused, so an enroll raises ``max_id`` and a
    deletion lowers ``count``. A search index saved with the same fingerprint as the
    database therefore contains the same templates. ``last_created_at`` distinguishes a database
    restored from a backup that then reached the same ids with other templates.
    NOTE: a template changed in place by an UPDATE is not detected; maskid never does that.

    Attributes:
        count: number of templates.
        max_id: largest template id, 0 when there are none.
        id_sum: sum of the template ids, 0 when there are none.
        last_created_at: creation time of the template with ``max_id``, None when there are none.
    """

    count: int
    max_id: int
    id_sum: int
    last_created_at: str | None = None

    def same_ids(self, other: TemplateFingerprint) -> bool:
        """Return whether both fingerprints have the same count, largest id and id sum."""
        return (self.count, self.max_id, self.id_sum) == (other.count, other.max_id, other.id_sum)


def visible_in_chat(chat_id: int, chat_ids: np.ndarray, owner_ids: np.ndarray) -> np.ndarray:
    """Return which templates a query from ``chat_id`` may see, as a boolean array.

    A template is visible when it is visible in every chat (:data:`ANY_CHAT`), when it was
    enrolled in ``chat_id``, or when ``chat_id`` is its owner's private chat: Telegram gives
    a private chat the id of the user, while group chat ids are negative.
    """
    return (chat_ids == ANY_CHAT) | (chat_ids == chat_id) | (owner_ids == chat_id)


def validate_person(name: str, source: str, owner_id: int | None) -> None:
    """Raise ValueError unless ``name`` is non-blank and short enough and ``source`` is one of :data:`SOURCES`."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"person name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"person name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}: {name[:40]!r}…")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if owner_id is not None and not _is_int(owner_id):
        raise ValueError(f"owner_id must be an int or None, got {owner_id!r}")


def validate_model_id(model_id: str) -> None:
    """Raise ValueError unless ``model_id`` is a non-empty string."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")


def validate_chat_id(chat_id: int | None) -> None:
    """Raise ValueError unless ``chat_id`` is None or a non-zero int (0 is :data:`ANY_CHAT`)."""
    if chat_id is None:
        return
    if not _is_int(chat_id) or chat_id == ANY_CHAT:
        raise ValueError(f"chat_id must be None (visible in every chat) or a non-zero int, got {chat_id!r}")


def validate_image(image: ImageRecord) -> None:
    """Raise ValueError unless ``image`` has a lowercase hex SHA-256 and a positive width and height."""
    if not isinstance(image.sha256, str) or not _SHA256_PATTERN.fullmatch(image.sha256):
        raise ValueError(f"image sha256 must be 64 lowercase hex digits, got {image.sha256!r}")
    for name in ("width", "height"):
        value = getattr(image, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"image {name} must be a positive int, got {value!r}")


def validate_templates(templates: Sequence[NewTemplate]) -> int:
    """Check the templates of one ``enroll`` call and return their common dimension ``D``.

    Raises:
        ValueError: ``templates`` is empty, an embedding is not a finite ``float32`` vector,
            the embeddings differ in length, a box or probability is invalid, or a
            ``parent_index`` does not point at an earlier original template.
    """
    if len(templates) == 0:
        raise ValueError("templates must contain at least one template, got an empty sequence")

    dim = None
    for index, template in enumerate(templates):
        _validate_embedding(index, template.embedding)
        if dim is None:
            dim = template.embedding.shape[0]
        elif template.embedding.shape[0] != dim:
            raise ValueError(
                f"templates[{index}].embedding has {template.embedding.shape[0]} values, "
                f"but templates[0] has {dim}; all templates of one image must come from one model"
            )
        _validate_box(index, template)
        _validate_kind(index, template, templates)

    return dim


def _validate_embedding(index: int, embedding: object) -> None:
    if not isinstance(embedding, np.ndarray):
        raise ValueError(f"templates[{index}].embedding must be a numpy array, got {type(embedding).__name__}")
    if embedding.dtype != np.float32:
        raise ValueError(f"templates[{index}].embedding must have dtype float32, got {embedding.dtype}")
    if embedding.ndim != 1 or embedding.shape[0] == 0:
        raise ValueError(f"templates[{index}].embedding must have shape (D,) with D > 0, got {embedding.shape}")
    if not np.isfinite(embedding).all():
        raise ValueError(f"templates[{index}].embedding contains NaN or infinite values")


def _validate_box(index: int, template: NewTemplate) -> None:
    box = template.box
    if len(box) != 4 or not all(isinstance(value, numbers.Real) and math.isfinite(value) for value in box):
        raise ValueError(f"templates[{index}].box must be 4 finite numbers (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"templates[{index}].box must have x1 <= x2 and y1 <= y2, got {box!r}")

    probability = template.detection_probability
    if not isinstance(probability, numbers.Real) or not 0.0 <= probability <= 1.0:
        raise ValueError(f"templates[{index}].detection_probability must be in [0, 1], got {probability!r}")


def _validate_kind(index: int, template: NewTemplate, templates: Sequence[NewTemplate]) -> None:
    if template.kind not in KINDS:
        raise ValueError(f"templates[{index}].kind must be one of {KINDS}, got {template.kind!r}")

    if template.kind == ORIGINAL:
        if template.parent_index is not None:
            raise ValueError(
                f"templates[{index}] is an original template, so parent_index must be None, "
                f"got {template.parent_index!r}"
            )
        return

    parent = template.parent_index
    if not isinstance(parent, int) or not 0 <= parent < index:
        raise ValueError(
            f"templates[{index}] is synthetic, so parent_index must be the index of an earlier template, got {parent!r}"
        )
    if templates[parent].kind != ORIGINAL:
        raise ValueError(f"templates[{index}].parent_index={parent} points at a synthetic template, not an original")


def _is_int(value: object) -> bool:
    """Return True for Python and NumPy integers, but not for bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
