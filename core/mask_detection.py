"""Mask detection: does a face wear a mask? A logistic regression on the face's trunk features.

The features are the embedding network's last feature map averaged over space
(:attr:`core.pipeline.Face.features`), which the pipeline computes anyway. They
describe what the face looks like, and a mask changes them so much that a linear
classifier separates masked from unmasked faces. The identity descriptor is
trained to ignore such changes, so it separates them less well (see
docs/benchmarks.md). The classifier costs one dot product per face. It is trained
on unmasked photos and copies of the same photos with synthetic masks (see
:mod:`core.masks`); ``maskid train mask-detector`` reproduces the shipped one.

A classifier belongs to one network: it records the model id it was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from core.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_L2 = 0.1
# The classifier maskid ships, inside the core package.
SHIPPED_FILE = "mask_classifier.npz"


@dataclass(frozen=True, eq=False)
class MaskClassifier:
    """Logistic regression ``sigmoid(((features - mean) / scale) @ weights + bias)`` = probability of a mask.

    Attributes:
        model_id: pipeline it was trained on (see :attr:`core.pipeline.FacePipeline.model_id`).
        weights: (F,) float64, on standardised features.
        bias: intercept.
        mean, scale: (F,) float64 standardisation of the features.
        threshold: probability from which a face counts as masked.
        summary: how it was trained and validated, for reports.
    """

    model_id: str
    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    threshold: float = DEFAULT_THRESHOLD
    summary: str = ""

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Return the mask probability of each row of (N, F) features, or of one (F,) vector."""
        features = np.asarray(features, dtype=np.float64)
        if features.shape[-1] != len(self.weights):
            raise ValueError(f"expected features of length {len(self.weights)}, got shape {features.shape}")
        return _sigmoid(((features - self.mean) / self.scale) @ self.weights + self.bias)

    def is_masked(self, features: np.ndarray) -> np.ndarray:
        """Return True where the mask probability reaches :attr:`threshold`."""
        return self.probability(features) >= self.threshold

    def save(self, path: Path) -> None:
        """Write the classifier to an ``.npz`` file, creating its folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model_id": self.model_id, "bias": self.bias, "threshold": self.threshold, "summary": self.summary}
        with path.open("wb") as handle:
            np.savez(handle, weights=self.weights, mean=self.mean, scale=self.scale, meta=np.array(json.dumps(meta)))
        logger.info("saved mask classifier for %s to %s", self.model_id, path)

    @classmethod
    def load(cls, path: Path) -> MaskClassifier:
        """Read a classifier written by :meth:`save`.

        Raises:
            ModelError: the file is missing or is not a mask classifier.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: np.asarray(data[name], dtype=np.float64) for name in ("weights", "mean", "scale")}
            return cls(
                meta["model_id"],
                bias=float(meta["bias"]),
                threshold=float(meta["threshold"]),
                summary=meta["summary"],
                **arrays,
            )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(
                f"cannot read mask classifier {path}: {exc}; retrain it with `maskid train mask-detector`"
            ) from exc


def shipped_classifier(model_id: str) -> MaskClassifier | None:
    """Return the classifier shipped with maskid when it fits ``model_id``, else None (logged)."""
    path = Path(str(resources.files("core") / "data" / SHIPPED_FILE))
    if not path.is_file():
        logger.warning("no mask classifier at %s; faces are not checked for masks", path)
        return None
    classifier = MaskClassifier.load(path)
    if classifier.model_id != model_id:
        logger.warning(
            "the shipped mask classifier was trained for %s, not %s; faces are not checked for masks",
            classifier.model_id,
            model_id,
        )
        return None
    return classifier


def train_mask_classifier(
    unmasked: np.ndarray,
    masked: np.ndarray,
    *,
    model_id: str,
    l2: float = DEFAULT_L2,
    iterations: int = 50,
) -> MaskClassifier:
    """Fit a logistic regression that separates masked from unmasked faces by their features (Newton's method).

    Features are standardised first. Both classes weigh the same in the loss, whatever their counts.

    Args:
        unmasked: (N, F) features of faces without a mask.
        masked: (M, F) features of masked faces.
        l2: ridge penalty on the weights (not the bias), per unit of total sample weight.
        iterations: at most this many Newton steps; stops earlier once the step is tiny.

    Raises:
        ValueError: a class is empty or the descriptor lengths differ.
    """
    if len(unmasked) == 0 or len(masked) == 0:
        raise ValueError(f"both classes need examples, got {len(unmasked)} unmasked and {len(masked)} masked")
    if unmasked.shape[1] != masked.shape[1]:
        raise ValueError(f"feature lengths differ: {unmasked.shape[1]} and {masked.shape[1]}")

    stacked = np.vstack([unmasked, masked]).astype(np.float64)
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
    features = np.hstack([(stacked - mean) / scale, np.ones((len(stacked), 1))])
    labels = np.concatenate([np.zeros(len(unmasked)), np.ones(len(masked))])
    sample_weight = np.where(labels == 1, 0.5 / len(masked), 0.5 / len(unmasked))
    penalty = np.full(features.shape[1], l2)
    penalty[-1] = 0.0

    theta = np.zeros(features.shape[1])
    for _ in range(iterations):
        predicted = _sigmoid(features @ theta)
        gradient = features.T @ (sample_weight * (predicted - labels)) + penalty * theta
        curvature = sample_weight * predicted * (1.0 - predicted)
        hessian = (features * curvature[:, None]).T @ features + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break

    accuracy = float(np.mean((_sigmoid(features @ theta) >= DEFAULT_THRESHOLD) == labels))
    summary = f"trained on {len(unmasked)} unmasked and {len(masked)} masked faces, training accuracy {accuracy:.4f}"
    logger.info("mask classifier for %s %s", model_id, summary)
    return MaskClassifier(model_id, theta[:-1].copy(), float(theta[-1]), mean, scale, summary=summary)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))
