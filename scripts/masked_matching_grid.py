"""Masked identification on the standard protocol for a grid of synthetic-mask counts and fusion weights.

Prints masked and unmasked rank-1 and TPIR at 1% FPIR for every pair of
synthetic masks per gallery photo and synthetic weight (see
``core.matching.TemplateIndex.search_masked``), with the shipped mask classifier
routing each probe. It reuses the embedding cache of ``maskid eval ident``.

Usage::

    .venv/bin/python scripts/masked_matching_grid.py ../shared/datasets --masks 1 2 4 --weights 0.5 0.6 0.7 0.8 1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.evaluation.identification import (
    EmbeddingCache,
    MaskAwareMatcher,
    analyse_protocol,
    score_protocol,
    standard_protocol,
)
from core.mask_detection import shipped_classifier
from core.pipeline import FacePipeline
from core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", type=Path)
    parser.add_argument("--masks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 1.0])
    args = parser.parse_args()

    settings = Settings.from_env()
    pipeline = FacePipeline.from_settings(settings)
    classifier = shipped_classifier(pipeline.feature_model_id)
    if classifier is None:
        raise SystemExit(f"no shipped mask classifier for {pipeline.model_id}")
    protocol = standard_protocol(args.datasets)
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}

    with EmbeddingCache(settings.cache_dir / "eval" / "embeddings.sqlite3") as cache:
        photos, synthetic = analyse_protocol(pipeline, protocol, synthetic_masks=max(args.masks), cache=cache, **limits)

    print("masks  weight  masked rank-1  masked TPIR@1%  unmasked rank-1  unmasked TPIR@1%")
    for count in args.masks:
        subset = {path: vectors[:count] for path, vectors in synthetic.items()}
        for weight in args.weights:
            matcher = MaskAwareMatcher(
                classifier, synthetic_masks=count, synthetic_weight=weight, layout=pipeline.layout
            )
            evaluation = score_protocol(
                protocol, photos, model_id=pipeline.model_id, matcher=matcher, synthetic=subset, target_fpirs=(0.01,)
            )
            by_name = {result.name: result for result in evaluation.probe_sets}
            masked, unmasked = by_name["masked"], by_name["unmasked"]
            print(
                f"{count:>5}  {weight:>6.1f}  {masked.rank1:>13.3f}  {masked.operating_points[0].tpir:>14.3f}"
                f"  {unmasked.rank1:>15.3f}  {unmasked.operating_points[0].tpir:>16.3f}"
            )


if __name__ == "__main__":
    main()
