"""Open-set identification benchmark: a gallery, mated and non-mated probes, CMC and DET metrics.

Data is organised one folder per person (``ROOT/<name>/<image>``). The gallery
enrolls the first K photos of each person, in sorted file-name order. A probe
set has mated probes, labelled by their person folder's name, and optionally
non-mated probes, photos of people who are not enrolled.

Metrics use the usual open-set identification terms:

- rank-k (closed-set): the fraction of mated probes whose identity is among the
  top k candidates. A probe with no face is a miss.
- FPIR(t): the fraction of non-mated probes whose top candidate scores at least
  ``t``. A non-mated probe with no face is never a false positive, but it stays
  in the denominator.
- FNIR(t): the fraction of mated probes whose top candidate is not their own
  identity or scores below ``t``. TPIR = 1 - FNIR.

Scores are cosine similarities, higher meaning more alike. Matching is
pluggable through :class:`Matcher`, with :class:`PlainMatcher` as the default.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sqlite3
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.descriptors import DescriptorLayout
from core.detection import DetectedFace, DetectionMethod
from core.errors import DatasetError, InvalidImageError
from core.images import DecodedImage, load_image, read_image_bytes
from core.mask_detection import MaskClassifier
from core.matching import DEFAULT_SYNTHETIC_WEIGHT, TemplateIndex
from core.pipeline import Face, FacePipeline, main_face

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

DEFAULT_GALLERY_SIZE = 5
DEFAULT_TARGET_FPIRS = (0.01, 0.001)
DEFAULT_MAX_RANK = 20

# The standard protocol over the shared datasets folder.
STANDARD_UNMASKED_PROBES = (5, 10)  # slice of sorted positions 5..9, which are each person's neutral photos 6 to 10
STANDARD_LFW_PEOPLE = 600

# Bump when what the cache stores for a photo changes meaning (for example the main-face rule).
_CACHE_FORMAT = 3


# --- Protocol --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatedProbe:
    """A probe photo of an enrolled person."""

    path: Path
    label: str


@dataclass(frozen=True)
class ProbeSet:
    """Probes scored together: mated probes and, for open-set rates, non-mated probes."""

    name: str
    mated: tuple[MatedProbe, ...]
    non_mated: tuple[Path, ...] = ()


@dataclass(frozen=True)
class IdentificationProtocol:
    """The photos to enroll and the probe sets to score against them.

    Attributes:
        gallery: enrolled photos of each person, keyed by label.
        probe_sets: scored one by one against the same gallery.

    Raises:
        DatasetError: the gallery is empty, a probe set name is empty or repeated, a
            probe set has no mated probe, a mated label is not enrolled, or a probe is
            also a gallery photo.
    """

    gallery: Mapping[str, tuple[Path, ...]]
    probe_sets: tuple[ProbeSet, ...]

    def __post_init__(self) -> None:
        if not any(self.gallery.values()):
            raise DatasetError("the gallery has no photos. Check the gallery folder and size.")
        enrolled = {path.resolve() for paths in self.gallery.values() for path in paths}
        names = [probe_set.name for probe_set in self.probe_sets]
        if not names:
            raise DatasetError("the protocol has no probe set. Add mated probes.")
        for probe_set in self.probe_sets:
            if not probe_set.name or names.count(probe_set.name) > 1:
                raise DatasetError(f"probe set names must be non-empty and unique, got {names}")
            if not probe_set.mated:
                raise DatasetError(f"probe set {probe_set.name!r} has no mated probes")
            unknown = sorted({probe.label for probe in probe_set.mated} - set(self.gallery))
            if unknown:
                raise DatasetError(
                    f"probe set {probe_set.name!r}: {len(unknown)} mated labels are not in the gallery, "
                    f"e.g. {unknown[0]!r}. Mated folder names must match gallery folder names."
                )
            probes = [probe.path for probe in probe_set.mated] + list(probe_set.non_mated)
            reused = [path for path in probes if path.resolve() in enrolled]
            if reused:
                raise DatasetError(
                    f"probe set {probe_set.name!r}: {len(reused)} probes are also gallery photos, e.g. {reused[0]}. "
                    "Choose probes outside each person's first gallery-size photos."
                )


def name_key(name: str) -> str:
    """Normalise a person's name for comparison across datasets.

    Case, accents and the separators ``_``, ``-`` and whitespace are ignored, so the
    LFW folder ``George_W_Bush`` and the ROF folder ``george_w_bush`` get the same key.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(character for character in decomposed if not unicodedata.combining(character))
    return " ".join(part for part in re.split(r"[\s_\-]+", letters.casefold()) if part)


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Return the image files in ``folder`` sorted by path, skipping hidden files and other suffixes.

    With ``recursive``, symlinked folders are followed, each real folder once, so a tree
    of links to other datasets works and a link loop ends.

    Raises:
        DatasetError: ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} not found")
    candidates = _walk_files(folder) if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def _walk_files(folder: Path) -> Iterator[Path]:
    """Yield every file below ``folder``, following symlinked folders and visiting each real folder once."""
    seen: set[str] = set()
    for current, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            folders.clear()
            continue
        seen.add(real)
        yield from (Path(current) / name for name in files)


def person_folders(root: Path) -> list[Path]:
    """Return the person folders of a folder-per-person tree, sorted by name, hidden ones skipped.

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} not found")
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def select_gallery(root: Path, size: int = DEFAULT_GALLERY_SIZE) -> dict[str, tuple[Path, ...]]:
    """Select the first ``size`` photos of each person under ``root``, keyed by folder name.

    People with no photo are left out.

    Raises:
        DatasetError: ``root`` is missing or ``size`` is below 1.
    """
    if size < 1:
        raise DatasetError(f"gallery size must be at least 1 photo per person, got {size}")
    gallery = {}
    for folder in person_folders(root):
        photos = list_images(folder)[:size]
        if photos:
            gallery[folder.name] = tuple(photos)
    return gallery


def select_mated(root: Path, *, start: int = 0, stop: int | None = None) -> tuple[MatedProbe, ...]:
    """Select each person's photos at sorted positions ``start`` to ``stop - 1``, labelled by folder name.

    Positions are 0-based and ``stop`` is exclusive, as in a slice. A ``stop`` of None
    means up to the last photo. A person with fewer photos contributes what the range covers.

    Raises:
        DatasetError: ``root`` is missing or the range is empty or negative.
    """
    if start < 0 or (stop is not None and stop <= start):
        raise DatasetError(f"invalid probe range: start {start}, stop {stop}. Use 0 <= start < stop.")
    return tuple(
        MatedProbe(path, folder.name) for folder in person_folders(root) for path in list_images(folder)[start:stop]
    )


def select_unlabelled(root: Path) -> tuple[Path, ...]:
    """Select every image under ``root``, at any depth, as non-mated probes.

    Raises:
        DatasetError: ``root`` is missing.
    """
    return tuple(list_images(root, recursive=True))


def select_first_photo_per_person(
    root: Path, *, exclude: Iterable[str] = (), people: int | None = None
) -> tuple[Path, ...]:
    """Select the first photo of each of the first ``people`` people under ``root``, as non-mated probes.

    People are taken in sorted folder-name order after dropping those whose
    :func:`name_key` matches a name in ``exclude`` (normally the gallery's names) and
    those with no photo. None takes every remaining person.

    Raises:
        DatasetError: ``root`` is missing or ``people`` is below 1.
    """
    if people is not None and people < 1:
        raise DatasetError(f"the number of non-mated people must be at least 1, got {people}")
    excluded = {name_key(name) for name in exclude}
    selected: list[Path] = []
    for folder in person_folders(root):
        if people is not None and len(selected) == people:
            break
        if name_key(folder.name) in excluded:
            continue
        photos = list_images(folder)
        if photos:
            selected.append(photos[0])
    return tuple(selected)


def standard_protocol(
    datasets_dir: Path, *, gallery_size: int = DEFAULT_GALLERY_SIZE, lfw_people: int = STANDARD_LFW_PEOPLE
) -> IdentificationProtocol:
    """Build the standard masked and unmasked protocol over the shared datasets folder.

    - gallery: the first ``gallery_size`` photos of each person in ``rof/neutral``.
    - "masked": every photo in ``rof/masked`` as mated probes, every photo in
      ``masked-strangers`` as non-mated probes.
    - "unmasked": each person's ``rof/neutral`` photos 6 to 10 as mated probes, and the
      first photo of each of the first ``lfw_people`` people in sorted ``lfw`` whose
      name is not a ``rof`` name as non-mated probes.

    The unmasked probes stay photos 6 to 10 for every gallery size, so that results
    for different gallery sizes are measured on the same probes.

    Raises:
        DatasetError: a folder is missing, ``gallery_size`` is not in 1..5, or the
            protocol is invalid.
    """
    start, stop = STANDARD_UNMASKED_PROBES
    if not 1 <= gallery_size <= start:
        raise DatasetError(
            f"the standard protocol enrolls 1 to {start} photos per person, got {gallery_size}, "
            f"because photos {start + 1} to {stop} are the unmasked probes"
        )
    rof = datasets_dir / "rof"
    gallery = select_gallery(rof / "neutral", gallery_size)
    rof_names = [folder.name for folder in person_folders(rof / "neutral") + person_folders(rof / "masked")]
    masked = ProbeSet(
        "masked",
        select_mated(rof / "masked"),
        select_unlabelled(datasets_dir / "masked-strangers"),
    )
    unmasked = ProbeSet(
        "unmasked",
        select_mated(rof / "neutral", start=start, stop=stop),
        select_first_photo_per_person(datasets_dir / "lfw", exclude=rof_names, people=lfw_people),
    )
    return IdentificationProtocol(gallery, (masked, unmasked))


# --- Metrics ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetCurve:
    """Open-set error trade-off, one point per threshold, thresholds in descending order.

    Attributes:
        thresholds: (T,) float64. The last, ``-inf``, accepts every probe that has a face.
        fpir: (T,) false positive identification rate at each threshold, non-decreasing.
        fnir: (T,) false negative identification rate at each threshold, non-increasing.
    """

    thresholds: np.ndarray
    fpir: np.ndarray
    fnir: np.ndarray


@dataclass(frozen=True)
class OperatingPoint:
    """TPIR at the lowest threshold whose FPIR does not exceed a target.

    Attributes:
        target_fpir: the FPIR asked for, as a fraction.
        threshold: the threshold used, or ``-inf`` when every threshold meets the target.
        fpir: the FPIR reached at ``threshold`` (at most ``target_fpir``).
        tpir: 1 - FNIR at ``threshold``.
        false_positives: non-mated probes at or above ``threshold``.
        non_mated: number of non-mated probes, the FPIR denominator.
        below_resolution: True when ``target_fpir`` < 1 / ``non_mated``. Then only FPIR 0
            meets the target, so ``threshold`` sits just above every non-mated score and
            ``tpir`` measures the system at FPIR 0 in this sample, not at the target.
    """

    target_fpir: float
    threshold: float
    fpir: float
    tpir: float
    false_positives: int
    non_mated: int
    below_resolution: bool


def mated_rank(candidates: Sequence[tuple[str, float]], label: str) -> tuple[float, float]:
    """Return the rank and score of ``label`` among ranked ``candidates``.

    Ties count against the probe: the rank is 1 plus the number of other candidates
    scoring at least as high, so a tie for first place is not a rank-1 hit.

    Returns:
        ``(rank, score)`` with the rank 1-based as a float, or ``(inf, nan)`` when
        ``label`` is not among the candidates.
    """
    scores = {name: score for name, score in candidates}
    if label not in scores:
        return math.inf, math.nan
    score = scores[label]
    rivals = sum(1 for name, other in scores.items() if name != label and other >= score)
    return float(1 + rivals), float(score)


def cmc_curve(ranks: np.ndarray, max_rank: int = DEFAULT_MAX_RANK) -> np.ndarray:
    """Compute the cumulative match characteristic: element k-1 is the rank-k identification rate.

    Args:
        ranks: (M,) 1-based rank of each mated probe's identity, ``inf`` for a probe
            with no face or whose identity was not returned.
        max_rank: length of the curve.

    Raises:
        ValueError: ``ranks`` is empty or ``max_rank`` is below 1.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("cannot compute a CMC curve without mated probes")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    return np.array([np.mean(ranks <= rank) for rank in range(1, max_rank + 1)])


def fpir_at(non_mated_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Compute the FPIR at each threshold.

    Args:
        non_mated_scores: (N,) top candidate score of each non-mated probe, NaN for a
            probe with no face. Such a probe counts in the denominator but never as a false positive.
        thresholds: (T,) thresholds. A score equal to a threshold is accepted.

    Raises:
        ValueError: ``non_mated_scores`` is empty.
    """
    scores = np.asarray(non_mated_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot compute FPIR without non-mated probes")
    found = np.sort(scores[~np.isnan(scores)])
    accepted = len(found) - np.searchsorted(found, np.asarray(thresholds, dtype=np.float64), side="left")
    return accepted / scores.size


def fnir_at(ranks: np.ndarray, mated_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Compute the FNIR at each threshold: mated probes not identified at rank 1 with a score at or above it.

    Args:
        ranks: (M,) rank of each mated probe's identity, ``inf`` when unranked.
        mated_scores: (M,) score of each mated probe's own identity, NaN when unranked.
        thresholds: (T,) thresholds.

    Raises:
        ValueError: the inputs are empty or differ in length.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    scores = np.asarray(mated_scores, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("cannot compute FNIR without mated probes")
    if ranks.shape != scores.shape:
        raise ValueError(f"ranks and mated_scores differ in shape: {ranks.shape} and {scores.shape}")
    hits = np.sort(scores[(ranks == 1) & ~np.isnan(scores)])
    identified = len(hits) - np.searchsorted(hits, np.asarray(thresholds, dtype=np.float64), side="left")
    return 1.0 - identified / ranks.size


def det_curve(ranks: np.ndarray, mated_scores: np.ndarray, non_mated_scores: np.ndarray) -> DetCurve:
    """Compute the DET curve at every threshold where the FPIR changes.

    The thresholds are the values just above each distinct non-mated score (the
    next float64 up), in descending order, then ``-inf``. Each is the lowest threshold
    with its FPIR, so each point has the lowest FNIR for its FPIR.
    """
    scores = np.asarray(non_mated_scores, dtype=np.float64)
    found = np.unique(scores[~np.isnan(scores)])[::-1]
    thresholds = np.concatenate([np.nextafter(found, np.inf), [-np.inf]])
    return DetCurve(thresholds, fpir_at(scores, thresholds), fnir_at(ranks, mated_scores, thresholds))


def tpir_at_fpir(
    ranks: np.ndarray, mated_scores: np.ndarray, non_mated_scores: np.ndarray, target_fpir: float
) -> OperatingPoint:
    """Find the TPIR at the lowest threshold whose FPIR is at most ``target_fpir``.

    Because FPIR only changes at non-mated scores, that threshold is the next float64
    above the (a+1)-th highest non-mated score, where a = floor(target x N) false
    positives are allowed among N non-mated probes. A mated probe then needs a score
    strictly above that non-mated score. When no more than a non-mated probes have a
    face, every threshold meets the target and the threshold is ``-inf``.

    Raises:
        ValueError: a set of probes is empty or ``target_fpir`` is outside (0, 1).
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target FPIR must be a fraction in (0, 1), got {target_fpir}")
    curve = det_curve(ranks, mated_scores, non_mated_scores)
    # Thresholds descend, so FPIR rises along the curve. The last point within the target has the lowest threshold.
    index = int(np.flatnonzero(curve.fpir <= target_fpir)[-1])
    non_mated = int(np.asarray(non_mated_scores).size)
    return OperatingPoint(
        target_fpir=target_fpir,
        threshold=float(curve.thresholds[index]),
        fpir=float(curve.fpir[index]),
        tpir=float(1.0 - curve.fnir[index]),
        false_positives=round(curve.fpir[index] * non_mated),
        non_mated=non_mated,
        below_resolution=target_fpir * non_mated < 1.0,
    )


# --- Matching --------------------------------------------------------------------------------------------------


class Searcher(Protocol):
    """Ranks gallery identities for a probe face."""

    def search(self, probe: Face, k: int) -> list[tuple[str, float]]:
        """Return up to ``k`` ``(label, score)`` pairs, best first, one per gallery identity.

        A searcher may return fewer than ``k`` (but should return at least 5 when the
        gallery has them). Identities left out count as not found at any rank.
        """
        ...

    def is_masked(self, probe: Face) -> bool | None:
        """Return whether the searcher treats ``probe`` as masked, None when it does not ask."""
        ...


class Matcher(Protocol):
    """Pluggable matching strategy of the benchmark: builds a :class:`Searcher` over a gallery."""

    @property
    def name(self) -> str:
        """Short id for reports, for example "plain"."""
        ...

    @property
    def synthetic_masks(self) -> int:
        """Synthetic-mask templates it wants per gallery photo (0 for none)."""
        ...

    def build(
        self, gallery: Mapping[str, Sequence[Face]], synthetic: Mapping[str, np.ndarray] | None = None
    ) -> Searcher:
        """Index the gallery: the faces of each enrolled person, keyed by label.

        A person whose photos had no face has an empty list and can never be found.
        ``synthetic`` holds each person's synthetic-mask descriptors as one (M, D) array,
        when :attr:`synthetic_masks` asks for them.
        """
        ...


class PlainMatcher:
    """Match against the enrolled templates as they are: a person scores the maximum cosine over their templates."""

    name = "plain"
    synthetic_masks = 0

    def build(
        self, gallery: Mapping[str, Sequence[Face]], synthetic: Mapping[str, np.ndarray] | None = None
    ) -> PlainSearcher:
        return PlainSearcher(gallery)


class PlainSearcher:
    """Exact cosine search with :class:`~core.matching.TemplateIndex`."""

    def __init__(self, gallery: Mapping[str, Sequence[Face]]) -> None:
        self._labels = list(gallery)
        vectors = [face.embedding for faces in gallery.values() for face in faces]
        dim = len(vectors[0]) if vectors else 1
        self._index = TemplateIndex(dim)
        if vectors:
            person_ids = [person for person, faces in enumerate(gallery.values()) for _ in faces]
            self._index.add(np.arange(len(vectors)), np.asarray(person_ids), np.stack(vectors))

    def search(self, probe: Face, k: int) -> list[tuple[str, float]]:
        if len(self._index) == 0:
            return []
        return [(self._labels[item.person_id], item.score) for item in self._index.search(probe.embedding, k)]

    def is_masked(self, probe: Face) -> bool | None:
        return None


class MaskAwareMatcher:
    """Match as the service does: the mask detector routes each probe, masked probes use the
    fused synthetic and original templates (:meth:`TemplateIndex.search_masked`), unmasked
    probes the original templates only. Each probe is compared on the descriptor part for
    its mask state (see :mod:`core.descriptors`).

    Args:
        classifier: the mask detector.
        synthetic_masks: synthetic-mask templates per gallery photo.
        synthetic_weight: see :meth:`TemplateIndex.search_masked`.
        layout: the descriptors' parts; None for a plain descriptor.
    """

    def __init__(
        self,
        classifier: MaskClassifier,
        *,
        synthetic_masks: int = 2,
        synthetic_weight: float = DEFAULT_SYNTHETIC_WEIGHT,
        layout: DescriptorLayout | None = None,
    ) -> None:
        if classifier is None:
            raise ValueError(
                "the mask-aware matcher needs a mask classifier; train one with `maskid train mask-detector`"
            )
        self.classifier = classifier
        self.synthetic_masks = synthetic_masks
        self.synthetic_weight = synthetic_weight
        self.layout = layout

    @property
    def name(self) -> str:
        return f"mask-aware ({self.synthetic_masks} synthetic masks, weight {self.synthetic_weight})"

    def build(
        self, gallery: Mapping[str, Sequence[Face]], synthetic: Mapping[str, np.ndarray] | None = None
    ) -> MaskAwareSearcher:
        return MaskAwareSearcher(self, gallery, synthetic or {})


class MaskAwareSearcher:
    """The searcher of :class:`MaskAwareMatcher`."""

    def __init__(
        self, matcher: MaskAwareMatcher, gallery: Mapping[str, Sequence[Face]], synthetic: Mapping[str, np.ndarray]
    ) -> None:
        self._matcher = matcher
        self._labels = list(gallery)
        dim = next((len(face.embedding) for faces in gallery.values() for face in faces), 1)
        self._index = TemplateIndex(dim)
        next_id = 0
        for person, label in enumerate(self._labels):
            originals = [face.embedding for face in gallery[label]]
            if not originals:
                continue
            masked = synthetic.get(label, np.zeros((0, dim), dtype=np.float32))
            vectors = np.concatenate([np.stack(originals), masked])
            flags = [False] * len(originals) + [True] * len(masked)
            self._index.add(
                np.arange(next_id, next_id + len(vectors)), [person] * len(vectors), vectors, synthetic=flags
            )
            next_id += len(vectors)

    def is_masked(self, probe: Face) -> bool | None:
        if probe.features is None:
            raise ValueError("the probe has no trunk features to detect a mask from; analyse it again")
        return bool(self._matcher.classifier.is_masked(probe.features))

    def search(self, probe: Face, k: int) -> list[tuple[str, float]]:
        if len(self._index) == 0:
            return []
        masked = self.is_masked(probe)
        layout = self._matcher.layout
        vector = probe.embedding if layout is None else layout.probe_vector(probe.embedding, masked)
        if masked:
            found = self._index.search_masked(vector, k, synthetic_weight=self._matcher.synthetic_weight)
        else:
            found = self._index.search(vector, k)
        return [(self._labels[item.person_id], item.score) for item in found]


# --- Face analysis with an embedding cache ---------------------------------------------------------------------


class AnalysisPipeline(Protocol):
    """Pipeline interface of the benchmark, met by :class:`core.pipeline.FacePipeline` and the reference recipe."""

    detector: object

    @property
    def model_id(self) -> str: ...

    def analyze_batch(self, images: Sequence[DecodedImage]) -> list[list[Face]]: ...


@dataclass(frozen=True)
class AnalysedPhoto:
    """The main face of one photo, or why there is none.

    Attributes:
        path: the photo's file.
        face: the main face (see :func:`core.pipeline.main_face`), None when no face was
            found or the file could not be decoded.
        face_count: faces the detector found.
        error: why the file could not be read or decoded, None when it was.
    """

    path: Path
    face: Face | None
    face_count: int
    error: str | None = None


def analysis_id(pipeline: AnalysisPipeline) -> str:
    """Return the cache key of a pipeline's output: descriptor space plus the detector settings.

    The model id alone is not enough, because detector settings such as the minimum
    face size decide which photos have a face at all. Every public attribute of the
    detector that is a number, string, bool or tuple is part of the key, and so are the
    embedding precision and whether synthetic-mask crops are mirrored, which shift descriptors
    slightly without changing the model id.
    """
    # NOTE: module constants of core.detection (such as the retry pass's thresholds) are
    # not part of the key; delete the cache after changing them.
    detector = pipeline.detector
    settings = sorted(
        (name, value)
        for name, value in vars(detector).items()
        if not name.startswith("_") and isinstance(value, (int, float, str, bool, tuple))
    )
    detector_config = " ".join(f"{name}={value!r}" for name, value in settings)
    embedder = getattr(pipeline, "embedder", None)
    precision = getattr(embedder, "resolved_precision", "fp32")
    masked_flip = getattr(pipeline, "synthetic_mask_flip", True)
    embedding_config = f"precision={precision} synthetic_mask_flip={masked_flip}"
    return f"{pipeline.model_id}|{type(detector).__name__} {detector_config}|{embedding_config}|format {_CACHE_FORMAT}"


class EmbeddingCache:
    """SQLite store of each photo's main face per (analysis id, file SHA-256).

    Each row stores the face count and, when there is a face, the main face's box,
    probability, landmarks, detection method and descriptor, enough to rebuild the
    :class:`~core.pipeline.Face`. Rows are committed per batch, so an interrupted run
    keeps its work.

    Args:
        path: the database file. Its folder is created.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._connection = sqlite3.connect(path, timeout=30.0)
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS photos ("
            " analysis_id TEXT NOT NULL, sha256 TEXT NOT NULL, face_count INTEGER NOT NULL,"
            " box BLOB, probability REAL, landmarks BLOB, method TEXT, embedding BLOB, features BLOB,"
            " PRIMARY KEY (analysis_id, sha256))"
        )
        columns = {row[1] for row in self._connection.execute("PRAGMA table_info(photos)")}
        if "features" not in columns:  # caches written before trunk features were kept
            self._connection.execute("ALTER TABLE photos ADD COLUMN features BLOB")
        # Masks are seeded by the photo's hash, so a longer list extends a shorter one.
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS masked ("
            " analysis_id TEXT NOT NULL, sha256 TEXT NOT NULL, count INTEGER NOT NULL, dim INTEGER NOT NULL,"
            " embeddings BLOB NOT NULL, PRIMARY KEY (analysis_id, sha256))"
        )
        self._connection.commit()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, key: str, sha256s: Collection[str]) -> dict[str, tuple[int, Face | None]]:
        """Return ``(face_count, main face)`` of each cached SHA-256 in ``sha256s``."""
        found: dict[str, tuple[int, Face | None]] = {}
        unique = list(dict.fromkeys(sha256s))
        for start in range(0, len(unique), 500):  # stays under SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            rows = self._connection.execute(
                "SELECT sha256, face_count, box, probability, landmarks, method, embedding, features FROM photos"
                f" WHERE analysis_id = ? AND sha256 IN ({','.join('?' * len(chunk))})",
                [key, *chunk],
            )
            for sha256, face_count, *face_columns in rows:
                found[sha256] = (face_count, _face_from_row(*face_columns))
        return found

    def put(self, key: str, entries: Mapping[str, tuple[int, Face | None]]) -> None:
        """Store ``(face_count, main face)`` per SHA-256 and commit."""
        rows = [(key, sha256, face_count, *_face_to_row(face)) for sha256, (face_count, face) in entries.items()]
        self._connection.executemany("INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._connection.commit()

    def get_masked(self, key: str, sha256: str, count: int) -> np.ndarray | None:
        """Return the first ``count`` synthetic-mask descriptors of a photo's main face, if cached."""
        row = self._connection.execute(
            "SELECT count, dim, embeddings FROM masked WHERE analysis_id = ? AND sha256 = ?", (key, sha256)
        ).fetchone()
        if row is None or row[0] < count:
            return None
        vectors = np.frombuffer(row[2], dtype=np.float32).reshape(row[0], row[1])
        return vectors[:count].copy()

    def put_masked(self, key: str, sha256: str, vectors: np.ndarray) -> None:
        """Store the synthetic-mask descriptors of a photo's main face, (count, D), and commit."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._connection.execute(
            "INSERT OR REPLACE INTO masked VALUES (?, ?, ?, ?, ?)",
            (key, sha256, len(vectors), vectors.shape[1], vectors.tobytes()),
        )
        self._connection.commit()


def _face_to_row(face: Face | None) -> tuple[Any, ...]:
    if face is None:
        return None, None, None, None, None, None
    box = np.asarray(face.box, dtype=np.float64).tobytes()
    landmarks = np.asarray(face.detection.landmarks, dtype=np.float32).tobytes()
    embedding = np.asarray(face.embedding, dtype=np.float32).tobytes()
    features = None if face.features is None else np.asarray(face.features, dtype=np.float32).tobytes()
    return box, float(face.probability), landmarks, face.detection.method, embedding, features


def _face_from_row(
    box: bytes | None,
    probability: float | None,
    landmarks: bytes | None,
    method: DetectionMethod | None,
    embedding: bytes | None,
    features: bytes | None,
) -> Face | None:
    if box is None or probability is None or landmarks is None or method is None or embedding is None:
        return None
    x1, y1, x2, y2 = (float(value) for value in np.frombuffer(box, dtype=np.float64))
    points = np.frombuffer(landmarks, dtype=np.float32).reshape(5, 2).copy()
    detection = DetectedFace((x1, y1, x2, y2), probability, points, method)
    vector = np.frombuffer(embedding, dtype=np.float32).copy()
    return Face(detection, vector, None if features is None else np.frombuffer(features, dtype=np.float32).copy())


def analyse_photos(
    pipeline: AnalysisPipeline,
    paths: Iterable[Path],
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
) -> dict[Path, AnalysedPhoto]:
    """Find the main face of each photo, reusing cached results for files already analysed.

    Files are identified by the SHA-256 of their bytes, so a renamed or copied photo
    is a cache hit. A file that cannot be read, decoded or analysed becomes a photo
    with no face and an ``error``, and it is not cached.
    """
    from tqdm import tqdm

    unique = list(dict.fromkeys(paths))
    key = analysis_id(pipeline)
    results: dict[Path, AnalysedPhoto] = {}
    cached_count = 0
    with tqdm(total=len(unique), unit="photo", desc="analysing photos", disable=not show_progress) as progress:
        for start in range(0, len(unique), batch_size):
            batch = unique[start : start + batch_size]
            contents: dict[Path, bytes] = {}
            for path in batch:
                try:
                    contents[path] = read_image_bytes(path, max_bytes=max_image_bytes)
                except InvalidImageError as exc:
                    results[path] = AnalysedPhoto(path, None, 0, str(exc))
            hashes = {path: hashlib.sha256(data).hexdigest() for path, data in contents.items()}
            cached = cache.get(key, hashes.values()) if cache is not None else {}

            pending: list[tuple[Path, DecodedImage]] = []
            for path, data in contents.items():
                if hashes[path] in cached:
                    face_count, face = cached[hashes[path]]
                    results[path] = AnalysedPhoto(path, face, face_count)
                    cached_count += 1
                    continue
                try:
                    image = load_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels, label=str(path))
                except InvalidImageError as exc:
                    results[path] = AnalysedPhoto(path, None, 0, str(exc))
                else:
                    pending.append((path, image))

            new_entries: dict[str, tuple[int, Face | None]] = {}
            for path, image, outcome in _analyse_batch(pipeline, pending):
                if isinstance(outcome, str):
                    results[path] = AnalysedPhoto(path, None, 0, outcome)
                    continue
                face = main_face(outcome, image.width, image.height)
                results[path] = AnalysedPhoto(path, face, len(outcome))
                new_entries[image.sha256] = (len(outcome), face)
            if cache is not None and new_entries:
                cache.put(key, new_entries)
            progress.update(len(batch))

    logger.info("analysed %d photos, %d from the cache", len(unique), cached_count)
    return {path: results[path] for path in unique}


def _analyse_batch(
    pipeline: AnalysisPipeline, pending: Sequence[tuple[Path, DecodedImage]]
) -> list[tuple[Path, DecodedImage, list[Face] | str]]:
    """Analyse a batch, or its photos one by one when the pipeline raises, to isolate the failing photo.

    A photo whose analysis raises gets the error message in place of its faces, so
    one bad photo is reported instead of ending a run over thousands.
    """
    if not pending:
        return []
    try:
        analysed = pipeline.analyze_batch([image for _, image in pending])
        return [(path, image, faces) for (path, image), faces in zip(pending, analysed, strict=True)]
    except (ValueError, RuntimeError) as exc:
        if len(pending) == 1:
            path, image = pending[0]
            logger.warning("face analysis of %s (%dx%d) failed: %s", path, image.width, image.height, exc)
            return [(path, image, f"face analysis failed: {type(exc).__name__}: {exc}")]
        logger.debug("face analysis of a batch of %d failed, retrying photo by photo: %s", len(pending), exc)
    return [result for item in pending for result in _analyse_batch(pipeline, [item])]


def embed_masked_photos(
    pipeline: FacePipeline,
    photos: Iterable[AnalysedPhoto],
    count: int,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
) -> dict[Path, np.ndarray]:
    """Draw ``count`` synthetic masks on the main face of each photo and embed them, as enrollment does.

    Photos without a face are left out. Returns (count, D) descriptors per photo path.
    """
    from tqdm import tqdm

    with_face = [photo for photo in photos if photo.face is not None]
    key = analysis_id(pipeline)
    masked: dict[Path, np.ndarray] = {}
    for photo in tqdm(with_face, unit="photo", desc="drawing masks", disable=not show_progress):
        data = read_image_bytes(photo.path, max_bytes=max_image_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        vectors = cache.get_masked(key, sha256, count) if cache is not None else None
        if vectors is None:
            image = load_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels, label=str(photo.path))
            vectors = pipeline.embed_masked(image, photo.face.detection, count)
            if cache is not None:
                cache.put_masked(key, sha256, vectors)
        masked[photo.path] = vectors
    logger.info("drew %d synthetic masks on each of %d photos", count, len(masked))
    return masked


# --- Scoring ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatedResult:
    """Ranking of one mated probe.

    Attributes:
        rank: 1-based rank of the probe's own identity, ``inf`` when it has no face or
            its identity was not returned.
        score: score of its own identity, NaN when unranked.
        top_label: best candidate, None when the probe has no face.
        top_score: best candidate's score, NaN when the probe has no face.
        detection_method: how the main face was found (see
            :attr:`core.detection.DetectedFace.method`), None when the probe has no face.
        masked: whether the matcher treated the probe as masked, None when it does not ask
            or the probe has no face.
    """

    path: Path
    label: str
    rank: float
    score: float
    top_label: str | None
    top_score: float
    detection_method: str | None
    masked: bool | None = None


@dataclass(frozen=True)
class NonMatedResult:
    """Best candidate for one non-mated probe, with None and NaN when the probe has no face."""

    path: Path
    top_label: str | None
    top_score: float
    detection_method: str | None
    masked: bool | None = None


@dataclass(frozen=True)
class ProbeSetResult:
    """Metrics of one probe set.

    Attributes:
        rank1: closed-set rank-1 rate over all mated probes, probes with no face counted as misses.
        rank5: the same at rank 5.
        cmc: rank-1 to rank-``max_rank`` identification rates.
        operating_points: TPIR at each target FPIR, empty without non-mated probes.
        det: the DET curve, None without non-mated probes.
    """

    name: str
    mated: tuple[MatedResult, ...]
    non_mated: tuple[NonMatedResult, ...]
    rank1: float
    rank5: float
    cmc: tuple[float, ...]
    operating_points: tuple[OperatingPoint, ...]
    det: DetCurve | None

    @property
    def mated_without_face(self) -> tuple[Path, ...]:
        return tuple(result.path for result in self.mated if result.detection_method is None)

    @property
    def non_mated_without_face(self) -> tuple[Path, ...]:
        return tuple(result.path for result in self.non_mated if result.detection_method is None)


@dataclass(frozen=True)
class IdentificationEvaluation:
    """Results of a protocol run.

    Attributes:
        model_id: descriptor space of the pipeline.
        matcher: name of the matcher.
        gallery_people: enrolled people, including any whose photos had no face.
        gallery_photos: enrolled photos.
        gallery_without_face: enrolled photos with no face, so without a template.
        failed: photos that could not be read, decoded or analysed, with the reason.
            They count as photos with no face.
    """

    model_id: str
    matcher: str
    gallery_people: int
    gallery_photos: int
    gallery_without_face: tuple[Path, ...]
    probe_sets: tuple[ProbeSetResult, ...]
    failed: tuple[tuple[Path, str], ...] = ()


def build_searcher(
    protocol: IdentificationProtocol,
    photos: Mapping[Path, AnalysedPhoto],
    matcher: Matcher,
    synthetic: Mapping[Path, np.ndarray] | None = None,
) -> Searcher:
    """Enroll the protocol's gallery photos that have a face, with their synthetic-mask descriptors, in ``matcher``."""
    gallery_faces = {
        label: [photos[path].face for path in paths if photos[path].face is not None]
        for label, paths in protocol.gallery.items()
    }
    synthetic_by_label = {
        label: np.concatenate([synthetic[path] for path in paths if path in synthetic])
        for label, paths in protocol.gallery.items()
        if synthetic is not None and any(path in synthetic for path in paths)
    }
    logger.info("gallery: %d people, %d templates", len(gallery_faces), sum(map(len, gallery_faces.values())))
    return matcher.build(gallery_faces, synthetic_by_label)


def score_protocol(
    protocol: IdentificationProtocol,
    photos: Mapping[Path, AnalysedPhoto],
    *,
    model_id: str,
    matcher: Matcher | None = None,
    synthetic: Mapping[Path, np.ndarray] | None = None,
    target_fpirs: Sequence[float] = DEFAULT_TARGET_FPIRS,
    max_rank: int = DEFAULT_MAX_RANK,
) -> IdentificationEvaluation:
    """Enroll the gallery with ``matcher`` and score every probe set from already analysed photos.

    Args:
        synthetic: synthetic-mask descriptors of gallery photos, (M, D) per path, for a
            matcher that uses them.

    Raises:
        KeyError: a photo of the protocol is missing from ``photos``.
    """
    matcher = matcher or PlainMatcher()
    searcher = build_searcher(protocol, photos, matcher, synthetic)
    without_face = [path for paths in protocol.gallery.values() for path in paths if photos[path].face is None]

    results = tuple(
        _score_probe_set(probe_set, photos, searcher, target_fpirs, max_rank) for probe_set in protocol.probe_sets
    )
    failed = tuple((path, photo.error) for path, photo in photos.items() if photo.error is not None)
    return IdentificationEvaluation(
        model_id=model_id,
        matcher=matcher.name,
        gallery_people=len(protocol.gallery),
        gallery_photos=sum(map(len, protocol.gallery.values())),
        gallery_without_face=tuple(without_face),
        probe_sets=results,
        failed=failed,
    )


def _score_probe_set(
    probe_set: ProbeSet,
    photos: Mapping[Path, AnalysedPhoto],
    searcher: Searcher,
    target_fpirs: Sequence[float],
    max_rank: int,
) -> ProbeSetResult:
    k = max(max_rank, 5)
    mated = []
    for probe in probe_set.mated:
        face = photos[probe.path].face
        candidates = searcher.search(face, k) if face is not None else []
        rank, score = mated_rank(candidates, probe.label)
        top_label, top_score = candidates[0] if candidates else (None, math.nan)
        method = face.detection.method if face is not None else None
        masked = searcher.is_masked(face) if face is not None else None
        mated.append(MatedResult(probe.path, probe.label, rank, score, top_label, float(top_score), method, masked))

    non_mated = []
    for path in probe_set.non_mated:
        face = photos[path].face
        candidates = searcher.search(face, 1) if face is not None else []
        top_label, top_score = candidates[0] if candidates else (None, math.nan)
        method = face.detection.method if face is not None else None
        masked = searcher.is_masked(face) if face is not None else None
        non_mated.append(NonMatedResult(path, top_label, float(top_score), method, masked))

    ranks = np.array([result.rank for result in mated])
    mated_scores = np.array([result.score for result in mated])
    cmc = cmc_curve(ranks, max_rank)
    operating_points: tuple[OperatingPoint, ...] = ()
    det = None
    if non_mated:
        non_mated_scores = np.array([result.top_score for result in non_mated])
        det = det_curve(ranks, mated_scores, non_mated_scores)
        operating_points = tuple(tpir_at_fpir(ranks, mated_scores, non_mated_scores, target) for target in target_fpirs)
    return ProbeSetResult(
        name=probe_set.name,
        mated=tuple(mated),
        non_mated=tuple(non_mated),
        rank1=float(np.mean(ranks <= 1)),
        rank5=float(np.mean(ranks <= 5)),
        cmc=tuple(float(value) for value in cmc),
        operating_points=operating_points,
        det=det,
    )


def analyse_protocol(
    pipeline: AnalysisPipeline,
    protocol: IdentificationProtocol,
    *,
    synthetic_masks: int,
    max_image_bytes: int,
    max_image_pixels: int,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
) -> tuple[dict[Path, AnalysedPhoto], dict[Path, np.ndarray] | None]:
    """Find the main face of every photo of ``protocol``, and draw ``synthetic_masks`` masks on each gallery face.

    Returns the analysed photos and the synthetic-mask descriptors per gallery photo
    (None when ``synthetic_masks`` is 0).

    Raises:
        DatasetError: synthetic masks were requested from a pipeline that cannot draw them.
    """
    paths = [path for paths in protocol.gallery.values() for path in paths]
    for probe_set in protocol.probe_sets:
        paths.extend(probe.path for probe in probe_set.mated)
        paths.extend(probe_set.non_mated)
    limits = {"max_image_bytes": max_image_bytes, "max_image_pixels": max_image_pixels}
    photos = analyse_photos(pipeline, paths, cache=cache, batch_size=batch_size, show_progress=show_progress, **limits)
    if synthetic_masks == 0:
        return photos, None
    if not isinstance(pipeline, FacePipeline):
        raise DatasetError(f"{synthetic_masks} synthetic masks requested, but only maskid's pipeline draws them")
    gallery_photos = [photos[path] for paths in protocol.gallery.values() for path in paths]
    synthetic = embed_masked_photos(
        pipeline, gallery_photos, synthetic_masks, cache=cache, show_progress=show_progress, **limits
    )
    return photos, synthetic


def evaluate_identification(
    pipeline: AnalysisPipeline,
    protocol: IdentificationProtocol,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    matcher: Matcher | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    target_fpirs: Sequence[float] = DEFAULT_TARGET_FPIRS,
    max_rank: int = DEFAULT_MAX_RANK,
    show_progress: bool = True,
) -> IdentificationEvaluation:
    """Analyse every photo of ``protocol`` with ``pipeline`` and score it with ``matcher`` (default plain)."""
    matcher = matcher or PlainMatcher()
    photos, synthetic = analyse_protocol(
        pipeline,
        protocol,
        synthetic_masks=matcher.synthetic_masks,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        cache=cache,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return score_protocol(
        protocol,
        photos,
        model_id=pipeline.model_id,
        matcher=matcher,
        synthetic=synthetic,
        target_fpirs=target_fpirs,
        max_rank=max_rank,
    )
