"""FaceService on a real SQLite gallery and real photos: masked templates, mask-aware identify, calibration."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import service_for

from core.images import load_image
from core.pipeline import FacePipeline
from core.settings import Settings

pytestmark = pytest.mark.datasets


def photo(datasets_dir: Path, name: str, number: int = 1):
    return load_image(datasets_dir / "lfw" / name / f"{name}_{number:04d}.jpg", max_bytes=10**7, max_pixels=10**8)


def template_rows(db_path: Path) -> list[tuple[int, str, int | None]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute("SELECT id, kind, parent_id FROM templates ORDER BY id").fetchall()


async def test_enroll_stores_synthetic_templates_linked_to_their_source(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, one_torch_thread: None
) -> None:
    settings = settings.replace(synthetic_masks=3)

    async with service_for(settings, pipeline) as service:
        result = await service.enroll("Colin Powell", photo(datasets_dir, "Colin_Powell"))

    rows = template_rows(settings.db_path)
    assert len(result.template_ids) == 4
    original_id = rows[0][0]
    assert rows[0][1:] == ("original", None)
    assert [row[1:] for row in rows[1:]] == [("synthetic", original_id)] * 3


async def test_concurrent_enrolls_store_photo_once(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, one_torch_thread: None
) -> None:
    image = photo(datasets_dir, "Colin_Powell")

    async with service_for(settings, pipeline) as service:
        # Both calls pass the early duplicate check before either writes.
        results = await asyncio.gather(service.enroll("Colin Powell", image), service.enroll("Colin Powell", image))
        index_size = len(service.index)

    stored = 1 + settings.synthetic_masks
    assert sorted(result.already_enrolled for result in results) == [False, True]
    assert len(template_rows(settings.db_path)) == stored
    assert index_size == stored


async def test_synthetic_templates_go_with_their_source(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, one_torch_thread: None
) -> None:
    async with service_for(settings, pipeline) as service:
        await service.enroll("Colin Powell", photo(datasets_dir, "Colin_Powell"))
        await service.enroll("Colin Powell", photo(datasets_dir, "Colin_Powell", 2))
        first_original = template_rows(settings.db_path)[0][0]

        # Deleting one source template takes its synthetic copies and nothing else.
        with sqlite3.connect(settings.db_path) as connection:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("DELETE FROM templates WHERE id = ?", (first_original,))
        rows = template_rows(settings.db_path)
        assert [row[1] for row in rows] == ["original"] + ["synthetic"] * settings.synthetic_masks
        assert all(row[2] in (None, rows[0][0]) for row in rows)

        # Removing the person removes every template, in the store and in the index.
        await service.remove("Colin Powell")
        assert template_rows(settings.db_path) == []
        assert len(service.index) == 0


async def test_identify_masked_probe_rule(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, one_torch_thread: None
) -> None:
    masked_folder = sorted((datasets_dir / "rof" / "masked").iterdir())[0]
    neutral_folder = datasets_dir / "rof" / "neutral" / masked_folder.name
    masked_probe = load_image(sorted(masked_folder.iterdir())[0], max_bytes=10**7, max_pixels=10**8)
    neutral_photos = [load_image(path, max_bytes=10**7, max_pixels=10**8) for path in sorted(neutral_folder.iterdir())]

    async with service_for(settings, pipeline) as service:
        for image in neutral_photos[:3]:
            await service.enroll(masked_folder.name, image)
        await service.enroll("Colin Powell", photo(datasets_dir, "Colin_Powell"))
        masked_result = (await service.identify(masked_probe))[0]
        unmasked_result = (await service.identify(neutral_photos[5]))[0]

    assert masked_result.masked is True
    assert masked_result.mask_probability > 0.5
    assert masked_result.threshold == service.thresholds.masked
    assert unmasked_result.masked is False
    assert unmasked_result.threshold == service.thresholds.unmasked
    assert unmasked_result.candidates[0].person.name == masked_folder.name


async def test_calibrate_stores_thresholds_that_identify_then_uses(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, one_torch_thread: None
) -> None:
    rng = np.random.default_rng(0)

    async with service_for(settings, pipeline) as service:
        await service.enroll("Colin Powell", photo(datasets_dir, "Colin_Powell"))
        face = (await service.analyze(photo(datasets_dir, "Colin_Powell", 2)))[0]
        # Strangers: random unit vectors, which score near 0 against any real face.
        strangers = []
        for vector in rng.normal(size=(200, face.embedding.shape[0])).astype(np.float32):
            strangers.append(type(face)(face.detection, vector / np.linalg.norm(vector)))
        calibration = await service.calibrate(strangers, target_fpir=0.01)

    assert calibration.unmasked is not None
    assert calibration.achieved_unmasked_fpir <= 0.01
    async with service_for(settings, pipeline) as reopened:
        assert reopened.thresholds.unmasked == calibration.unmasked
        assert reopened.thresholds.unmasked_source == "calibrated"
