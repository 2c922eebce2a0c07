"""Decision thresholds for open-set identification, one for unmasked and one for masked faces.

A threshold is picked for a target false-positive identification rate (FPIR): the
share of photos of people who are not enrolled (non-mated probes) whose best
candidate would still reach it. Masked and unmasked faces are matched by different
rules with different score ranges, so each kind gets its own threshold, picked from
the non-mated probes that the mask detector sent to that rule. The gallery stores
the result per model id, so a calibration follows the gallery it was made on.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from core.errors import StorageError
from core.storage import GalleryStore

logger = logging.getLogger(__name__)

ThresholdSource = Literal["settings", "calibrated", "default"]

# Used before `maskid calibrate` has run: the thresholds at 1% FPIR on the masked
# identification benchmark of docs/benchmarks.md (93 enrolled people). A model whose
# masked probes are compared on their own descriptor part has its own masked default
# (see core.backbones.Backbone.masked_threshold).
DEFAULT_UNMASKED_THRESHOLD = 0.56
DEFAULT_MASKED_THRESHOLD = 0.62
DEFAULT_TARGET_FPIR = 0.01


@dataclass(frozen=True)
class Thresholds:
    """The score a best candidate needs, per probe kind, and where each value came from."""

    unmasked: float
    masked: float
    unmasked_source: ThresholdSource = "default"
    masked_source: ThresholdSource = "default"

    def for_probe(self, masked: bool) -> float:
        return self.masked if masked else self.unmasked


@dataclass(frozen=True)
class Calibration:
    """Thresholds picked for ``target_fpir`` from non-mated probes, as stored in the gallery.

    Attributes:
        unmasked, masked: the thresholds; None for a kind that had too few probes.
        unmasked_probes, masked_probes: non-mated faces the mask detector sent to each rule.
        achieved_unmasked_fpir, achieved_masked_fpir: FPIR on those probes at the threshold.
    """

    model_id: str
    target_fpir: float
    unmasked: float | None
    masked: float | None
    unmasked_probes: int
    masked_probes: int
    achieved_unmasked_fpir: float | None
    achieved_masked_fpir: float | None
    calibrated_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls(**json.loads(text))


def settings_key(model_id: str) -> str:
    """Return the gallery settings key that contains the calibration of ``model_id``."""
    return f"calibration/{model_id}"


def minimum_probes(target_fpir: float) -> int:
    """Return the fewest non-mated probes that can show an FPIR as low as ``target_fpir``."""
    return math.ceil(1.0 / target_fpir)


def threshold_for_fpir(non_mated_scores: np.ndarray, target_fpir: float) -> float:
    """Return the lowest threshold at which at most ``target_fpir`` of the scores reach it.

    A probe counts as a false positive when its best score is at or above the
    threshold. The result lies just above the score that would be one too many.

    Raises:
        ValueError: ``target_fpir`` is outside (0, 1) or there are no scores.
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target_fpir must be in (0, 1), got {target_fpir}")
    scores = np.sort(np.asarray(non_mated_scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("no non-mated scores to calibrate on")
    allowed = math.floor(target_fpir * len(scores) + 1e-9)
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def fpir(non_mated_scores: np.ndarray, threshold: float) -> float:
    """Return the share of non-mated scores at or above ``threshold``."""
    scores = np.asarray(non_mated_scores, dtype=np.float64)
    return float(np.mean(scores >= threshold)) if len(scores) else float("nan")


def calibrate(
    model_id: str,
    unmasked_scores: np.ndarray,
    masked_scores: np.ndarray,
    target_fpir: float = DEFAULT_TARGET_FPIR,
) -> Calibration:
    """Pick a threshold per probe kind from the best scores of non-mated probes.

    A kind with fewer than :func:`minimum_probes` scores gets no threshold (None),
    because so few probes cannot show that low a rate.
    """
    picked: dict[str, tuple[float | None, float | None]] = {}
    for kind, scores in (("unmasked", unmasked_scores), ("masked", masked_scores)):
        if len(scores) < minimum_probes(target_fpir):
            logger.info(
                "%d %s non-mated faces are too few for FPIR %.4f (need %d); that threshold is not calibrated",
                len(scores),
                kind,
                target_fpir,
                minimum_probes(target_fpir),
            )
            picked[kind] = (None, None)
            continue
        threshold = threshold_for_fpir(scores, target_fpir)
        picked[kind] = (threshold, fpir(scores, threshold))
    return Calibration(
        model_id=model_id,
        target_fpir=target_fpir,
        unmasked=picked["unmasked"][0],
        masked=picked["masked"][0],
        unmasked_probes=len(unmasked_scores),
        masked_probes=len(masked_scores),
        achieved_unmasked_fpir=picked["unmasked"][1],
        achieved_masked_fpir=picked["masked"][1],
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


async def load_calibration(store: GalleryStore, model_id: str) -> Calibration | None:
    """Return the stored calibration of ``model_id``, or None when there is none."""
    text = await store.get_setting(settings_key(model_id))
    if text is None:
        return None
    try:
        return Calibration.from_json(text)
    except (ValueError, TypeError) as exc:
        raise StorageError(
            f"stored calibration of {model_id} is unreadable ({exc}); run `maskid calibrate` again"
        ) from exc


async def save_calibration(store: GalleryStore, calibration: Calibration) -> None:
    """Store ``calibration`` in the gallery, replacing an earlier one of the same model, keeping
    the earlier threshold of a kind that this calibration could not set."""
    previous = await load_calibration(store, calibration.model_id)
    if previous is not None:
        if calibration.unmasked is None:
            calibration = _keep(calibration, previous, "unmasked")
        if calibration.masked is None:
            calibration = _keep(calibration, previous, "masked")
    await store.set_setting(settings_key(calibration.model_id), calibration.to_json())
    logger.info("stored calibration of %s: %s", calibration.model_id, calibration.to_json())


async def clear_calibration(store: GalleryStore, model_id: str) -> bool:
    """Delete the stored calibration of ``model_id``, and return False when there was none."""
    removed = await store.delete_setting(settings_key(model_id))
    if removed:
        logger.info("removed the calibration of %s", model_id)
    return removed


def resolve_thresholds(
    unmasked_setting: float | None,
    masked_setting: float | None,
    calibration: Calibration | None,
    *,
    masked_default: float = DEFAULT_MASKED_THRESHOLD,
) -> Thresholds:
    """Choose each threshold: an explicit setting first, then the calibration, then the default.

    Args:
        masked_default: the model's masked threshold before calibration.
    """
    unmasked, unmasked_source = _pick(
        unmasked_setting, calibration and calibration.unmasked, DEFAULT_UNMASKED_THRESHOLD
    )
    masked, masked_source = _pick(masked_setting, calibration and calibration.masked, masked_default)
    return Thresholds(unmasked, masked, unmasked_source, masked_source)


def _pick(setting: float | None, calibrated: float | None, default: float) -> tuple[float, ThresholdSource]:
    if setting is not None:
        return setting, "settings"
    if calibrated is not None:
        return calibrated, "calibrated"
    return default, "default"


def _keep(calibration: Calibration, previous: Calibration, kind: str) -> Calibration:
    values = asdict(calibration)
    values[kind] = getattr(previous, kind)
    values[f"achieved_{kind}_fpir"] = getattr(previous, f"achieved_{kind}_fpir")
    values[f"{kind}_probes"] = getattr(previous, f"{kind}_probes")
    return Calibration(**values)
