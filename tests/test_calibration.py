"""Threshold calibration: picking thresholds for a target FPIR, storing them, and which value wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.calibration import (
    DEFAULT_MASKED_THRESHOLD,
    DEFAULT_UNMASKED_THRESHOLD,
    calibrate,
    fpir,
    load_calibration,
    resolve_thresholds,
    save_calibration,
    threshold_for_fpir,
)
from core.storage import SqliteGalleryStore

MODEL = "test-model"


def test_threshold_lets_through_at_most_the_target_share() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])

    threshold = threshold_for_fpir(scores, 0.2)

    assert 0.7 < threshold <= 0.8 + 1e-9
    assert fpir(scores, threshold) == pytest.approx(0.2)


def test_threshold_excludes_tied_scores() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])

    threshold = threshold_for_fpir(scores, 0.4)

    assert fpir(scores, threshold) == pytest.approx(0.2)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1])
def test_threshold_rejects_targets_outside_the_open_unit_interval(target: float) -> None:
    with pytest.raises(ValueError, match="target_fpir must be in"):
        threshold_for_fpir(np.array([0.5]), target)


def test_calibration_reaches_the_target_on_held_back_probes() -> None:
    rng = np.random.default_rng(0)
    # Best scores of non-mated probes: unmasked ones lower than masked ones, as in practice.
    unmasked = rng.normal(0.35, 0.08, size=4000)
    masked = rng.normal(0.5, 0.07, size=4000)
    target = 0.01

    calibration = calibrate(MODEL, unmasked[:2000], masked[:2000], target_fpir=target)

    assert calibration.achieved_unmasked_fpir <= target
    assert calibration.achieved_masked_fpir <= target
    # On probes it never saw, the rate stays near the target (binomial noise at n=2000 is about 0.0022).
    assert fpir(unmasked[2000:], calibration.unmasked) == pytest.approx(target, abs=0.006)
    assert fpir(masked[2000:], calibration.masked) == pytest.approx(target, abs=0.006)
    assert calibration.masked > calibration.unmasked


def test_calibration_skips_kind_with_few_probes() -> None:
    calibration = calibrate(MODEL, np.linspace(0, 0.5, 150), np.linspace(0, 0.5, 20), target_fpir=0.01)

    assert calibration.unmasked is not None
    assert calibration.masked is None


def test_resolve_prefers_settings_then_calibration_then_defaults() -> None:
    calibration = calibrate(MODEL, np.linspace(0, 0.5, 200), np.linspace(0, 0.5, 20), target_fpir=0.01)

    thresholds = resolve_thresholds(None, None, calibration)
    assert thresholds.unmasked == calibration.unmasked
    assert thresholds.unmasked_source == "calibrated"
    assert (thresholds.masked, thresholds.masked_source) == (DEFAULT_MASKED_THRESHOLD, "default")

    overridden = resolve_thresholds(0.3, 0.7, calibration)
    assert (overridden.unmasked, overridden.masked) == (0.3, 0.7)
    assert overridden.masked_source == "settings"

    assert resolve_thresholds(None, None, None).unmasked == DEFAULT_UNMASKED_THRESHOLD


async def test_calibration_round_trips_through_the_gallery(tmp_path: Path) -> None:
    first = calibrate(MODEL, np.linspace(0, 0.5, 200), np.linspace(0.2, 0.7, 200), target_fpir=0.01)
    second = calibrate(MODEL, np.linspace(0, 0.4, 200), np.linspace(0.2, 0.7, 10), target_fpir=0.01)

    async with SqliteGalleryStore(tmp_path / "gallery.sqlite3") as store:
        assert await load_calibration(store, MODEL) is None
        await save_calibration(store, first)
        assert await load_calibration(store, MODEL) == first

        await save_calibration(store, second)
        stored = await load_calibration(store, MODEL)

    assert stored.unmasked == second.unmasked  # recalibrated
    assert stored.masked == first.masked  # too few masked probes the second time: the first value stays
    assert stored.masked_probes == first.masked_probes
