"""End-to-end test of twin-head training on a few LFW people: the validation loss must fall."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.pipeline import FacePipeline
from core.settings import Settings
from core.siamese.cache import TrunkCache
from core.siamese.data import FeatureSet, build_feature_set, select_people, split_people, subset
from core.siamese.head import SiameseHead
from core.siamese.losses import distillation_loss
from core.siamese.training import TrainingConfig, ValidationResult, embed_all, is_better, masked_rank1, train_head
from core.siamese.trunk import TrunkRunner, load_facenet

# People with at least 4 photos each, so every person has photos besides the gallery one.
PEOPLE = (
    "Adrien_Brody",
    "Amelie_Mauresmo",
    "Andre_Agassi",
    "Andy_Roddick",
    "Angelina_Jolie",
    "Ari_Fleischer",
    "Ariel_Sharon",
    "Bill_Gates",
    "Britney_Spears",
    "Carlos_Menem",
)
PHOTOS_PER_PERSON = 4
MASKS = 2
TIME_LIMIT_S = 60.0  # training alone, after the module fixture has run the trunk


@pytest.fixture(scope="module")
def tiny_features(
    pipeline: FacePipeline, model_cache_dir: Path, datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FeatureSet, TrunkCache]:
    """Trunk outputs of 4 photos of each of 10 LFW people, each with 2 synthetic-mask variants."""
    dataset = datasets_dir / "lfw"
    missing = [name for name in PEOPLE if not (dataset / name).is_dir()]
    assert not missing, f"LFW people missing from {dataset}: {missing}"
    photos = select_people(dataset, min_photos=PHOTOS_PER_PERSON)
    photos = {name: photos[name][:PHOTOS_PER_PERSON] for name in PEOPLE}

    settings = Settings(cache_dir=model_cache_dir, torch_threads=1)
    runner = TrunkRunner(settings)
    trunk_cache = TrunkCache(tmp_path_factory.mktemp("trunk"), model_id=runner.model_id, layer=runner.layer)
    features = build_feature_set(
        pipeline,
        runner,
        trunk_cache,
        photos,
        masks=MASKS,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        show_progress=False,
    )
    return features, trunk_cache


@pytest.mark.datasets
def test_feature_set_has_every_crop(tiny_features: tuple[FeatureSet, TrunkCache]) -> None:
    features, trunk_cache = tiny_features
    assert len(features) == len(PEOPLE) * PHOTOS_PER_PERSON * (1 + MASKS)
    assert len(trunk_cache) == len(features)
    assert features.features.shape == (len(features), 1792, 3, 3)
    assert int(features.masked.sum()) == len(PEOPLE) * PHOTOS_PER_PERSON * MASKS
    assert features.people == tuple(sorted(PEOPLE))
    assert len(np.unique(features.photos)) == len(PEOPLE) * PHOTOS_PER_PERSON


@pytest.mark.datasets
@pytest.mark.parametrize("loss", ["triplet", "contrastive"])
def test_training_lowers_validation_loss(
    tiny_features: tuple[FeatureSet, TrunkCache], model_cache_dir: Path, loss: str, one_torch_thread: None
) -> None:
    started = time.monotonic()
    features, _ = tiny_features
    training_people, validation_people = split_people(features.people, 0.4, seed=0)
    train, validation = subset(features, training_people), subset(features, validation_people)
    # Without distillation the validation loss is the named loss alone, which training must lower.
    config = TrainingConfig(
        loss=loss, max_epochs=6, patience=6, batch_people=3, learning_rate=1e-3, seed=0, distillation=0.0
    )
    base = load_facenet(Settings(cache_dir=model_cache_dir))

    result = train_head(SiameseHead.from_base(base, "repeat_3"), train, validation, config, show_progress=False)

    assert len(result.history) == config.max_epochs + 1
    losses = [record.validation.loss for record in result.history]
    assert min(losses[1:]) < losses[0], f"validation loss never fell below the untrained head's: {losses}"
    assert all(np.isfinite(record.train_loss) for record in result.history[1:])
    assert result.base.probes == len(validation_people) * (PHOTOS_PER_PERSON - 1) * MASKS
    rank1, _ = masked_rank1(embed_all(result.head, validation), validation)
    assert rank1 == pytest.approx(result.best.masked_rank1)
    assert time.monotonic() - started < TIME_LIMIT_S


@pytest.mark.datasets
def test_distillation_keeps_unmasked_descriptors(
    tiny_features: tuple[FeatureSet, TrunkCache], model_cache_dir: Path, one_torch_thread: None
) -> None:
    features, _ = tiny_features
    training_people, validation_people = split_people(features.people, 0.4, seed=0)
    train, validation = subset(features, training_people), subset(features, validation_people)
    base = load_facenet(Settings(cache_dir=model_cache_dir))
    base_vectors = embed_all(SiameseHead.from_base(base, "repeat_3"), validation)[~validation.masked]
    drift = {}
    for weight in (0.0, 10.0):
        config = TrainingConfig(max_epochs=4, patience=4, batch_people=3, learning_rate=1e-3, distillation=weight)
        result = train_head(SiameseHead.from_base(base, "repeat_3"), train, validation, config, show_progress=False)
        vectors = embed_all(result.head, validation)[~validation.masked]
        drift[weight] = float(np.mean(np.sum((vectors - base_vectors) ** 2, axis=1)))

    assert drift[10.0] < drift[0.0], f"distillation did not keep unmasked descriptors closer to the base: {drift}"


def test_epoch_losing_unmasked_accuracy_is_not_better() -> None:
    base = ValidationResult(loss=0.5, masked_rank1=0.70, probes=10, unmasked_rank1=0.95)
    worse_unmasked = ValidationResult(loss=0.1, masked_rank1=0.90, probes=10, unmasked_rank1=0.93)
    within_tolerance = ValidationResult(loss=0.1, masked_rank1=0.90, probes=10, unmasked_rank1=0.945)

    assert not is_better(worse_unmasked, base, base, tolerance=0.01)
    assert is_better(within_tolerance, base, base, tolerance=0.01)


def test_distillation_loss_of_identical_descriptors_is_zero() -> None:
    vectors = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)

    assert float(distillation_loss(vectors, vectors)) == 0.0
    assert float(distillation_loss(vectors, -vectors)) == pytest.approx(4.0)
