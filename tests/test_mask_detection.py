"""The mask classifier: training, decisions, saving and loading, and the shipped file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from core.mask_detection import MaskClassifier, shipped_classifier, train_mask_classifier

DIM = 16


def clusters(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around two centres: "unmasked" and "masked" descriptors."""
    centres = np.eye(DIM)[:2]
    unmasked = centres[0] + 0.25 * rng.normal(size=(count, DIM))
    masked = centres[1] + 0.25 * rng.normal(size=(count, DIM))
    return (
        unmasked / np.linalg.norm(unmasked, axis=1, keepdims=True),
        masked / np.linalg.norm(masked, axis=1, keepdims=True),
    )


def test_training_separates_masked_from_unmasked() -> None:
    rng = np.random.default_rng(0)
    unmasked, masked = clusters(rng, 300)
    test_unmasked, test_masked = clusters(rng, 300)

    classifier = train_mask_classifier(unmasked, masked, model_id="m")

    assert classifier.is_masked(test_masked).mean() > 0.95
    assert classifier.is_masked(test_unmasked).mean() < 0.05
    assert 0.0 <= float(classifier.probability(test_masked[0])) <= 1.0


def test_training_rejects_an_empty_class() -> None:
    with pytest.raises(ValueError, match="both classes need examples"):
        train_mask_classifier(np.zeros((0, DIM)), np.ones((3, DIM)), model_id="m")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    unmasked, masked = clusters(np.random.default_rng(1), 50)
    classifier = train_mask_classifier(unmasked, masked, model_id="model-a")

    classifier.save(tmp_path / "nested" / "classifier.npz")
    loaded = MaskClassifier.load(tmp_path / "nested" / "classifier.npz")

    assert loaded.model_id == "model-a"
    assert loaded.summary == classifier.summary
    np.testing.assert_allclose(loaded.probability(masked), classifier.probability(masked))


def test_load_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"not an npz file")

    with pytest.raises(ModelError, match=r"broken\.npz.*maskid train mask-detector"):
        MaskClassifier.load(tmp_path / "broken.npz")


def test_classifier_rejects_descriptors_of_another_length() -> None:
    unmasked, masked = clusters(np.random.default_rng(2), 20)
    classifier = train_mask_classifier(unmasked, masked, model_id="m")

    with pytest.raises(ValueError, match=f"features of length {DIM}"):
        classifier.probability(np.zeros(DIM + 1))


def test_shipped_classifier_fits_the_default_model_only() -> None:
    shipped = shipped_classifier("facenet-casia-20180408+flip/margin32")

    assert shipped is not None
    assert shipped.weights.shape == (1792,)
    assert shipped_classifier("another-model") is None
