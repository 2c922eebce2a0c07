"""Tests for synthetic face masks: coverage on real LFW faces, determinism, input checks and the CLI handler."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.mask_command import add_mask_parser, mask, numbered_paths
from core.errors import MaskidError, NoFaceError
from core.images import DecodedImage, load_image
from core.masks import (
    EYE_CLEARANCE,
    MASK_TYPES,
    MaskStyle,
    draw_mask,
    mask_region,
    random_mask_style,
    synthesize_masked,
)
from core.pipeline import FacePipeline
from core.settings import Settings

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
LFW_PHOTOS = (
    "George_W_Bush/George_W_Bush_0001.jpg",
    "Angelina_Jolie/Angelina_Jolie_0001.jpg",
    "Kofi_Annan/Kofi_Annan_0001.jpg",
    "Oprah_Winfrey/Oprah_Winfrey_0001.jpg",
)
OTHER_PERSON_PHOTO = "Colin_Powell/Colin_Powell_0001.jpg"
SEEDS = range(6)
# The tests allow this fraction of the eye distance around each eye, a little less
# than the clearance that draw_mask enforces.
EYE_RADIUS = 0.25

# Landmarks of a frontal face in a 250 x 250 image, as MTCNN finds them on LFW.
SYNTHETIC_LANDMARKS = np.array(
    [[107.0, 110.6], [147.1, 109.9], [128.0, 140.9], [110.5, 157.4], [143.7, 156.6]], dtype=np.float32
)


@pytest.fixture(scope="module")
def lfw_faces(pipeline: FacePipeline, datasets_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, pixels, landmarks)`` of the largest face in each photo of LFW_PHOTOS."""
    faces = []
    for relative in LFW_PHOTOS:
        pixels = load_image(datasets_dir / "lfw" / relative, **LIMITS).pixels
        detections = pipeline.detector.detect(pixels)
        assert detections, f"no face found in {relative}"
        faces.append((relative, pixels, detections[0].landmarks))
    return faces


@pytest.fixture
def synthetic_image() -> np.ndarray:
    """A 250 x 250 gradient image with some noise, so every masked pixel is likely to change."""
    rng = np.random.default_rng(123)
    ramp = np.linspace(40, 200, 250)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], np.full((250, 250), 128.0)), axis=-1)
    return np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)


def near(shape: tuple[int, ...], point: np.ndarray, radius: float) -> np.ndarray:
    """Bool (H, W) of the pixels whose centres lie within ``radius`` of ``point``."""
    rows = np.arange(shape[0])[:, None] + 0.5
    columns = np.arange(shape[1])[None, :] + 0.5
    return (columns - point[0]) ** 2 + (rows - point[1]) ** 2 <= radius**2


def pixel_of(point: np.ndarray) -> tuple[int, int]:
    """Return the ``(row, column)`` of the pixel that contains the ``(x, y)`` point."""
    return math.floor(point[1]), math.floor(point[0])


def chin_point(landmarks: np.ndarray) -> np.ndarray:
    """A point below the mouth: half the eye-to-mouth distance further down from the mouth centre."""
    eyes = landmarks[:2].mean(axis=0)
    mouth = landmarks[3:].mean(axis=0)
    return mouth + 0.5 * (mouth - eyes)


def styles(kind: str) -> list[MaskStyle]:
    return [random_mask_style(np.random.default_rng(seed), kind) for seed in SEEDS]


def assert_eyes_clear(original: np.ndarray, masked: np.ndarray, coverage: np.ndarray, landmarks: np.ndarray) -> None:
    eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    for eye in landmarks[:2]:
        around = near(original.shape, eye, EYE_RADIUS * eye_distance)
        assert not coverage[around].any(), f"mask covers pixels within {EYE_RADIUS} eye distances of {eye}"
        assert np.array_equal(masked[around], original[around]), f"pixels around the eye at {eye} changed"


def assert_lower_face_covered(coverage: np.ndarray, landmarks: np.ndarray, context: object = "") -> None:
    for name, point in (
        ("nose tip", landmarks[2]),
        ("left mouth corner", landmarks[3]),
        ("right mouth corner", landmarks[4]),
        ("chin", chin_point(landmarks)),
    ):
        assert coverage[pixel_of(point)], f"{context}: {name} at {point} is not covered"


@pytest.mark.datasets
@pytest.mark.parametrize("kind", MASK_TYPES)
def test_lfw_mask_covers_nose_mouth_chin(lfw_faces, kind: str) -> None:
    for name, pixels, landmarks in lfw_faces:
        for style in styles(kind):
            coverage = mask_region(landmarks, style, pixels.shape)
            assert_lower_face_covered(coverage, landmarks, f"{name}, {style}")


@pytest.mark.datasets
@pytest.mark.parametrize("kind", MASK_TYPES)
def test_lfw_mask_leaves_eyes_clear(lfw_faces, kind: str) -> None:
    for _, pixels, landmarks in lfw_faces:
        for style in styles(kind):
            masked, coverage = draw_mask(pixels, landmarks, style, return_coverage=True)
            assert_eyes_clear(pixels, masked, coverage, landmarks)


@pytest.mark.datasets
@pytest.mark.parametrize("kind", MASK_TYPES)
def test_lfw_mask_changes_only_coverage(lfw_faces, kind: str) -> None:
    for _, pixels, landmarks in lfw_faces:
        style = random_mask_style(np.random.default_rng(7), kind)
        masked, coverage = draw_mask(pixels, landmarks, style, return_coverage=True)
        assert np.array_equal(masked[~coverage], pixels[~coverage])
        assert np.array_equal(coverage, mask_region(landmarks, style, pixels.shape))
        changed = np.any(masked != pixels, axis=-1)
        # Most covered pixels change; a few in the faint rim may round to their old value.
        assert changed.sum() > 0.8 * coverage.sum()


@pytest.mark.datasets
def test_lfw_mask_does_not_modify_input(lfw_faces) -> None:
    _, pixels, landmarks = lfw_faces[0]
    before = pixels.copy()
    for kind in MASK_TYPES:
        draw_mask(pixels, landmarks, random_mask_style(np.random.default_rng(1), kind))
    synthesize_masked(pixels, landmarks, 2, seed=1)
    assert np.array_equal(pixels, before)


@pytest.mark.datasets
def test_rotated_face_keeps_eyes_clear(pipeline: FacePipeline, datasets_dir: Path) -> None:
    photo = load_image(datasets_dir / "lfw" / LFW_PHOTOS[0], **LIMITS).pixels
    rotated = np.asarray(Image.fromarray(photo).rotate(20, resample=Image.Resampling.BICUBIC))
    detections = pipeline.detector.detect(rotated)
    assert detections, "no face found in the rotated photo"
    landmarks = detections[0].landmarks
    # Pillow rotates counter-clockwise, which tilts the eye line to about -20 degrees in image coordinates.
    eye_line = landmarks[1] - landmarks[0]
    assert math.degrees(math.atan2(eye_line[1], eye_line[0])) == pytest.approx(-20, abs=6)

    for kind in MASK_TYPES:
        for style in styles(kind):
            masked, coverage = draw_mask(rotated, landmarks, style, return_coverage=True)
            assert_eyes_clear(rotated, masked, coverage, landmarks)
            assert_lower_face_covered(coverage, landmarks, style)


@pytest.mark.datasets
def test_lfw_mask_changes_embedding_less_than_identity(pipeline: FacePipeline, datasets_dir: Path) -> None:
    images = [load_image(datasets_dir / "lfw" / path, **LIMITS) for path in (LFW_PHOTOS[0], OTHER_PERSON_PHOTO)]
    detections = pipeline.detector.detect_batch([image.pixels for image in images])
    subject, other = images
    face = detections[0][0]
    masked_pixels = draw_mask(subject.pixels, face.landmarks, random_mask_style(np.random.default_rng(0), "surgical"))
    masked = DecodedImage(masked_pixels, sha256="0" * 64, format="JPEG", source="masked")

    faces = pipeline.embed_detections([subject, masked, other], [[face], [face], [detections[1][0]]])
    original, masked_embedding, other_embedding = (found[0].embedding for found in faces)
    masked_similarity = float(original @ masked_embedding)
    other_similarity = float(original @ other_embedding)
    assert masked_similarity < 0.9, "the mask barely changed the descriptor"
    assert masked_similarity > other_similarity


def test_synthesize_same_seed_same_images(synthetic_image: np.ndarray) -> None:
    first = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 5, seed=42)
    second = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 5, seed=42)
    assert len(first) == 5
    for first_image, second_image in zip(first, second, strict=True):
        assert np.array_equal(first_image, second_image)


def test_synthesize_variants_differ(synthetic_image: np.ndarray) -> None:
    variants = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 4, seed=42)
    for index, variant in enumerate(variants):
        for other in variants[index + 1 :]:
            assert not np.array_equal(variant, other)


def test_synthesize_different_seeds_differ(synthetic_image: np.ndarray) -> None:
    first = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 1, seed=1)[0]
    second = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 1, seed=2)[0]
    assert not np.array_equal(first, second)


def test_synthesize_uses_every_kind(monkeypatch: pytest.MonkeyPatch, synthetic_image: np.ndarray) -> None:
    drawn = []

    def record(pixels, landmarks, style, **options):
        drawn.append(style.kind)
        return pixels.copy()

    monkeypatch.setattr("core.masks.draw_mask", record)
    synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 8, seed=3)
    assert sorted(drawn[:4]) == sorted(MASK_TYPES)
    assert sorted(drawn[4:]) == sorted(MASK_TYPES)


def test_synthesize_zero_count_returns_empty(synthetic_image: np.ndarray) -> None:
    assert synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 0, seed=0) == []


def test_random_style_same_seed_same_style() -> None:
    for kind in (*MASK_TYPES, None):
        first = random_mask_style(np.random.default_rng(9), kind)
        second = random_mask_style(np.random.default_rng(9), kind)
        assert first == second


def test_random_style_varies_colour_and_pattern() -> None:
    rng = np.random.default_rng(0)
    surgical = [random_mask_style(rng, "surgical") for _ in range(40)]
    cloth = [random_mask_style(rng, "cloth") for _ in range(40)]
    assert len({style.colour for style in surgical}) > 10
    assert {style.pattern for style in cloth} == {"plain", "stripes", "dots", "plaid"}
    assert all(style.pleats >= 2 for style in surgical)


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_synthetic_face_changes_only_coverage(synthetic_image: np.ndarray, kind: str) -> None:
    style = random_mask_style(np.random.default_rng(5), kind)
    masked, coverage = draw_mask(synthetic_image, SYNTHETIC_LANDMARKS, style, return_coverage=True)
    assert masked.dtype == np.uint8
    assert masked.shape == synthetic_image.shape
    assert np.array_equal(masked[~coverage], synthetic_image[~coverage])
    assert_eyes_clear(synthetic_image, masked, coverage, SYNTHETIC_LANDMARKS)
    assert_lower_face_covered(coverage, SYNTHETIC_LANDMARKS, style)


def test_eye_clearance_overrides_style(synthetic_image: np.ndarray) -> None:
    # A top edge on the eye line would cover the eyes without the clearance.
    style = replace(random_mask_style(np.random.default_rng(0), "surgical"), top=-0.3, top_side=-0.2)
    masked, coverage = draw_mask(synthetic_image, SYNTHETIC_LANDMARKS, style, return_coverage=True)
    eye_distance = float(np.linalg.norm(SYNTHETIC_LANDMARKS[1] - SYNTHETIC_LANDMARKS[0]))
    for eye in SYNTHETIC_LANDMARKS[:2]:
        around = near(synthetic_image.shape, eye, 0.99 * EYE_CLEARANCE * eye_distance)
        assert not coverage[around].any()
        assert np.array_equal(masked[around], synthetic_image[around])


def test_face_at_image_edge_is_clipped(synthetic_image: np.ndarray) -> None:
    shifted = SYNTHETIC_LANDMARKS + np.array([100.0, 90.0])
    style = random_mask_style(np.random.default_rng(2), "cloth")
    masked, coverage = draw_mask(synthetic_image, shifted, style, return_coverage=True)
    assert coverage.any()
    assert np.array_equal(masked[~coverage], synthetic_image[~coverage])


def test_face_outside_image_changes_nothing(synthetic_image: np.ndarray) -> None:
    outside = SYNTHETIC_LANDMARKS + np.array([1000.0, 0.0])
    style = random_mask_style(np.random.default_rng(2), "n95")
    masked, coverage = draw_mask(synthetic_image, outside, style, return_coverage=True)
    assert not coverage.any()
    assert np.array_equal(masked, synthetic_image)


def test_mask_region_accepts_two_dimensional_shape() -> None:
    style = random_mask_style(np.random.default_rng(4), "kn95")
    assert np.array_equal(
        mask_region(SYNTHETIC_LANDMARKS, style, (250, 250)), mask_region(SYNTHETIC_LANDMARKS, style, (250, 250, 3))
    )


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((250, 250, 3), dtype=np.float32),
        np.zeros((250, 250), dtype=np.uint8),
        np.zeros((250, 250, 4), dtype=np.uint8),
        np.zeros((0, 250, 3), dtype=np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["float32", "grayscale", "rgba", "empty", "list"],
)
def test_draw_mask_rejects_bad_pixels(pixels) -> None:
    style = random_mask_style(np.random.default_rng(0), "surgical")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8|at least one row"):
        draw_mask(pixels, SYNTHETIC_LANDMARKS, style)


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((4, 2)), r"shape \(5, 2\)"),
        (np.zeros((5, 3)), r"shape \(5, 2\)"),
        (np.full((5, 2), np.nan), "finite"),
        (np.zeros((5, 2)), "degenerate"),
        (np.array([[0, 0], [10, 0], [20, 0], [30, 0], [40, 0]], dtype=float), "degenerate"),
        ([["a", "b"]] * 5, "numbers"),
    ],
    ids=["four-points", "three-columns", "nan", "all-zero", "collinear", "strings"],
)
def test_draw_mask_rejects_bad_landmarks(synthetic_image: np.ndarray, landmarks, message: str) -> None:
    style = random_mask_style(np.random.default_rng(0), "surgical")
    with pytest.raises(ValueError, match=message):
        draw_mask(synthetic_image, landmarks, style)
    with pytest.raises(ValueError, match=message):
        mask_region(landmarks, style, synthetic_image.shape)


def test_unknown_kind_names_allowed_kinds(synthetic_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="surgical, cloth, kn95, n95"):
        random_mask_style(np.random.default_rng(0), "bandana")
    with pytest.raises(ValueError, match="surgical, cloth, kn95, n95"):
        MaskStyle(kind="bandana", colour=(0, 0, 0))
    with pytest.raises(ValueError, match="surgical, cloth, kn95, n95"):
        synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 1, seed=0, kinds=("bandana",))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pattern": "paisley"}, "pattern"),
        ({"colour": (0, 0, 256)}, "colour"),
        ({"half_width": 0.0}, "half_width"),
        ({"top": 2.0}, "top < jaw < chin"),
        ({"pleats": -1}, "pleats"),
    ],
    ids=["pattern", "colour", "width", "top-below-chin", "pleats"],
)
def test_mask_style_rejects_invalid_fields(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskStyle(**{"kind": "surgical", "colour": (150, 197, 226), **changes})


def test_synthesize_rejects_negative_count(synthetic_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="count"):
        synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, -1, seed=0)


def test_mask_region_rejects_bad_shape() -> None:
    style = random_mask_style(np.random.default_rng(0), "surgical")
    with pytest.raises(ValueError, match="shape"):
        mask_region(SYNTHETIC_LANDMARKS, style, (0, 250))


def mask_args(image: Path, output: Path, **options) -> argparse.Namespace:
    defaults = {"kind": None, "seed": 0, "count": 1, "json": False}
    return argparse.Namespace(image=image, output=output, **{**defaults, **options})


@pytest.mark.datasets
async def test_mask_command_writes_image(datasets_dir: Path, settings: Settings, tmp_path: Path) -> None:
    source = datasets_dir / "lfw" / LFW_PHOTOS[0]
    output = tmp_path / "masked.png"
    result = await mask(mask_args(source, output, kind="kn95", seed=3), settings)

    assert output.is_file()
    written = load_image(output, **LIMITS).pixels
    original = load_image(source, **LIMITS).pixels
    assert written.shape == original.shape
    assert not np.array_equal(written, original)
    assert str(output) in result.text
    assert "kn95" in result.text
    assert result.data["written"][0]["faces"][0]["kind"] == "kn95"


@pytest.mark.datasets
async def test_mask_command_numbers_copies(datasets_dir: Path, settings: Settings, tmp_path: Path) -> None:
    output = tmp_path / "masked.jpg"
    result = await mask(mask_args(datasets_dir / "lfw" / LFW_PHOTOS[1], output, count=2), settings)

    first, second = tmp_path / "masked-1.jpg", tmp_path / "masked-2.jpg"
    assert first.is_file()
    assert second.is_file()
    assert not output.exists()
    assert len(result.text.splitlines()) == 2
    assert not np.array_equal(load_image(first, **LIMITS).pixels, load_image(second, **LIMITS).pixels)


async def test_mask_command_blank_image_raises(settings: Settings, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    output = tmp_path / "masked.png"
    with pytest.raises(NoFaceError, match="no face found"):
        await mask(mask_args(blank, output), settings)
    assert not output.exists()


async def test_mask_command_rejects_unknown_suffix(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(MaskidError, match="suffix"):
        await mask(mask_args(tmp_path / "in.png", tmp_path / "out.xyz"), settings)


async def test_mask_command_rejects_bad_count(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(MaskidError, match="--count"):
        await mask(mask_args(tmp_path / "in.png", tmp_path / "out.png", count=0), settings)


def test_mask_parser_reads_options() -> None:
    parser = argparse.ArgumentParser(prog="maskid")
    add_mask_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mask", "in.jpg", "-o", "out.webp", "--kind", "n95", "--seed", "4", "--count", "3"])
    assert args.handler is mask
    assert args.output == Path("out.webp")
    assert (args.kind, args.seed, args.count) == ("n95", 4, 3)


def test_mask_parser_rejects_unknown_suffix(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="maskid")
    add_mask_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["mask", "in.jpg", "-o", "out.xyz"])
    assert "unknown image file suffix" in capsys.readouterr().err


def test_numbered_paths() -> None:
    assert numbered_paths(Path("out/masked.jpg"), 1) == [Path("out/masked.jpg")]
    assert numbered_paths(Path("out/masked.jpg"), 3) == [
        Path("out/masked-1.jpg"),
        Path("out/masked-2.jpg"),
        Path("out/masked-3.jpg"),
    ]


def test_synthesize_restyle_changes_only_style(synthetic_image: np.ndarray) -> None:
    seen: list[MaskStyle] = []

    def record(style: MaskStyle) -> MaskStyle:
        seen.append(style)
        return style

    def raise_top(style: MaskStyle) -> MaskStyle:
        return replace(style, top=style.top - 0.1, top_side=style.top_side - 0.1)

    plain = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 4, seed=42)
    recorded = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 4, seed=42, restyle=record)
    raised = synthesize_masked(synthetic_image, SYNTHETIC_LANDMARKS, 4, seed=42, restyle=raise_top)

    assert sorted(style.kind for style in seen) == sorted(MASK_TYPES)
    # The column between the eyes crosses the top edge at the nose bridge, away from the straps.
    middle = round(float(SYNTHETIC_LANDMARKS[:2, 0].mean()))
    for plain_image, recorded_image, raised_image, style in zip(plain, recorded, raised, seen, strict=True):
        assert np.array_equal(plain_image, recorded_image)
        plain_top = np.argmax(np.any(plain_image[:, middle] != synthetic_image[:, middle], axis=1))
        raised_top = np.argmax(np.any(raised_image[:, middle] != synthetic_image[:, middle], axis=1))
        assert raised_top < plain_top, style.kind
