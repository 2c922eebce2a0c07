"""Tests for the crop changes of scripts/siamese_crop_variants.py, without training."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from script_modules import load_script

from core.alignment import AlignmentConfig
from core.detection import DetectedFace


@pytest.fixture(scope="module")
def variants() -> ModuleType:
    return load_script("siamese_crop_variants.py")


def gradient_image(height: int = 250, width: int = 250) -> np.ndarray:
    """Return an RGB image whose red channel grows to the right and green channel downwards."""
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = columns * 255 // (width - 1)
    pixels[..., 1] = rows * 255 // (height - 1)
    return pixels


def face(box: tuple[float, float, float, float]) -> DetectedFace:
    """Return a detection of ``box`` with landmarks where eyes, nose and mouth corners would be."""
    x1, y1, x2, y2 = box
    relative = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], dtype=np.float32)
    landmarks = np.array([x1, y1], dtype=np.float32) + relative * np.array([x2 - x1, y2 - y1], dtype=np.float32)
    return DetectedFace(box=box, probability=0.99, landmarks=landmarks)


def test_box_overlap_cases(variants: ModuleType) -> None:
    assert variants.box_overlap((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert variants.box_overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert variants.box_overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_tight_copy_moves_landmarks_with_pixels(variants: ModuleType) -> None:
    pixels = gradient_image()
    original = face((60.0, 50.0, 200.0, 210.0))

    small, moved = variants.tight_copy(pixels, original, np.random.default_rng(3))

    box_width = moved.box[2] - moved.box[0]
    assert variants.TIGHT_BOX_WIDTHS[0] - 1 <= box_width <= variants.TIGHT_BOX_WIDTHS[1] + 1
    assert max(small.shape[:2]) < max(pixels.shape[:2])
    for before, after in zip(original.landmarks, moved.landmarks, strict=True):
        old = pixels[round(before[1]), round(before[0])].astype(int)
        new = small[round(after[1]), round(after[0])].astype(int)
        # The copy's gradient changes at most two levels a pixel, and rounding moves a landmark under a pixel.
        assert np.abs(old - new).max() <= 6


def test_upper_face_paints_lower_rows(variants: ModuleType) -> None:
    crop = gradient_image(160, 160)

    painted = variants.upper_face(crop)

    assert (painted[variants.UPPER_FACE_ROWS :] == variants.GREY).all()
    assert np.array_equal(painted[: variants.UPPER_FACE_ROWS], crop[: variants.UPPER_FACE_ROWS])
    assert np.array_equal(crop, gradient_image(160, 160))


def test_seeded_path_suffixes_only_several_seeds(variants: ModuleType) -> None:
    out = Path("/tmp/heads/plain.pt")

    assert variants.seeded_path(out, 0, [0]) == out
    assert variants.seeded_path(out, 2, [0, 1, 2]) == Path("/tmp/heads/plain-s2.pt")


def test_mirror_variant_adds_mirrored_photo(variants: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Someone_0001.png"
    Image.fromarray(gradient_image()).save(path)
    pipeline = SimpleNamespace(alignment=AlignmentConfig())
    settings = SimpleNamespace(max_image_bytes=10_000_000, max_image_pixels=10_000_000)
    detection = face((60.0, 50.0, 200.0, 210.0))

    plain = variants.photo_crops("plain", pipeline, path, detection, settings, 2)
    mirror = variants.photo_crops("mirror", pipeline, path, detection, settings, 2)

    assert [(key, number) for key, number, _, _ in plain] == [(str(path), 0), (str(path), 1), (str(path), 2)]
    for first, second in zip(mirror[:3], plain[:3], strict=True):
        assert first[:3] == second[:3]
        assert np.array_equal(first[3], second[3])
    for (_, number, seed, crop), (key, mirrored_number, mirrored_seed, mirrored) in zip(plain, mirror[3:], strict=True):
        assert (key, mirrored_number, mirrored_seed) == (f"{path}#mirror", number, seed)
        assert np.array_equal(mirrored, crop[:, ::-1])


class StubDetector:
    """A detector that finds nothing, or takes the whole image as the face, and counts its calls."""

    def __init__(self, *, whole_image: bool) -> None:
        self.whole_image = whole_image
        self.calls = 0

    def detect(self, pixels: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        height, width = pixels.shape[:2]
        return [face((0.0, 0.0, float(width), float(height)))] if self.whole_image else []


def variant_crops(variants: ModuleType, variant: str, detector: StubDetector, path: Path) -> list:
    pipeline = SimpleNamespace(alignment=AlignmentConfig(), detector=detector)
    settings = SimpleNamespace(max_image_bytes=10_000_000, max_image_pixels=10_000_000)
    return variants.photo_crops(variant, pipeline, path, face((60.0, 50.0, 200.0, 210.0)), settings, 2)


def test_tight_redetect_keeps_copy_without_detection(variants: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Someone_0001.png"
    Image.fromarray(gradient_image()).save(path)
    detector = StubDetector(whole_image=False)

    tight = variant_crops(variants, "tight", StubDetector(whole_image=False), path)
    redetected = variant_crops(variants, "tight-redetect", detector, path)

    assert detector.calls == 3
    assert [crop[:3] for crop in redetected] == [crop[:3] for crop in tight]
    for first, second in zip(redetected, tight, strict=True):
        assert np.array_equal(first[3], second[3])


def test_tight_redetect_aligns_on_detected_face(variants: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Someone_0001.png"
    Image.fromarray(gradient_image()).save(path)

    tight = variant_crops(variants, "tight", StubDetector(whole_image=False), path)
    # The whole tight copy overlaps the moved box by more than half, so its crop replaces the true one.
    redetected = variant_crops(variants, "tight-redetect", StubDetector(whole_image=True), path)

    for first, second in zip(redetected[:3], tight[:3], strict=True):
        assert np.array_equal(first[3], second[3])
    for first, second in zip(redetected[3:], tight[3:], strict=True):
        assert first[0].endswith("#tight")
        assert not np.array_equal(first[3], second[3])


def test_small_variant_adds_small_copies(variants: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Someone_0001.png"
    Image.fromarray(gradient_image()).save(path)

    crops = variant_crops(variants, "small", StubDetector(whole_image=False), path)
    small, moved = variants.tight_copy(
        gradient_image(), face((60.0, 50.0, 200.0, 210.0)), np.random.default_rng(3), variants.SMALL_BOX_WIDTHS
    )

    assert [key for key, _, _, _ in crops[3:]] == [f"{path}#small"] * 3
    assert all(crop.shape == (160, 160, 3) for _, _, _, crop in crops)
    low, high = variants.SMALL_BOX_WIDTHS
    assert low - 1 <= moved.box[2] - moved.box[0] <= high + 1
    assert max(small.shape[:2]) <= high * 1.5


def test_raised_variant_changes_masked_crops(variants: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Someone_0001.png"
    Image.fromarray(gradient_image()).save(path)

    plain = variant_crops(variants, "plain", StubDetector(whole_image=False), path)
    raised = variant_crops(variants, "raised", StubDetector(whole_image=False), path)

    assert [crop[:3] for crop in raised] == [crop[:3] for crop in plain]
    assert np.array_equal(raised[0][3], plain[0][3])
    for first, second in zip(raised[1:], plain[1:], strict=True):
        assert not np.array_equal(first[3], second[3])
