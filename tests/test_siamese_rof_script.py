"""Tests for the helpers of scripts/siamese_rof.py that need no model."""

from __future__ import annotations

import math
from pathlib import Path

from script_modules import load_script

from core.evaluation.identification import MatedResult


def mated(rank: float, method: str | None) -> MatedResult:
    return MatedResult(Path("probe.jpg"), "Someone", rank, 0.5, "Someone", 0.5, method)


def test_rank1_grouped_by_detection_pass() -> None:
    siamese_rof = load_script("siamese_rof.py")
    results = [mated(1, "mtcnn"), mated(3, "mtcnn"), mated(1, "retry"), mated(math.inf, None)]

    rows = siamese_rof.rank1_by_detection(results, "mask-aware masked")

    assert rows == {
        "mask-aware masked rank-1 (mtcnn, 2 probes)": 0.5,
        "mask-aware masked rank-1 (retry, 1 probe)": 1.0,
        "mask-aware masked rank-1 (no face, 1 probe)": 0.0,
    }
