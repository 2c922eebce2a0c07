"""Training data for the twin network: aligned crops of LFW-style folders, with and without synthetic masks.

Each photo gives its own aligned crop (variant 0) and ``masks`` crops with synthetic
masks (variants 1 to ``masks``), seeded by the photo's SHA-256 as enrollment seeds
them. The frozen trunk runs once per crop and its output goes to a
:class:`~core.siamese.cache.TrunkCache`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.alignment import align_face
from core.detection import DetectedFace
from core.errors import DatasetError, InvalidImageError
from core.evaluation.identification import EmbeddingCache, analyse_photos, list_images, person_folders
from core.images import load_image, read_image_bytes
from core.masks import synthesize_masked
from core.pipeline import FacePipeline, masked_variants_seed
from core.siamese.cache import TrunkCache, crop_sha256
from core.siamese.trunk import TrunkRunner

logger = logging.getLogger(__name__)

DEFAULT_MASKS_PER_PHOTO = 3
DEFAULT_VALIDATION_FRACTION = 0.1
# Crops per trunk pass and per cache shard: about 8 MB of float16 outputs at 160 x 160.
TRUNK_CHUNK = 256


@dataclass(frozen=True)
class CropRecord:
    """One aligned crop of the training data.

    Attributes:
        person: the person folder's name.
        photo: the photo file.
        variant: 0 for the photo's own crop, 1 and up for synthetic-mask variants.
        mask_seed: the seed the masks were drawn with, None for variant 0.
        crop_sha: SHA-256 of the crop's pixels, the trunk cache key.
    """

    person: str
    photo: Path
    variant: int
    mask_seed: int | None
    crop_sha: str

    @property
    def masked(self) -> bool:
        return self.variant > 0


@dataclass(frozen=True)
class FeatureSet:
    """Trunk outputs of a list of crops with their labels, ready for training.

    Attributes:
        records: one per row of the arrays.
        features: (N, 1792, 3, 3) float16 trunk outputs.
        labels: (N,) int64 person index into ``people``.
        photos: (N,) int64 photo index, the same for a photo's crop and its masked variants.
        masked: (N,) bool, True for synthetic-mask variants.
        people: person names, sorted.
    """

    records: tuple[CropRecord, ...]
    features: np.ndarray
    labels: np.ndarray
    photos: np.ndarray
    masked: np.ndarray
    people: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)


def select_people(
    dataset: Path, *, min_photos: int = 2, skip: int = 0, max_people: int | None = None, seed: int = 0
) -> dict[str, list[Path]]:
    """Return the photos of each person in ``dataset`` who has at least ``min_photos``.

    The first ``skip`` person folders in sorted order are left out. With ``max_people``,
    a seeded random sample of that many of the remaining people is kept.

    Raises:
        DatasetError: ``dataset`` is missing or has fewer than 2 such people.
    """
    photos = {folder.name: list_images(folder) for folder in person_folders(dataset)[skip:]}
    eligible = sorted(name for name, paths in photos.items() if len(paths) >= min_photos)
    if max_people is not None and max_people < len(eligible):
        eligible = sorted(random.Random(seed).sample(eligible, max_people))
    if len(eligible) < 2:
        raise DatasetError(
            f"{dataset} has {len(eligible)} people with at least {min_photos} photos after skipping {skip}, "
            "but training needs at least 2. Lower --skip-people or use a larger dataset"
        )
    return {name: photos[name] for name in eligible}


def split_people(people: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split people, not photos, into training and validation sets with a seeded shuffle.

    Raises:
        ValueError: the fraction is outside (0, 1) or leaves either set empty.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1, got {validation_fraction}")
    shuffled = sorted(people)
    random.Random(seed).shuffle(shuffled)
    count = round(len(shuffled) * validation_fraction)
    if count < 1 or count >= len(shuffled):
        raise ValueError(
            f"a validation fraction of {validation_fraction} of {len(shuffled)} people leaves a set empty; "
            "use more people or another fraction"
        )
    return sorted(shuffled[count:]), sorted(shuffled[:count])


def build_feature_set(
    pipeline: FacePipeline,
    runner: TrunkRunner,
    trunk_cache: TrunkCache,
    photos_by_person: Mapping[str, Sequence[Path]],
    *,
    masks: int,
    max_image_bytes: int,
    max_image_pixels: int,
    embedding_cache: EmbeddingCache | None = None,
    show_progress: bool = True,
) -> FeatureSet:
    """Detect, align and mask the photos, run the trunk on crops it has not seen, and load every output.

    Photos without a face, or that fail to load, are left out with a log line.
    """
    from tqdm import tqdm

    limits = {"max_image_bytes": max_image_bytes, "max_image_pixels": max_image_pixels}
    person_of = {path: person for person, paths in photos_by_person.items() for path in paths}
    analysed = analyse_photos(pipeline, list(person_of), cache=embedding_cache, show_progress=show_progress, **limits)

    records: list[CropRecord] = []
    pending: dict[str, np.ndarray] = {}
    skipped = 0
    for path, photo in tqdm(analysed.items(), unit="photo", desc="trunk outputs", disable=not show_progress):
        if photo.face is None:
            skipped += 1
            continue
        try:
            crops = _photo_crops(pipeline, path, photo.face.detection, masks, **limits)
        except InvalidImageError as exc:
            logger.warning("skipping %s: %s", path, exc)
            skipped += 1
            continue
        for variant, (crop, seed) in enumerate(crops):
            sha = crop_sha256(crop)
            records.append(CropRecord(person_of[path], path, variant, seed, sha))
            if sha not in trunk_cache and sha not in pending:
                pending[sha] = crop
        if len(pending) >= TRUNK_CHUNK:
            _run_trunk(runner, trunk_cache, pending)
    _run_trunk(runner, trunk_cache, pending)
    logger.info("%d crops of %d photos, %d photos had no usable face", len(records), len(analysed) - skipped, skipped)
    return assemble_feature_set(records, trunk_cache)


def _photo_crops(
    pipeline: FacePipeline,
    path: Path,
    detection: DetectedFace,
    masks: int,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
) -> list[tuple[np.ndarray, int | None]]:
    data = read_image_bytes(path, max_bytes=max_image_bytes)
    image = load_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels, label=str(path))
    seed = masked_variants_seed(image.sha256)
    crops: list[tuple[np.ndarray, int | None]] = [(align_face(image.pixels, detection, pipeline.alignment), None)]
    for pixels in synthesize_masked(image.pixels, detection.landmarks, masks, seed=seed):
        crops.append((align_face(pixels, detection, pipeline.alignment), seed))
    return crops


def _run_trunk(runner: TrunkRunner, trunk_cache: TrunkCache, pending: dict[str, np.ndarray]) -> None:
    if not pending:
        return
    outputs = runner.run(np.stack(list(pending.values())))
    trunk_cache.put(dict(zip(pending, outputs, strict=True)))
    pending.clear()


def assemble_feature_set(records: Sequence[CropRecord], trunk_cache: TrunkCache) -> FeatureSet:
    """Load the cached trunk outputs of ``records`` and number their people and photos."""
    return numbered_feature_set(records, trunk_cache.stack([record.crop_sha for record in records]))


def numbered_feature_set(records: Sequence[CropRecord], features: np.ndarray) -> FeatureSet:
    """Return ``records`` with their trunk outputs, people numbered in sorted order, photos in order of appearance."""
    people = tuple(sorted({record.person for record in records}))
    person_index = {name: index for index, name in enumerate(people)}
    photo_index: dict[Path, int] = {}
    for record in records:
        photo_index.setdefault(record.photo, len(photo_index))
    return FeatureSet(
        records=tuple(records),
        features=features,
        labels=np.array([person_index[record.person] for record in records], dtype=np.int64),
        photos=np.array([photo_index[record.photo] for record in records], dtype=np.int64),
        masked=np.array([record.masked for record in records], dtype=bool),
        people=people,
    )


def subset(features: FeatureSet, people: Sequence[str]) -> FeatureSet:
    """Return the rows of ``features`` that belong to ``people``, renumbered."""
    wanted = set(people)
    rows = [index for index, record in enumerate(features.records) if record.person in wanted]
    records = [features.records[index] for index in rows]
    names = tuple(sorted({record.person for record in records}))
    person_index = {name: index for index, name in enumerate(names)}
    _, photos = np.unique(features.photos[rows], return_inverse=True)
    return FeatureSet(
        records=tuple(records),
        features=features.features[rows],
        labels=np.array([person_index[record.person] for record in records], dtype=np.int64),
        photos=photos.astype(np.int64),
        masked=features.masked[rows],
        people=names,
    )
