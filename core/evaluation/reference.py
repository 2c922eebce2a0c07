"""The plain facenet-pytorch recipe as a pipeline, the reference that maskid's numbers are compared with.

Most FaceNet projects run ``MTCNN(image_size=160, margin=M)`` from facenet-pytorch,
keep the largest face, cut its box plus a margin, stretch it to 160x160 without
keeping the aspect ratio, and embed it with ``InceptionResnetV1``. No retry pass,
no whole-photo fallback, no mirror averaging. :class:`ReferencePipeline` does
exactly that with maskid's converted CASIA-WebFace weights, so a benchmark can run
both recipes over the same photos and the same matching code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from core.detection import DetectedFace
from core.devices import torch_device
from core.facenet_weights import build_model, load_facenet_state_dict
from core.images import DecodedImage
from core.pipeline import Face
from core.settings import Settings

logger = logging.getLogger(__name__)

# facenet-pytorch's default margin is 0; 16 is the one whose figures match the baseline
# that docs/benchmarks.md compares with (margins 0 and 32 land on either side of it).
REFERENCE_MARGIN = 16
CROP_SIZE = 160


@dataclass(frozen=True)
class ReferenceDetector:
    """The detector settings of the reference recipe; :func:`analysis_id` keys its cache on them."""

    margin: int = REFERENCE_MARGIN
    min_face_size: int = 20
    stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)


class ReferencePipeline:
    """facenet-pytorch MTCNN on each photo, then InceptionResnetV1 one face at a time.

    Only the largest face of each photo is returned, as ``MTCNN(select_largest=True)`` does.

    Args:
        settings: where the FaceNet graph and the weight cache are, and the device.
        margin: pixels added around the box, in facenet-pytorch's convention.
    """

    def __init__(self, settings: Settings, *, margin: int = REFERENCE_MARGIN) -> None:
        self.detector = ReferenceDetector(margin=margin)
        self._settings = settings
        self._device = torch_device(settings.device)
        self._models: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return f"reference-facenet-pytorch/margin{self.detector.margin}"

    @property
    def feature_model_id(self) -> str:
        """Id of the pooled-feature space, which no maskid mask classifier is trained on."""
        return self.model_id

    def analyze_batch(self, images: Sequence[DecodedImage]) -> list[list[Face]]:
        """Return the largest face of each image, or an empty list where MTCNN finds none."""
        return [self._analyze(image) for image in images]

    def _load(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        with self._lock:
            if self._models is None:
                from facenet_pytorch import MTCNN

                logger.info("loading the reference facenet-pytorch recipe on %s", self._device)
                mtcnn = MTCNN(
                    image_size=CROP_SIZE,
                    margin=self.detector.margin,
                    min_face_size=self.detector.min_face_size,
                    thresholds=list(self.detector.stage_thresholds),
                    device=self._device,
                )
                state = load_facenet_state_dict(self._settings.facenet_graph, self._settings.cache_dir)
                self._models = (mtcnn, build_model(state).to(self._device))
            return self._models

    def _analyze(self, image: DecodedImage) -> list[Face]:
        from facenet_pytorch.models.mtcnn import fixed_image_standardization
        from facenet_pytorch.models.utils.detect_face import extract_face

        mtcnn, network = self._load()
        picture = Image.fromarray(image.pixels)
        with torch.inference_mode():
            boxes, probabilities, points = mtcnn.detect(picture, landmarks=True)
        if boxes is None:
            return []

        # detect() sorts by box area when select_largest is set, as it is by default.
        box, probability, landmarks = boxes[0], probabilities[0], points[0]
        crop = extract_face(picture, box, CROP_SIZE, self.detector.margin)
        with torch.inference_mode():
            vector = network(fixed_image_standardization(crop)[None].to(self._device))[0].cpu().numpy()
        detection = DetectedFace(
            box=tuple(float(value) for value in box),
            probability=float(probability),
            landmarks=np.asarray(landmarks, dtype=np.float32),
        )
        return [Face(detection, vector.astype(np.float32))]
