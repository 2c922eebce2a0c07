"""The LFW verification protocol: labelled image pairs, accuracy by k-fold cross-validation.

Pairs files use the official ``pairs.txt`` line format::

    Name<TAB>n1<TAB>n2                 same person, images Name_000n1.jpg and Name_000n2.jpg
    Name1<TAB>n1<TAB>Name2<TAB>n2      different people

The official file lists each fold as a block of same-person pairs followed by a
block of different-person pairs. A file filtered from it keeps that order, so
:func:`split_folds` recovers the folds from the block boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from core.mask_detection import MaskClassifier
    from core.pipeline import Face, FacePipeline

T = TypeVar("T")

# Threshold candidates for cosine similarity, as in the FaceNet evaluation code.
THRESHOLD_STEP = 0.0025


@dataclass(frozen=True)
class Pair:
    """One labelled pair of image paths."""

    first: Path
    second: Path
    same: bool


@dataclass(frozen=True)
class VerificationResult:
    """k-fold verification accuracy.

    Attributes:
        accuracy: mean accuracy over the folds, each scored at the threshold chosen on the other folds.
        accuracy_std: standard deviation of the per-fold accuracies.
        threshold: mean of the per-fold thresholds (cosine similarity).
        fold_accuracies: accuracy of each fold.
        fold_thresholds: threshold used for each fold.
        pairs: number of pairs scored.
    """

    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    pairs: int


def read_pairs(pairs_file: Path, images_dir: Path) -> list[Pair]:
    """Parse a ``pairs.txt``-format file into image paths under ``images_dir``.

    A first line with one or two integers (the official header) is skipped.

    Raises:
        ValueError: a line has neither 3 nor 4 fields, or a number is not an integer;
            the message names the file and line.
    """
    pairs = []
    lines = pairs_file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if number == 1 and len(fields) <= 2 and all(field.isdigit() for field in fields):
            continue
        try:
            if len(fields) == 3:
                name, first, second = fields
                pairs.append(Pair(_image(images_dir, name, first), _image(images_dir, name, second), True))
            elif len(fields) == 4:
                name1, first, name2, second = fields
                pairs.append(Pair(_image(images_dir, name1, first), _image(images_dir, name2, second), False))
            else:
                raise ValueError(f"expected 3 or 4 fields, got {len(fields)}")
        except ValueError as exc:
            raise ValueError(f"{pairs_file}:{number}: invalid pairs line {line!r}: {exc}") from None
    return pairs


def _image(images_dir: Path, name: str, number: str) -> Path:
    return images_dir / name / f"{name}_{int(number):04d}.jpg"


def split_folds(pairs: Sequence[Pair], default_folds: int = 10) -> list[np.ndarray]:
    """Return index arrays of the folds: each block of same pairs plus the different pairs after it.

    Falls back to ``default_folds`` contiguous, equally sized folds when the file
    does not alternate in that way, or alternates into more than ``default_folds``
    blocks (as a shuffled file does).
    """
    folds: list[list[int]] = []
    previous_same: bool | None = None
    for index, pair in enumerate(pairs):
        if pair.same and previous_same is not True:
            folds.append([])
        if not folds:
            folds.append([])
        folds[-1].append(index)
        previous_same = pair.same

    # A shuffled file also splits into same/different blocks, but into many more of them.
    alternates = 2 <= len(folds) <= default_folds and all(
        pairs[fold[0]].same and not pairs[fold[-1]].same for fold in folds
    )
    if alternates:
        return [np.asarray(fold) for fold in folds]
    count = min(default_folds, len(pairs))
    return [np.asarray(chunk) for chunk in np.array_split(np.arange(len(pairs)), count)]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold on the candidate grid that maximises accuracy of ``score >= threshold`` meaning same."""
    thresholds = np.arange(-1.0, 1.0 + THRESHOLD_STEP, THRESHOLD_STEP)
    predictions = scores[None, :] >= thresholds[:, None]
    accuracies = (predictions == same[None, :]).mean(axis=1)
    # Among equally good thresholds, take the middle one rather than the lowest.
    best = np.flatnonzero(accuracies == accuracies.max())
    return float(thresholds[best[len(best) // 2]])


def _dot(first: np.ndarray, second: np.ndarray) -> float:
    return float(first @ second)


def pair_scores(
    pairs: Sequence[Pair],
    vectors: Mapping[Path, T],
    similarity: Callable[[T, T], float] = _dot,
) -> np.ndarray:
    """Return each pair's similarity, NaN where a photo has no descriptor.

    Args:
        vectors: each photo's unit descriptor, or another value ``similarity`` compares.
        similarity: compares two values of ``vectors``. The default is the dot product.
    """
    return np.array(
        [
            similarity(vectors[pair.first], vectors[pair.second])
            if pair.first in vectors and pair.second in vectors
            else np.nan
            for pair in pairs
        ]
    )


def k_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: Sequence[np.ndarray]) -> VerificationResult:
    """Score each fold at the threshold that is best on all other folds.

    Args:
        scores: (P,) cosine similarity of each pair; NaN for a pair that could not be
            scored (no face found), which counts as an error.
        same: (P,) bool, True for same-person pairs.
        folds: index arrays that partition the pairs.
    """
    if len(folds) < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {len(folds)}")
    accuracies = []
    thresholds = []
    for fold in folds:
        train = np.setdiff1d(np.arange(len(scores)), fold)
        train = train[~np.isnan(scores[train])]
        threshold = best_threshold(scores[train], same[train])
        predictions = np.where(np.isnan(scores[fold]), ~same[fold], scores[fold] >= threshold)
        accuracies.append(float((predictions == same[fold]).mean()))
        thresholds.append(threshold)
    return VerificationResult(
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        threshold=float(np.mean(thresholds)),
        fold_accuracies=tuple(accuracies),
        fold_thresholds=tuple(thresholds),
        pairs=len(scores),
    )


@dataclass(frozen=True)
class PairsEvaluation:
    """Verification accuracy of a pipeline on a pairs file, with what could not be scored."""

    result: VerificationResult
    images: int
    images_without_face: tuple[Path, ...]
    unscored_pairs: int
    same_scores: tuple[float, ...]
    different_scores: tuple[float, ...]


def evaluate_pairs(
    pipeline: FacePipeline,
    pairs: Sequence[Pair],
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    batch_size: int = 32,
    show_progress: bool = True,
    mask_classifier: MaskClassifier | None = None,
) -> PairsEvaluation:
    """Embed the main face of every image in ``pairs`` and score them by k-fold accuracy.

    A pair with an image where no face is found, or that cannot be decoded,
    counts as an error, as in the standard protocol. Pairs are compared as
    :func:`core.pipeline.face_similarity` compares them, with ``mask_classifier``.
    """
    from tqdm import tqdm

    from core.errors import InvalidImageError
    from core.images import load_image
    from core.pipeline import face_similarity, main_face

    paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
    main_faces: dict[Path, Face] = {}
    without_face: list[Path] = []
    with tqdm(total=len(paths), unit="photo", desc="lfw pairs", disable=not show_progress) as progress:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            images = []
            for path in batch:
                try:
                    images.append(load_image(path, max_bytes=max_image_bytes, max_pixels=max_image_pixels))
                except InvalidImageError:
                    without_face.append(path)
            for image, found in zip(images, pipeline.analyze_batch(images), strict=True):
                face = main_face(found, image.width, image.height)
                if face is None:
                    without_face.append(Path(image.source or ""))
                else:
                    main_faces[Path(image.source or "")] = face
            progress.update(len(batch))

    scores = pair_scores(
        pairs, main_faces, lambda first, second: face_similarity(pipeline.layout, first, second, mask_classifier)
    )
    same = np.array([pair.same for pair in pairs])
    return PairsEvaluation(
        result=k_fold_accuracy(scores, same, split_folds(pairs)),
        images=len(paths),
        images_without_face=tuple(without_face),
        unscored_pairs=int(np.isnan(scores).sum()),
        same_scores=tuple(scores[same & ~np.isnan(scores)].tolist()),
        different_scores=tuple(scores[~same & ~np.isnan(scores)].tolist()),
    )
