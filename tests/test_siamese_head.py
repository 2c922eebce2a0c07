"""Tests for the twin head, its losses and its file: the untrained head must reproduce FaceNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gallery_helpers import head_info

from core.alignment import align_face
from core.backbones import FaceNetCasia
from core.embedding import Embedder
from core.errors import ModelError
from core.images import load_image
from core.pipeline import FacePipeline
from core.settings import Settings
from core.siamese.backbone import ROUTED_SUFFIX, SiameseBackbone
from core.siamese.head import SiameseHead
from core.siamese.losses import batch_hard_triplet_loss, contrastive_loss, pairwise_distances
from core.siamese.model_file import MAX_FILE_BYTES, load_head, save_head
from core.siamese.trunk import TRUNK_LAYERS, FaceNetTrunk, load_facenet

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
PHOTO = "George_W_Bush/George_W_Bush_0001.jpg"


@pytest.fixture(scope="module")
def base_model(model_cache_dir: Path) -> torch.nn.Module:
    return load_facenet(Settings(cache_dir=model_cache_dir))


@pytest.fixture(scope="module")
def real_crops(pipeline: FacePipeline, datasets_dir: Path) -> np.ndarray:
    """The aligned crop of one LFW photo and its mirror image, (2, 160, 160, 3) uint8."""
    image = load_image(datasets_dir / "lfw" / PHOTO, **LIMITS)
    face = pipeline.analyze(image)[0]
    crop = align_face(image.pixels, face.detection, pipeline.alignment)
    return np.stack([crop, crop[:, ::-1]])


@pytest.mark.datasets
@pytest.mark.parametrize("layer", TRUNK_LAYERS)
def test_untrained_head_reproduces_base(
    base_model: torch.nn.Module, real_crops: np.ndarray, pipeline: FacePipeline, layer: str, one_torch_thread: None
) -> None:
    inputs = pipeline.embedder.backbone.preprocess(real_crops)
    head = SiameseHead.from_base(base_model, layer)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(base_model(inputs), dim=1)
        actual = head.embed(FaceNetTrunk(base_model, layer)(inputs))

    np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-4)


@pytest.mark.datasets
def test_siamese_backbone_matches_embedder(
    base_model: torch.nn.Module,
    real_crops: np.ndarray,
    pipeline: FacePipeline,
    settings: Settings,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    path = tmp_path / "head.pt"
    model_id = save_head(path, SiameseHead.from_base(base_model, "repeat_3"), head_info("repeat_3"))
    embedder = Embedder(SiameseBackbone(settings, path), flip=True, precision="fp32")
    base_embedder = Embedder(
        FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir), precision="fp32"
    )

    assert embedder.model_id == f"{model_id}{ROUTED_SUFFIX}+flip"
    assert embedder.model_id != base_embedder.model_id
    expected_vectors, expected_features = base_embedder.embed_with_features(real_crops)
    vectors, features = embedder.embed_with_features(real_crops)
    # The untrained head is the base network, so both parts hold its descriptor.
    assert vectors.shape == (len(real_crops), 1024)
    np.testing.assert_allclose(vectors[:, :512] * np.sqrt(2), expected_vectors, atol=1e-4)
    np.testing.assert_allclose(vectors[:, 512:] * np.sqrt(2), expected_vectors, atol=1e-4)
    np.testing.assert_allclose(features, expected_features, atol=1e-4)


def test_gate_starts_as_identity() -> None:
    head = SiameseHead("repeat_3")
    features = torch.randn(2, 1792, 3, 3)
    torch.testing.assert_close(head.gate(features), features)


def test_head_training_keeps_batch_norm_frozen() -> None:
    head = SiameseHead("repeat_3").train()
    assert head.training
    assert not head.last_bn.training
    batch_norms = [module for module in head.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert batch_norms
    assert not any(module.training for module in batch_norms)


def test_head_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = SiameseHead("repeat_3").eval()
    path = tmp_path / "head.pt"
    model_id = save_head(path, head, head_info("repeat_3"))

    loaded, info, loaded_id = load_head(path)
    assert loaded_id == model_id
    assert model_id.startswith("facenet-casia-20180408+siamese-")
    assert info == head_info("repeat_3")
    assert path.stat().st_size <= MAX_FILE_BYTES
    inputs = torch.randn(3, 1792, 3, 3)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(inputs), head(inputs))


def test_head_id_changes_with_weights(tmp_path: Path) -> None:
    head = SiameseHead("repeat_3")
    first = save_head(tmp_path / "first.pt", head, head_info("repeat_3"))
    with torch.no_grad():
        head.last_linear.weight[0, 0] += 1.0
    second = save_head(tmp_path / "second.pt", head, head_info("repeat_3"))
    assert first != second


def test_head_file_rejects_oversize_head(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    with pytest.raises(ModelError, match="over the 30 MiB limit"):
        save_head(path, SiameseHead("mixed_7a"), head_info("mixed_7a"))
    assert not path.exists()


def test_load_head_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="maskid train siamese"):
        load_head(tmp_path / "missing.pt")


def unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_pairwise_distances_of_unit_vectors() -> None:
    vectors = unit([[1, 0], [0, 1], [-1, 0]])
    distances = pairwise_distances(vectors, vectors)
    expected = torch.tensor([[0.0, 2**0.5, 2.0], [2**0.5, 0.0, 2**0.5], [2.0, 2**0.5, 0.0]])
    torch.testing.assert_close(distances, expected, atol=1e-5, rtol=0)


def test_triplet_loss_zero_when_separated() -> None:
    embeddings = unit([[1, 0], [1, 0.01], [-1, 0], [-1, 0.01]])
    labels = torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet_loss(embeddings, labels, margin=0.2).item() == pytest.approx(0.0)


def test_triplet_loss_uses_hardest_pairs() -> None:
    # Anchor 0: hardest positive is row 1 (distance sqrt 2), hardest negative row 2 (distance 0).
    embeddings = unit([[1, 0], [0, 1], [1, 0], [0, 1]])
    labels = torch.tensor([0, 0, 1, 1])
    expected = 2**0.5 - 0.0 + 0.2
    assert batch_hard_triplet_loss(embeddings, labels, margin=0.2).item() == pytest.approx(expected, abs=1e-4)


def test_contrastive_loss_pairs_masked_with_unmasked() -> None:
    embeddings = unit([[1, 0], [1, 0], [0, 1], [0, 1]])
    labels = torch.tensor([0, 0, 1, 1])
    masked = torch.tensor([True, False, True, False])
    # Positive pairs are identical and negative pairs sqrt 2 apart, beyond a margin of 1.
    assert contrastive_loss(embeddings, labels, masked, margin=1.0).item() == pytest.approx(0.0, abs=1e-5)
    # With margin 2, each negative pair adds (2 - sqrt 2)**2.
    expected = (2 - 2**0.5) ** 2
    assert contrastive_loss(embeddings, labels, masked, margin=2.0).item() == pytest.approx(expected, abs=1e-4)


def test_contrastive_loss_needs_both_kinds() -> None:
    embeddings = unit([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="masked and unmasked"):
        contrastive_loss(embeddings, torch.tensor([0, 1]), torch.tensor([True, True]), margin=1.0)


@pytest.mark.datasets
def test_siamese_backbone_keeps_base_features(
    base_model: torch.nn.Module,
    real_crops: np.ndarray,
    pipeline: FacePipeline,
    settings: Settings,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    head = SiameseHead.from_base(base_model, "repeat_3")
    with torch.no_grad():
        head.blocks.block8.conv2d.weight.mul_(2.0)
        head.gate.conv.weight.normal_(std=0.01)
    path = tmp_path / "changed.pt"
    save_head(path, head, head_info("repeat_3"))
    embedder = Embedder(SiameseBackbone(settings, path), flip=True)

    expected_vectors, expected_features = pipeline.embedder.embed_with_features(real_crops)
    vectors, features = embedder.embed_with_features(real_crops)
    np.testing.assert_allclose(features, expected_features, atol=1e-4)
    assert np.abs(vectors - expected_vectors).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
