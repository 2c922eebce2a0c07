"""Tests for the approximate search index: backend choice, recall, chat scoping, saved files and live changes.

Every gallery is a real SQLite file in ``tmp_path``, written through the gallery store.
People are clusters: a random unit centre and templates around it with a cosine near
0.75 between two templates of one person, like face descriptors.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core import search_index
from core.calibration import DEFAULT_MASKED_THRESHOLD
from core.descriptors import DescriptorLayout, single_part
from core.matching import TemplateIndex
from core.search_index import AnnTemplateIndex, choose_backend, index_path, open_template_index, save_if_current
from core.service import FaceService
from core.settings import Settings
from core.storage import ImageRecord, NewTemplate, SqliteGalleryStore

DIM = 64
MODEL = "test-model/v1"
# Standard deviation, per dimension, of the noise around a person's centre. The noise
# vector's squared length is then about 1/3, so two templates of one person have a cosine
# of about 1 / (1 + 1/3) = 0.75.
NOISE_SCALE = np.sqrt(1 / 3 / DIM)


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def sample(rng: np.random.Generator, centre: np.ndarray, count: int) -> np.ndarray:
    return unit(centre + NOISE_SCALE * rng.standard_normal((count, DIM)))


def two_part_sample(rng: np.random.Generator, centre: np.ndarray, count: int) -> np.ndarray:
    """Sample each half of ``centre`` as its own unit descriptor and scale both by 1/sqrt(2)."""
    half = DIM // 2
    noise = np.sqrt(1 / 3 / half) * rng.standard_normal((count, DIM))
    parts = [unit(centre[:half] + noise[:, :half]), unit(centre[half:] + noise[:, half:])]
    return (np.concatenate(parts, axis=1) / np.sqrt(2)).astype(np.float32)


async def enroll(
    store: SqliteGalleryStore,
    name: str,
    vectors: np.ndarray,
    *,
    synthetic: int = 0,
    chat_id: int | None = None,
    owner_id: int | None = None,
) -> tuple[int, ...]:
    """Enroll one image of ``name`` whose templates are ``vectors``; the last ``synthetic`` are synthetic masks."""
    templates = []
    for position, vector in enumerate(vectors):
        is_synthetic = position >= len(vectors) - synthetic
        templates.append(
            NewTemplate(
                embedding=vector,
                box=(0.0, 0.0, 10.0, 10.0),
                detection_probability=0.99,
                kind="synthetic" if is_synthetic else "original",
                parent_index=0 if is_synthetic else None,
            )
        )
    digest = hashlib.sha256(f"{name}/{vectors.tobytes().hex()[:32]}".encode()).hexdigest()
    enrollment = await store.enroll(
        person_name=name,
        source="telegram" if owner_id else "cli",
        model_id=MODEL,
        image=ImageRecord(sha256=digest, path=None, width=10, height=10),
        templates=templates,
        chat_id=chat_id,
        owner_id=owner_id,
    )
    return enrollment.template_ids


async def clustered_gallery(
    store: SqliteGalleryStore,
    rng: np.random.Generator,
    people: int,
    per_person: int,
    *,
    synthetic: int = 0,
    two_parts: bool = False,
) -> np.ndarray:
    """Enroll ``people`` clustered people in every chat and return their centres.

    With ``two_parts``, templates are two-part descriptors (see :func:`two_part_sample`).
    """
    centres = unit(rng.standard_normal((people, DIM)))
    draw = two_part_sample if two_parts else sample
    for person, centre in enumerate(centres):
        await enroll(store, f"person {person}", draw(rng, centre, per_person + synthetic), synthetic=synthetic)
    return centres


@pytest.fixture
async def store(tmp_path: Path):
    async with SqliteGalleryStore(tmp_path / "gallery.sqlite3") as opened:
        yield opened


@pytest.fixture
def small_ann(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let IVF and SQ8 train on galleries of a few hundred templates."""
    monkeypatch.setattr(search_index, "MIN_ANN_ROWS", 100)


def ivf_settings(tmp_path: Path, backend: str = "ivf") -> Settings:
    return Settings(db_path=tmp_path / "gallery.sqlite3", cache_dir=tmp_path / "cache", search_index=backend)


def person_ids(candidates) -> list[int]:
    return [candidate.person_id for candidate in candidates]


# Backend choice.


@pytest.mark.parametrize(
    ("setting", "count", "expected"),
    [("auto", 0, "exact"), ("auto", 50, "exact"), ("auto", 51, "ivf"), ("exact", 10**6, "exact"), ("hnsw", 5, "hnsw")],
)
def test_choose_backend(setting: str, count: int, expected: str) -> None:
    assert choose_backend(setting, count, exact_max=50) == expected


def test_choose_backend_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="'flat'"):
        choose_backend("flat", 10, exact_max=50)


async def test_auto_below_threshold_stays_exact(tmp_path: Path, store: SqliteGalleryStore) -> None:
    rng = np.random.default_rng(0)
    await clustered_gallery(store, rng, people=30, per_person=3, synthetic=1)
    settings = Settings(db_path=tmp_path / "gallery.sqlite3", search_exact_max=120)

    index = await open_template_index(store, MODEL, DIM, settings)

    reference = TemplateIndex(DIM)
    reference.add_matrix(await store.load_templates(MODEL))
    assert type(index) is TemplateIndex
    assert len(index) == 120
    for probe in unit(rng.standard_normal((10, DIM))):
        assert index.search(probe, k=5) == reference.search(probe, k=5)
        assert index.search_masked(probe, k=5) == reference.search_masked(probe, k=5)
    assert not (tmp_path / "gallery.sqlite3.search-index").exists()


async def test_auto_above_threshold_uses_ivf(tmp_path: Path, store: SqliteGalleryStore, small_ann: None) -> None:
    await clustered_gallery(store, np.random.default_rng(1), people=40, per_person=4)
    settings = Settings(db_path=tmp_path / "gallery.sqlite3", search_exact_max=100)

    index = await open_template_index(store, MODEL, DIM, settings)

    assert isinstance(index, AnnTemplateIndex)
    assert index.backend == "ivf"
    assert len(index) == 160
    assert index.person_count == 40


# Recall against exact search.


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
async def test_ann_recall_on_clustered_gallery(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None, backend: str
) -> None:
    rng = np.random.default_rng(2)
    centres = await clustered_gallery(store, rng, people=300, per_person=5)
    index = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path, backend))
    reference = TemplateIndex(DIM)
    reference.add_matrix(await store.load_templates(MODEL))

    targets = rng.integers(0, len(centres), size=200)
    probes = np.stack([sample(rng, centres[target], 1)[0] for target in targets])
    same_top1 = [
        person_ids(index.search(probe, k=5))[:1] == person_ids(reference.search(probe, k=1)) for probe in probes
    ]
    score_errors = [
        abs(index.search(probe, k=1)[0].score - reference.search(probe, k=1)[0].score) for probe in probes[:50]
    ]

    assert isinstance(index, AnnTemplateIndex)
    assert np.mean(same_top1) >= 0.98
    assert max(score_errors) < 0.01


async def test_ivf_finds_part_probes_through_their_locator(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None
) -> None:
    # Two-part descriptors: each template contains two independent unit parts scaled by 1/sqrt(2).
    layout = DescriptorLayout((DIM // 2, DIM // 2), masked_part=0, unmasked_part=1)
    rng = np.random.default_rng(7)
    centres = await clustered_gallery(store, rng, people=300, per_person=5, two_parts=True)
    index = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path))
    reference = TemplateIndex(DIM)
    reference.add_matrix(await store.load_templates(MODEL))

    same_top1 = []
    for row, target in enumerate(rng.integers(0, len(centres), size=200)):
        query = two_part_sample(rng, centres[target], 1)[0]
        probe = layout.probe_vector(query, masked=row % 2 == 0)
        found = index.search(probe, k=5, locator=query)
        same_top1.append(person_ids(found)[:1] == person_ids(reference.search(probe, k=1)))

    assert isinstance(index, AnnTemplateIndex)
    assert np.mean(same_top1) >= 0.98


# Chat scoping through the approximate path.


async def scoped_gallery(store: SqliteGalleryStore, rng: np.random.Generator) -> dict[str, list[int]]:
    """Enroll people in every chat, in group -100, in group -200 and by user 42; return person ids by scope."""
    scopes: dict[str, list[int]] = {"any": [], "-100": [], "-200": [], "42": []}
    chat_of_scope = {"any": None, "-100": -100, "-200": -200, "42": 42}
    for number in range(160):
        scope = ("any", "-100", "-200", "42")[number % 4]
        centre = unit(rng.standard_normal(DIM))
        chat_id = chat_of_scope[scope]
        owner_id = 42 if scope == "42" else None
        await enroll(store, f"person {number}", sample(rng, centre, 4), synthetic=2, chat_id=chat_id, owner_id=owner_id)
        matrix = await store.load_templates(MODEL)
        scopes[scope].append(int(matrix.person_ids[-1]))
    return scopes


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
@pytest.mark.parametrize(
    ("chat_id", "visible_scopes"),
    [(-100, ("any", "-100")), (-200, ("any", "-200")), (42, ("any", "42")), (7, ("any",))],
)
async def test_ann_search_never_leaves_chat_scope(
    tmp_path: Path,
    store: SqliteGalleryStore,
    small_ann: None,
    backend: str,
    chat_id: int,
    visible_scopes: tuple[str, ...],
) -> None:
    rng = np.random.default_rng(3)
    scopes = await scoped_gallery(store, rng)
    index = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path, backend))
    reference = TemplateIndex(DIM)
    reference.add_matrix(await store.load_templates(MODEL))
    visible = {person for scope in visible_scopes for person in scopes[scope]}
    everyone = 200

    for probe in unit(rng.standard_normal((5, DIM))):
        unmasked = person_ids(index.search(probe, k=5, chat_id=chat_id))
        synthetic = person_ids(index.search(probe, k=5, chat_id=chat_id, synthetic=True))
        masked = person_ids(index.search_masked(probe, k=5, chat_id=chat_id))
        assert set(unmasked) <= visible
        assert set(synthetic) <= visible
        assert set(masked) <= visible
        assert len(unmasked) == 5

        # A request for more people than the chat may see returns exactly the visible ones.
        assert set(person_ids(index.search(probe, k=everyone, chat_id=chat_id))) == visible
        assert set(person_ids(index.search_masked(probe, k=everyone, chat_id=chat_id))) == visible
        assert person_ids(index.search(probe, k=1, chat_id=chat_id)) == person_ids(
            reference.search(probe, k=1, chat_id=chat_id)
        )


async def test_ann_search_masked_matches_exact_top1(tmp_path: Path, store: SqliteGalleryStore, small_ann: None) -> None:
    rng = np.random.default_rng(4)
    centres = await clustered_gallery(store, rng, people=150, per_person=2, synthetic=2)
    index = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path))
    reference = TemplateIndex(DIM)
    reference.add_matrix(await store.load_templates(MODEL))

    probes = [sample(rng, centres[target], 1)[0] for target in range(0, 150, 5)]
    same = [
        person_ids(index.search_masked(p, k=3))[0] == person_ids(reference.search_masked(p, k=3))[0] for p in probes
    ]

    assert np.mean(same) >= 0.95


# Saved index files.


async def test_saved_index_reused_when_database_unchanged(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    centres = await clustered_gallery(store, rng, people=60, per_person=3, synthetic=1)
    settings = ivf_settings(tmp_path)
    built = await open_template_index(store, MODEL, DIM, settings)
    path = index_path(tmp_path / "gallery.sqlite3.search-index", MODEL, "ivf")
    assert path.is_file()

    async def no_build(*args: object, **kwargs: object) -> AnnTemplateIndex:
        raise AssertionError("the saved index should have been loaded, not rebuilt")

    monkeypatch.setattr(search_index, "build_ann_index", no_build)
    loaded = await open_template_index(store, MODEL, DIM, settings)

    probe = sample(rng, centres[7], 1)[0]
    assert isinstance(loaded, AnnTemplateIndex)
    assert len(loaded) == len(built) == 240
    assert loaded.search(probe, k=5) == built.search(probe, k=5)
    assert loaded.search_masked(probe, k=5) == built.search_masked(probe, k=5)
    assert [item for item in path.parent.iterdir() if item.name.endswith(".tmp")] == []


async def test_saved_index_rebuilt_after_database_changes(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(6)
    await clustered_gallery(store, rng, people=60, per_person=3)
    settings = ivf_settings(tmp_path)
    await open_template_index(store, MODEL, DIM, settings)

    newcomer = unit(rng.standard_normal(DIM))
    await enroll(store, "newcomer", sample(rng, newcomer, 2))
    with caplog.at_level(logging.INFO, logger="core.search_index"):
        reopened = await open_template_index(store, MODEL, DIM, settings)

    assert "rebuilding it" in caplog.text
    assert len(reopened) == 182
    assert person_ids(reopened.search(sample(rng, newcomer, 1)[0], k=1)) == [61]

    removed = await store.remove_person(61)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core.search_index"):
        after_removal = await open_template_index(store, MODEL, DIM, settings)
    assert removed.template_count == 2
    assert "rebuilding it" in caplog.text
    assert len(after_removal) == 180


async def test_corrupt_saved_index_rebuilt(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None, caplog: pytest.LogCaptureFixture
) -> None:
    await clustered_gallery(store, np.random.default_rng(7), people=50, per_person=3)
    settings = ivf_settings(tmp_path)
    await open_template_index(store, MODEL, DIM, settings)
    path = index_path(tmp_path / "gallery.sqlite3.search-index", MODEL, "ivf")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with caplog.at_level(logging.WARNING, logger="core.search_index"):
        index = await open_template_index(store, MODEL, DIM, settings)

    assert "cannot use" in caplog.text
    assert len(index) == 150
    assert path.stat().st_size > 0
    assert AnnTemplateIndex.load(path, model_id=MODEL, dim=DIM, backend="ivf")[0].fingerprint().count == 150


async def test_saved_index_for_other_backend_not_used(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None
) -> None:
    await clustered_gallery(store, np.random.default_rng(8), people=50, per_person=3)
    await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path, "ivf"))
    folder = tmp_path / "gallery.sqlite3.search-index"

    with pytest.raises(ValueError, match="backend"):
        AnnTemplateIndex.load(index_path(folder, MODEL, "ivf"), model_id=MODEL, dim=DIM, backend="hnsw")
    hnsw = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path, "hnsw"))
    assert isinstance(hnsw, AnnTemplateIndex)
    assert hnsw.backend == "hnsw"
    assert index_path(folder, MODEL, "hnsw").is_file()


# Enroll and remove while the index is live.


async def test_live_enroll_and_remove(tmp_path: Path, store: SqliteGalleryStore, small_ann: None) -> None:
    rng = np.random.default_rng(9)
    centres = await clustered_gallery(store, rng, people=60, per_person=3)
    settings = ivf_settings(tmp_path)
    index = await open_template_index(store, MODEL, DIM, settings)
    assert isinstance(index, AnnTemplateIndex)

    newcomer = unit(rng.standard_normal(DIM))
    vectors = sample(rng, newcomer, 3)
    template_ids = await enroll(store, "newcomer", vectors, synthetic=1, chat_id=-100)
    new_person = int((await store.load_templates(MODEL)).person_ids[-1])
    index.add(template_ids, [new_person] * 3, vectors, synthetic=[False, False, True], chat_ids=[-100] * 3)
    probe = sample(rng, newcomer, 1)[0]

    assert person_ids(index.search(probe, k=1, chat_id=-100)) == [new_person]
    assert new_person not in person_ids(index.search(probe, k=5, chat_id=-200))
    assert person_ids(index.search_masked(probe, k=1, chat_id=-100)) == [new_person]

    removed_person = person_ids(index.search(sample(rng, centres[3], 1)[0], k=1))[0]
    await store.remove_person(removed_person)
    assert index.remove_person(removed_person) == 3
    assert removed_person not in person_ids(index.search(sample(rng, centres[3], 1)[0], k=10))
    assert removed_person not in person_ids(index.search(centres[3], k=200))
    assert len(index) == 180

    # The index matches the database again, so it is saved with its dead rows and reloaded as is.
    path = index_path(tmp_path / "gallery.sqlite3.search-index", MODEL, "ivf")
    assert await save_if_current(index, store, MODEL, path)
    reloaded = await open_template_index(store, MODEL, DIM, settings)
    assert isinstance(reloaded, AnnTemplateIndex)
    assert reloaded.dead_count == 3
    assert person_ids(reloaded.search(probe, k=1, chat_id=-100)) == [new_person]
    assert removed_person not in person_ids(reloaded.search(centres[3], k=200))


async def test_index_not_saved_when_database_moved_on(
    tmp_path: Path, store: SqliteGalleryStore, small_ann: None
) -> None:
    rng = np.random.default_rng(10)
    await clustered_gallery(store, rng, people=50, per_person=3)
    index = await open_template_index(store, MODEL, DIM, ivf_settings(tmp_path))
    path = index_path(tmp_path / "gallery.sqlite3.search-index", MODEL, "ivf")
    saved_at = path.stat().st_mtime_ns

    # Another process enrolls a template that this index does not contain.
    await enroll(store, "elsewhere", sample(rng, unit(rng.standard_normal(DIM)), 1))

    assert not await save_if_current(index, store, MODEL, path)
    assert path.stat().st_mtime_ns == saved_at


async def test_service_uses_ann_index_and_saves_at_close(tmp_path: Path, small_ann: None) -> None:
    settings = ivf_settings(tmp_path).replace(search_index="auto", search_exact_max=100)
    backbone = SimpleNamespace(masked_threshold=DEFAULT_MASKED_THRESHOLD)
    pipeline = SimpleNamespace(
        model_id=MODEL,
        feature_model_id=MODEL,
        layout=single_part(DIM),
        embedder=SimpleNamespace(embedding_dim=DIM, backbone=backbone),
    )
    rng = np.random.default_rng(11)
    async with SqliteGalleryStore(settings.db_path) as store:
        centres = await clustered_gallery(store, rng, people=50, per_person=3)

    async with FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline) as service:
        assert isinstance(service.index, AnnTemplateIndex)
        removed = await service.remove("person 4")
        assert removed[0].template_count == 3
        assert len(service.index) == 147

    async with FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline) as service:
        assert isinstance(service.index, AnnTemplateIndex)
        assert service.index.dead_count == 3
        assert len(service.index) == 147
        found = person_ids(service.index.search(centres[4], k=147))
        assert len(found) == 49
        assert removed[0].person.id not in found


# Store methods that the index builds on.


async def test_iter_templates_matches_load_templates(store: SqliteGalleryStore) -> None:
    await clustered_gallery(store, np.random.default_rng(12), people=20, per_person=3, synthetic=1)
    loaded = await store.load_templates(MODEL)

    batches = [batch async for batch in store.iter_templates(MODEL, batch_size=7)]

    assert [len(batch) for batch in batches] == [7] * 11 + [3]
    assert np.array_equal(np.concatenate([batch.template_ids for batch in batches]), loaded.template_ids)
    assert np.array_equal(np.concatenate([batch.vectors for batch in batches]), loaded.vectors)
    assert np.array_equal(np.concatenate([batch.kinds for batch in batches]), loaded.kinds)
    with pytest.raises(ValueError, match="batch_size"):
        await anext(store.iter_templates(MODEL, batch_size=0))


async def test_template_fingerprint_tracks_changes(store: SqliteGalleryStore) -> None:
    empty = await store.template_fingerprint(MODEL)
    assert (empty.count, empty.max_id, empty.id_sum, empty.last_created_at) == (0, 0, 0, None)

    rng = np.random.default_rng(13)
    first_ids = await enroll(store, "first", sample(rng, unit(rng.standard_normal(DIM)), 2))
    second_ids = await enroll(store, "second", sample(rng, unit(rng.standard_normal(DIM)), 1))
    after_enrolls = await store.template_fingerprint(MODEL)
    assert after_enrolls.count == 3
    assert after_enrolls.max_id == second_ids[-1]
    assert after_enrolls.id_sum == sum(first_ids) + sum(second_ids)
    assert after_enrolls.last_created_at is not None

    await store.remove_person((await store.find_people("first"))[0].id)
    after_removal = await store.template_fingerprint(MODEL)
    assert after_removal.count == 1
    assert after_removal.id_sum == sum(second_ids)
    assert not after_removal.same_ids(after_enrolls)
    assert (await store.template_fingerprint("other-model")).count == 0
