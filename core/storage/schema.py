"""Schema of the SQLite gallery as numbered forward migrations.

The database stores the number of the last applied migration in ``PRAGMA user_version``
(0 for a new file). Opening a store applies every later migration in order, each in its
own transaction, so an interrupted upgrade resumes at the first step that did not commit.
A released migration is never edited: a schema change is a new step at the end of
:data:`MIGRATIONS`.

Conventions: timestamps are ISO-8601 UTC text, embeddings are float32 little-endian
BLOBs of ``dim`` values, and ids use AUTOINCREMENT so that the id of a deleted person,
image or template is never reused while a matcher may still cache it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from core.errors import StorageError


@dataclass(frozen=True)
class Migration:
    """One schema step: running ``statements`` turns version ``version - 1`` into ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


_V1_TABLES = (
    """
    CREATE TABLE people (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('dataset', 'cli', 'telegram')),
        owner_id INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    # Telegram user ids are positive, so -1 stands for "no owner" without colliding.
    "CREATE UNIQUE INDEX people_name_source_owner ON people (name, source, COALESCE(owner_id, -1))",
    """
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        person_id INTEGER REFERENCES people (id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        path TEXT,
        width INTEGER NOT NULL CHECK (width > 0),
        height INTEGER NOT NULL CHECK (height > 0),
        status TEXT NOT NULL CHECK (status IN ('enrolled', 'no_face')),
        faces_found INTEGER NOT NULL CHECK (faces_found >= 0),
        created_at TEXT NOT NULL,
        CHECK ((status = 'enrolled') = (person_id IS NOT NULL))
    )
    """,
    "CREATE INDEX images_model_sha256 ON images (model_id, sha256)",
    "CREATE INDEX images_person ON images (person_id)",
    """
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        person_id INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        parent_id INTEGER REFERENCES templates (id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('original', 'synthetic')),
        embedding BLOB NOT NULL,
        dim INTEGER NOT NULL CHECK (dim > 0),
        box_x1 REAL,
        box_y1 REAL,
        box_x2 REAL,
        box_y2 REAL,
        detection_probability REAL,
        owner_id INTEGER,
        chat_id INTEGER,
        created_at TEXT NOT NULL,
        CHECK (length(embedding) = 4 * dim)
    )
    """,
    "CREATE INDEX templates_model_kind ON templates (model_id, kind)",
    "CREATE INDEX templates_person ON templates (person_id)",
    # Without these two, every cascading delete scans the whole templates table.
    "CREATE INDEX templates_image ON templates (image_id)",
    "CREATE INDEX templates_parent ON templates (parent_id)",
)

_V2_SETTINGS = (
    """
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
)

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "people, images and templates", _V1_TABLES),
    Migration(2, "settings key/value table", _V2_SETTINGS),
)

SCHEMA_VERSION: Final = MIGRATIONS[-1].version


def pending_migrations(current_version: int, path: Path) -> tuple[Migration, ...]:
    """Return the migrations that bring a database at ``current_version`` to :data:`SCHEMA_VERSION`.

    Raises:
        StorageError: ``current_version`` is newer than this code supports.
    """
    if current_version > SCHEMA_VERSION:
        raise StorageError(
            f"gallery database {path} has schema version {current_version}, but this maskid "
            f"supports versions up to {SCHEMA_VERSION}; upgrade maskid to open it, "
            "or choose another database file with --db or MASKID_DB"
        )
    return tuple(migration for migration in MIGRATIONS if migration.version > current_version)


def user_version_statement(version: int) -> str:
    """Return the SQL that records ``version`` in the database header.

    PRAGMA values cannot be bound as parameters, so the int is formatted into the text.
    ``int()`` rejects anything that is not a number.
    """
    return f"PRAGMA user_version = {int(version)}"
