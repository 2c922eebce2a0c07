"""Tests of the gallery operations behind /me and /forget: a user's people, their deletion, and consent records."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from bot.consent import ConsentRegistry
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.storage import ImageRecord, NewTemplate, SqliteGalleryStore

MODEL = "test-model"
DIM = 8
OWNER = 601
OTHER = 602


def template(seed: int) -> NewTemplate:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return NewTemplate(embedding=vector / np.linalg.norm(vector), box=(1.0, 2.0, 30.0, 40.0), detection_probability=0.9)


def image(number: int) -> ImageRecord:
    return ImageRecord(sha256=hashlib.sha256(str(number).encode()).hexdigest(), path=None, width=64, height=64)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGalleryStore]:
    async with SqliteGalleryStore(tmp_path / "gallery.sqlite3") as opened:
        yield opened


async def add(store: SqliteGalleryStore, name: str, number: int, *, owner_id: int | None, source: str = "telegram"):
    return await store.enroll(
        person_name=name,
        source=source,
        model_id=MODEL,
        image=image(number),
        templates=[template(number)],
        owner_id=owner_id,
        chat_id=None if owner_id is None else -100,
    )


async def test_people_of_owner_counts_and_order(store: SqliteGalleryStore) -> None:
    await add(store, "Ada Lovelace", 1, owner_id=OWNER)
    await add(store, "Ada Lovelace", 2, owner_id=OWNER)
    await add(store, "Grace Hopper", 3, owner_id=OWNER)
    await add(store, "Alan Turing", 4, owner_id=OTHER)
    await add(store, "Public Figure", 5, owner_id=None, source="dataset")

    summaries = await store.people_of_owner(OWNER)

    assert [summary.person.name for summary in summaries] == ["Ada Lovelace", "Grace Hopper"]
    assert [summary.image_count for summary in summaries] == [2, 1]
    assert [summary.template_count for summary in summaries] == [2, 1]
    assert await store.people_of_owner(999) == []


async def test_remove_people_of_owner_keeps_others(store: SqliteGalleryStore) -> None:
    await add(store, "Ada Lovelace", 1, owner_id=OWNER)
    await add(store, "Ada Lovelace", 2, owner_id=OWNER)
    await add(store, "Alan Turing", 3, owner_id=OTHER)
    await add(store, "Public Figure", 4, owner_id=None, source="dataset")

    removed = await store.remove_people_of_owner(OWNER)

    assert [(item.person.name, item.image_count, item.template_count) for item in removed] == [("Ada Lovelace", 2, 2)]
    assert await store.people_of_owner(OWNER) == []
    assert len(await store.load_templates(MODEL)) == 2
    assert (await store.counts())["people"] == 2
    assert await store.remove_people_of_owner(OWNER) == []


async def test_delete_setting(store: SqliteGalleryStore) -> None:
    await store.set_setting("telegram.consent.1", "2026-03-01T09:30:00+00:00")

    assert await store.delete_setting("telegram.consent.1") is True
    assert await store.get_setting("telegram.consent.1") is None
    assert await store.delete_setting("telegram.consent.1") is False
    with pytest.raises(ValueError, match="non-empty"):
        await store.delete_setting("")


async def test_consent_registry_round_trip(store: SqliteGalleryStore) -> None:
    consent = ConsentRegistry(store)

    assert await consent.given_at(OWNER) is None
    await consent.grant(OWNER)
    given_at = await consent.given_at(OWNER)
    revoked = await consent.revoke(OWNER)

    assert given_at is not None
    assert given_at.tzinfo is not None
    assert revoked is True
    assert await consent.given_at(OWNER) is None
    assert await consent.given_at(OTHER) is None


async def test_forget_user_drops_index_rows(tmp_path: Path, pipeline: FacePipeline) -> None:
    settings = Settings(db_path=tmp_path / "gallery.sqlite3")
    service = FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline)
    async with service:
        dim = pipeline.embedder.embedding_dim
        vectors = np.eye(3, dim, dtype=np.float32)
        for number, (owner, vector) in enumerate(zip((OWNER, OWNER, OTHER), vectors, strict=True)):
            record = NewTemplate(embedding=vector, box=(0.0, 0.0, 1.0, 1.0), detection_probability=0.9)
            enrollment = await service.store.enroll(
                person_name=f"person {number}",
                source="telegram",
                model_id=service.model_id,
                image=image(number),
                templates=[record],
                owner_id=owner,
                chat_id=owner,
            )
            service.index.add(enrollment.template_ids, [enrollment.person_id], vector[np.newaxis], owner_ids=[owner])

        removed = await service.forget_user(OWNER)

        assert [item.person.name for item in removed] == ["person 0", "person 1"]
        assert len(service.index) == 1
        assert [summary.person.name for summary in await service.user_summary(OTHER)] == ["person 2"]
        assert await service.user_summary(OWNER) == []
