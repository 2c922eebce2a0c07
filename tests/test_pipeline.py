"""Tests for the face pipeline: real LFW photos through MTCNN and FaceNet, and main-face selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.alignment import AlignmentConfig, align_face
from core.detection import DetectedFace
from core.embedding import Embedder, cpu_has_native_bf16
from core.errors import ConfigurationError
from core.images import DecodedImage, load_image
from core.masks import synthesize_masked
from core.pipeline import Face, FacePipeline, main_face, masked_variants_seed
from core.settings import Settings

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
SAME_PERSON = ("George_W_Bush/George_W_Bush_0001.jpg", "George_W_Bush/George_W_Bush_0002.jpg")
OTHER_PERSON = "Colin_Powell/Colin_Powell_0001.jpg"
COLLAGE_PHOTOS = (OTHER_PERSON, SAME_PERSON[0], "Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg")
EMBEDDING_DIM = 512


def lfw_image(datasets_dir: Path, relative: str) -> DecodedImage:
    return load_image(datasets_dir / "lfw" / relative, **LIMITS)


def decoded(pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(pixels=np.ascontiguousarray(pixels), sha256="0" * 64, format="PNG", source=None)


def face_at(box: tuple[float, float, float, float]) -> Face:
    """Build a face with the given box and an all-zero descriptor, for main_face."""
    detection = DetectedFace(box=box, probability=0.99, landmarks=np.zeros((5, 2), dtype=np.float32))
    return Face(detection=detection, embedding=np.zeros(EMBEDDING_DIM, dtype=np.float32))


def random_crop(seed: int = 0) -> np.ndarray:
    """Return a random (160, 160, 3) uint8 crop, because flip symmetry must hold for any input, not only faces."""
    return np.random.default_rng(seed).integers(0, 256, size=(160, 160, 3), dtype=np.uint8)


@pytest.mark.datasets
def test_analyze_returns_unit_float32_embeddings(pipeline: FacePipeline, datasets_dir: Path) -> None:
    faces = pipeline.analyze(lfw_image(datasets_dir, SAME_PERSON[0]))

    assert len(faces) == 1
    embedding = faces[0].embedding
    assert embedding.dtype == np.float32
    assert embedding.shape == (pipeline.embedder.embedding_dim,)
    assert float(np.linalg.norm(embedding)) == pytest.approx(1.0, abs=1e-5)
    assert faces[0].box == faces[0].detection.box


@pytest.mark.datasets
def test_same_person_scores_higher(pipeline: FacePipeline, datasets_dir: Path) -> None:
    images = [lfw_image(datasets_dir, relative) for relative in (*SAME_PERSON, OTHER_PERSON)]

    results = pipeline.analyze_batch(images)

    assert [len(faces) for faces in results] == [1, 1, 1]
    bush_1, bush_2, powell = (faces[0].embedding for faces in results)
    same_score = float(bush_1 @ bush_2)
    assert same_score > float(bush_1 @ powell)
    assert same_score > float(bush_2 @ powell)


def test_analyze_blank_image_returns_no_faces(pipeline: FacePipeline) -> None:
    assert pipeline.analyze(decoded(np.zeros((120, 120, 3), dtype=np.uint8))) == []


def test_analyze_batch_empty_input(pipeline: FacePipeline) -> None:
    assert pipeline.analyze_batch([]) == []


@pytest.mark.parametrize(
    ("alignment", "tag"),
    [(None, "margin32"), (AlignmentConfig(method="similarity", margin=20), "similarity20")],
    ids=["default", "similarity20"],
)
def test_model_id_names_alignment_and_flip(settings: Settings, alignment: AlignmentConfig | None, tag: str) -> None:
    pipeline = FacePipeline.from_settings(settings, alignment=alignment)

    assert pipeline.model_id.endswith(f"/{tag}")
    assert "+flip" in pipeline.model_id
    assert pipeline.model_id.startswith(pipeline.embedder.backbone.model_id)


def test_model_id_without_flip(pipeline: FacePipeline) -> None:
    embedder = Embedder(pipeline.embedder.backbone, flip=False)
    unflipped = FacePipeline(pipeline.detector, embedder, pipeline.alignment)

    assert "+flip" not in unflipped.model_id
    assert unflipped.model_id != pipeline.model_id


def test_pipeline_rejects_alignment_size_mismatch(pipeline: FacePipeline) -> None:
    with pytest.raises(ValueError, match="alignment size 112 does not match the backbone input size 160"):
        FacePipeline(pipeline.detector, pipeline.embedder, AlignmentConfig(size=112))


@pytest.mark.datasets
def test_main_face_picks_center_of_collage(pipeline: FacePipeline, datasets_dir: Path) -> None:
    # The collage is three 250 px LFW photos in a row, and the middle face is the subject.
    photos = [lfw_image(datasets_dir, relative) for relative in COLLAGE_PHOTOS]
    collage = decoded(np.concatenate([photo.pixels for photo in photos], axis=1))

    faces = pipeline.analyze(collage)
    subject = main_face(faces, collage.width, collage.height)

    assert len(faces) == 3
    assert subject is not None
    x1, _, x2, _ = subject.box
    assert 250 < (x1 + x2) / 2 < 500
    # The same face analysed on its own gives nearly the same descriptor.
    (alone,) = pipeline.analyze(photos[1])
    assert float(subject.embedding @ alone.embedding) > 0.95


def test_main_face_none_for_no_faces() -> None:
    assert main_face([], 640, 480) is None


def test_main_face_prefers_central_among_large() -> None:
    left = face_at((10.0, 100.0, 110.0, 220.0))
    center = face_at((280.0, 180.0, 370.0, 290.0))
    right = face_at((520.0, 100.0, 630.0, 220.0))

    assert main_face([left, right, center], 640, 480) is center


def test_main_face_ignores_small_central_face() -> None:
    # The central face has less than half the area of the largest one, so it is a bystander.
    large_left = face_at((20.0, 100.0, 220.0, 340.0))
    small_center = face_at((300.0, 220.0, 340.0, 260.0))

    assert main_face([large_left, small_center], 640, 480) is large_left


def test_embedder_flip_is_symmetric(pipeline: FacePipeline) -> None:
    crop = random_crop()
    mirrored = np.ascontiguousarray(crop[:, ::-1])
    assert pipeline.embedder.flip

    plain, mirror = pipeline.embedder.embed(np.stack([crop, mirrored]))

    np.testing.assert_allclose(plain, mirror, atol=1e-5)


def test_embedder_without_flip_is_not_symmetric(pipeline: FacePipeline) -> None:
    # One orientation alone gives the crop and its mirror image different descriptors, so the test above can fail.
    crop = random_crop()
    embedder = Embedder(pipeline.embedder.backbone, flip=False)

    plain, mirror = embedder.embed(np.stack([crop, np.ascontiguousarray(crop[:, ::-1])]))

    assert float(np.abs(plain - mirror).max()) > 1e-3


def test_embedder_empty_batch(pipeline: FacePipeline) -> None:
    vectors = pipeline.embedder.embed(np.zeros((0, 160, 160, 3), dtype=np.uint8))

    assert vectors.shape == (0, pipeline.embedder.embedding_dim)
    assert vectors.dtype == np.float32


@pytest.mark.parametrize(
    "crops",
    [np.zeros((1, 112, 112, 3), dtype=np.uint8), np.zeros((1, 160, 160, 3), dtype=np.float32)],
    ids=["wrong-size", "float32"],
)
def test_embedder_rejects_bad_crops(pipeline: FacePipeline, crops: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 160, 160, 3\) uint8 crops"):
        pipeline.embedder.embed(crops)


def test_plain_settings_reach_pipeline(settings: Settings) -> None:
    plain = settings.replace(detection_retry=False, whole_image_fallback=False, flip=False)

    pipeline = FacePipeline.from_settings(plain)

    assert pipeline.detector.retry is False
    assert pipeline.detector.whole_image_fallback is False
    assert pipeline.embedder.flip is False
    assert "+flip" not in pipeline.model_id


@pytest.mark.datasets
def test_bf16_embedding_matches_fp32(pipeline: FacePipeline, datasets_dir: Path) -> None:
    image = lfw_image(datasets_dir, SAME_PERSON[0])
    [face] = pipeline.detector.detect(image.pixels)
    crop = np.stack([align_face(image.pixels, face, pipeline.alignment)])
    backbone = pipeline.embedder.backbone

    fp32_vector, fp32_features = Embedder(backbone, precision="fp32").embed_with_features(crop)
    bf16_vector, bf16_features = Embedder(backbone, precision="bf16").embed_with_features(crop)

    assert bf16_vector.dtype == np.float32
    assert bf16_features.dtype == np.float32
    assert float(fp32_vector[0] @ bf16_vector[0]) > 0.999
    np.testing.assert_allclose(np.linalg.norm(bf16_vector, axis=1), 1.0, atol=1e-5)
    cosine = fp32_features[0] @ bf16_features[0] / np.linalg.norm(fp32_features[0]) / np.linalg.norm(bf16_features[0])
    assert cosine > 0.999


def test_embedder_auto_precision_follows_cpu(pipeline: FacePipeline) -> None:
    embedder = Embedder(pipeline.embedder.backbone, precision="auto")

    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert embedder.resolved_precision == expected
    assert Embedder(pipeline.embedder.backbone, precision="fp32").resolved_precision == "fp32"


def test_embedder_rejects_unknown_precision(pipeline: FacePipeline) -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        Embedder(pipeline.embedder.backbone, precision="int8")


def test_speed_settings_reach_pipeline(settings: Settings) -> None:
    tuned = settings.replace(detection_max_side=0, embedding_precision="fp32", synthetic_mask_flip=True)

    pipeline = FacePipeline.from_settings(tuned)

    assert pipeline.detector.max_side == 0
    assert pipeline.embedder.precision == "fp32"
    assert pipeline.synthetic_mask_flip is True
    assert pipeline.model_id == FacePipeline.from_settings(settings).model_id


def test_speed_settings_defaults(settings: Settings) -> None:
    pipeline = FacePipeline.from_settings(settings)

    assert pipeline.detector.max_side == 640
    assert pipeline.embedder.precision == "auto"
    assert pipeline.synthetic_mask_flip is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"detection_max_side": -1}, "MASKID_DETECTION_MAX_SIDE"),
        ({"embedding_precision": "int8"}, "MASKID_EMBEDDING_PRECISION"),
    ],
    ids=["negative-max-side", "unknown-precision"],
)
def test_speed_settings_reject_invalid_values(settings: Settings, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings.replace(**changes)


@pytest.mark.datasets
def test_synthetic_masks_embedded_without_flip(pipeline: FacePipeline, datasets_dir: Path) -> None:
    image = lfw_image(datasets_dir, SAME_PERSON[0])
    [face] = pipeline.detector.detect(image.pixels)
    variants = synthesize_masked(image.pixels, face.landmarks, 2, seed=masked_variants_seed(image.sha256))
    crops = np.stack([align_face(variant, face, pipeline.alignment) for variant in variants])
    flipping = FacePipeline(pipeline.detector, pipeline.embedder, pipeline.alignment, synthetic_mask_flip=True)

    default = pipeline.embed_masked(image, face, 2)
    flipped = flipping.embed_masked(image, face, 2)

    assert pipeline.embedder.flip is True
    np.testing.assert_allclose(default, pipeline.embedder.embed_with_features(crops, flip=False)[0], atol=1e-5)
    np.testing.assert_allclose(flipped, pipeline.embedder.embed(crops), atol=1e-5)
    # A mirrored crop changes the descriptor a little, never the identity.
    assert (default * flipped).sum(axis=1).min() > 0.9
