"""Tests for face alignment on synthetic images whose correct crop is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.alignment import (
    FACENET_TEMPLATE_160,
    AlignmentConfig,
    estimate_similarity,
    margin_crop,
    similarity_crop,
    template_for,
)

SEEDS = [0, 1, 2, 3, 4]


def rotation(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    """Return a (2, 3) similarity with a random rotation, scale in [0.2, 5] and translation."""
    matrix = np.empty((2, 3))
    matrix[:, :2] = rng.uniform(0.2, 5.0) * rotation(rng.uniform(-180.0, 180.0))
    matrix[:, 2] = rng.uniform(-500.0, 500.0, size=2)
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def dots_image(centers: np.ndarray, sigma: float, height: int, width: int) -> np.ndarray:
    """Draw a Gaussian dot at each continuous ``(x, y)``.

    Pixel column i, row j is centred at (i + 0.5, j + 0.5), the convention of core.alignment.
    """
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    intensity = np.zeros((height, width))
    for x, y in centers:
        intensity = np.maximum(intensity, np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)))
    gray = np.rint(intensity * 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def dot_centroid(crop: np.ndarray, near: np.ndarray, radius: int = 8) -> np.ndarray:
    """Return the intensity-weighted centroid, in continuous coordinates, of the crop around ``near``."""
    x0 = int(near[0]) - radius
    y0 = int(near[1]) - radius
    window = crop[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1, 0].astype(np.float64)
    rows, columns = np.mgrid[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1] + 0.5
    total = window.sum()
    return np.array([(window * columns).sum() / total, (window * rows).sum() / total])


def smooth_image(height: int, width: int) -> np.ndarray:
    """An RGB image without fine detail, so that resampling methods agree to within a few grey levels."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        128 + 100 * np.sin(columns / 13.0) * np.cos(rows / 17.0),
        128 + 100 * np.cos((columns + rows) / 19.0),
        columns * 255 / width,
    ]
    return np.stack(channels, axis=2).clip(0, 255).astype(np.uint8)


def checkerboard(side: int) -> np.ndarray:
    """A (side, side, 3) image of alternating black and white pixels."""
    gray = (np.add.outer(np.arange(side), np.arange(side)) % 2 * 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
@pytest.mark.parametrize("point_count", [2, 5, 20], ids=["2pts", "5pts", "20pts"])
def test_estimate_similarity_recovers_transform(seed: int, point_count: int) -> None:
    rng = np.random.default_rng(seed)
    expected = random_similarity(rng)
    source = rng.uniform(0.0, 250.0, size=(point_count, 2))

    estimated = estimate_similarity(source, apply(expected, source))

    np.testing.assert_allclose(estimated, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
def test_estimate_similarity_never_reflects(seed: int) -> None:
    rng = np.random.default_rng(seed)
    source = rng.uniform(0.0, 250.0, size=(5, 2))
    mirrored = apply(random_similarity(rng), source * np.array([-1.0, 1.0]))

    estimated = estimate_similarity(source, mirrored)

    assert np.linalg.det(estimated[:, :2]) > 0


def test_estimate_similarity_minimises_squared_error() -> None:
    # Perturbing the estimate in any direction must not lower the squared error.
    rng = np.random.default_rng(7)
    source = rng.uniform(0.0, 250.0, size=(5, 2))
    target = apply(random_similarity(rng), source) + rng.normal(0.0, 3.0, size=(5, 2))
    estimated = estimate_similarity(source, target)

    def squared_error(scale_cos: float, scale_sin: float, tx: float, ty: float) -> float:
        matrix = np.array([[scale_cos, -scale_sin, tx], [scale_sin, scale_cos, ty]])
        return float(((apply(matrix, source) - target) ** 2).sum())

    parameters = np.array([estimated[0, 0], estimated[1, 0], estimated[0, 2], estimated[1, 2]])
    best = squared_error(*parameters)
    for axis in range(4):
        for step in (-1e-3, 1e-3):
            nudged = parameters.copy()
            nudged[axis] += step
            assert squared_error(*nudged) >= best


@pytest.mark.parametrize(
    ("source_shape", "target_shape"),
    [
        ((5, 2), (4, 2)),
        ((5, 3), (5, 3)),
        ((1, 2), (1, 2)),
        ((10,), (10,)),
        ((5, 2, 1), (5, 2, 1)),
    ],
    ids=["length-mismatch", "three-columns", "one-point", "flat", "three-dims"],
)
def test_estimate_similarity_rejects_bad_shapes(source_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected two \(N, 2\) point sets"):
        estimate_similarity(np.ones(source_shape), np.ones(target_shape))


def test_estimate_similarity_rejects_coincident_points() -> None:
    source = np.full((5, 2), 40.0)
    target = FACENET_TEMPLATE_160.astype(np.float64)

    with pytest.raises(ValueError, match="all at one point"):
        estimate_similarity(source, target)


@pytest.mark.parametrize(
    ("scale", "degrees"),
    [(0.8, 10.0), (1.7, -25.0), (3.3, 40.0), (6.0, 5.0)],
    ids=["upscale", "downscale-1.7x", "reduced-3x", "reduced-6x"],
)
def test_similarity_crop_puts_dots_on_template(scale: float, degrees: float) -> None:
    # The photo is the template frame rotated, scaled and shifted, with a dot at each landmark.
    linear = scale * rotation(degrees)
    rotated = FACENET_TEMPLATE_160.astype(np.float64) @ linear.T
    landmarks = rotated - rotated.min(axis=0) + 60.0 * scale
    height, width = (np.ceil(landmarks.max(axis=0) + 60.0 * scale)).astype(int)[::-1]
    pixels = dots_image(landmarks, sigma=1.5 * scale, height=height, width=width)

    crop = similarity_crop(pixels, landmarks.astype(np.float32), size=160, template=FACENET_TEMPLATE_160)

    assert crop.shape == (160, 160, 3)
    assert crop.dtype == np.uint8
    names = ("left eye", "right eye", "nose", "left mouth", "right mouth")
    for name, target in zip(names, FACENET_TEMPLATE_160, strict=True):
        error = float(np.hypot(*(dot_centroid(crop, target) - target)))
        assert error < 0.5, f"{name} dot is {error:.2f} px from the template"


@pytest.mark.parametrize(
    "box",
    [(40.0, 50.0, 136.0, 146.0), (30.0, 30.0, 170.0, 170.0), (20.5, 25.0, 180.0, 175.5)],
    ids=["upscale", "about-1x", "downscale-1.25x"],
)
def test_margin_crop_inside_image_matches_pil_resize(box: tuple[float, float, float, float]) -> None:
    pixels = smooth_image(200, 200)
    x1, y1, x2, y2 = box
    grow_x = 32 * (x2 - x1) / 128 / 2
    grow_y = 32 * (y2 - y1) / 128 / 2
    expected = Image.fromarray(pixels).resize(
        (160, 160), Image.Resampling.BILINEAR, box=(x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y)
    )

    crop = margin_crop(pixels, box, size=160, margin=32)

    difference = np.abs(crop.astype(np.int16) - np.asarray(expected).astype(np.int16))
    assert crop.shape == (160, 160, 3)
    assert difference.max() <= 3
    assert difference.mean() < 1.0


def test_margin_crop_pads_past_left_edge_with_black() -> None:
    # Half of the box lies left of the image. A crop shifted back inside the image
    # (facenet-pytorch's behaviour) would be white everywhere.
    pixels = np.full((100, 100, 3), 255, dtype=np.uint8)

    crop = margin_crop(pixels, (-50.0, 0.0, 50.0, 100.0), size=100, margin=0)

    assert crop[:, :49].max() == 0
    assert crop[:, 51:].min() == 255


def test_margin_crop_keeps_face_position_at_corner() -> None:
    # A dot at input (10, 10) with the box starting at (-40, -40) must land at output (50, 50).
    pixels = dots_image(np.array([[10.0, 10.0]]), sigma=2.0, height=120, width=120)

    crop = margin_crop(pixels, (-40.0, -40.0, 60.0, 60.0), size=100, margin=0)

    np.testing.assert_allclose(dot_centroid(crop, np.array([50.0, 50.0])), [50.0, 50.0], atol=0.5)
    assert crop[:35, :].max() == 0
    assert crop[:, :35].max() == 0


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (AlignmentConfig(margin=32, size=160), FACENET_TEMPLATE_160),
        (AlignmentConfig(margin=64, size=320), FACENET_TEMPLATE_160 * 2),
        (AlignmentConfig(margin=16, size=80), FACENET_TEMPLATE_160 / 2),
    ],
    ids=["base", "double", "half"],
)
def test_template_for_scales_base_template(config: AlignmentConfig, expected: np.ndarray) -> None:
    template = template_for(config)

    assert template.dtype == np.float32
    np.testing.assert_allclose(template, expected, atol=1e-4)


def test_template_for_smaller_margin_zooms_in() -> None:
    # Margin 0 leaves the full 160 px for the box instead of 128, so the face grows by 160 / 128.
    template = template_for(AlignmentConfig(margin=0, size=160))
    expected = (FACENET_TEMPLATE_160 - 80.0) * 160 / 128 + 80.0

    np.testing.assert_allclose(template, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "affine"}, "alignment method must be 'margin' or 'similarity', got 'affine'"),
        ({"size": 15}, "alignment size must be at least 16 pixels, got 15"),
        ({"margin": -1}, r"alignment margin must be in \[0, 160\), got -1"),
        ({"margin": 160}, r"alignment margin must be in \[0, 160\), got 160"),
    ],
    ids=["unknown-method", "size-too-small", "negative-margin", "margin-equals-size"],
)
def test_alignment_config_rejects_invalid_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlignmentConfig(**kwargs)


@pytest.mark.parametrize(
    ("config", "tag"),
    [(AlignmentConfig(), "margin32"), (AlignmentConfig(method="similarity", margin=20), "similarity20")],
    ids=["default", "margin20"],
)
def test_alignment_config_tag(config: AlignmentConfig, tag: str) -> None:
    assert config.tag == tag


@pytest.mark.parametrize("method", ["margin", "similarity"])
def test_large_face_reduced_before_warp(method: str) -> None:
    # The face is shrunk 11 to 12 times. Bilinear sampling alone would turn the
    # one-pixel checkerboard into moiré, but a box-reduced image comes out mid-grey.
    pixels = checkerboard(2000)
    box = (301.0, 297.0, 1683.0, 1701.0)  # grown by the margin, it stays inside the image
    landmarks = (FACENET_TEMPLATE_160 * 12.37 + 13.0).astype(np.float32)

    if method == "margin":
        crop = margin_crop(pixels, box, size=160, margin=32)
    else:
        crop = similarity_crop(pixels, landmarks, size=160, template=FACENET_TEMPLATE_160)

    assert abs(float(crop.mean()) - 127.5) < 4.0
    assert float(crop.std()) < 4.0


def test_checkerboard_aliases_without_reduction() -> None:
    # Plain bilinear sampling of the same checkerboard at the same shrink factor
    # aliases strongly, so the test above can fail.
    pixels = checkerboard(2000)
    inverse = np.array([[12.37, 0.0, 13.0], [0.0, 12.37, 13.0]])

    crop = Image.fromarray(pixels).transform(
        (160, 160), Image.Transform.AFFINE, inverse.ravel(), resample=Image.Resampling.BILINEAR
    )

    assert float(np.asarray(crop).std()) > 20.0
