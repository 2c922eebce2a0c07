"""Tests for the helpers of scripts/siamese_epochs_rof.py that need no datasets."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from script_modules import load_script

from core.siamese.training import EpochRecord, TrainingConfig, ValidationResult


@pytest.fixture(scope="module")
def epochs_rof() -> ModuleType:
    return load_script("siamese_epochs_rof.py")


def history(masked_rank1: list[float]) -> list[EpochRecord]:
    return [
        EpochRecord(epoch, None if epoch == 0 else 0.1, ValidationResult(0.5, rank1, 10, 0.9))
        for epoch, rank1 in enumerate(masked_rank1)
    ]


def test_early_stopping_epoch_respects_patience(epochs_rof: ModuleType) -> None:
    records = history([0.5, 0.6, 0.7, 0.65, 0.66, 0.64, 0.9])

    # Epochs 3 to 5 do not beat epoch 2, so training would stop before the better epoch 6.
    assert epochs_rof.early_stopping_epoch(records, TrainingConfig(), patience=3) == 2
    assert epochs_rof.early_stopping_epoch(records, TrainingConfig(), patience=4) == 6


def test_averaged_head_means_epoch_weights(epochs_rof: ModuleType) -> None:
    from facenet_pytorch import InceptionResnetV1

    base = InceptionResnetV1().eval()
    head = epochs_rof.SiameseHead.from_base(base, "repeat_3")
    states = {}
    for epoch in (1, 2, 3):
        state = {name: value.clone() for name, value in head.state_dict().items()}
        state["last_linear.weight"] = torch.full_like(state["last_linear.weight"], float(epoch))
        states[epoch] = state

    averaged = epochs_rof.averaged_head(base, states, first=2)

    assert torch.all(averaged.last_linear.weight == 2.5)
    assert not averaged.training
    assert torch.equal(averaged.last_bn.num_batches_tracked, states[3]["last_bn.num_batches_tracked"])
