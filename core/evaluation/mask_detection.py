"""Training data and validation for the mask classifier of :mod:`core.mask_detection`.

Training uses unmasked photos of a folder-per-person dataset and the same faces
with one synthetic mask each. Validation uses real photos only: people wearing
real masks against unmasked photos of the same people, and masked strangers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.evaluation.identification import (
    AnalysedPhoto,
    EmbeddingCache,
    analyse_photos,
    list_images,
    person_folders,
)
from core.images import load_image
from core.mask_detection import MaskClassifier, train_mask_classifier
from core.pipeline import FacePipeline

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_PEOPLE = 1000
# The standard identification protocol uses the first 600 or so LFW people as
# unmasked strangers, so training starts after them to keep those probes unseen.
DEFAULT_SKIPPED_PEOPLE = 700
DEFAULT_NEUTRAL_PER_PERSON = 10


@dataclass(frozen=True)
class MaskValidationSet:
    """Photos whose mask status is known."""

    name: str
    paths: tuple[Path, ...]
    masked: bool


@dataclass(frozen=True)
class MaskValidationResult:
    """Accuracy of a classifier on one validation set, counted over the photos with a face."""

    name: str
    masked: bool
    photos: int
    with_face: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.with_face if self.with_face else float("nan")


def training_photos(root: Path, *, people: int, skip: int) -> list[Path]:
    """Return the first photo of each person folder at sorted positions ``skip`` to ``skip + people - 1``."""
    photos = []
    for folder in person_folders(root)[skip : skip + people]:
        images = list_images(folder)
        if images:
            photos.append(images[0])
    return photos


def train_on_dataset(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
) -> MaskClassifier:
    """Train a mask classifier on ``paths`` (unmasked photos) and one synthetic mask on each.

    Raises:
        ValueError: no photo had a face.
    """
    photos = analyse_photos(
        pipeline,
        paths,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        cache=cache,
        show_progress=show_progress,
    )
    with_face = [photo for photo in photos.values() if photo.face is not None]
    if not with_face:
        raise ValueError(f"none of the {len(paths)} training photos has a face")

    masked = []
    for photo in tqdm(with_face, unit="photo", desc="drawing masks", disable=not show_progress):
        image = load_image(photo.path, max_bytes=max_image_bytes, max_pixels=max_image_pixels)
        masked.append(pipeline.analyze_masked(image, photo.face.detection, 1)[1])
    unmasked_features = np.stack([photo.face.features for photo in with_face])
    return train_mask_classifier(unmasked_features, np.concatenate(masked), model_id=pipeline.feature_model_id)


def standard_validation_sets(
    datasets_dir: Path, *, neutral_per_person: int = DEFAULT_NEUTRAL_PER_PERSON
) -> tuple[MaskValidationSet, ...]:
    """Return the real validation photos: all of ``rof/masked`` and ``masked-strangers``, and the first
    ``neutral_per_person`` photos of each ``rof/neutral`` person."""
    rof = datasets_dir / "rof"
    masked = tuple(path for folder in person_folders(rof / "masked") for path in list_images(folder))
    neutral = tuple(
        path for folder in person_folders(rof / "neutral") for path in list_images(folder)[:neutral_per_person]
    )
    strangers = tuple(list_images(datasets_dir / "masked-strangers", recursive=True))
    return (
        MaskValidationSet("rof/masked", masked, masked=True),
        MaskValidationSet("rof/neutral", neutral, masked=False),
        MaskValidationSet("masked-strangers", strangers, masked=True),
    )


def validate(
    classifier: MaskClassifier,
    sets: Sequence[MaskValidationSet],
    photos: Mapping[Path, AnalysedPhoto],
) -> list[MaskValidationResult]:
    """Score ``classifier`` on each set; photos without a face are counted but not scored."""
    results = []
    for validation_set in sets:
        faces = [photos[path].face for path in validation_set.paths if photos[path].face is not None]
        correct = 0
        if faces:
            predicted = classifier.is_masked(np.stack([face.features for face in faces]))
            correct = int(np.sum(predicted == validation_set.masked))
        results.append(
            MaskValidationResult(
                validation_set.name, validation_set.masked, len(validation_set.paths), len(faces), correct
            )
        )
    return results


def balanced_accuracy(masked: MaskValidationResult, unmasked: MaskValidationResult) -> float:
    """Mean of the two classes' accuracies, so the larger set does not dominate."""
    return (masked.accuracy + unmasked.accuracy) / 2
