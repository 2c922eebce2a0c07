"""Face detection with MTCNN: boxes, detection probabilities and five landmarks.

MTCNN comes from facenet-pytorch 2.6.0, whose wheel ships the P-Net, R-Net and
O-Net weights, so nothing is downloaded. The network loads on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from core.devices import torch_device

logger = logging.getLogger(__name__)

# Cascade thresholds of P-Net, R-Net and O-Net (facenet-pytorch's defaults).
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
# Looser thresholds for the retry pass: masks hide the mouth and nose that O-Net scores.
RETRY_STAGE_THRESHOLDS = (0.5, 0.6, 0.6)
RETRY_MIN_PROBABILITY = 0.6
# The retry pass upscales images whose shorter side is below this many pixels ...
RETRY_MIN_SIDE = 160
# ... but never past this longer side, so a thin strip is not blown up to gigapixels.
RETRY_MAX_SIDE = 1600
# ... and pads each side by this fraction of the side, because tight crops leave
# P-Net no background to find the face outline against.
RETRY_PADDING = 0.3
# A photo with no detectable face is taken as a tight face crop when its
# height / width ratio lies in this range (portrait crops are about 1.3).
CROP_ASPECT_RANGE = (0.8, 2.0)
# O-Net's face probability a whole photo needs to be taken as a face crop ...
WHOLE_IMAGE_MIN_PROBABILITY = 0.5
# ... unless it is small enough to be a crop (longer side in pixels, see FaceDetector)
# and not flat: O-Net scores many masked faces low, so shape and size decide for those.
DEFAULT_CROP_MAX_SIDE = 800
CROP_MIN_CONTRAST = 12.0  # standard deviation of the grey levels
# Share of that contrast left after a 3x3 box blur at O-Net's 48x48 input: face crops keep
# 0.75 and more, noise keeps about 0.4.
CROP_MIN_SMOOTHNESS = 0.6
# Typical positions of the five landmarks in a tight, frontal face crop, as fractions of
# its width and height. They replace O-Net's landmarks when O-Net rejected the crop.
CROP_LANDMARKS = np.array([[0.32, 0.42], [0.68, 0.42], [0.5, 0.6], [0.36, 0.76], [0.64, 0.76]], dtype=np.float32)
ONET_INPUT_SIZE = 48
# MTCNN searches photos longer than this many pixels on a downscaled copy, and maps the faces
# back to full resolution. The P-Net pyramid's cost grows with the pixel count, and a 1280x960
# photo is searched on a quarter of its pixels. Its smallest face found grows from
# min_face_size to twice that (docs/benchmarks.md has the measured effect).
DEFAULT_DETECTION_MAX_SIDE = 640

DetectionMethod = Literal["mtcnn", "retry", "whole-image"]


@dataclass(frozen=True)
class DetectedFace:
    """One face found in an image.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the input image, floats, may extend past its edges.
        probability: O-Net face probability in [0, 1].
        landmarks: (5, 2) float32 ``(x, y)`` pixels, in the order left eye, right eye,
            nose tip, left mouth corner, right mouth corner ("left" as seen in the image).
        method: ``"mtcnn"`` for a normal detection, ``"retry"`` when it took the padded,
            upscaled, looser second pass, ``"whole-image"`` when no face was detected and
            MTCNN's O-Net accepted the whole photo as a tight face crop.
    """

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray
    method: DetectionMethod = "mtcnn"

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
        retry: when nothing is found, search again on an upscaled, padded copy with
            looser thresholds (finds masked faces and tight crops).
        whole_image_fallback: when the retry finds nothing either and the photo has a
            portrait-crop shape, take the whole photo as one face (method ``"whole-image"``)
            if MTCNN's O-Net accepts it or if it is a small, non-flat photo.
        crop_max_side: the maximum longer side, in pixels, of a photo taken as a face crop
            without O-Net's approval.
        max_side: photos with a longer side above this many pixels are searched on a copy
            downscaled to it. Boxes and landmarks are still returned in the photo's own
            pixels. 0 searches every photo at full resolution.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_face_size: int = 20,
        min_probability: float = 0.9,
        stage_thresholds: tuple[float, float, float] = DEFAULT_STAGE_THRESHOLDS,
        retry: bool = True,
        whole_image_fallback: bool = True,
        crop_max_side: int = DEFAULT_CROP_MAX_SIDE,
        max_side: int = DEFAULT_DETECTION_MAX_SIDE,
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be at least 1 pixel, got {min_face_size}")
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        if max_side < 0:
            raise ValueError(f"max_side must be 0 (no downscaling) or a positive number of pixels, got {max_side}")
        self.device = device
        self.min_face_size = min_face_size
        self.min_probability = min_probability
        self.stage_thresholds = stage_thresholds
        self.retry = retry
        self.whole_image_fallback = whole_image_fallback
        self.crop_max_side = crop_max_side
        self.max_side = max_side
        self._networks: dict[tuple[float, float, float], torch.nn.Module] = {}
        self._lock = threading.Lock()

    def _network(self, thresholds: tuple[float, float, float] | None = None) -> torch.nn.Module:
        thresholds = thresholds or self.stage_thresholds
        with self._lock:
            if thresholds not in self._networks:
                from facenet_pytorch import MTCNN

                logger.info(
                    "loading MTCNN on %s (min face %d px, thresholds %s)", self.device, self.min_face_size, thresholds
                )
                network = MTCNN(
                    keep_all=True,
                    min_face_size=self.min_face_size,
                    thresholds=list(thresholds),
                    device=torch_device(self.device),
                )
                # Channels-last weights make the convolutions output channels-last maps, and
                # PyTorch's CPU max pooling is vectorised on those. On 48 LFW photos with one
                # thread (PyTorch 2.14), MTCNN took 34 ms a photo instead of 46, with equal boxes.
                for stage in (network.pnet, network.rnet, network.onet):
                    stage.to(memory_format=torch.channels_last)
                self._networks[thresholds] = network
            return self._networks[thresholds]

    def detect(self, pixels: np.ndarray) -> list[DetectedFace]:
        """Find every face in one (H, W, 3) uint8 RGB image, largest first."""
        return self.detect_batch([pixels])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Find faces in several images; images of the same size share one MTCNN pass.

        Returns one list per input image, each sorted by box area, largest first.
        An empty input returns an empty list.
        """
        results: list[list[DetectedFace]] = [[] for _ in images]
        searched: list[np.ndarray] = []
        scales: list[tuple[float, float]] = []
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, pixels in enumerate(images):
            _check_pixels(pixels)
            small, scale = self._downscale(pixels)
            searched.append(small)
            scales.append(scale)
            # MTCNN's image pyramid is empty (and facenet-pytorch raises) when the image is
            # smaller than the smallest face searched for; the retry pass upscales those.
            if min(small.shape[:2]) >= self.min_face_size:
                by_shape.setdefault(small.shape, []).append(index)

        network = self._network()
        for indices in by_shape.values():
            stacked = np.stack([searched[index] for index in indices])
            with torch.inference_mode():
                boxes, probabilities, landmarks = network.detect(stacked, landmarks=True)
            for position, index in enumerate(indices):
                results[index] = _faces_from_mtcnn(
                    boxes[position], probabilities[position], landmarks[position], self.min_probability
                )

        for index, faces in enumerate(results):
            if not faces and self.retry:
                results[index] = self._detect_again(searched[index])
            if scales[index] != (1.0, 1.0):
                results[index] = [_scale_face(face, scales[index]) for face in results[index]]
            if not results[index] and self.whole_image_fallback:
                results[index] = _whole_image_face(self._network().onet, images[index], self.crop_max_side)
        return results

    def _downscale(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Return the copy of ``pixels`` that MTCNN searches, and the factors that map its x and y back.

        The factors are (1.0, 1.0) when ``pixels`` is searched as it is.
        """
        height, width = pixels.shape[:2]
        if not self.max_side or max(height, width) <= self.max_side:
            return pixels, (1.0, 1.0)
        scale = self.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Pillow's bilinear filter widens its support when reducing, so it averages like an
        # area filter and small faces keep their edges.
        small = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        return small, (width / size[0], height / size[1])

    def _detect_again(self, pixels: np.ndarray) -> list[DetectedFace]:
        """Search an upscaled, padded copy with looser thresholds; map faces back to ``pixels``."""
        height, width = pixels.shape[:2]
        scale = max(1.0, min(RETRY_MIN_SIDE / min(height, width), RETRY_MAX_SIDE / max(height, width)))
        image = Image.fromarray(pixels)
        if scale > 1.0:
            image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
        pad = round(RETRY_PADDING * min(max(image.size), RETRY_MAX_SIDE))
        background = tuple(int(value) for value in pixels.reshape(-1, 3).mean(axis=0))
        padded = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), background)
        padded.paste(image, (pad, pad))

        with torch.inference_mode():
            boxes, probabilities, landmarks = self._network(RETRY_STAGE_THRESHOLDS).detect(
                np.asarray(padded)[None], landmarks=True
            )
        found = _faces_from_mtcnn(boxes[0], probabilities[0], landmarks[0], RETRY_MIN_PROBABILITY)
        return [_map_back(face, pad, scale) for face in found]


def _faces_from_mtcnn(boxes, probabilities, landmarks, min_probability: float) -> list[DetectedFace]:
    if boxes is None:
        return []
    faces = []
    for box, probability, points in zip(boxes, probabilities, landmarks, strict=True):
        if probability is None or float(probability) < min_probability:
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


def _map_back(face: DetectedFace, pad: int, scale: float) -> DetectedFace:
    x1, y1, x2, y2 = face.box
    box = ((x1 - pad) / scale, (y1 - pad) / scale, (x2 - pad) / scale, (y2 - pad) / scale)
    landmarks = ((face.landmarks - pad) / scale).astype(np.float32)
    return DetectedFace(box=box, probability=face.probability, landmarks=landmarks, method="retry")


def _scale_face(face: DetectedFace, factors: tuple[float, float]) -> DetectedFace:
    """Return ``face`` with its box and landmarks multiplied by the ``(x, y)`` factors."""
    factor_x, factor_y = factors
    x1, y1, x2, y2 = face.box
    box = (x1 * factor_x, y1 * factor_y, x2 * factor_x, y2 * factor_y)
    landmarks = (face.landmarks * np.array(factors, dtype=np.float32)).astype(np.float32)
    return DetectedFace(box=box, probability=face.probability, landmarks=landmarks, method=face.method)


def _whole_image_face(onet: torch.nn.Module, pixels: np.ndarray, crop_max_side: int) -> list[DetectedFace]:
    """Take a portrait-shaped photo as one tight face crop when O-Net accepts it or it looks like a crop.

    O-Net is MTCNN's last stage: it takes a 48x48 candidate and returns a face
    probability and five landmarks. Feeding it the whole photo accepts tight crops
    that the image pyramid misses. Masked crops often score low, so a photo no
    longer than ``crop_max_side`` that is not flat is accepted too, with typical
    crop landmarks in place of O-Net's.
    """
    height, width = pixels.shape[:2]
    low, high = CROP_ASPECT_RANGE
    if not low <= height / width <= high:
        return []

    resized = np.asarray(Image.fromarray(pixels).resize((ONET_INPUT_SIZE, ONET_INPUT_SIZE), Image.Resampling.BOX))
    batch = (torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() - 127.5) * 0.0078125
    with torch.inference_mode():
        _, points, probabilities = onet(batch.to(next(onet.parameters()).device))
    probability = float(probabilities[0, 1])
    if probability >= WHOLE_IMAGE_MIN_PROBABILITY:
        # O-Net gives landmark x in columns 0-4 and y in 5-9, as fractions of the candidate box.
        points = points[0].cpu().numpy()
        landmarks = np.stack([points[:5] * width, points[5:] * height], axis=1).astype(np.float32)
    elif max(height, width) <= crop_max_side and _looks_like_a_photo(pixels):
        landmarks = CROP_LANDMARKS * np.array([width, height], dtype=np.float32)
    else:
        return []
    box = (0.0, 0.0, float(width), float(height))
    return [DetectedFace(box=box, probability=probability, landmarks=landmarks, method="whole-image")]


def _looks_like_a_photo(pixels: np.ndarray) -> bool:
    """Return whether ``pixels`` has the contrast and the smooth shading of a photo: not flat, not noise."""
    grey = Image.fromarray(pixels).convert("L").resize((ONET_INPUT_SIZE, ONET_INPUT_SIZE), Image.Resampling.BOX)
    values = np.asarray(grey, dtype=np.float32)
    blurred = np.asarray(grey.filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
    contrast = float(pixels.mean(axis=2).std())
    return contrast >= CROP_MIN_CONTRAST and float(blurred.std()) >= CROP_MIN_SMOOTHNESS * float(values.std())


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {pixels.shape} dtype {pixels.dtype}")
