"""Training loop of the twin head on cached trunk outputs, with validation and early stopping.

A batch contains ``batch_people`` people, two photos each, and for each photo its own crop
and one random synthetic-mask variant. Both losses therefore see masked-to-unmasked
pairs of the same photo and of another photo of the same person in every batch.

The Siamese model compares unmasked probes on the base network's descriptor part (see
:mod:`core.siamese.backbone`), so by default the head is free to move unmasked faces
too. With ``distillation`` above zero, a frozen copy of the untrained head (the base
network) acts as a teacher: the head's descriptors of unmasked crops are pulled towards
the teacher's, for a head whose own unmasked descriptors must stay usable.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.siamese.data import FeatureSet
from core.siamese.head import SiameseHead
from core.siamese.losses import DEFAULT_MARGINS, LossName, compute_loss, distillation_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one training run.

    Attributes:
        loss: ``"contrastive"`` or ``"triplet"`` (batch-hard).
        margin: the loss margin, in Euclidean distance between unit descriptors. None takes
            :data:`~core.siamese.losses.DEFAULT_MARGINS`.
        max_epochs: upper bound on passes over the training people.
        patience: epochs without a better validation rank-1 before training stops.
        batch_people: people per batch, each contributing 4 crops.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: seeds batch sampling and the variant choice.
        distillation: weight of the squared distance between the head's and the base
            network's descriptors of unmasked crops, added to the loss; 0 turns it off.
        masked_distillation: weight of the squared distance between the head's descriptor
            of a masked crop and the base network's descriptor of the same photo unmasked.
        unmasked_tolerance: how much validation unmasked rank-1 an epoch may lose against
            the untrained head and still be kept as the best; 1 turns the check off.
    """

    loss: LossName = "triplet"
    margin: float | None = None
    max_epochs: int = 20
    patience: int = 3
    batch_people: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    distillation: float = 0.0
    masked_distillation: float = 0.0
    unmasked_tolerance: float = 1.0

    @property
    def loss_margin(self) -> float:
        return DEFAULT_MARGINS[self.loss] if self.margin is None else self.margin


@dataclass(frozen=True)
class ValidationResult:
    """Scores of the head on the validation people.

    Attributes:
        loss: the training loss on fixed, seeded validation batches.
        masked_rank1: fraction of masked crops whose nearest unmasked gallery crop (each
            person's first photo) is their own person. Probes come from other photos.
        probes: number of masked probes.
        unmasked_rank1: the same for the unmasked crops of those probe photos.
    """

    loss: float
    masked_rank1: float
    probes: int
    unmasked_rank1: float = float("nan")


@dataclass(frozen=True)
class EpochRecord:
    """Mean training loss of one epoch and the validation after it. Epoch 0 is the untrained head."""

    epoch: int
    train_loss: float | None
    validation: ValidationResult


@dataclass
class TrainingResult:
    """The best head (by validation masked rank-1), its epoch, and the curve of every epoch."""

    head: SiameseHead
    config: TrainingConfig
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def best(self) -> ValidationResult:
        return self.history[self.best_epoch].validation

    @property
    def base(self) -> ValidationResult:
        return self.history[0].validation


def sample_batch(features: FeatureSet, people: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return row indices of a batch: for each person two photos, each as its own crop and one masked variant.

    A person with one usable photo contributes it twice: its own crop twice and two masked variants drawn
    independently, which may be the same one.
    """
    rows: list[int] = []
    for person in people:
        person_rows = np.flatnonzero(features.labels == person)
        photos = np.unique(features.photos[person_rows])
        chosen = rng.choice(photos, size=2, replace=len(photos) < 2)
        for photo in chosen:
            photo_rows = person_rows[features.photos[person_rows] == photo]
            plain = photo_rows[~features.masked[photo_rows]]
            masked = photo_rows[features.masked[photo_rows]]
            if len(plain):
                rows.append(int(plain[0]))
            if len(masked):
                rows.append(int(rng.choice(masked)))
    return np.array(rows, dtype=np.int64)


def epoch_batches(features: FeatureSet, batch_people: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split the shuffled people into batches of ``batch_people`` and sample each batch's rows."""
    people = rng.permutation(len(features.people))
    size = min(batch_people, len(people))
    return [
        sample_batch(features, people[start : start + size], rng) for start in range(0, len(people) - size + 1, size)
    ]


def _tensors(features: FeatureSet, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(features.features[rows].astype(np.float32))
    return inputs, torch.from_numpy(features.labels[rows]), torch.from_numpy(features.masked[rows])


def unmasked_partners(features: FeatureSet, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair each masked row of a batch with an unmasked row of the same photo in that batch.

    Returns:
        Batch positions of the masked crops that have a partner, and of their partners.
    """
    photos, masked = features.photos[rows], features.masked[rows]
    first_unmasked: dict[int, int] = {}
    for position in np.flatnonzero(~masked):
        first_unmasked.setdefault(int(photos[position]), int(position))
    pairs = [
        (int(position), first_unmasked[int(photos[position])])
        for position in np.flatnonzero(masked)
        if int(photos[position]) in first_unmasked
    ]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    masked_positions, partner_positions = zip(*pairs, strict=True)
    return np.array(masked_positions), np.array(partner_positions)


def embed_all(head: SiameseHead, features: FeatureSet, batch_size: int = 256) -> np.ndarray:
    """Return the head's unit descriptors of every row, (N, 512) float32."""
    head.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(features.features[start : start + batch_size].astype(np.float32))
            outputs.append(head.embed(batch).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 512), dtype=np.float32)


def masked_rank1(descriptors: np.ndarray, features: FeatureSet, *, masked: bool = True) -> tuple[float, int]:
    """Score masked probes against a gallery of each person's first unmasked crop.

    Probes of the gallery photo itself are left out, so a person needs two photos to count.
    With ``masked=False`` the probes are the unmasked crops of the same photos instead.
    """
    gallery_rows: dict[int, int] = {}
    for row in np.flatnonzero(~features.masked):
        gallery_rows.setdefault(int(features.labels[row]), int(row))
    gallery_photos = {int(features.photos[row]) for row in gallery_rows.values()}
    probe_kind = features.masked if masked else ~features.masked
    probes = [row for row in np.flatnonzero(probe_kind) if int(features.photos[row]) not in gallery_photos]
    if not probes:
        return 0.0, 0
    people = np.array(list(gallery_rows))
    scores = descriptors[probes] @ descriptors[list(gallery_rows.values())].T
    predicted = people[scores.argmax(axis=1)]
    return float(np.mean(predicted == features.labels[probes])), len(probes)


def batch_loss(
    head: SiameseHead, teacher: SiameseHead, config: TrainingConfig, rows: np.ndarray, features: FeatureSet
) -> torch.Tensor:
    """Return the configured loss of one batch, with the distillation terms that are on."""
    inputs, labels, masked = _tensors(features, rows)
    embeddings = head.embed(inputs)
    loss = compute_loss(config.loss, embeddings, labels, masked, config.loss_margin)
    if config.distillation <= 0 and config.masked_distillation <= 0:
        return loss

    with torch.no_grad():
        targets = teacher.embed(inputs)
    if config.distillation > 0 and (~masked).any():
        loss = loss + config.distillation * distillation_loss(embeddings[~masked], targets[~masked])
    masked_positions, partners = unmasked_partners(features, rows)
    if config.masked_distillation > 0 and len(masked_positions):
        pulled = distillation_loss(embeddings[masked_positions], targets[partners])
        loss = loss + config.masked_distillation * pulled
    return loss


def validate(
    head: SiameseHead,
    teacher: SiameseHead,
    features: FeatureSet,
    config: TrainingConfig,
    batches: list[np.ndarray],
) -> ValidationResult:
    """Compute the validation loss on fixed batches and the masked and unmasked rank-1."""
    head.eval()
    with torch.inference_mode():
        losses = [float(batch_loss(head, teacher, config, rows, features)) for rows in batches]
    descriptors = embed_all(head, features)
    rank1, probes = masked_rank1(descriptors, features)
    unmasked_rank1, _ = masked_rank1(descriptors, features, masked=False)
    return ValidationResult(float(np.mean(losses)) if losses else float("nan"), rank1, probes, unmasked_rank1)


def is_better(candidate: ValidationResult, best: ValidationResult, base: ValidationResult, tolerance: float) -> bool:
    """Tell whether ``candidate`` should replace ``best``.

    An epoch that loses more than ``tolerance`` unmasked rank-1 against the untrained
    head (``base``) never counts as better. Otherwise a higher masked rank-1 wins, and
    ties go to the lower validation loss.
    """
    if candidate.unmasked_rank1 < base.unmasked_rank1 - tolerance:
        return False
    return (candidate.masked_rank1, -candidate.loss) > (best.masked_rank1, -best.loss)


def train_head(
    head: SiameseHead,
    train: FeatureSet,
    validation: FeatureSet,
    config: TrainingConfig,
    *,
    show_progress: bool = True,
    after_epoch: Callable[[int, SiameseHead], None] | None = None,
) -> TrainingResult:
    """Train ``head`` in place and return a copy of its best state with the training curve.

    ``after_epoch(epoch, head)``, when given, runs after each epoch's validation, for
    example to score the head on another benchmark.

    Training stops after ``config.patience`` epochs without a better validation epoch
    (see :func:`is_better`), or after ``config.max_epochs``.
    """
    from tqdm import tqdm

    teacher = copy.deepcopy(head).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    validation_batches = epoch_batches(validation, config.batch_people, np.random.default_rng(config.seed + 1))
    optimizer = torch.optim.Adam(
        [parameter for parameter in head.parameters() if parameter.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )

    history = [EpochRecord(0, None, validate(head, teacher, validation, config, validation_batches))]
    logger.info("untrained head: %s", history[0].validation)
    best_state, best_epoch = copy.deepcopy(head.state_dict()), 0
    for epoch in range(1, config.max_epochs + 1):
        batches = epoch_batches(train, config.batch_people, rng)
        head.train()
        losses = []
        for rows in tqdm(batches, unit="batch", desc=f"{config.loss} epoch {epoch}", disable=not show_progress):
            loss = batch_loss(head, teacher, config, rows, train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        record = EpochRecord(
            epoch, float(np.mean(losses)), validate(head, teacher, validation, config, validation_batches)
        )
        history.append(record)
        if after_epoch is not None:
            after_epoch(epoch, head)
        logger.info("epoch %d: train loss %.4f, validation %s", epoch, record.train_loss, record.validation)

        best = history[best_epoch].validation
        if is_better(record.validation, best, history[0].validation, config.unmasked_tolerance):
            best_state, best_epoch = copy.deepcopy(head.state_dict()), epoch
        elif epoch - best_epoch >= config.patience:
            logger.info("stopping after epoch %d: no better validation epoch since epoch %d", epoch, best_epoch)
            break

    head.load_state_dict(best_state)
    head.eval()
    return TrainingResult(head, config, best_epoch, history)
