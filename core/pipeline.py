"""The face pipeline: decoded image in, every face with its box, landmarks and descriptor out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.alignment import AlignmentConfig, align_face
from core.backbones import Backbone, FaceNetCasia
from core.descriptors import DescriptorLayout
from core.detection import DetectedFace, FaceDetector
from core.embedding import Embedder
from core.images import DecodedImage
from core.mask_detection import MaskClassifier
from core.masks import synthesize_masked
from core.settings import BASE_MODEL, SIAMESE_MODEL, Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Face:
    """A detected face with its descriptor.

    Attributes:
        detection: box ``(x1, y1, x2, y2)`` in image pixels, probability and landmarks.
        embedding: (D,) float32 unit-length descriptor.
        features: (F,) float32 pooled trunk features (see
            :meth:`core.embedding.Embedder.embed_with_features`), which the mask detector
            reads; None where they were not kept, such as for gallery templates.
    """

    detection: DetectedFace
    embedding: np.ndarray
    features: np.ndarray | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.detection.box

    @property
    def probability(self) -> float:
        return self.detection.probability


class FacePipeline:
    """Detect, align and embed faces. Models load on first use, never at construction.

    Args:
        detector: finds faces and their landmarks.
        embedder: turns aligned crops into descriptors.
        alignment: how crops are cut; part of :attr:`model_id`.
        synthetic_mask_flip: average the mirrored crop into synthetic-mask descriptors too,
            when the embedder flips. Off, they cost half as much.
    """

    def __init__(
        self,
        detector: FaceDetector,
        embedder: Embedder,
        alignment: AlignmentConfig,
        *,
        synthetic_mask_flip: bool = False,
    ) -> None:
        if alignment.size != embedder.backbone.input_size:
            raise ValueError(
                f"alignment size {alignment.size} does not match the backbone input size {embedder.backbone.input_size}"
            )
        self.detector = detector
        self.embedder = embedder
        self.alignment = alignment
        self.synthetic_mask_flip = synthetic_mask_flip

    @classmethod
    def from_settings(cls, settings: Settings, *, alignment: AlignmentConfig | None = None) -> FacePipeline:
        """Build the configured pipeline: MTCNN, margin-32 crop, and the network ``settings.model`` names.

        ``"base"`` is FaceNet CASIA alone; ``"siamese"`` adds the twin-network head shipped
        with maskid, and a path adds a head file from ``maskid train siamese``. Descriptors
        are averaged with those of the mirrored crop when ``settings.flip`` is on.
        """
        detector = FaceDetector(
            device=settings.device,
            min_face_size=settings.min_face_size,
            min_probability=settings.min_detection_probability,
            retry=settings.detection_retry,
            whole_image_fallback=settings.whole_image_fallback,
            max_side=settings.detection_max_side,
        )
        backbone = load_backbone(settings)
        embedder = Embedder(
            backbone,
            device=settings.device,
            batch_size=settings.batch_size,
            flip=settings.flip,
            torch_threads=settings.torch_threads,
            precision=settings.embedding_precision,
        )
        alignment = alignment or AlignmentConfig()
        return cls(detector, embedder, alignment, synthetic_mask_flip=settings.synthetic_mask_flip)

    @property
    def model_id(self) -> str:
        """Id of the descriptor space: backbone, test-time flip and alignment together.

        Templates with different ids are never compared, because a change of
        alignment shifts descriptors as surely as a change of network.
        """
        return f"{self.embedder.model_id}/{self.alignment.tag}"

    @property
    def feature_model_id(self) -> str:
        """Id of the space of :attr:`Face.features`, which a mask classifier is trained on.

        It equals :attr:`model_id` for the base network and stays the base network's id
        under a fine-tuned head, whose backbone outputs the base network's pooled features.
        """
        flip = "+flip" if self.embedder.flip else ""
        return f"{self.embedder.backbone.feature_model_id}{flip}/{self.alignment.tag}"

    @property
    def layout(self) -> DescriptorLayout:
        """The descriptor's parts and the part each kind of probe is compared on (see :mod:`core.descriptors`)."""
        return self.embedder.backbone.layout

    def analyze(self, image: DecodedImage) -> list[Face]:
        """Return every face in ``image`` with its descriptor, largest first."""
        return self.analyze_batch([image])[0]

    def analyze_batch(self, images: Sequence[DecodedImage]) -> list[list[Face]]:
        """Analyse several images with one detection pass per image size and one embedding pass."""
        detections = self.detector.detect_batch([image.pixels for image in images])
        return self.embed_detections(images, detections)

    def embed_detections(
        self, images: Sequence[DecodedImage], detections: Sequence[Sequence[DetectedFace]]
    ) -> list[list[Face]]:
        """Align and embed faces that were already detected in ``images``."""
        crops = []
        for image, faces in zip(images, detections, strict=True):
            crops.extend(align_face(image.pixels, face, self.alignment) for face in faces)
        size = self.alignment.size
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)
        vectors, features = self.embedder.embed_with_features(stacked)

        results: list[list[Face]] = []
        position = 0
        for faces in detections:
            results.append(
                [Face(face, vectors[position + index], features[position + index]) for index, face in enumerate(faces)]
            )
            position += len(faces)
        logger.debug("analysed %d images, %d faces", len(images), position)
        return results

    def embed_masked(self, image: DecodedImage, detection: DetectedFace, count: int) -> np.ndarray:
        """Draw ``count`` synthetic masks on one detected face and return their descriptors.

        The masks are seeded by the photo's SHA-256 (see :func:`masked_variants_seed`), so
        enrolling the same photo twice stores the same templates.

        Returns:
            (count, D) float32 unit-length descriptors, one per mask variant.
        """
        return self.analyze_masked(image, detection, count)[0]

    def analyze_masked(self, image: DecodedImage, detection: DetectedFace, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`embed_masked`, and also return the (count, F) pooled features of each variant."""
        variants = synthesize_masked(image.pixels, detection.landmarks, count, seed=masked_variants_seed(image.sha256))
        crops = [align_face(pixels, detection, self.alignment) for pixels in variants]
        size = self.alignment.size
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)
        return self.embedder.embed_with_features(stacked, flip=self.embedder.flip and self.synthetic_mask_flip)


def load_backbone(settings: Settings) -> Backbone:
    """Return the backbone that ``settings.model`` names (see :meth:`FacePipeline.from_settings`).

    Raises:
        ModelError: the head file is missing or unreadable.
    """
    if settings.model == BASE_MODEL:
        return FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir)

    from core.siamese.backbone import SiameseBackbone, shipped_head_path

    head = shipped_head_path() if settings.model == SIAMESE_MODEL else Path(settings.model)
    return SiameseBackbone(settings, head)


def pair_is_masked(first: Face, second: Face, classifier: MaskClassifier | None) -> bool:
    """Tell whether ``classifier`` finds a mask on either face; False without a classifier."""
    if classifier is None:
        return False
    return any(face.features is not None and bool(classifier.is_masked(face.features)) for face in (first, second))


def face_similarity(
    layout: DescriptorLayout, first: Face, second: Face, classifier: MaskClassifier | None = None
) -> float:
    """Return the cosine similarity of two faces on the part for their mask state.

    The pair is compared on the masked part when ``classifier`` finds a mask on either
    face (see :func:`pair_is_masked`), and on the unmasked part otherwise. A
    single-part descriptor is compared whole.
    """
    return layout.similarity(first.embedding, second.embedding, pair_is_masked(first, second, classifier))


def masked_variants_seed(sha256: str) -> int:
    """Seed of a photo's synthetic masks, from its file hash: the same photo always gets the same masks."""
    return int(sha256[:16], 16)


def main_face(faces: Sequence[Face], width: int, height: int) -> Face | None:
    """Pick the subject of a portrait: among faces at least half the largest one's area, the most central.

    Returns None when ``faces`` is empty.
    """
    if not faces:
        return None
    largest = max(face.detection.area for face in faces)
    contenders = [face for face in faces if face.detection.area >= 0.5 * largest]

    def distance_to_center(face: Face) -> float:
        x1, y1, x2, y2 = face.box
        return ((x1 + x2) / 2 - width / 2) ** 2 + ((y1 + y2) / 2 - height / 2) ** 2

    return min(contenders, key=distance_to_center)
