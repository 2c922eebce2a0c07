"""Face alignment: turn a detected face into the square crop the embedding network expects.

Two methods are available:

``margin``
    The MTCNN box grown by a margin and resized to ``size`` x ``size``, as
    facenet-pytorch's ``extract_face`` does. The margin is in pixels of the
    output crop, so ``margin=32`` at ``size=160`` keeps 128 px for the box.
    Unlike ``extract_face``, parts of the crop outside the image are padded
    with black instead of shifting the crop, so the face keeps its place.

``similarity``
    A similarity transform (rotation, uniform scale, translation) that maps
    the five MTCNN landmarks onto :data:`FACENET_TEMPLATE_160`, a template in
    the same frame as the margin crop, so the face has the scale and position
    FaceNet saw in training while roll and box jitter are removed.

Both return ``(size, size, 3)`` uint8 RGB arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from core.detection import DetectedFace

AlignmentMethod = Literal["margin", "similarity"]

# Landmarks (left eye, right eye, nose, left and right mouth corner) in a 160 px
# crop for the similarity method: the mean MTCNN landmark positions, in the frame
# of a margin-32 crop, over the 3,249 LFW photos of the dev pairs (measured with
# ``scripts/lfw_alignment.py --template``), made left-right symmetric about x = 80.
FACENET_TEMPLATE_160 = np.array(
    [
        [51.2, 65.3],
        [108.8, 65.3],
        [80.0, 90.7],
        [54.6, 112.6],
        [105.4, 112.6],
    ],
    dtype=np.float32,
)
TEMPLATE_SIZE = 160


@dataclass(frozen=True)
class AlignmentConfig:
    """Settings for cutting faces out for the embedding network.

    Attributes:
        method: ``"margin"`` (box plus margin) or ``"similarity"`` (landmark warp).
        size: side of the square output crop, in pixels.
        margin: pixels of the output crop added around the box (``margin`` method),
            or the margin the template frame corresponds to (``similarity`` method,
            where the template is scaled so that ``margin=32`` means the default frame).
    """

    method: AlignmentMethod = "margin"
    size: int = 160
    margin: int = 32

    def __post_init__(self) -> None:
        if self.method not in ("margin", "similarity"):
            raise ValueError(f"alignment method must be 'margin' or 'similarity', got {self.method!r}")
        if self.size < 16:
            raise ValueError(f"alignment size must be at least 16 pixels, got {self.size}")
        if not 0 <= self.margin < self.size:
            raise ValueError(f"alignment margin must be in [0, {self.size}), got {self.margin}")

    @property
    def tag(self) -> str:
        """Short identifier of this configuration, part of the model id of the templates it makes."""
        return f"{self.method}{self.margin}"


def align_face(pixels: np.ndarray, face: DetectedFace, config: AlignmentConfig) -> np.ndarray:
    """Cut ``face`` out of an (H, W, 3) uint8 RGB image as configured."""
    if config.method == "margin":
        return margin_crop(pixels, face.box, size=config.size, margin=config.margin)
    return similarity_crop(pixels, face.landmarks, size=config.size, template=template_for(config))


def template_for(config: AlignmentConfig) -> np.ndarray:
    """Scale :data:`FACENET_TEMPLATE_160` to ``config.size`` and ``config.margin``.

    The template was measured for ``margin=32`` at 160 px. A different margin
    zooms around the crop centre by the ratio of the box sizes it leaves.
    """
    center = TEMPLATE_SIZE / 2
    zoom = (config.size - config.margin) / (TEMPLATE_SIZE - 32) * TEMPLATE_SIZE / config.size
    scaled = (FACENET_TEMPLATE_160 - center) * zoom + center
    return (scaled * config.size / TEMPLATE_SIZE).astype(np.float32)


def margin_crop(pixels: np.ndarray, box: tuple[float, float, float, float], *, size: int, margin: int) -> np.ndarray:
    """Crop ``box`` grown by ``margin`` output pixels and resize it to ``size`` x ``size``."""
    x1, y1, x2, y2 = box
    grow_x = margin * (x2 - x1) / (size - margin) / 2
    grow_y = margin * (y2 - y1) / (size - margin) / 2
    left, top, right, bottom = x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y

    # Output pixel (u, v) samples input (left + u * sx, top + v * sy).
    sx = (right - left) / size
    sy = (bottom - top) / size
    inverse = np.array([[sx, 0.0, left], [0.0, sy, top]], dtype=np.float64)
    return _warp(pixels, inverse, size)


def similarity_crop(pixels: np.ndarray, landmarks: np.ndarray, *, size: int, template: np.ndarray) -> np.ndarray:
    """Warp the image so that ``landmarks`` land on ``template`` in a ``size`` x ``size`` crop."""
    forward = estimate_similarity(landmarks.astype(np.float64), template.astype(np.float64))
    return _warp(pixels, _invert_affine(forward), size)


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``source`` points onto ``target`` (Umeyama, 1991).

    Args:
        source: (N, 2) points, N >= 2.
        target: (N, 2) points.

    Returns:
        (2, 3) matrix ``M`` with ``target ≈ source @ M[:, :2].T + M[:, 2]``.
    """
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or source.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {source.shape} and {target.shape}")
    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    source_centered = source - source_mean
    target_centered = target - target_mean

    covariance = target_centered.T @ source_centered / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1.0  # keep a rotation, never a mirror image
    rotation = u @ reflection @ vt

    source_variance = (source_centered**2).sum() / len(source)
    if source_variance <= 0:
        raise ValueError("landmarks are all at one point; cannot estimate an alignment")
    scale = np.trace(np.diag(singular_values) @ reflection) / source_variance

    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def _invert_affine(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    inverse = np.empty((2, 3), dtype=np.float64)
    inverse[:, :2] = linear
    inverse[:, 2] = -linear @ matrix[:, 2]
    return inverse


def _warp(pixels: np.ndarray, inverse: np.ndarray, size: int) -> np.ndarray:
    """Sample an output crop whose pixel (u, v) reads input ``inverse @ (u, v, 1)``.

    Bilinear sampling alone aliases when a large face is shrunk, so the image is
    first box-reduced by the integer part of the shrink factor, leaving less than 2x.
    """
    image = Image.fromarray(pixels)
    input_pixels_per_output = float(np.sqrt(abs(np.linalg.det(inverse[:, :2]))))
    factor = int(input_pixels_per_output)
    if factor >= 2:
        image = image.reduce(factor)
        inverse = inverse / factor

    # PIL's AFFINE data maps output to input coordinates. Both PIL and maskid put
    # pixel (i, j) on the unit square from (i, j) to (i + 1, j + 1).
    crop = image.transform((size, size), Image.Transform.AFFINE, inverse.ravel(), resample=Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)
