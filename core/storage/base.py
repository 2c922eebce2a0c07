"""The interface between the gallery database and the rest of maskid.

Matching and the front ends use only :class:`GalleryStore`, so another backend (for
example PostgreSQL with pgvector) can replace :class:`~core.storage.sqlite.SqliteGalleryStore`
without changes there. A backend checks input with the ``validate_*`` functions of
:mod:`core.storage.records` so that every backend rejects the same values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from core.storage.records import (
    Enrollment,
    ImageRecord,
    ImageStatus,
    NewTemplate,
    Person,
    PersonSummary,
    RemovedPerson,
    Source,
    StoredImage,
    TemplateFingerprint,
    TemplateMatrix,
)


@runtime_checkable
class GalleryStore(Protocol):
    """Persistent gallery of people, their images and face templates.

    Every method raises :class:`~core.errors.StorageError` when the database cannot be
    read or written, and ValueError for invalid arguments before anything is written.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date. Does nothing if the store is already open."""
        ...

    async def close(self) -> None:
        """Release the connection. Does nothing if the store is already closed."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def enroll(
        self,
        *,
        person_name: str,
        source: Source,
        model_id: str,
        image: ImageRecord,
        templates: Sequence[NewTemplate],
        owner_id: int | None = None,
        chat_id: int | None = None,
    ) -> Enrollment:
        """Store one image of a person and its templates in a single transaction.

        The person matched by ``(person_name, source, owner_id)`` is created if missing.
        When that person already has an enrolled image with the same ``(model_id, sha256)``,
        nothing is written and the result has ``already_enrolled`` set. Otherwise the
        image gets status ``"enrolled"`` and ``faces_found`` equal to the number of
        original templates. A synthetic template's ``parent_index`` becomes the id of that
        template's row. Either every row is written or none is.

        Args:
            chat_id: Chat where the templates were enrolled; None makes them visible in every chat.

        Raises:
            ValueError: A name, source, image field, chat id or template is invalid, for
                example an empty ``templates``, an embedding that is not a finite 1-D
                ``float32`` array, or embeddings of different lengths.
        """
        ...

    async def record_no_face(self, *, model_id: str, image: ImageRecord, faces_found: int = 0) -> int:
        """Record that ``image`` gave no usable face under ``model_id`` and return the image id.

        ``faces_found`` counts faces the detector found but enrollment rejected. Recording
        the same ``(model_id, sha256)`` twice returns the existing row's id.
        """
        ...

    async def known_image_hashes(
        self, model_id: str, *, status: ImageStatus | None = None, person_id: int | None = None
    ) -> set[str]:
        """Return the SHA-256 of every image enrolled or recorded as no-face under ``model_id``.

        ``status`` keeps only enrolled or only no-face images; ``person_id`` keeps
        only that person's enrolled images.
        """
        ...

    async def get_person(self, person_id: int) -> Person:
        """Return the person with ``person_id``.

        Raises:
            PersonNotFoundError: No person has that id.
        """
        ...

    async def find_people(
        self, name: str, *, source: Source | None = None, owner_id: int | None = None
    ) -> list[Person]:
        """Return people whose name equals ``name`` exactly (case-sensitive), in id order.

        A ``source`` or ``owner_id`` of None does not filter.
        """
        ...

    async def people_with_image(self, model_id: str, sha256: str) -> list[Person]:
        """Return the people with an enrolled image of ``sha256`` under ``model_id``, in id order."""
        ...

    async def people_by_ids(self, ids: Iterable[int]) -> dict[int, Person]:
        """Return a mapping from id to person for each id in ``ids`` that exists. Unknown ids are left out."""
        ...

    async def list_people(self, *, model_id: str | None = None) -> list[PersonSummary]:
        """Return every person with image and template counts, sorted by casefolded name, then name, then id.

        With ``model_id``, only people with at least one template of that model are listed,
        and the counts cover only that model.
        """
        ...

    async def remove_person(self, person_id: int) -> RemovedPerson:
        """Delete a person with all their images and templates, under every model.

        Raises:
            PersonNotFoundError: No person has that id.
        """
        ...

    async def people_of_owner(self, owner_id: int) -> list[PersonSummary]:
        """Return the people owned by ``owner_id`` in id order, oldest first.

        Their image and template counts cover every model.
        """
        ...

    async def remove_people_of_owner(self, owner_id: int) -> list[RemovedPerson]:
        """Delete every person owned by ``owner_id`` with their images and templates, in one transaction.

        Returns what was deleted, in id order; an empty list when the owner has no people.
        """
        ...

    async def load_templates(self, model_id: str, *, kinds: Collection[str] | None = None) -> TemplateMatrix:
        """Return every template of ``model_id``, optionally only those whose kind is in ``kinds``.

        Templates of other models are never included. When nothing matches, the result has
        no rows and ``vectors`` of shape ``(0, D)``, where ``D`` is the dimension of the
        model's stored templates, or 0 if it has none.

        Raises:
            ValueError: ``kinds`` contains a value other than ``"original"`` or ``"synthetic"``.
        """
        ...

    async def templates_for_person(self, person_id: int, model_id: str) -> TemplateMatrix:
        """Return the templates of one person under ``model_id``, shaped like :meth:`load_templates`.

        Raises:
            PersonNotFoundError: No person has that id.
        """
        ...

    async def enrolled_images(self, model_id: str) -> list[StoredImage]:
        """Return every image enrolled under ``model_id``, in id order, with its person and chat."""
        ...

    def iter_templates(self, model_id: str, *, batch_size: int = 65536) -> AsyncIterator[TemplateMatrix]:
        """Yield every template of ``model_id`` in ascending id order, ``batch_size`` rows at a time.

        Each batch is shaped like :meth:`load_templates`. The whole gallery is never held in
        memory at once, which a search index built from a million templates needs.

        Raises:
            ValueError: ``batch_size`` is less than 1.
        """
        ...

    async def template_fingerprint(self, model_id: str) -> TemplateFingerprint:
        """Return the count, largest id and id sum of the templates of ``model_id``, for checking a saved index."""
        ...

    async def enrolled_model_ids(self) -> list[str]:
        """Return the sorted ids of the models with at least one enrolled image, without counting rows."""
        ...

    async def counts(self) -> dict[str, Any]:
        """Return gallery sizes as ``{"people": int, "models": {model_id: {...}}}``.

        Each model entry has the int keys ``"images"`` (enrolled), ``"no_face_images"``,
        ``"templates"`` and ``"synthetic_templates"``.
        """
        ...

    async def get_setting(self, key: str) -> str | None:
        """Return the stored value of ``key``, or None if it was never set."""
        ...

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing an earlier value.

        Raises:
            ValueError: ``key`` is empty or ``value`` is not a string.
        """
        ...

    async def delete_setting(self, key: str) -> bool:
        """Delete the value stored under ``key``. Return True if one was stored, False otherwise.

        Raises:
            ValueError: ``key`` is empty.
        """
        ...
