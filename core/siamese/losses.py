"""Losses of the twin network on L2-normalised descriptors.

Distances are Euclidean between unit vectors, so they lie in [0, 2], and
``d**2 = 2 - 2 * cosine``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

logger = logging.getLogger(__name__)

LossName = Literal["contrastive", "triplet"]
LOSS_NAMES: tuple[LossName, ...] = ("contrastive", "triplet")
DEFAULT_MARGINS: dict[LossName, float] = {"contrastive": 1.0, "triplet": 0.2}


def pairwise_distances(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return the (N, M) Euclidean distances between rows of unit vectors.

    Computed from the dot product and clamped, which keeps the gradient finite at zero distance.
    """
    squared = (2.0 - 2.0 * first @ second.T).clamp(min=1e-12)
    return squared.sqrt()


def contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, margin: float
) -> torch.Tensor:
    """Contrastive loss over every (masked, unmasked) pair of the batch.

    Pairs of one person are pulled together (``d**2``) and pairs of two people pushed
    at least ``margin`` apart (``max(0, margin - d)**2``). The two kinds are averaged
    separately, so the many negative pairs do not drown out the few positive ones.

    Raises:
        ValueError: the batch has no masked or no unmasked crop.
    """
    masked_rows, unmasked_rows = embeddings[masked], embeddings[~masked]
    if len(masked_rows) == 0 or len(unmasked_rows) == 0:
        raise ValueError("contrastive loss needs masked and unmasked crops in every batch")
    distances = pairwise_distances(masked_rows, unmasked_rows)
    same = labels[masked][:, None] == labels[~masked][None, :]
    positive = distances[same].pow(2)
    negative = (margin - distances[~same]).clamp(min=0).pow(2)
    loss = embeddings.new_zeros(())
    if positive.numel():
        loss = loss + positive.mean()
    if negative.numel():
        loss = loss + negative.mean()
    return loss


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss with batch-hard mining (Hermans et al., 2017, "In Defense of the Triplet Loss").

    Each crop is an anchor with its farthest same-person crop as the positive and its
    nearest other-person crop as the negative. Anchors without a positive or a
    negative in the batch are left out.
    """
    distances = pairwise_distances(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~itself
    hardest_positive = distances.masked_fill(~positives, 0.0).max(dim=1).values
    hardest_negative = distances.masked_fill(same, float("inf")).min(dim=1).values
    valid = positives.any(dim=1) & (~same).any(dim=1)
    if not valid.any():
        return embeddings.new_zeros(())
    return (hardest_positive - hardest_negative + margin).clamp(min=0)[valid].mean()


def distillation_loss(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared Euclidean distance between descriptors and the teacher's descriptors of the same crops."""
    return (embeddings - targets).pow(2).sum(dim=1).mean()


def compute_loss(
    name: LossName, embeddings: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, margin: float
) -> torch.Tensor:
    """Dispatch to the loss called ``name``."""
    if name == "contrastive":
        return contrastive_loss(embeddings, labels, masked, margin)
    if name == "triplet":
        return batch_hard_triplet_loss(embeddings, labels, margin)
    raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)}")
