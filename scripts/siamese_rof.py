"""Masked identification and LFW verification of a trained twin head next to the base FaceNet.

Scores the standard protocol (rof gallery, real masked probes with non-mated masked
strangers, unmasked probes with LFW strangers) with plain matching and with mask-aware
matching on synthetic-mask gallery templates, once with the base model and once with
trunk plus head. Faces are detected once with the base pipeline (reusing the cache of
``maskid eval ident``) and re-embedded through the head, so both models see the same
crops. Mask-aware matching routes probes with the shipped mask classifier on the base
network's pooled features, which the head's backbone also outputs. With ``--lfw-pairs``
it also reports the k-fold accuracy on an LFW pairs file.

Usage::

    .venv/bin/python scripts/siamese_rof.py HEAD.pt --datasets ../shared/datasets \\
        --lfw-pairs ../shared/datasets/lfw-pairs-dev.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.embedding import Embedder
from core.evaluation.identification import (
    AnalysedPhoto,
    EmbeddingCache,
    IdentificationProtocol,
    MaskAwareMatcher,
    PlainMatcher,
    analyse_photos,
    analyse_protocol,
    analysis_id,
    score_protocol,
    standard_protocol,
)
from core.evaluation.lfw import k_fold_accuracy, read_pairs, split_folds
from core.images import load_image, read_image_bytes
from core.mask_detection import MaskClassifier, shipped_classifier
from core.pipeline import FacePipeline
from core.settings import Settings
from core.siamese.backbone import SiameseBackbone

logger = logging.getLogger(__name__)

REEMBED_BATCH = 32


def siamese_pipeline(base: FacePipeline, settings: Settings, head: Path) -> FacePipeline:
    """Return a pipeline with the base pipeline's detector and alignment and the head's embedder."""
    embedder = Embedder(
        SiameseBackbone(settings, head),
        device=settings.device,
        batch_size=settings.batch_size,
        flip=settings.flip,
        torch_threads=settings.torch_threads,
    )
    return FacePipeline(base.detector, embedder, base.alignment)


def reembed(
    pipeline: FacePipeline, photos: Mapping[Path, AnalysedPhoto], settings: Settings, cache: EmbeddingCache
) -> dict[Path, AnalysedPhoto]:
    """Embed the main face of each analysed photo with ``pipeline``, keeping its detection. Cached per file."""
    key = analysis_id(pipeline)
    limits = {"max_bytes": settings.max_image_bytes, "max_pixels": settings.max_image_pixels}
    result = {path: photo for path, photo in photos.items() if photo.face is None}
    with_face = [photo for photo in photos.values() if photo.face is not None]
    for start in tqdm(range(0, len(with_face), REEMBED_BATCH), unit="batch", desc=f"embedding with {key[:40]}"):
        batch = with_face[start : start + REEMBED_BATCH]
        contents = {photo.path: read_image_bytes(photo.path, max_bytes=settings.max_image_bytes) for photo in batch}
        hashes = {path: hashlib.sha256(data).hexdigest() for path, data in contents.items()}
        cached = cache.get(key, hashes.values())
        pending = [photo for photo in batch if hashes[photo.path] not in cached]
        images = [load_image(contents[photo.path], label=str(photo.path), **limits) for photo in pending]
        faces = pipeline.embed_detections(images, [[photo.face.detection] for photo in pending])
        new = {hashes[photo.path]: (photo.face_count, found[0]) for photo, found in zip(pending, faces, strict=True)}
        if new:
            cache.put(key, new)
        for photo in batch:
            face = new[hashes[photo.path]][1] if hashes[photo.path] in new else cached[hashes[photo.path]][1]
            result[photo.path] = dataclasses.replace(photo, face=face)
    return {path: result[path] for path in photos}


def reembed_masked(
    pipeline: FacePipeline,
    photos: Sequence[AnalysedPhoto],
    count: int,
    settings: Settings,
    cache: EmbeddingCache,
) -> dict[Path, np.ndarray]:
    """Draw ``count`` synthetic masks on each photo's main face and embed them with ``pipeline``, cached per file."""
    key = analysis_id(pipeline)
    limits = {"max_bytes": settings.max_image_bytes, "max_pixels": settings.max_image_pixels}
    masked: dict[Path, np.ndarray] = {}
    for photo in tqdm([photo for photo in photos if photo.face is not None], unit="photo", desc="synthetic masks"):
        data = read_image_bytes(photo.path, max_bytes=settings.max_image_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        vectors = cache.get_masked(key, sha256, count)
        if vectors is None:
            image = load_image(data, label=str(photo.path), **limits)
            vectors = pipeline.embed_masked(image, photo.face.detection, count)
            cache.put_masked(key, sha256, vectors)
        masked[photo.path] = vectors
    return masked


def print_identification(
    label: str,
    protocol: IdentificationProtocol,
    photos: Mapping[Path, AnalysedPhoto],
    synthetic: Mapping[Path, np.ndarray],
    model_id: str,
    classifier: MaskClassifier,
    count: int,
) -> None:
    """Print masked and unmasked rank-1 and TPIR at 1% FPIR with plain and mask-aware matching."""
    for matcher in (PlainMatcher(), MaskAwareMatcher(classifier, synthetic_masks=count)):
        evaluation = score_protocol(protocol, photos, model_id=model_id, matcher=matcher, synthetic=synthetic)
        parts = []
        for result in evaluation.probe_sets:
            tpir = next((point.tpir for point in result.operating_points if point.target_fpir == 0.01), float("nan"))
            parts.append(f"{result.name} rank-1 {result.rank1:.4f} TPIR@1% {tpir:.4f}")
        print(f"{label:<8} {matcher.name:<48} " + "; ".join(parts))


def lfw_pairs_accuracy(photos: Mapping[Path, AnalysedPhoto], pairs_file: Path, images_dir: Path) -> str:
    """Return the k-fold verification accuracy of the analysed photos' descriptors on a pairs file, as text."""
    pairs = read_pairs(pairs_file, images_dir)
    vectors = {path: photo.face.embedding for path, photo in photos.items() if photo.face is not None}
    scores = np.array(
        [
            float(vectors[pair.first] @ vectors[pair.second])
            if pair.first in vectors and pair.second in vectors
            else np.nan
            for pair in pairs
        ]
    )
    same = np.array([pair.same for pair in pairs])
    result = k_fold_accuracy(scores, same, split_folds(pairs))
    unscored = int(np.isnan(scores).sum())
    return f"accuracy {result.accuracy:.4f} (+- {result.accuracy_std:.4f}), {unscored} unscored pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("head", type=Path, help="head file from `maskid train siamese`")
    parser.add_argument("--datasets", type=Path, help="datasets folder (default: MASKID_DATASETS)")
    parser.add_argument("--synthetic-masks", type=int, help="templates per gallery photo (default: settings)")
    parser.add_argument("--lfw-pairs", type=Path, help="also score this LFW pairs file (images in DATASETS/lfw)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = Settings.from_env()
    datasets = args.datasets or settings.datasets_dir
    count = settings.synthetic_masks if args.synthetic_masks is None else args.synthetic_masks
    base = FacePipeline.from_settings(settings)
    head = siamese_pipeline(base, settings, args.head)
    classifier = shipped_classifier(base.model_id)
    if classifier is None:
        raise SystemExit(f"no shipped mask classifier for {base.model_id}; mask-aware matching needs one")
    protocol = standard_protocol(datasets)
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}
    print(f"base {base.model_id}\nhead {head.model_id}\n{count} synthetic masks per gallery photo")

    with EmbeddingCache(settings.cache_dir / "eval" / "embeddings.sqlite3") as cache:
        photos, synthetic = analyse_protocol(base, protocol, synthetic_masks=count, cache=cache, **limits)
        head_photos = reembed(head, photos, settings, cache)
        gallery = [photos[path] for paths in protocol.gallery.values() for path in paths]
        head_synthetic = reembed_masked(head, gallery, count, settings, cache)
        print_identification("base", protocol, photos, synthetic or {}, base.model_id, classifier, count)
        print_identification("head", protocol, head_photos, head_synthetic, head.model_id, classifier, count)

        if args.lfw_pairs is not None:
            pairs = read_pairs(args.lfw_pairs, datasets / "lfw")
            paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
            lfw_photos = analyse_photos(base, paths, cache=cache, **limits)
            print(f"base     lfw pairs {lfw_pairs_accuracy(lfw_photos, args.lfw_pairs, datasets / 'lfw')}")
            head_lfw = reembed(head, lfw_photos, settings, cache)
            print(f"head     lfw pairs {lfw_pairs_accuracy(head_lfw, args.lfw_pairs, datasets / 'lfw')}")


if __name__ == "__main__":
    main()
