"""Check that calibrated thresholds hold on strangers the calibration never saw.

Uses the standard identification protocol's gallery and its non-mated probes
(masked strangers and LFW people who are not enrolled). The mask detector routes
every probe, as identify does. The probes are split in two halves by a seeded
shuffle: the thresholds come from one half (:func:`core.calibration.calibrate`)
and the false-positive rate is measured on the other, then the halves swap.

Usage::

    .venv/bin/python scripts/calibration_holdout.py ../shared/datasets --fpir 0.01
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.calibration import calibrate, fpir
from core.evaluation.identification import (
    EmbeddingCache,
    MaskAwareMatcher,
    analyse_protocol,
    build_searcher,
    standard_protocol,
)
from core.mask_detection import shipped_classifier
from core.pipeline import FacePipeline
from core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", type=Path)
    parser.add_argument("--fpir", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = Settings.from_env()
    pipeline = FacePipeline.from_settings(settings)
    classifier = shipped_classifier(pipeline.feature_model_id)
    if classifier is None:
        raise SystemExit(f"no shipped mask classifier for {pipeline.model_id}")
    matcher = MaskAwareMatcher(classifier, synthetic_masks=settings.synthetic_masks, layout=pipeline.layout)
    protocol = standard_protocol(args.datasets)
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}

    with EmbeddingCache(settings.cache_dir / "eval" / "embeddings.sqlite3") as cache:
        photos, synthetic = analyse_protocol(
            pipeline, protocol, synthetic_masks=matcher.synthetic_masks, cache=cache, **limits
        )
    searcher = build_searcher(protocol, photos, matcher, synthetic)
    stranger_paths = [path for probe_set in protocol.probe_sets for path in probe_set.non_mated]

    scores = {False: [], True: []}
    for path in stranger_paths:
        face = photos[path].face
        if face is not None:
            scores[searcher.is_masked(face)].append(searcher.search(face, 1)[0][1])

    rng = np.random.default_rng(args.seed)
    halves = {}
    for masked, values in scores.items():
        shuffled = rng.permutation(np.array(values))
        halves[masked] = (shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2 :])

    print(f"target FPIR {args.fpir}; strangers with a face: {len(scores[False])} unmasked, {len(scores[True])} masked")
    for fit, other in ((0, 1), (1, 0)):
        calibration = calibrate(pipeline.model_id, halves[False][fit], halves[True][fit], target_fpir=args.fpir)
        for masked, threshold in ((False, calibration.unmasked), (True, calibration.masked)):
            kind = "masked" if masked else "unmasked"
            if threshold is None:
                print(f"half {fit + 1}: {kind:<8} too few probes to calibrate")
                continue
            achieved = fpir(halves[masked][fit], threshold)
            other_fpir = fpir(halves[masked][other], threshold)
            print(
                f"half {fit + 1}: {kind:<8} threshold {threshold:.4f}, FPIR {achieved:.4f} on its "
                f"{len(halves[masked][fit])} probes, {other_fpir:.4f} on the other {len(halves[masked][other])}"
            )


if __name__ == "__main__":
    main()
