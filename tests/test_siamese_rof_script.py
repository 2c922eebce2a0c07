"""Tests for the helpers of scripts/siamese_rof.py that need no model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from script_modules import load_script

from core.detection import DetectedFace
from core.evaluation.identification import AnalysedPhoto, MatedResult
from core.pipeline import Face


def mated(rank: float, method: str | None, path: Path = Path("probe.jpg")) -> MatedResult:
    return MatedResult(path, "Someone", rank, 0.5, "Someone", 0.5, method)


def analysed(path: Path, width: float | None) -> AnalysedPhoto:
    """Return a photo whose face box is ``width`` pixels wide, or a photo without a face."""
    if width is None:
        return AnalysedPhoto(path, None, 0)
    detection = DetectedFace(box=(10.0, 10.0, 10.0 + width, 10.0 + width), probability=0.99, landmarks=np.zeros((5, 2)))
    return AnalysedPhoto(path, Face(detection, np.zeros(512, dtype=np.float32)), 1)


def test_rank1_grouped_by_detection_pass() -> None:
    siamese_rof = load_script("siamese_rof.py")
    results = [mated(1, "mtcnn"), mated(3, "mtcnn"), mated(1, "retry"), mated(math.inf, None)]

    rows = siamese_rof.rank1_by_detection(results, "mask-aware masked")

    assert rows == {
        "mask-aware masked rank-1 (mtcnn, 2 probes)": 0.5,
        "mask-aware masked rank-1 (retry, 1 probe)": 1.0,
        "mask-aware masked rank-1 (no face, 1 probe)": 0.0,
    }


def test_rank1_grouped_by_face_width() -> None:
    siamese_rof = load_script("siamese_rof.py")
    widths = {"small.jpg": 30.0, "edge.jpg": 55.0, "medium.jpg": 99.0, "large.jpg": 180.0, "blank.jpg": None}
    photos = {Path(name): analysed(Path(name), width) for name, width in widths.items()}
    results = [
        mated(1, "mtcnn", Path("small.jpg")),
        mated(2, "mtcnn", Path("edge.jpg")),
        mated(1, "retry", Path("medium.jpg")),
        mated(1, "mtcnn", Path("large.jpg")),
        mated(math.inf, None, Path("blank.jpg")),
    ]

    rows = siamese_rof.rank1_by_face_width(results, photos, "mask-aware masked")

    assert rows == {
        "mask-aware masked rank-1 (faces under 55 px, 1 probe)": 1.0,
        "mask-aware masked rank-1 (faces 55-100 px, 2 probes)": 0.5,
        "mask-aware masked rank-1 (faces 100 px and wider, 1 probe)": 1.0,
        "mask-aware masked rank-1 (no face, 1 probe)": 0.0,
    }
