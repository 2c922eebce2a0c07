"""Face detection with MTCNN: boxes, detection probabilities and five landmarks.

MTCNN comes from facenet-pytorch 2.6.0, whose wheel ships the P-Net, R-Net and
O-Net weights, so nothing is downloaded. The network loads on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Cascade thresholds of P-Net, R-Net and O-Net (facenet-pytorch's defaults).
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)


@dataclass(frozen=True)
class DetectedFace:
    """One face found in an image.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the input image, floats, may extend past its edges.
        probability: O-Net face probability in [0, 1].
        landmarks: (5, 2) float32 ``(x, y)`` pixels, in the order left eye, right eye,
            nose tip, left mouth corner, right mouth corner ("left" as seen in the image).
    """

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


class FaceDetector:
    """MTCNN face detector that loads its networks lazily, once, thread-safely.

    Args:
        device: ``"cpu"`` or ``"cuda[:N]"``.
        min_face_size: smallest face side, in pixels, that the image pyramid searches for.
        min_probability: faces below this O-Net probability are dropped.
        stage_thresholds: P-Net, R-Net and O-Net acceptance thresholds.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_face_size: int = 20,
        min_probability: float = 0.9,
        stage_thresholds: tuple[float, float, float] = DEFAULT_STAGE_THRESHOLDS,
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be at least 1 pixel, got {min_face_size}")
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        self.device = device
        self.min_face_size = min_face_size
        self.min_probability = min_probability
        self.stage_thresholds = stage_thresholds
        self._mtcnn: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def _network(self) -> torch.nn.Module:
        with self._lock:
            if self._mtcnn is None:
                from facenet_pytorch import MTCNN

                logger.info("loading MTCNN on %s (min face %d px)", self.device, self.min_face_size)
                self._mtcnn = MTCNN(
                    keep_all=True,
                    min_face_size=self.min_face_size,
                    thresholds=list(self.stage_thresholds),
                    device=torch.device(self.device),
                )
            return self._mtcnn

    def detect(self, pixels: np.ndarray) -> list[DetectedFace]:
        """Find every face in one (H, W, 3) uint8 RGB image, largest first."""
        return self.detect_batch([pixels])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Find faces in several images; images of the same size share one MTCNN pass.

        Returns one list per input image, each sorted by box area, largest first.
        An empty input returns an empty list.
        """
        results: list[list[DetectedFace]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, pixels in enumerate(images):
            _check_pixels(pixels)
            by_shape.setdefault(pixels.shape, []).append(index)

        network = self._network()
        for indices in by_shape.values():
            stacked = np.stack([images[index] for index in indices])
            with torch.inference_mode():
                boxes, probabilities, landmarks = network.detect(stacked, landmarks=True)
            for position, index in enumerate(indices):
                results[index] = self._faces_from_mtcnn(boxes[position], probabilities[position], landmarks[position])
        return results

    def _faces_from_mtcnn(self, boxes, probabilities, landmarks) -> list[DetectedFace]:
        if boxes is None:
            return []
        faces = []
        for box, probability, points in zip(boxes, probabilities, landmarks, strict=True):
            if probability is None or float(probability) < self.min_probability:
                continue
            face = DetectedFace(
                box=tuple(float(value) for value in box),
                probability=float(probability),
                landmarks=np.asarray(points, dtype=np.float32),
            )
            if min(face.width, face.height) >= 1.0:
                faces.append(face)
        faces.sort(key=lambda face: face.area, reverse=True)
        return faces


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {pixels.shape} dtype {pixels.dtype}")
