"""Tests for MTCNN face detection on real LFW and deepface photos and on synthetic arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.detection import DetectedFace, FaceDetector
from core.images import load_image

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
SINGLE_FACE_PHOTOS = (
    "George_W_Bush/George_W_Bush_0001.jpg",
    "Colin_Powell/Colin_Powell_0001.jpg",
    "Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg",
)
GROUP_PHOTO = "smoke/deepface_tests_dataset/selfie-many-people.jpg"  # four faces, 600 px wide, 604 px high


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def load_pixels(path: Path) -> np.ndarray:
    return load_image(path, **LIMITS).pixels


def lfw_pixels(datasets_dir: Path, relative: str) -> np.ndarray:
    return load_pixels(datasets_dir / "lfw" / relative)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Place two images next to each other on a black canvas as tall as the taller one."""
    height = max(len(left), len(right))
    canvas = np.zeros((height, left.shape[1] + right.shape[1], 3), dtype=np.uint8)
    canvas[: len(left), : left.shape[1]] = left
    canvas[: len(right), left.shape[1] :] = right
    return canvas


def shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels).resize((width // factor, height // factor), Image.Resampling.LANCZOS))


def box_center(face: DetectedFace) -> tuple[float, float]:
    x1, y1, x2, y2 = face.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def assert_same_detections(actual: list[DetectedFace], expected: list[DetectedFace]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got.box, want.box, atol=1e-3)
        np.testing.assert_allclose(got.landmarks, want.landmarks, atol=1e-3)
        assert got.probability == pytest.approx(want.probability, abs=1e-5)


@pytest.mark.datasets
def test_lfw_photo_has_one_face(detector: FaceDetector, datasets_dir: Path) -> None:
    faces = detector.detect(lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[0]))

    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert face.landmarks.shape == (5, 2)
    assert face.landmarks.dtype == np.float32
    assert 0.9 <= face.probability <= 1.0
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2)), "landmark x outside the box"
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2)), "landmark y outside the box"
    assert max(left_eye[1], right_eye[1]) < min(left_mouth[1], right_mouth[1]), "eyes not above the mouth"
    assert left_eye[0] < right_eye[0]
    assert left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    # LFW deep-funneled photos are centred on the face.
    assert abs(box_center(face)[0] - 125) < 25


@pytest.mark.datasets
def test_group_photo_faces_largest_first(detector: FaceDetector, datasets_dir: Path) -> None:
    faces = detector.detect(load_pixels(datasets_dir / GROUP_PHOTO))
    areas = [face.area for face in faces]

    assert len(faces) >= 3
    assert areas == sorted(areas, reverse=True)


@pytest.mark.datasets
def test_collage_larger_face_first(detector: FaceDetector, datasets_dir: Path) -> None:
    # The smaller face is on the left, so ordering by position would fail this test.
    small = shrink(lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[0]), 2)
    large = lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[1])
    collage = side_by_side(small, large)

    faces = detector.detect(collage)

    assert len(faces) == 2
    assert faces[0].area > 2 * faces[1].area
    assert box_center(faces[0])[0] > small.shape[1]
    assert box_center(faces[1])[0] < small.shape[1]


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((200, 200, 3), dtype=np.uint8), np.full((120, 160, 3), 128, dtype=np.uint8)],
    ids=["black", "grey"],
)
def test_blank_image_has_no_faces(detector: FaceDetector, pixels: np.ndarray) -> None:
    assert detector.detect(pixels) == []


@pytest.mark.datasets
def test_detect_batch_matches_single_detect(detector: FaceDetector, datasets_dir: Path) -> None:
    images = [lfw_pixels(datasets_dir, relative) for relative in SINGLE_FACE_PHOTOS]

    batched = detector.detect_batch(images)

    assert len(batched) == len(images)
    for pixels, faces in zip(images, batched, strict=True):
        assert_same_detections(faces, detector.detect(pixels))


@pytest.mark.datasets
def test_detect_batch_mixed_sizes_keeps_input_order(detector: FaceDetector, datasets_dir: Path) -> None:
    first, second, _ = (lfw_pixels(datasets_dir, relative) for relative in SINGLE_FACE_PHOTOS)
    blank = np.zeros((90, 90, 3), dtype=np.uint8)
    small = shrink(second, 2)
    images = [first, blank, small, second]

    batched = detector.detect_batch(images)

    assert [len(faces) for faces in batched] == [1, 0, 1, 1]
    assert_same_detections(batched[0], detector.detect(first))
    assert_same_detections(batched[2], detector.detect(small))
    assert_same_detections(batched[3], detector.detect(second))


def test_detect_batch_empty_input(detector: FaceDetector) -> None:
    assert detector.detect_batch([]) == []


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((64, 64, 3), dtype=np.float32),
        np.zeros((64, 64, 3), dtype=np.uint16),
        np.zeros((64, 64), dtype=np.uint8),
        np.zeros((64, 64, 4), dtype=np.uint8),
    ],
    ids=["float32", "uint16", "grayscale", "rgba"],
)
def test_detect_rejects_non_rgb_uint8(pixels: np.ndarray) -> None:
    # Checked before the network loads, so a fresh detector is cheap here.
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB array"):
        FaceDetector().detect(pixels)


def test_detect_batch_rejects_any_bad_image() -> None:
    good = np.zeros((64, 64, 3), dtype=np.uint8)

    with pytest.raises(ValueError, match="dtype float64"):
        FaceDetector().detect_batch([good, good.astype(np.float64)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_face_size": 0}, "min_face_size must be at least 1 pixel, got 0"),
        ({"min_probability": 1.5}, r"min_probability must be in \[0, 1\], got 1.5"),
        ({"min_probability": -0.1}, r"min_probability must be in \[0, 1\], got -0.1"),
    ],
    ids=["face-size", "probability-high", "probability-negative"],
)
def test_detector_rejects_invalid_options(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceDetector(**kwargs)


def test_detected_face_geometry() -> None:
    face = DetectedFace(box=(10.0, 20.0, 50.0, 100.0), probability=0.99, landmarks=np.zeros((5, 2), np.float32))
    inverted = DetectedFace(box=(50.0, 20.0, 10.0, 100.0), probability=0.99, landmarks=np.zeros((5, 2), np.float32))

    assert face.width == pytest.approx(40.0)
    assert face.height == pytest.approx(80.0)
    assert face.area == pytest.approx(3200.0)
    assert inverted.area == pytest.approx(0.0)


@pytest.mark.datasets
def test_detect_photo_smaller_than_min_face_size(datasets_dir: Path) -> None:
    detector = FaceDetector(min_face_size=20)
    photo = Image.open(datasets_dir / "lfw" / "Colin_Powell" / "Colin_Powell_0001.jpg").convert("RGB")
    tiny = np.asarray(photo.crop((70, 60, 180, 190)).resize((14, 16), Image.Resampling.BOX))

    faces = detector.detect(tiny)

    assert all(face.method != "mtcnn" for face in faces)


@pytest.mark.datasets
def test_rejected_masked_crop_taken_whole(detector: FaceDetector, datasets_dir: Path) -> None:
    # A real masked face crop that neither MTCNN pass finds and O-Net scores below 0.5.
    pixels = load_pixels(datasets_dir / "rof" / "masked" / "naomi_osaka" / "000045.jpg")

    faces = detector.detect(pixels)

    assert len(faces) == 1
    assert faces[0].method == "whole-image"
    assert faces[0].box == (0.0, 0.0, float(pixels.shape[1]), float(pixels.shape[0]))
    eyes, mouth = faces[0].landmarks[:2], faces[0].landmarks[3:]
    assert eyes[:, 1].max() < mouth[:, 1].min()


def test_large_faceless_photo_not_taken_whole(detector: FaceDetector) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(1200, 900, 3), dtype=np.uint8)

    assert detector.detect(noise) == []


def test_noise_photo_is_not_taken_whole(detector: FaceDetector) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(600, 500, 3), dtype=np.uint8)

    assert detector.detect(noise) == []


def upscale(pixels: np.ndarray, factor: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    size = (round(width * factor), round(height * factor))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


@pytest.mark.datasets
def test_large_photo_boxes_in_full_resolution_pixels(detector: FaceDetector, datasets_dir: Path) -> None:
    pixels = lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[0])
    large = upscale(pixels, 4.0)  # 1000x1000, searched on a 640x640 copy by default

    [small_face] = detector.detect(pixels)
    [large_face] = detector.detect(large)

    # A box on the downscaled copy, mapped back, lands where the 250 px photo's box is, times 4,
    # within the few percent of the face's size that MTCNN's box regression varies by between scales.
    tolerance = 0.06 * large_face.width
    np.testing.assert_allclose(large_face.box, np.array(small_face.box) * 4.0, atol=tolerance)
    np.testing.assert_allclose(large_face.landmarks, small_face.landmarks * 4.0, atol=tolerance)
    assert large_face.method == "mtcnn"


@pytest.mark.datasets
def test_large_photo_downscaled_matches_full_resolution(datasets_dir: Path) -> None:
    large = upscale(lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[1]), 3.2)  # 800x800

    [downscaled] = FaceDetector(max_side=400).detect(large)
    [full] = FaceDetector(max_side=0).detect(large)

    tolerance = 0.06 * full.width
    np.testing.assert_allclose(downscaled.box, full.box, atol=tolerance)
    np.testing.assert_allclose(downscaled.landmarks, full.landmarks, atol=tolerance)


@pytest.mark.datasets
def test_non_square_photo_maps_each_axis(datasets_dir: Path) -> None:
    pixels = lfw_pixels(datasets_dir, SINGLE_FACE_PHOTOS[2])
    wide = np.zeros((250, 1000, 3), dtype=np.uint8)
    wide[:, 375:625] = pixels  # the face sits 375 px from the left edge

    [face] = FaceDetector(max_side=500).detect(wide)
    [reference] = FaceDetector(max_side=0).detect(pixels)

    # The face is searched at half size, where MTCNN's box varies by up to about a tenth of it.
    tolerance = 0.1 * reference.width
    np.testing.assert_allclose(np.array(face.box) - [375, 0, 375, 0], reference.box, atol=tolerance)
    np.testing.assert_allclose(face.landmarks - [375, 0], reference.landmarks, atol=tolerance)


def test_downscale_factors_per_axis() -> None:
    pixels = np.zeros((333, 1001, 3), dtype=np.uint8)

    small, factors = FaceDetector(max_side=500)._downscale(pixels)

    assert small.shape == (166, 500, 3)
    assert factors == pytest.approx((1001 / 500, 333 / 166))


def test_downscale_leaves_small_photo_alone() -> None:
    pixels = np.zeros((480, 640, 3), dtype=np.uint8)

    small, factors = FaceDetector(max_side=640)._downscale(pixels)

    assert small is pixels
    assert factors == (1.0, 1.0)
    assert FaceDetector(max_side=0)._downscale(np.zeros((2000, 3000, 3), dtype=np.uint8))[1] == (1.0, 1.0)


def test_detector_rejects_negative_max_side() -> None:
    with pytest.raises(ValueError, match="max_side must be 0"):
        FaceDetector(max_side=-1)
