"""Tests of the SQLite gallery store against real database files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import PersonNotFoundError, StorageError
from core.settings import Settings
from core.storage import (
    ANY_CHAT,
    SCHEMA_VERSION,
    GalleryStore,
    ImageRecord,
    NewTemplate,
    SqliteGalleryStore,
    TemplateMatrix,
)
from core.storage.schema import MIGRATIONS

MODEL = "facenet-test"
OTHER_MODEL = "arcface-test"
DIM = 8


def embedding(seed: int, dim: int = DIM) -> np.ndarray:
    """Return a float32 vector whose first entries are bit patterns a lossy round trip would change."""
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    vector[0] = -0.0
    vector[1] = np.finfo(np.float32).smallest_subnormal
    return vector


def image(number: int) -> ImageRecord:
    return ImageRecord(
        sha256=hashlib.sha256(str(number).encode()).hexdigest(),
        path=f"/photos/{number}.jpg",
        width=640,
        height=480,
    )


def original(seed: int, dim: int = DIM) -> NewTemplate:
    return NewTemplate(embedding=embedding(seed, dim), box=(10.0, 20.0, 110.0, 140.0), detection_probability=0.99)


def synthetic(seed: int, parent_index: int = 0, dim: int = DIM) -> NewTemplate:
    return NewTemplate(
        embedding=embedding(seed, dim),
        box=(10.0, 20.0, 110.0, 140.0),
        detection_probability=0.99,
        kind="synthetic",
        parent_index=parent_index,
    )


def query(path: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    """Run ``sql`` on a separate plain sqlite3 connection with foreign keys on."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        rows = connection.execute(sql, parameters).fetchall()
        connection.commit()
        return rows


def row_counts(path: Path) -> dict[str, int]:
    return {table: query(path, f"SELECT count(*) FROM {table}")[0][0] for table in ("people", "images", "templates")}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gallery.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteGalleryStore]:
    async with SqliteGalleryStore(db_path) as opened:
        yield opened


async def enroll(store: SqliteGalleryStore, name: str, number: int, *, model_id: str = MODEL, **kwargs):
    """Enroll image ``number`` of ``name`` with one original and one synthetic template."""
    return await store.enroll(
        person_name=name,
        source="cli",
        model_id=model_id,
        image=image(number),
        templates=[original(2 * number), synthetic(2 * number + 1)],
        **kwargs,
    )


# Enrollment.


async def test_enroll_round_trip_is_bit_exact(store: SqliteGalleryStore) -> None:
    templates = [original(1), original(2), synthetic(3, parent_index=0), synthetic(4, parent_index=1)]

    enrollment = await store.enroll(
        person_name="Alice", source="cli", model_id=MODEL, image=image(1), templates=templates
    )
    matrix = await store.load_templates(MODEL)

    assert enrollment.created_person
    assert len(enrollment.template_ids) == 4
    assert matrix.vectors.dtype == np.float32
    assert matrix.vectors.shape == (4, DIM)
    assert matrix.vectors.tobytes() == b"".join(template.embedding.tobytes() for template in templates)
    assert matrix.template_ids.tolist() == list(enrollment.template_ids)
    assert matrix.person_ids.tolist() == [enrollment.person_id] * 4
    assert matrix.kinds.tolist() == ["original", "original", "synthetic", "synthetic"]
    assert matrix.chat_ids.tolist() == [ANY_CHAT] * 4


async def test_enroll_stores_image_and_template_fields(store: SqliteGalleryStore, db_path: Path) -> None:
    templates = [original(1), original(2), synthetic(3, parent_index=1)]

    enrollment = await store.enroll(
        person_name="Bob",
        source="telegram",
        model_id=MODEL,
        image=image(7),
        templates=templates,
        owner_id=1234,
        chat_id=-100555,
    )

    images = query(db_path, "SELECT person_id, sha256, path, width, height, status, faces_found FROM images")
    assert images == [(enrollment.person_id, image(7).sha256, "/photos/7.jpg", 640, 480, "enrolled", 2)]
    rows = query(
        db_path,
        "SELECT image_id, box_x1, box_y1, box_x2, box_y2, detection_probability, owner_id, chat_id, dim "
        "FROM templates ORDER BY id",
    )
    assert rows == [(enrollment.image_id, 10.0, 20.0, 110.0, 140.0, 0.99, 1234, -100555, DIM)] * 3
    matrix = await store.load_templates(MODEL)
    assert matrix.chat_ids.tolist() == [-100555] * 3
    assert matrix.visible_in(-100555).all()
    assert not matrix.visible_in(-1).any()


async def test_enroll_reuses_person(store: SqliteGalleryStore) -> None:
    first = await enroll(store, "Alice", 1)
    second = await enroll(store, "Alice", 2)
    person = await store.get_person(first.person_id)

    assert first.created_person
    assert not second.created_person
    assert second.person_id == first.person_id
    assert second.image_id != first.image_id
    assert person.updated_at > person.created_at


async def test_enroll_same_image_twice_writes_once(store: SqliteGalleryStore, db_path: Path) -> None:
    first = await enroll(store, "Alice", 1)
    again = await enroll(store, "Alice", 1)
    other_person = await enroll(store, "Bob", 1)

    assert again.already_enrolled
    assert again.image_id == first.image_id
    assert again.template_ids == ()
    assert not other_person.already_enrolled
    assert row_counts(db_path)["templates"] == 4


async def test_people_with_image_lists_owners(store: SqliteGalleryStore) -> None:
    alice = await enroll(store, "Alice", 1)
    bob = await enroll(store, "Bob", 1)
    await enroll(store, "Carol", 2)

    owners = await store.people_with_image(MODEL, image(1).sha256)

    assert [person.id for person in owners] == [alice.person_id, bob.person_id]
    assert await store.people_with_image("other-model", image(1).sha256) == []


async def test_enroll_separates_people_by_source_and_owner(store: SqliteGalleryStore) -> None:
    cli = await enroll(store, "Alice", 1)
    owned = await enroll(store, "Alice", 2, owner_id=42)
    other_owner = await enroll(store, "Alice", 3, owner_id=43)
    owned_again = await enroll(store, "Alice", 4, owner_id=42)
    dataset = await store.enroll(
        person_name="Alice", source="dataset", model_id=MODEL, image=image(5), templates=[original(5)]
    )

    assert len({cli.person_id, owned.person_id, other_owner.person_id, dataset.person_id}) == 4
    assert owned_again.person_id == owned.person_id
    assert [person.id for person in await store.find_people("Alice", owner_id=42)] == [owned.person_id]
    assert [person.id for person in await store.find_people("Alice", source="dataset")] == [dataset.person_id]
    assert len(await store.find_people("Alice")) == 4
    assert await store.find_people("alice") == []


async def test_synthetic_template_links_to_parent(store: SqliteGalleryStore, db_path: Path) -> None:
    enrollment = await store.enroll(
        person_name="Alice",
        source="cli",
        model_id=MODEL,
        image=image(1),
        templates=[original(1), original(2), synthetic(3, parent_index=1)],
    )
    first_id, second_id, synthetic_id = enrollment.template_ids

    rows = query(db_path, "SELECT id, parent_id, kind FROM templates ORDER BY id")

    assert rows == [(first_id, None, "original"), (second_id, None, "original"), (synthetic_id, second_id, "synthetic")]


async def test_synthetic_template_deleted_with_parent(store: SqliteGalleryStore, db_path: Path) -> None:
    enrollment = await store.enroll(
        person_name="Alice",
        source="cli",
        model_id=MODEL,
        image=image(1),
        templates=[original(1), original(2), synthetic(3, parent_index=1)],
    )
    first_id, second_id, _ = enrollment.template_ids

    query(db_path, "DELETE FROM templates WHERE id = ?", (second_id,))

    assert (await store.load_templates(MODEL)).template_ids.tolist() == [first_id]


async def test_synthetic_template_deleted_with_person(store: SqliteGalleryStore) -> None:
    enrollment = await enroll(store, "Alice", 1)

    await store.remove_person(enrollment.person_id)

    assert len(await store.load_templates(MODEL, kinds={"synthetic"})) == 0


# Failed enrollment leaves nothing behind.


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        pytest.param([], "at least one template", id="empty"),
        pytest.param(
            [original(1), NewTemplate(embedding(2).astype(np.float64), (0, 0, 1, 1), 0.9)],
            r"templates\[1\].embedding must have dtype float32, got float64",
            id="float64",
        ),
        pytest.param(
            [original(1), NewTemplate(np.full(DIM, np.nan, dtype=np.float32), (0, 0, 1, 1), 0.9)],
            r"templates\[1\].embedding contains NaN",
            id="nan",
        ),
        pytest.param(
            [original(1), NewTemplate(np.ones((2, DIM), dtype=np.float32), (0, 0, 1, 1), 0.9)],
            r"templates\[1\].embedding must have shape \(D,\)",
            id="two-dimensional",
        ),
        pytest.param(
            [original(1), NewTemplate([0.0] * DIM, (0, 0, 1, 1), 0.9)],
            r"templates\[1\].embedding must be a numpy array, got list",
            id="list",
        ),
        pytest.param(
            [original(1), original(2, dim=DIM + 1)], r"templates\[1\].embedding has 9 values", id="mixed-dims"
        ),
        pytest.param(
            [original(1), NewTemplate(embedding(2), (0, 0, float("inf"), 1), 0.9)], r"templates\[1\].box", id="box-inf"
        ),
        pytest.param([original(1), NewTemplate(embedding(2), (5, 0, 1, 1), 0.9)], "x1 <= x2", id="box-order"),
        pytest.param(
            [original(1), NewTemplate(embedding(2), (0, 0, 1, 1), 1.5)], "detection_probability", id="probability"
        ),
        pytest.param([original(1), synthetic(2, parent_index=1)], "parent_index must be the index", id="parent-self"),
        pytest.param([synthetic(2, parent_index=0)], "parent_index must be the index", id="synthetic-only"),
        pytest.param(
            [original(1), synthetic(2, parent_index=0), synthetic(3, parent_index=1)],
            "points at a synthetic template",
            id="parent-synthetic",
        ),
        pytest.param(
            [original(1), NewTemplate(embedding(2), (0, 0, 1, 1), 0.9, parent_index=0)],
            "original template, so parent_index must be None",
            id="original-with-parent",
        ),
        pytest.param([NewTemplate(embedding(2), (0, 0, 1, 1), 0.9, kind="masked")], "kind must be one of", id="kind"),
    ],
)
async def test_enroll_rejects_invalid_template(
    store: SqliteGalleryStore, db_path: Path, templates: list[NewTemplate], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await store.enroll(person_name="Alice", source="cli", model_id=MODEL, image=image(1), templates=templates)

    assert row_counts(db_path) == {"people": 0, "images": 0, "templates": 0}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"person_name": "  "}, "person name must be a non-empty string", id="blank-name"),
        pytest.param({"person_name": "x" * 201}, "at most 200 characters", id="long-name"),
        pytest.param({"source": "web"}, "source must be one of", id="source"),
        pytest.param({"model_id": ""}, "model_id must be a non-empty string", id="model-id"),
        pytest.param({"chat_id": 0}, "chat_id must be None", id="chat-id-zero"),
        pytest.param({"image": ImageRecord("ABC", None, 1, 1)}, "sha256 must be 64 lowercase hex", id="sha256"),
        pytest.param({"image": ImageRecord("a" * 64, None, 0, 1)}, "width must be a positive int", id="width"),
    ],
)
async def test_enroll_rejects_invalid_argument(
    store: SqliteGalleryStore, db_path: Path, arguments: dict, message: str
) -> None:
    call = {"person_name": "Alice", "source": "cli", "model_id": MODEL, "image": image(1), "templates": [original(1)]}

    with pytest.raises(ValueError, match=message):
        await store.enroll(**(call | arguments))

    assert row_counts(db_path) == {"people": 0, "images": 0, "templates": 0}


async def test_enroll_failing_midway_writes_nothing(store: SqliteGalleryStore, db_path: Path) -> None:
    # The trigger makes SQLite itself reject the second template row, after the person,
    # the image and the first template were inserted in the same transaction.
    query(
        db_path,
        "CREATE TRIGGER reject_second_template BEFORE INSERT ON templates "
        "WHEN (SELECT count(*) FROM templates WHERE image_id = NEW.image_id) = 1 "
        "BEGIN SELECT RAISE(ABORT, 'second template rejected by test trigger'); END",
    )

    with pytest.raises(StorageError, match="second template rejected by test trigger"):
        await enroll(store, "Alice", 1)

    assert row_counts(db_path) == {"people": 0, "images": 0, "templates": 0}
    query(db_path, "DROP TRIGGER reject_second_template")
    assert (await enroll(store, "Alice", 2)).created_person


# Removal.


async def test_remove_person_cascades_and_counts(store: SqliteGalleryStore, db_path: Path) -> None:
    alice = await enroll(store, "Alice", 1)
    await enroll(store, "Alice", 2)
    await enroll(store, "Alice", 3, model_id=OTHER_MODEL)
    bob = await enroll(store, "Bob", 4)

    removed = await store.remove_person(alice.person_id)

    assert removed.person.name == "Alice"
    assert removed.image_count == 3
    assert removed.template_count == 6
    assert row_counts(db_path) == {"people": 1, "images": 1, "templates": 2}
    assert set((await store.load_templates(MODEL)).person_ids.tolist()) == {bob.person_id}
    assert len(await store.load_templates(OTHER_MODEL)) == 0


@pytest.mark.parametrize("method", ["get_person", "remove_person", "templates_for_person"])
async def test_unknown_person_id_raises(store: SqliteGalleryStore, method: str) -> None:
    await enroll(store, "Alice", 1)
    arguments = (999, MODEL) if method == "templates_for_person" else (999,)

    with pytest.raises(PersonNotFoundError, match="no person with id 999"):
        await getattr(store, method)(*arguments)


# Lookups.


async def test_known_image_hashes_include_no_face_images(store: SqliteGalleryStore) -> None:
    await enroll(store, "Alice", 1)
    no_face_id = await store.record_no_face(model_id=MODEL, image=image(2), faces_found=1)
    await store.record_no_face(model_id=OTHER_MODEL, image=image(3))

    assert await store.known_image_hashes(MODEL) == {image(1).sha256, image(2).sha256}
    assert await store.known_image_hashes(OTHER_MODEL) == {image(3).sha256}
    assert await store.known_image_hashes("unknown-model") == set()
    assert await store.record_no_face(model_id=MODEL, image=image(2)) == no_face_id


async def test_record_no_face_stores_row(store: SqliteGalleryStore, db_path: Path) -> None:
    await store.record_no_face(model_id=MODEL, image=image(2), faces_found=3)

    rows = query(db_path, "SELECT person_id, model_id, status, faces_found FROM images")

    assert rows == [(None, MODEL, "no_face", 3)]
    assert (await store.counts())["models"][MODEL]["no_face_images"] == 1


async def test_load_templates_filters_by_model_and_kind(store: SqliteGalleryStore) -> None:
    facenet = await enroll(store, "Alice", 1)
    other = await store.enroll(
        person_name="Alice",
        source="cli",
        model_id=OTHER_MODEL,
        image=image(1),
        templates=[original(10, dim=16), synthetic(11, dim=16)],
    )

    everything = await store.load_templates(MODEL)
    originals = await store.load_templates(MODEL, kinds={"original"})
    synthetics = await store.load_templates(MODEL, kinds=["synthetic"])
    other_models = await store.load_templates(OTHER_MODEL, kinds=("original", "synthetic"))

    assert everything.template_ids.tolist() == list(facenet.template_ids)
    assert originals.template_ids.tolist() == [facenet.template_ids[0]]
    assert originals.kinds.tolist() == ["original"]
    assert synthetics.template_ids.tolist() == [facenet.template_ids[1]]
    assert other_models.template_ids.tolist() == list(other.template_ids)
    assert other_models.vectors.shape == (2, 16)


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        pytest.param({"masked"}, "unknown kinds", id="unknown"),
        pytest.param("original", "got the string", id="string"),
    ],
)
async def test_load_templates_rejects_invalid_kinds(store: SqliteGalleryStore, kinds: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await store.load_templates(MODEL, kinds=kinds)


async def test_empty_gallery_returns_typed_empty_arrays(store: SqliteGalleryStore) -> None:
    matrix = await store.load_templates(MODEL)

    assert len(matrix) == 0
    assert matrix.vectors.shape == (0, 0)
    assert matrix.vectors.dtype == np.float32
    assert matrix.template_ids.dtype == np.int64
    assert matrix.person_ids.dtype == np.int64
    assert matrix.chat_ids.dtype == np.int64
    assert matrix.kinds.shape == (0,)
    assert matrix.kinds.dtype.kind == "U"


async def test_empty_selection_keeps_model_dim(store: SqliteGalleryStore) -> None:
    await store.enroll(person_name="Alice", source="cli", model_id=MODEL, image=image(1), templates=[original(1)])

    no_synthetic = await store.load_templates(MODEL, kinds={"synthetic"})
    no_kinds = await store.load_templates(MODEL, kinds=set())

    assert no_synthetic.vectors.shape == (0, DIM)
    assert no_kinds.vectors.shape == (0, DIM)


async def test_template_matrix_is_read_only(store: SqliteGalleryStore) -> None:
    await enroll(store, "Alice", 1)
    matrix = await store.load_templates(MODEL)

    with pytest.raises(ValueError, match="read-only"):
        matrix.vectors[0, 0] = 1.0


def test_template_matrix_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="person_ids has 2 rows, expected 1"):
        TemplateMatrix(
            template_ids=np.zeros(1, dtype=np.int64),
            person_ids=np.zeros(2, dtype=np.int64),
            vectors=np.zeros((1, DIM), dtype=np.float32),
            kinds=np.array(["original"]),
            chat_ids=np.zeros(1, dtype=np.int64),
            owner_ids=np.zeros(1, dtype=np.int64),
        )


async def test_templates_for_person(store: SqliteGalleryStore) -> None:
    alice = await enroll(store, "Alice", 1)
    await enroll(store, "Bob", 2)
    await enroll(store, "Alice", 3, model_id=OTHER_MODEL)

    matrix = await store.templates_for_person(alice.person_id, MODEL)
    nothing = await store.templates_for_person(alice.person_id, "unknown-model")

    assert matrix.template_ids.tolist() == list(alice.template_ids)
    assert nothing.vectors.shape == (0, 0)


async def test_people_by_ids_skips_unknown_ids(store: SqliteGalleryStore) -> None:
    alice = await enroll(store, "Alice", 1)
    bob = await enroll(store, "Bob", 2)

    # More ids than one IN (...) query takes, so the lookup is split into chunks.
    people = await store.people_by_ids([bob.person_id, *range(1000, 2200), alice.person_id, alice.person_id])

    assert sorted(people) == sorted([alice.person_id, bob.person_id])
    assert people[bob.person_id].name == "Bob"
    assert await store.people_by_ids([]) == {}


async def test_list_people_sorted_with_counts(store: SqliteGalleryStore) -> None:
    await enroll(store, "bob", 1)
    await enroll(store, "Alice", 2)
    await enroll(store, "Alice", 3)
    await store.enroll(
        person_name="Carol", source="dataset", model_id=OTHER_MODEL, image=image(4), templates=[original(4)]
    )

    summaries = await store.list_people()
    facenet_only = await store.list_people(model_id=MODEL)

    assert [summary.person.name for summary in summaries] == ["Alice", "bob", "Carol"]
    assert [(s.image_count, s.template_count, s.synthetic_count) for s in summaries] == [
        (2, 4, 2),
        (1, 2, 1),
        (1, 1, 0),
    ]
    assert [summary.person.name for summary in facenet_only] == ["Alice", "bob"]


async def test_list_people_counts_only_requested_model(store: SqliteGalleryStore) -> None:
    await enroll(store, "Alice", 1)
    await enroll(store, "Alice", 2, model_id=OTHER_MODEL)

    (summary,) = await store.list_people(model_id=OTHER_MODEL)

    assert (summary.image_count, summary.template_count, summary.synthetic_count) == (1, 2, 1)


async def test_counts_per_model(store: SqliteGalleryStore) -> None:
    await enroll(store, "Alice", 1)
    await enroll(store, "Bob", 2)
    await store.enroll(person_name="Bob", source="cli", model_id=OTHER_MODEL, image=image(2), templates=[original(2)])
    await store.record_no_face(model_id=MODEL, image=image(3))

    counts = await store.counts()

    assert counts == {
        "people": 2,
        "models": {
            MODEL: {"images": 2, "no_face_images": 1, "templates": 4, "synthetic_templates": 2},
            OTHER_MODEL: {"images": 1, "no_face_images": 0, "templates": 1, "synthetic_templates": 0},
        },
    }


async def test_enrolled_model_ids_skip_no_face_models(store: SqliteGalleryStore) -> None:
    await enroll(store, "Alice", 1)
    await store.enroll(person_name="Bob", source="cli", model_id=OTHER_MODEL, image=image(2), templates=[original(2)])
    await store.record_no_face(model_id="no-face-model", image=image(3))

    assert await store.enrolled_model_ids() == sorted([MODEL, OTHER_MODEL])


async def test_settings_round_trip(store: SqliteGalleryStore) -> None:
    assert await store.get_setting("threshold") is None

    await store.set_setting("threshold", "0.45")
    await store.set_setting("threshold", "0.52")

    assert await store.get_setting("threshold") == "0.52"
    with pytest.raises(ValueError, match="must be a string"):
        await store.set_setting("threshold", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="setting key"):
        await store.get_setting("")


# Opening, configuration and migrations.


async def test_connection_uses_wal_and_foreign_keys(store: SqliteGalleryStore, db_path: Path) -> None:
    # foreign_keys and busy_timeout are per connection, so they are read on the store's own one.
    connection = store._connection
    assert connection is not None

    async def pragma(name: str):
        cursor = await connection.execute(f"PRAGMA {name}")
        return (await cursor.fetchone())[0]

    assert await pragma("journal_mode") == "wal"
    assert await pragma("foreign_keys") == 1
    assert await pragma("busy_timeout") == 30_000
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_store_satisfies_protocol(store: SqliteGalleryStore) -> None:
    assert isinstance(store, GalleryStore)


def test_migrations_are_numbered_from_one() -> None:
    assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


async def test_migration_from_v1_keeps_rows(db_path: Path) -> None:
    vector = embedding(5)
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        for statement in MIGRATIONS[0].statements:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
        now = "2024-01-01T00:00:00+00:00"
        connection.execute("INSERT INTO people VALUES (1, 'Alice', 'cli', NULL, ?, ?)", (now, now))
        connection.execute(
            "INSERT INTO images VALUES (1, 1, ?, ?, NULL, 640, 480, 'enrolled', 1, ?)", (MODEL, image(1).sha256, now)
        )
        connection.execute(
            "INSERT INTO templates (id, person_id, image_id, model_id, kind, embedding, dim, created_at) "
            "VALUES (1, 1, 1, ?, 'original', ?, ?, ?)",
            (MODEL, vector.tobytes(), DIM, now),
        )
        connection.commit()

    async with SqliteGalleryStore(db_path) as store:
        person = await store.get_person(1)
        matrix = await store.load_templates(MODEL)
        await store.set_setting("threshold", "0.5")
        threshold = await store.get_setting("threshold")

    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert person.name == "Alice"
    assert matrix.vectors.tobytes() == vector.tobytes()
    assert threshold == "0.5"


async def test_migration_logs_each_step(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="core.storage.sqlite"):
        async with SqliteGalleryStore(db_path):
            pass
        async with SqliteGalleryStore(db_path):
            pass

    migrated = [record for record in caplog.records if record.getMessage().startswith("Migrated")]
    assert len(migrated) == SCHEMA_VERSION
    assert str(db_path) in migrated[0].getMessage()


async def test_newer_schema_version_raises(db_path: Path) -> None:
    async with SqliteGalleryStore(db_path):
        pass
    query(db_path, f"PRAGMA user_version = {SCHEMA_VERSION + 5}")

    with pytest.raises(StorageError) as raised:
        await SqliteGalleryStore(db_path).open()

    message = str(raised.value)
    assert f"schema version {SCHEMA_VERSION + 5}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert "upgrade maskid" in message
    assert str(db_path) in message


async def test_missing_folder_raises(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "gallery.sqlite3"

    with pytest.raises(
        StorageError, match="does not exist; create it or choose another file with --db or MASKID_DB"
    ) as raised:
        await SqliteGalleryStore(path).open()

    assert str(path) in str(raised.value)
    assert not path.parent.exists()


async def test_path_under_a_file_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")

    with pytest.raises(StorageError, match="is not a folder; choose another file with --db or MASKID_DB"):
        await SqliteGalleryStore(blocker / "gallery.sqlite3").open()


async def test_path_that_is_a_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="it is a folder, not a file"):
        await SqliteGalleryStore(tmp_path).open()


async def test_read_only_folder_raises(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write to a 0o555 folder (running as root)")

        with pytest.raises(StorageError, match="is not writable") as raised:
            await SqliteGalleryStore(folder / "gallery.sqlite3").open()

        assert "MASKID_DB" in str(raised.value)
    finally:
        folder.chmod(0o755)


async def test_file_that_is_not_sqlite_raises(db_path: Path) -> None:
    db_path.write_bytes(b"this is a text file, not a SQLite database" * 100)

    with pytest.raises(StorageError, match="file is not a database") as raised:
        await SqliteGalleryStore(db_path).open()

    assert str(db_path) in str(raised.value)


async def test_foreign_sqlite_database_raises(db_path: Path) -> None:
    query(db_path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")

    with pytest.raises(StorageError, match="not created by maskid"):
        await SqliteGalleryStore(db_path).open()


async def test_closed_store_raises(db_path: Path) -> None:
    store = SqliteGalleryStore(db_path)

    with pytest.raises(RuntimeError, match="is not open"):
        await store.load_templates(MODEL)

    await store.open()
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(RuntimeError, match="is not open"):
        await store.get_setting("threshold")


def test_from_settings_uses_db_path(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "configured.sqlite3")

    assert SqliteGalleryStore.from_settings(settings).path == tmp_path / "configured.sqlite3"


def test_invalid_busy_timeout_raises(db_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_s must be a positive number"):
        SqliteGalleryStore(db_path, busy_timeout_s=0)


# Concurrency and locking.


async def test_concurrent_writers_lose_nothing(db_path: Path) -> None:
    names = [f"person-{number % 7}" for number in range(40)]

    async with SqliteGalleryStore(db_path) as first, SqliteGalleryStore(db_path) as second:
        enrollments = await asyncio.gather(
            *(enroll(first if number % 2 else second, names[number], number) for number in range(40))
        )
        matrix = await first.load_templates(MODEL)

    assert len({enrollment.image_id for enrollment in enrollments}) == 40
    assert sum(enrollment.created_person for enrollment in enrollments) == 7
    assert row_counts(db_path) == {"people": 7, "images": 40, "templates": 80}
    assert len(matrix) == 80


async def test_locked_database_retries_then_writes(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with SqliteGalleryStore(db_path, busy_timeout_s=0.05) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with caplog.at_level(logging.WARNING, logger="core.storage.sqlite"):
                write = asyncio.create_task(store.set_setting("threshold", "0.5"))
                while not caplog.records and not write.done():
                    await asyncio.sleep(0.01)
                blocker.execute("COMMIT")
                await write
        finally:
            blocker.close()

        assert await store.get_setting("threshold") == "0.5"

    assert "is locked" in caplog.records[0].getMessage()
    assert str(db_path) in caplog.records[0].getMessage()


async def test_database_locked_too_long_raises(db_path: Path) -> None:
    async with SqliteGalleryStore(db_path, busy_timeout_s=0.05) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match="stayed locked by another connection through 3 attempts"):
                await store.set_setting("threshold", "0.5")
        finally:
            blocker.close()

        await store.set_setting("threshold", "0.6")
        assert await store.get_setting("threshold") == "0.6"


async def test_cancelled_write_leaves_no_open_transaction(db_path: Path) -> None:
    async with SqliteGalleryStore(db_path, busy_timeout_s=5) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            # The task is cancelled while BEGIN IMMEDIATE waits on the connection's thread.
            # That BEGIN still succeeds once the blocker commits.
            write = asyncio.create_task(enroll(store, "Alice", 1))
            await asyncio.sleep(0.2)
            write.cancel()
            blocker.execute("COMMIT")
            with pytest.raises(asyncio.CancelledError):
                await write
        finally:
            blocker.close()

        enrollment = await enroll(store, "Bob", 2)

    assert enrollment.created_person
    assert row_counts(db_path) == {"people": 1, "images": 1, "templates": 2}


async def test_read_only_connection_raises_with_hint(store: SqliteGalleryStore) -> None:
    # query_only makes SQLite reject writes with SQLITE_READONLY, as a read-only file does.
    # Root ignores file permissions, so a read-only file cannot produce that error in every environment.
    assert store._connection is not None
    await store._connection.execute("PRAGMA query_only = ON")

    with pytest.raises(
        StorageError,
        match="readonly database; make the file and its folder writable or choose another file with --db or MASKID_DB",
    ):
        await store.set_setting("threshold", "0.5")
