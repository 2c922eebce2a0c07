"""Gallery storage: people, their images and face templates, in SQLite.

Code outside this package depends on :class:`GalleryStore` and the records, and creates
a :class:`SqliteGalleryStore` only where the database is chosen::

    async with SqliteGalleryStore.from_settings(settings) as store:
        matrix = await store.load_templates("facenet-vggface2")
"""

from core.storage.base import GalleryStore
from core.storage.records import (
    ANY_CHAT,
    KINDS,
    NO_OWNER,
    ORIGINAL,
    SOURCES,
    SYNTHETIC,
    Enrollment,
    ImageRecord,
    NewTemplate,
    Person,
    PersonSummary,
    RemovedPerson,
    Source,
    StoredImage,
    TemplateFingerprint,
    TemplateKind,
    TemplateMatrix,
)
from core.storage.schema import SCHEMA_VERSION
from core.storage.sqlite import DEFAULT_BUSY_TIMEOUT_S, SqliteGalleryStore

__all__ = [
    "ANY_CHAT",
    "DEFAULT_BUSY_TIMEOUT_S",
    "KINDS",
    "NO_OWNER",
    "ORIGINAL",
    "SCHEMA_VERSION",
    "SOURCES",
    "SYNTHETIC",
    "Enrollment",
    "GalleryStore",
    "ImageRecord",
    "NewTemplate",
    "Person",
    "PersonSummary",
    "RemovedPerson",
    "Source",
    "SqliteGalleryStore",
    "StoredImage",
    "TemplateFingerprint",
    "TemplateKind",
    "TemplateMatrix",
]
