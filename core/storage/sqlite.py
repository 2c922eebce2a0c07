"""SQLite gallery store: one database file, accessed through aiosqlite.

The connection runs in WAL mode with foreign keys on, so readers on other connections do
not wait for a writer, and deleting a person cascades to their images and templates. Every
write is one ``BEGIN IMMEDIATE`` transaction. It takes the write lock before its first
statement, so it does not fail halfway because another connection started writing first.
When the lock stays taken for longer than the busy timeout, the whole transaction is
retried a few times before :class:`~core.errors.StorageError` is raised.

Several stores, in one process or in several, may open the same file. Within one store,
an :class:`asyncio.Lock` runs one operation at a time on the shared connection, so a
read never sees another coroutine's uncommitted rows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiosqlite
import numpy as np

from core.errors import PersonNotFoundError, StorageError
from core.settings import DEFAULT_DB_PATH, Settings, env_name
from core.storage import schema
from core.storage.records import (
    ANY_CHAT,
    KINDS,
    NO_OWNER,
    ORIGINAL,
    SYNTHETIC,
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
    validate_chat_id,
    validate_image,
    validate_model_id,
    validate_person,
    validate_templates,
)

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_S: Final = 30.0

# A write waits up to busy_timeout_s for the lock on each attempt, so it gives up after
# about _MAX_WRITE_ATTEMPTS * busy_timeout_s.
_MAX_WRITE_ATTEMPTS: Final = 3
_RETRY_DELAY_S: Final = 0.1

# SQLite before 3.32 allows at most 999 bound parameters per statement.
_IDS_PER_QUERY: Final = 500

_EMBEDDING_DTYPE: Final = np.dtype("<f4")
_KIND_DTYPE: Final = f"<U{max(map(len, KINDS))}"

_PERSON_COLUMNS: Final = "people.id, people.name, people.source, people.owner_id, people.created_at, people.updated_at"
_TEMPLATE_COLUMNS: Final = (
    "templates.id, templates.person_id, templates.kind, templates.chat_id, templates.dim, templates.embedding,"
    " templates.owner_id"
)

_PATH_HINT: Final = f"choose another file with --db or {env_name('db_path')} (the default is ./{DEFAULT_DB_PATH})"

_T = TypeVar("_T")
_Operation = Callable[[aiosqlite.Connection], Awaitable[_T]]


class SqliteGalleryStore:
    """:class:`~core.storage.base.GalleryStore` on a single SQLite file.

    Use it as ``async with SqliteGalleryStore(path) as store:``, or call :meth:`open`
    and :meth:`close`. Opening creates the file if needed and applies pending schema
    migrations.

    Args:
        path: Database file. Its folder must exist and be writable, because SQLite
            creates ``<name>-wal`` and ``<name>-shm`` files next to it.
        busy_timeout_s: How long one statement waits for a lock held by another
            connection before it fails with "database is locked".

    Raises:
        ValueError: ``busy_timeout_s`` is not a positive finite number.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        if not math.isfinite(busy_timeout_s) or busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be a positive number of seconds, got {busy_timeout_s!r}")

        self._path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> SqliteGalleryStore:
        """Create a store on ``settings.db_path`` (``MASKID_DB``). Open it before use."""
        return cls(settings.db_path, busy_timeout_s=busy_timeout_s)

    def __repr__(self) -> str:
        state = "open" if self._connection is not None else "closed"
        return f"{type(self).__name__}({str(self._path)!r}, {state})"

    @property
    def path(self) -> Path:
        """Database file."""
        return self._path

    # Lifecycle.

    async def open(self) -> None:
        """Connect, configure the connection and migrate the schema. Does nothing if already open.

        Raises:
            StorageError: The folder is missing or not writable, the file is not a maskid
                gallery, its schema is newer than this code, or SQLite fails to open it.
        """
        if self._connection is not None:
            return

        _check_location(self._path)
        logger.info("Opening gallery database %s", self._path)
        connection = await self._connect()

        try:
            await self._configure(connection)
            self._connection = connection
            version = await self._migrate()
        except BaseException:
            self._connection = None
            await connection.close()
            raise

        logger.info("Opened gallery database %s at schema version %s", self._path, version)

    async def close(self) -> None:
        """Wait for the running operation, then close the connection. Does nothing if already closed."""
        connection = self._connection
        if connection is None:
            return

        async with self._lock:
            self._connection = None
            await connection.close()

        logger.info("Closed gallery database %s", self._path)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # Enrollment.

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
        """Store one image of a person and its templates in one transaction, as ``GalleryStore.enroll`` describes."""
        validate_person(person_name, source, owner_id)
        validate_model_id(model_id)
        validate_image(image)
        validate_chat_id(chat_id)
        validate_templates(templates)
        templates = tuple(templates)

        async def write(connection: aiosqlite.Connection) -> Enrollment:
            now = _now()
            person_id, created = await _get_or_create_person(connection, person_name, source, owner_id, now)
            # Checked inside the write transaction, so that two concurrent enrolls of one photo store it once.
            cursor = await connection.execute(
                "SELECT id FROM images WHERE model_id = ? AND sha256 = ? AND status = 'enrolled' AND person_id = ? "
                "LIMIT 1",
                (model_id, image.sha256, person_id),
            )
            existing = await cursor.fetchone()
            if existing is not None:
                return Enrollment(person_id, existing[0], (), created, already_enrolled=True)

            faces_found = sum(1 for template in templates if template.kind == ORIGINAL)
            image_id = await _insert_image(
                connection, image, model_id=model_id, person_id=person_id, faces_found=faces_found, now=now
            )
            template_ids = await _insert_templates(
                connection,
                templates,
                person_id=person_id,
                image_id=image_id,
                model_id=model_id,
                owner_id=owner_id,
                chat_id=chat_id,
                now=now,
            )
            return Enrollment(person_id, image_id, template_ids, created)

        logger.debug("Enrolling image %s with %s templates under model %s", image.sha256, len(templates), model_id)
        enrollment = await self._write(write, action=f"enroll image {image.sha256}")
        logger.debug(
            "Enrolled image %s as image %s of person %s (new person: %s), templates %s",
            image.sha256,
            enrollment.image_id,
            enrollment.person_id,
            enrollment.created_person,
            enrollment.template_ids,
        )
        return enrollment

    async def record_no_face(self, *, model_id: str, image: ImageRecord, faces_found: int = 0) -> int:
        """Record an image without a usable face and return its id, as ``GalleryStore.record_no_face`` describes."""
        validate_model_id(model_id)
        validate_image(image)
        if not isinstance(faces_found, int) or isinstance(faces_found, bool) or faces_found < 0:
            raise ValueError(f"faces_found must be a non-negative int, got {faces_found!r}")

        async def write(connection: aiosqlite.Connection) -> int:
            cursor = await connection.execute(
                "SELECT id FROM images WHERE model_id = ? AND sha256 = ? AND status = 'no_face' LIMIT 1",
                (model_id, image.sha256),
            )
            existing = await cursor.fetchone()
            if existing is not None:
                return existing[0]
            return await _insert_image(
                connection, image, model_id=model_id, person_id=None, faces_found=faces_found, now=_now()
            )

        image_id = await self._write(write, action=f"record no-face image {image.sha256}")
        logger.debug("Recorded image %s as no-face image %s under model %s", image.sha256, image_id, model_id)
        return image_id

    async def known_image_hashes(
        self, model_id: str, *, status: ImageStatus | None = None, person_id: int | None = None
    ) -> set[str]:
        """Return the SHA-256 of every enrolled or no-face image under ``model_id``.

        ``status`` keeps only enrolled or only no-face images; ``person_id`` keeps
        only that person's enrolled images.
        """
        validate_model_id(model_id)
        query = "SELECT DISTINCT sha256 FROM images WHERE model_id = ?"
        parameters: list[object] = [model_id]
        if status is not None:
            query += " AND status = ?"
            parameters.append(status)
        if person_id is not None:
            query += " AND person_id = ?"
            parameters.append(person_id)

        async def read(connection: aiosqlite.Connection) -> set[str]:
            rows = await connection.execute_fetchall(query, parameters)
            return {row[0] for row in rows}

        return await self._read(read, action="read image hashes")

    # People.

    async def get_person(self, person_id: int) -> Person:
        """Return the person with ``person_id``, or raise PersonNotFoundError if there is none."""

        async def read(connection: aiosqlite.Connection) -> Person:
            return await self._fetch_person(connection, person_id)

        return await self._read(read, action=f"read person {person_id}")

    async def find_people(
        self, name: str, *, source: Source | None = None, owner_id: int | None = None
    ) -> list[Person]:
        """Return people named exactly ``name``, optionally filtered by source and owner, in id order."""
        conditions = ["name = ?"]
        parameters: list[Any] = [name]
        if source is not None:
            conditions.append("source = ?")
            parameters.append(source)
        if owner_id is not None:
            conditions.append("owner_id = ?")
            parameters.append(int(owner_id))

        # Only the fixed condition strings above are joined into the SQL text.
        sql = f"SELECT {_PERSON_COLUMNS} FROM people WHERE {' AND '.join(conditions)} ORDER BY id"

        async def read(connection: aiosqlite.Connection) -> list[Person]:
            rows = await connection.execute_fetchall(sql, parameters)
            return [_person_from_row(row) for row in rows]

        return await self._read(read, action=f"find people named {name!r}")

    async def people_with_image(self, model_id: str, sha256: str) -> list[Person]:
        """Return the people with an enrolled image of ``sha256`` under ``model_id``, in id order."""
        validate_model_id(model_id)
        sql = (
            f"SELECT DISTINCT {_PERSON_COLUMNS} FROM images JOIN people ON people.id = images.person_id "
            "WHERE images.model_id = ? AND images.sha256 = ? AND images.status = 'enrolled' ORDER BY people.id"
        )

        async def read(connection: aiosqlite.Connection) -> list[Person]:
            rows = await connection.execute_fetchall(sql, (model_id, sha256))
            return [_person_from_row(row) for row in rows]

        return await self._read(read, action=f"find the people of image {sha256}")

    async def people_by_ids(self, ids: Iterable[int]) -> dict[int, Person]:
        """Return a mapping from id to person for the ids that exist."""
        unique_ids = sorted({int(person_id) for person_id in ids})

        async def read(connection: aiosqlite.Connection) -> dict[int, Person]:
            people: dict[int, Person] = {}
            for start in range(0, len(unique_ids), _IDS_PER_QUERY):
                chunk = unique_ids[start : start + _IDS_PER_QUERY]
                placeholders = ", ".join("?" * len(chunk))
                rows = await connection.execute_fetchall(
                    f"SELECT {_PERSON_COLUMNS} FROM people WHERE id IN ({placeholders})", chunk
                )
                people.update((row[0], _person_from_row(row)) for row in rows)
            return people

        return await self._read(read, action=f"read {len(unique_ids)} people")

    async def list_people(self, *, model_id: str | None = None) -> list[PersonSummary]:
        """Return every person with counts, sorted by ``str.casefold`` of the name, then name, then id.

        With ``model_id``, only people with a template of that model are listed and the
        counts cover only that model.
        """
        if model_id is not None:
            validate_model_id(model_id)

        sql = f"""
            SELECT {_PERSON_COLUMNS},
                (SELECT count(*) FROM images
                    WHERE images.person_id = people.id AND (:model_id IS NULL OR images.model_id = :model_id)),
                (SELECT count(*) FROM templates
                    WHERE templates.person_id = people.id AND (:model_id IS NULL OR templates.model_id = :model_id)),
                (SELECT count(*) FROM templates
                    WHERE templates.person_id = people.id AND templates.kind = :synthetic
                    AND (:model_id IS NULL OR templates.model_id = :model_id))
            FROM people
            WHERE :model_id IS NULL OR EXISTS (
                SELECT 1 FROM templates WHERE templates.person_id = people.id AND templates.model_id = :model_id
            )
        """

        async def read(connection: aiosqlite.Connection) -> list[PersonSummary]:
            rows = await connection.execute_fetchall(sql, {"model_id": model_id, "synthetic": SYNTHETIC})
            return [PersonSummary(_person_from_row(row), row[6], row[7], row[8]) for row in rows]

        summaries = await self._read(read, action="list people")
        summaries.sort(key=lambda summary: (summary.person.name.casefold(), summary.person.name, summary.person.id))
        return summaries

    async def remove_person(self, person_id: int) -> RemovedPerson:
        """Delete a person with all images and templates, or raise PersonNotFoundError for an unknown id."""

        async def write(connection: aiosqlite.Connection) -> RemovedPerson:
            person = await self._fetch_person(connection, person_id)
            image_count = await _count(connection, "SELECT count(*) FROM images WHERE person_id = ?", person.id)
            template_count = await _count(connection, "SELECT count(*) FROM templates WHERE person_id = ?", person.id)
            await connection.execute("DELETE FROM people WHERE id = ?", (person.id,))
            return RemovedPerson(person, image_count, template_count)

        removed = await self._write(write, action=f"remove person {person_id}")
        logger.debug(
            "Removed person %s with %s images and %s templates",
            person_id,
            removed.image_count,
            removed.template_count,
        )
        return removed

    # People of one owner: what a Telegram user enrolled, for the bot's /me and /forget.

    async def people_of_owner(self, owner_id: int) -> list[PersonSummary]:
        """Return the people owned by ``owner_id`` with counts over every model, oldest first."""
        sql = f"""
            SELECT {_PERSON_COLUMNS},
                (SELECT count(*) FROM images WHERE images.person_id = people.id),
                (SELECT count(*) FROM templates WHERE templates.person_id = people.id),
                (SELECT count(*) FROM templates WHERE templates.person_id = people.id AND templates.kind = ?)
            FROM people WHERE owner_id = ? ORDER BY id
        """

        async def read(connection: aiosqlite.Connection) -> list[PersonSummary]:
            rows = await connection.execute_fetchall(sql, (SYNTHETIC, int(owner_id)))
            return [PersonSummary(_person_from_row(row), row[6], row[7], row[8]) for row in rows]

        return await self._read(read, action=f"list the people of owner {owner_id}")

    async def remove_people_of_owner(self, owner_id: int) -> list[RemovedPerson]:
        """Delete every person owned by ``owner_id`` with their images and templates, in one transaction."""

        async def write(connection: aiosqlite.Connection) -> list[RemovedPerson]:
            rows = await connection.execute_fetchall(
                f"SELECT {_PERSON_COLUMNS} FROM people WHERE owner_id = ? ORDER BY id", (int(owner_id),)
            )
            removed = []
            for row in rows:
                person = _person_from_row(row)
                image_count = await _count(connection, "SELECT count(*) FROM images WHERE person_id = ?", person.id)
                template_count = await _count(
                    connection, "SELECT count(*) FROM templates WHERE person_id = ?", person.id
                )
                await connection.execute("DELETE FROM people WHERE id = ?", (person.id,))
                removed.append(RemovedPerson(person, image_count, template_count))
            return removed

        removed = await self._write(write, action=f"remove the people of owner {owner_id}")
        logger.debug("Removed %s people of owner %s", len(removed), owner_id)
        return removed

    # Templates.

    async def load_templates(self, model_id: str, *, kinds: Collection[str] | None = None) -> TemplateMatrix:
        """Return the templates of ``model_id`` whose kind is in ``kinds`` (all kinds if None)."""
        validate_model_id(model_id)
        selected_kinds = _validate_kinds(kinds)

        conditions = "templates.model_id = ?"
        parameters: list[Any] = [model_id]
        if selected_kinds is not None:
            conditions += f" AND templates.kind IN ({', '.join('?' * len(selected_kinds))})"
            parameters.extend(selected_kinds)
        sql = f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE {conditions} ORDER BY templates.id"

        async def read(connection: aiosqlite.Connection) -> TemplateMatrix:
            rows = [] if selected_kinds == () else await connection.execute_fetchall(sql, parameters)
            return await self._matrix_from_rows(connection, rows, model_id)

        matrix = await self._read(read, action=f"load templates of model {model_id}")
        logger.debug("Loaded %s templates of model %s (kinds: %s)", len(matrix), model_id, selected_kinds or "all")
        return matrix

    async def templates_for_person(self, person_id: int, model_id: str) -> TemplateMatrix:
        """Return one person's templates of ``model_id``, or raise PersonNotFoundError for an unknown id."""
        validate_model_id(model_id)
        sql = f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE person_id = ? AND model_id = ? ORDER BY id"

        async def read(connection: aiosqlite.Connection) -> TemplateMatrix:
            person = await self._fetch_person(connection, person_id)
            rows = await connection.execute_fetchall(sql, (person.id, model_id))
            return await self._matrix_from_rows(connection, rows, model_id)

        return await self._read(read, action=f"load templates of person {person_id}")

    async def enrolled_images(self, model_id: str) -> list[StoredImage]:
        """Return every image enrolled under ``model_id``, in id order, with its person and chat.

        The chat is the one of the image's first original template.
        """
        validate_model_id(model_id)
        sql = (
            "SELECT images.id, images.sha256, images.path, "
            "(SELECT chat_id FROM templates WHERE templates.image_id = images.id AND kind = ? "
            f"ORDER BY templates.id LIMIT 1), {_PERSON_COLUMNS} "
            "FROM images JOIN people ON people.id = images.person_id "
            "WHERE images.model_id = ? AND images.status = 'enrolled' ORDER BY images.id"
        )

        async def read(connection: aiosqlite.Connection) -> list[StoredImage]:
            rows = await connection.execute_fetchall(sql, (ORIGINAL, model_id))
            return [StoredImage(row[0], _person_from_row(row[4:]), row[1], row[2], row[3]) for row in rows]

        return await self._read(read, action=f"list images of model {model_id}")

    async def iter_templates(self, model_id: str, *, batch_size: int = 65536) -> AsyncIterator[TemplateMatrix]:
        """Yield the templates of ``model_id`` in ascending id order, ``batch_size`` rows per batch.

        Each batch is one read, so writes from other coroutines may run between batches. A
        template enrolled meanwhile is yielded if its id is above the last one read.
        """
        validate_model_id(model_id)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        sql = (
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE templates.model_id = ? AND templates.id > ?"
            " ORDER BY templates.id LIMIT ?"
        )

        async def read(connection: aiosqlite.Connection, after: int) -> TemplateMatrix:
            rows = await connection.execute_fetchall(sql, (model_id, after, batch_size))
            return await self._matrix_from_rows(connection, rows, model_id)

        last_id = 0
        while True:
            batch = await self._read(
                partial(read, after=last_id), action=f"load templates of model {model_id} after id {last_id}"
            )
            if len(batch) == 0:
                return
            yield batch
            if len(batch) < batch_size:
                return
            last_id = int(batch.template_ids[-1])

    async def template_fingerprint(self, model_id: str) -> TemplateFingerprint:
        """Return the count, largest id and id sum of the templates of ``model_id``."""
        validate_model_id(model_id)

        async def read(connection: aiosqlite.Connection) -> TemplateFingerprint:
            cursor = await connection.execute(
                "SELECT count(*), coalesce(max(id), 0), coalesce(sum(id), 0) FROM templates WHERE model_id = ?",
                (model_id,),
            )
            count, max_id, id_sum = await cursor.fetchone()
            cursor = await connection.execute("SELECT created_at FROM templates WHERE id = ?", (max_id,))
            row = await cursor.fetchone()
            return TemplateFingerprint(
                count=count, max_id=max_id, id_sum=id_sum, last_created_at=None if row is None else row[0]
            )

        return await self._read(read, action=f"read the template fingerprint of model {model_id}")

    # Statistics and settings.

    async def enrolled_model_ids(self) -> list[str]:
        """Return the models with an enrolled image, as ``GalleryStore.enrolled_model_ids`` describes.

        Each step jumps to the next model id through the ``images_model_sha256`` index, so the
        cost grows with the number of models, not of images; :meth:`counts` scans every row.
        """

        async def read(connection: aiosqlite.Connection) -> list[str]:
            found: list[str] = []
            model_id = ""
            while True:
                rows = await connection.execute_fetchall(
                    "SELECT model_id FROM images WHERE model_id > ? ORDER BY model_id LIMIT 1", (model_id,)
                )
                if not rows:
                    return found
                model_id = rows[0][0]
                enrolled = await connection.execute_fetchall(
                    "SELECT 1 FROM images WHERE model_id = ? AND status = 'enrolled' LIMIT 1", (model_id,)
                )
                if enrolled:
                    found.append(model_id)

        return await self._read(read, action="list the models of enrolled images")

    async def counts(self) -> dict[str, Any]:
        """Count people, and images and templates per model id, as ``GalleryStore.counts`` describes."""

        async def read(connection: aiosqlite.Connection) -> dict[str, Any]:
            people = await _count(connection, "SELECT count(*) FROM people")
            models: dict[str, dict[str, int]] = {}

            def model_entry(model_id: str) -> dict[str, int]:
                return models.setdefault(
                    model_id, {"images": 0, "no_face_images": 0, "templates": 0, "synthetic_templates": 0}
                )

            image_rows = await connection.execute_fetchall(
                "SELECT model_id, status, count(*) FROM images GROUP BY model_id, status"
            )
            for model_id, status, count in image_rows:
                model_entry(model_id)["images" if status == "enrolled" else "no_face_images"] = count

            template_rows = await connection.execute_fetchall(
                "SELECT model_id, kind, count(*) FROM templates GROUP BY model_id, kind"
            )
            for model_id, kind, count in template_rows:
                entry = model_entry(model_id)
                entry["templates"] += count
                if kind == SYNTHETIC:
                    entry["synthetic_templates"] = count

            return {"people": people, "models": models}

        return await self._read(read, action="count rows")

    async def get_setting(self, key: str) -> str | None:
        """Return the value stored under ``key``, or None if it was never set."""
        _validate_setting_key(key)

        async def read(connection: aiosqlite.Connection) -> str | None:
            cursor = await connection.execute("SELECT value FROM settings WHERE key = ?", (key,))
            row = await cursor.fetchone()
            return None if row is None else row[0]

        return await self._read(read, action=f"read setting {key!r}")

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing an earlier value."""
        _validate_setting_key(key)
        if not isinstance(value, str):
            raise ValueError(f"setting {key!r} must be a string, got {type(value).__name__}; encode it first")

        async def write(connection: aiosqlite.Connection) -> None:
            await connection.execute(
                """
                INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
                """,
                (key, value, _now()),
            )

        await self._write(write, action=f"store setting {key!r}")
        logger.debug("Stored setting %r", key)

    async def delete_setting(self, key: str) -> bool:
        """Delete the value stored under ``key``; return False if there was none."""
        _validate_setting_key(key)

        async def write(connection: aiosqlite.Connection) -> bool:
            cursor = await connection.execute("DELETE FROM settings WHERE key = ?", (key,))
            return cursor.rowcount > 0

        deleted = await self._write(write, action=f"delete setting {key!r}")
        logger.debug("Deleted setting %r: %s", key, deleted)
        return deleted

    # Connection plumbing.

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None leaves transactions to the explicit BEGIN IMMEDIATE in _write.
        try:
            return await aiosqlite.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open gallery database {self._path}: {exc}; {_PATH_HINT}") from exc

    async def _configure(self, connection: aiosqlite.Connection) -> None:
        try:
            journal_mode = await self._enable_wal(connection)
            await connection.execute("PRAGMA foreign_keys = ON")
            cursor = await connection.execute("PRAGMA foreign_keys")
            foreign_keys = (await cursor.fetchone())[0]
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open gallery database {self._path}: {exc}; "
                f"check that it is a maskid gallery file or {_PATH_HINT}"
            ) from exc

        if journal_mode.lower() != "wal":
            logger.warning(
                "Gallery database %s uses journal mode %s because WAL is unavailable there; "
                "readers will wait for writers",
                self._path,
                journal_mode,
            )
        if foreign_keys != 1:
            raise StorageError(
                f"cannot open gallery database {self._path}: this SQLite build does not enforce foreign keys, "
                "which maskid needs to delete a person's templates with them"
            )

    async def _enable_wal(self, connection: aiosqlite.Connection) -> str:
        """Switch the file to WAL mode and return the journal mode in force.

        When several processes open a new file together, SQLite 3.40 sometimes returned
        "database is locked" for this switch at once, without waiting for the busy timeout.
        The switch is therefore retried until the busy timeout has passed.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                cursor = await connection.execute("PRAGMA journal_mode = WAL")
                return (await cursor.fetchone())[0]
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or time.monotonic() >= deadline:
                    raise
                logger.debug("Switching gallery database %s to WAL failed (%s); retrying", self._path, exc)
                await asyncio.sleep(_RETRY_DELAY_S)

    async def _migrate(self) -> int:
        """Apply pending migrations, one transaction each, and return the final schema version."""
        version, has_user_tables = await self._read(_fetch_schema_state, action="read the schema version")
        pending = schema.pending_migrations(version, self._path)
        if version == 0 and has_user_tables:
            raise StorageError(
                f"{self._path} is a SQLite database with tables but without a maskid schema version, "
                f"so it was not created by maskid; {_PATH_HINT}"
            )

        for migration in pending:
            applied = await self._write(
                partial(_apply_migration, migration=migration),
                action=f"migrate to schema version {migration.version}",
            )
            if applied:
                logger.info(
                    "Migrated gallery database %s to schema version %s (%s)",
                    self._path,
                    migration.version,
                    migration.description,
                )
            version = max(version, migration.version)

        return version

    def _require_connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with' or await open() first")
        return self._connection

    async def _read(self, operation: _Operation[_T], *, action: str) -> _T:
        """Run ``operation`` alone on the connection, turning SQLite errors into StorageError."""
        connection = self._require_connection()
        async with self._lock:
            try:
                return await operation(connection)
            except sqlite3.Error as exc:
                raise self._error(action, exc) from exc

    async def _write(self, operation: _Operation[_T], *, action: str) -> _T:
        """Run ``operation`` in a ``BEGIN IMMEDIATE`` transaction, retrying it while the database is locked.

        The transaction is rolled back when ``operation`` raises or the task is cancelled,
        and the exception propagates. SQLite errors become StorageError.
        """
        connection = self._require_connection()
        async with self._lock:
            for attempt in range(1, _MAX_WRITE_ATTEMPTS + 1):
                try:
                    return await _run_transaction(connection, operation)
                except sqlite3.OperationalError as exc:
                    if not _is_lock_error(exc):
                        raise self._error(action, exc) from exc
                    if attempt == _MAX_WRITE_ATTEMPTS:
                        raise StorageError(
                            f"failed to {action}: gallery database {self._path} stayed locked by another "
                            f"connection through {attempt} attempts of {self._busy_timeout_s:g} s each; "
                            "retry when the other maskid process has finished writing"
                        ) from exc
                    delay = _RETRY_DELAY_S * attempt
                    logger.warning(
                        "Attempt %s of %s to %s failed because gallery database %s is locked (%s); retrying in %.1f s",
                        attempt,
                        _MAX_WRITE_ATTEMPTS,
                        action,
                        self._path,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                except sqlite3.Error as exc:
                    raise self._error(action, exc) from exc

        raise AssertionError("unreachable: the loop returns or raises")

    def _error(self, action: str, exc: sqlite3.Error) -> StorageError:
        message = f"failed to {action} in gallery database {self._path}: {exc}"
        if _error_code(exc) in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            message += f"; make the file and its folder writable or {_PATH_HINT}"
        return StorageError(message)

    async def _fetch_person(self, connection: aiosqlite.Connection, person_id: int) -> Person:
        cursor = await connection.execute(f"SELECT {_PERSON_COLUMNS} FROM people WHERE id = ?", (int(person_id),))
        row = await cursor.fetchone()
        if row is None:
            raise PersonNotFoundError(f"no person with id {person_id} in gallery database {self._path}")
        return _person_from_row(row)

    async def _matrix_from_rows(
        self, connection: aiosqlite.Connection, rows: Iterable[Sequence[Any]], model_id: str
    ) -> TemplateMatrix:
        rows = list(rows)
        if not rows:
            return TemplateMatrix.empty(await _model_dim(connection, model_id))

        dims = {row[4] for row in rows}
        if len(dims) != 1:
            raise StorageError(
                f"templates of model {model_id!r} in {self._path} have different dimensions {sorted(dims)}; "
                "the gallery is inconsistent, so rebuild it for this model"
            )
        dim = dims.pop()

        # One join and one frombuffer instead of N small arrays. The result is read-only.
        packed = np.frombuffer(b"".join(row[5] for row in rows), dtype=_EMBEDDING_DTYPE)
        vectors = packed.astype(np.float32, copy=False).reshape(len(rows), dim)

        return TemplateMatrix(
            template_ids=np.array([row[0] for row in rows], dtype=np.int64),
            person_ids=np.array([row[1] for row in rows], dtype=np.int64),
            vectors=vectors,
            kinds=np.array([row[2] for row in rows], dtype=_KIND_DTYPE),
            chat_ids=np.array([ANY_CHAT if row[3] is None else row[3] for row in rows], dtype=np.int64),
            owner_ids=np.array([NO_OWNER if row[6] is None else row[6] for row in rows], dtype=np.int64),
        )


async def _run_transaction(connection: aiosqlite.Connection, operation: _Operation[_T]) -> _T:
    # BEGIN sits inside the try because a task cancelled while BEGIN waits for the lock
    # stops waiting, but BEGIN itself still runs on the connection's thread and may succeed.
    # The rollback is queued behind it on that thread, so it closes that transaction.
    try:
        await connection.execute("BEGIN IMMEDIATE")
        result = await operation(connection)
        await connection.commit()
    except BaseException:
        await _rollback(connection)
        raise
    return result


async def _rollback(connection: aiosqlite.Connection) -> None:
    # sqlite3's rollback() runs on the connection's thread and does nothing when no
    # transaction is open, so it is safe after a failed COMMIT too.
    try:
        await connection.rollback()
    except sqlite3.Error:
        logger.error("Rollback failed after an error in the transaction, which is raised next", exc_info=True)


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    return _error_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in str(exc)


def _error_code(exc: sqlite3.Error) -> int | None:
    """Return the primary SQLite result code of ``exc`` (extended codes keep it in the low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _check_location(path: Path) -> None:
    """Raise StorageError unless ``path`` can be a database file in a writable, existing folder."""
    folder = path.parent
    prefix = f"cannot open gallery database {path}"

    if not folder.exists():
        raise StorageError(f"{prefix}: folder {folder} does not exist; create it or {_PATH_HINT}")
    if not folder.is_dir():
        raise StorageError(f"{prefix}: {folder} is not a folder; {_PATH_HINT}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"{prefix}: folder {folder} is not writable, and SQLite creates {path.name}-wal and "
            f"{path.name}-shm files there; make it writable or {_PATH_HINT}"
        )
    if path.is_dir():
        raise StorageError(f"{prefix}: it is a folder, not a file; {_PATH_HINT}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"{prefix}: the file is not readable and writable; fix its permissions or {_PATH_HINT}")


async def _fetch_user_version(connection: aiosqlite.Connection) -> int:
    cursor = await connection.execute("PRAGMA user_version")
    return (await cursor.fetchone())[0]


async def _fetch_schema_state(connection: aiosqlite.Connection) -> tuple[int, bool]:
    """Return the schema version and whether any table or index exists.

    One statement reads both from one snapshot. Two separate reads could see version 0 and
    then the tables that another process's first migration committed in between, which
    looks like a database that maskid did not create.
    """
    cursor = await connection.execute(
        "SELECT (SELECT user_version FROM pragma_user_version),"
        " EXISTS (SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\')"
    )
    version, has_user_tables = await cursor.fetchone()
    return version, bool(has_user_tables)


async def _apply_migration(connection: aiosqlite.Connection, migration: schema.Migration) -> bool:
    """Apply ``migration`` inside the caller's transaction. Return False if another connection already did."""
    version = await _fetch_user_version(connection)
    if version >= migration.version:
        logger.debug("Schema version %s was already applied by another connection", migration.version)
        return False

    logger.debug("Applying migration %s: %s", migration.version, migration.description)
    for statement in migration.statements:
        await connection.execute(statement)
    await connection.execute(schema.user_version_statement(migration.version))
    return True


async def _count(connection: aiosqlite.Connection, sql: str, *parameters: Any) -> int:
    cursor = await connection.execute(sql, parameters)
    return (await cursor.fetchone())[0]


async def _model_dim(connection: aiosqlite.Connection, model_id: str) -> int:
    """Return the dimension of one stored template of ``model_id``, or 0 if it has none."""
    cursor = await connection.execute("SELECT dim FROM templates WHERE model_id = ? LIMIT 1", (model_id,))
    row = await cursor.fetchone()
    return 0 if row is None else row[0]


async def _get_or_create_person(
    connection: aiosqlite.Connection, name: str, source: str, owner_id: int | None, now: str
) -> tuple[int, bool]:
    """Return ``(person_id, created)``. BEGIN IMMEDIATE makes the lookup and the insert atomic."""
    owner = None if owner_id is None else int(owner_id)
    cursor = await connection.execute(
        "SELECT id FROM people WHERE name = ? AND source = ? AND COALESCE(owner_id, -1) = COALESCE(?, -1)",
        (name, source, owner),
    )
    row = await cursor.fetchone()
    if row is not None:
        await connection.execute("UPDATE people SET updated_at = ? WHERE id = ?", (now, row[0]))
        return row[0], False

    cursor = await connection.execute(
        "INSERT INTO people (name, source, owner_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (name, source, owner, now, now),
    )
    return cursor.lastrowid, True


async def _insert_image(
    connection: aiosqlite.Connection,
    image: ImageRecord,
    *,
    model_id: str,
    person_id: int | None,
    faces_found: int,
    now: str,
) -> int:
    """Insert an image row: status 'enrolled' with a person, 'no_face' without one."""
    status = "no_face" if person_id is None else "enrolled"
    cursor = await connection.execute(
        """
        INSERT INTO images (person_id, model_id, sha256, path, width, height, status, faces_found, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (
            person_id,
            model_id,
            image.sha256,
            None if image.path is None else str(image.path),
            int(image.width),
            int(image.height),
            status,
            faces_found,
            now,
        ),
    )
    return cursor.lastrowid


async def _insert_templates(
    connection: aiosqlite.Connection,
    templates: Sequence[NewTemplate],
    *,
    person_id: int,
    image_id: int,
    model_id: str,
    owner_id: int | None,
    chat_id: int | None,
    now: str,
) -> tuple[int, ...]:
    """Insert ``templates`` in order and return their ids, resolving ``parent_index`` to a row id."""
    template_ids: list[int] = []

    for template in templates:
        parent_id = None if template.parent_index is None else template_ids[template.parent_index]
        x1, y1, x2, y2 = (float(value) for value in template.box)
        cursor = await connection.execute(
            """
            INSERT INTO templates (
                person_id, image_id, parent_id, model_id, kind, embedding, dim,
                box_x1, box_y1, box_x2, box_y2, detection_probability, owner_id, chat_id, created_at
            ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                person_id,
                image_id,
                parent_id,
                model_id,
                template.kind,
                template.embedding.astype(_EMBEDDING_DTYPE, copy=False).tobytes(),
                template.embedding.shape[0],
                x1,
                y1,
                x2,
                y2,
                float(template.detection_probability),
                None if owner_id is None else int(owner_id),
                None if chat_id is None else int(chat_id),
                now,
            ),
        )
        template_ids.append(cursor.lastrowid)

    return tuple(template_ids)


def _validate_kinds(kinds: Collection[str] | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a collection of kinds such as {{'original'}}, got the string {kinds!r}")

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"kinds must be a subset of {KINDS}, got unknown kinds {unknown}")
    return tuple(sorted(set(kinds)))


def _validate_setting_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"setting key must be a non-empty string, got {key!r}")


def _person_from_row(row: Sequence[Any]) -> Person:
    """Build a Person from the first six columns of a row selected with ``_PERSON_COLUMNS``."""
    person_id, name, source, owner_id, created_at, updated_at = row[:6]
    return Person(
        id=person_id,
        name=name,
        source=source,
        owner_id=owner_id,
        created_at=datetime.fromisoformat(created_at),
        updated_at=datetime.fromisoformat(updated_at),
    )


def _now() -> str:
    """Return the current time as ISO-8601 UTC text with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")
