"""Ablation of twin-network heads against the base FaceNet on the rof protocol and LFW pairs.

Scores the standard protocol (rof gallery, real masked probes with non-mated masked
strangers, unmasked probes with LFW strangers) and, with ``--lfw-pairs``, the k-fold
accuracy on an LFW pairs file, for the base network and the Siamese model of every
head given (the head's descriptor beside the base network's, see
:mod:`core.descriptors`). Each is scored with plain matching on the photos' own
templates, with the service's matching on those templates alone, and with the
service's matching on synthetic-mask gallery templates too.

Faces are detected once with the base pipeline (reusing the cache of ``maskid eval
ident``), every aligned crop, its mirror image and the gallery's synthetic-mask
variants go through the frozen trunk once, and each head then runs on the stored
trunk outputs, so a further head costs seconds. The trunk runs up to the earliest
layer any head starts from, and FaceNet's own blocks carry its outputs to later
layers. The trunk outputs are kept in ``MASKID_CACHE_DIR/eval``. The base row uses FaceNet's own last layers, which give
the base network's descriptors to within 1e-4.

Usage::

    .venv/bin/python scripts/siamese_rof.py HEAD.pt [HEAD.pt ...] --datasets ../shared/datasets \\
        --lfw-pairs ../shared/datasets/lfw-pairs-dev.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cli.commands import plural
from core.alignment import align_face
from core.descriptors import DescriptorLayout
from core.evaluation.identification import (
    AnalysedPhoto,
    EmbeddingCache,
    IdentificationProtocol,
    MaskAwareMatcher,
    MatedResult,
    PlainMatcher,
    analyse_photos,
    analyse_protocol,
    score_protocol,
    standard_protocol,
)
from core.evaluation.lfw import k_fold_accuracy, pair_scores, read_pairs, split_folds
from core.images import load_image
from core.mask_detection import MaskClassifier, shipped_classifier
from core.masks import synthesize_masked
from core.pipeline import FacePipeline, face_similarity, masked_variants_seed
from core.settings import BASE_MODEL, Settings
from core.siamese.backbone import SiameseBackbone
from core.siamese.head import SiameseHead
from core.siamese.model_file import load_head
from core.siamese.trunk import DEFAULT_TRUNK_LAYER, FACENET_STAGES, TrunkRunner, load_facenet

logger = logging.getLogger(__name__)

GREY = 128
# Face box widths in pixels that split the masked probes into small, medium and large faces.
FACE_WIDTH_EDGES = (55, 100)


@dataclasses.dataclass
class TrunkTable:
    """Trunk outputs of each photo's crop and mirror image, and of each gallery photo's masked variants.

    Attributes:
        plain: photo path to a (2, 1792, 3, 3) float16 array: crop, mirrored crop.
        masked: gallery photo path to a (count, 2, 1792, 3, 3) float16 array.
    """

    plain: dict[Path, np.ndarray]
    masked: dict[Path, np.ndarray]


def photo_crops(
    photo: AnalysedPhoto, pipeline: FacePipeline, settings: Settings, masks: int, fill_below: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the aligned crop with its mirror image, and ``masks`` masked crops with theirs, as uint8 arrays.

    With ``fill_below``, every crop is painted grey from that row down.
    """
    image = load_image(photo.path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    detection = photo.face.detection
    crop = align_face(image.pixels, detection, pipeline.alignment)
    variants = synthesize_masked(image.pixels, detection.landmarks, masks, seed=masked_variants_seed(image.sha256))
    masked = [align_face(pixels, detection, pipeline.alignment) for pixels in variants]
    size = pipeline.alignment.size
    masked_pairs = np.stack([[item, item[:, ::-1]] for item in masked]) if masked else np.zeros((0, 2, size, size, 3))
    crops = np.stack([crop, crop[:, ::-1]])
    if fill_below is not None:
        crops[:, fill_below:] = GREY
        masked_pairs[:, :, fill_below:] = GREY
    return crops, masked_pairs.astype(np.uint8)


def trunk_table(
    analysed: Mapping[Path, AnalysedPhoto],
    gallery: set[Path],
    masks: int,
    pipeline: FacePipeline,
    settings: Settings,
    layer: str,
    fill_below: int | None = None,
) -> TrunkTable:
    """Run the trunk up to ``layer`` on every crop, or load the outputs an earlier run stored for the same photos."""
    photos = [photo for photo in analysed.values() if photo.face is not None]
    parts = [pipeline.model_id, layer, str(masks)] + ([] if fill_below is None else [f"fill below {fill_below}"])
    key = "\n".join([*parts, *sorted(str(photo.path) for photo in photos)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache_file = settings.cache_dir / "eval" / f"siamese-trunk-{digest}.npz"
    if cache_file.is_file():
        stored = np.load(cache_file, allow_pickle=False)
        plain = {Path(path): stored[f"plain/{path}"] for path in stored["plain_paths"]}
        masked = {Path(path): stored[f"masked/{path}"] for path in stored["masked_paths"]}
        logger.info("loaded trunk outputs of %d photos from %s", len(plain), cache_file)
        return TrunkTable(plain, masked)

    runner = TrunkRunner(settings, layer)
    table = TrunkTable({}, {})
    for photo in tqdm(photos, unit="photo", desc="trunk outputs"):
        count = masks if photo.path in gallery else 0
        crops, masked = photo_crops(photo, pipeline, settings, count, fill_below)
        outputs = runner.run(np.concatenate([crops, masked.reshape(-1, *crops.shape[1:])]))
        table.plain[photo.path] = outputs[:2]
        if count:
            table.masked[photo.path] = outputs[2:].reshape(count, 2, *outputs.shape[1:])

    arrays = {f"plain/{path}": value for path, value in table.plain.items()}
    arrays |= {f"masked/{path}": value for path, value in table.masked.items()}
    arrays["plain_paths"] = np.array([str(path) for path in table.plain])
    arrays["masked_paths"] = np.array([str(path) for path in table.masked])
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_file.with_suffix(".partial.npz")
    np.savez(temporary, **arrays)
    temporary.replace(cache_file)
    return table


def advance(table: TrunkTable, blocks: torch.nn.Module) -> TrunkTable:
    """Run ``blocks`` (the stages between two trunk layers) on every stored output."""

    def run(outputs: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(outputs.reshape(-1, *outputs.shape[-3:]).astype(np.float32))
        with torch.inference_mode():
            return blocks(flat).numpy().astype(np.float16).reshape(outputs.shape)

    return TrunkTable(
        {path: run(value) for path, value in table.plain.items()},
        {path: run(value) for path, value in table.masked.items()},
    )


def embed_pairs(head: SiameseHead, pairs: np.ndarray, flip: bool) -> np.ndarray:
    """Return unit descriptors of (N, 2, C, H, W) trunk outputs: crop and mirror averaged, or the crop alone."""
    flat = torch.from_numpy(pairs.reshape(-1, *pairs.shape[2:]).astype(np.float32))
    with torch.inference_mode():
        vectors = head.embed(flat).numpy().reshape(len(pairs), 2, -1)
    combined = vectors.mean(axis=1) if flip else vectors[:, 0]
    return combined / np.linalg.norm(combined, axis=1, keepdims=True)


def head_descriptors(
    head: SiameseHead,
    photos: Mapping[Path, AnalysedPhoto],
    table: TrunkTable,
    *,
    flip: bool,
    masked_flip: bool,
) -> tuple[dict[Path, AnalysedPhoto], dict[Path, np.ndarray]]:
    """Replace each photo's descriptor with the head's, and compute the head's synthetic-mask descriptors."""
    head.eval()
    paths = [path for path in photos if path in table.plain]
    vectors = embed_pairs(head, np.stack([table.plain[path] for path in paths]), flip) if paths else []
    result = dict(photos)
    for path, vector in zip(paths, vectors, strict=True):
        face = dataclasses.replace(photos[path].face, embedding=vector.astype(np.float32))
        result[path] = dataclasses.replace(photos[path], face=face)
    synthetic = {
        path: embed_pairs(head, table.masked[path], masked_flip).astype(np.float32)
        for path in photos
        if path in table.masked
    }
    return result, synthetic


def with_base_part(
    head_photos: Mapping[Path, AnalysedPhoto],
    head_synthetic: Mapping[Path, np.ndarray],
    base_photos: Mapping[Path, AnalysedPhoto],
    base_synthetic: Mapping[Path, np.ndarray],
) -> tuple[dict[Path, AnalysedPhoto], dict[Path, np.ndarray]]:
    """Return the two-part descriptors of the Siamese model: the head's, then the base network's.

    Each part keeps length ``1 / sqrt(2)``, as :func:`core.embedding.normalize_parts` scales them.
    """
    scale = np.float32(1 / np.sqrt(2))
    photos = dict(head_photos)
    for path, photo in head_photos.items():
        if photo.face is not None:
            vector = np.concatenate([photo.face.embedding, base_photos[path].face.embedding]) * scale
            photos[path] = dataclasses.replace(photo, face=dataclasses.replace(photo.face, embedding=vector))
    synthetic = {
        path: np.concatenate([vectors, base_synthetic[path]], axis=1) * scale
        for path, vectors in head_synthetic.items()
    }
    return photos, synthetic


def identification_row(
    protocol: IdentificationProtocol,
    photos: Mapping[Path, AnalysedPhoto],
    synthetic: Mapping[Path, np.ndarray],
    model_id: str,
    classifier: MaskClassifier,
    count: int,
    layout: DescriptorLayout,
) -> dict[str, float]:
    """Return masked and unmasked rank-1 and TPIR at 1% FPIR with three matchers.

    "plain" compares every probe with the photos' own templates on the whole descriptor.
    "own templates" is the service's matching with no synthetic-mask templates, and
    "mask-aware" is the service's default, with ``count`` of them per gallery photo.
    """
    row: dict[str, float] = {}
    for name, matcher in (
        ("plain", PlainMatcher()),
        ("own templates", MaskAwareMatcher(classifier, synthetic_masks=0, layout=layout)),
        ("mask-aware", MaskAwareMatcher(classifier, synthetic_masks=count, layout=layout)),
    ):
        templates = synthetic if matcher.synthetic_masks else {}
        evaluation = score_protocol(protocol, photos, model_id=model_id, matcher=matcher, synthetic=templates)
        for result in evaluation.probe_sets:
            point = next((point for point in result.operating_points if point.target_fpir == 0.01), None)
            row[f"{name} {result.name} rank-1"] = result.rank1
            row[f"{name} {result.name} TPIR@1%"] = point.tpir if point is not None else float("nan")
            if name == "mask-aware":
                row[f"{name} {result.name} threshold@1%"] = point.threshold if point is not None else float("nan")
                row |= rank1_by_detection(result.mated, f"{name} {result.name}")
                row |= rank1_by_face_width(result.mated, photos, f"{name} {result.name}")
    return row


def rank1_by_group(
    mated: Sequence[MatedResult], group_of: Callable[[MatedResult], str], prefix: str
) -> dict[str, float]:
    """Return the rank-1 of the probes in each group ``group_of`` assigns, keyed ``PREFIX rank-1 (GROUP, N probes)``."""
    ranks: dict[str, list[float]] = defaultdict(list)
    for result in mated:
        ranks[group_of(result)].append(result.rank)
    return {
        f"{prefix} rank-1 ({group}, {plural(len(values), 'probe')})": float(np.mean(np.array(values) <= 1))
        for group, values in ranks.items()
    }


def rank1_by_detection(mated: Sequence[MatedResult], prefix: str) -> dict[str, float]:
    """Return the rank-1 of the probes found by each detection pass, keyed ``PREFIX rank-1 (METHOD, N probes)``."""
    return rank1_by_group(mated, lambda result: result.detection_method or "no face", prefix)


def face_width_group(width: float) -> str:
    """Return the :data:`FACE_WIDTH_EDGES` group of a face box width, such as ``faces 55-100 px``."""
    low, high = FACE_WIDTH_EDGES
    if width < low:
        return f"faces under {low} px"
    if width < high:
        return f"faces {low}-{high} px"
    return f"faces {high} px and wider"


def rank1_by_face_width(
    mated: Sequence[MatedResult], photos: Mapping[Path, AnalysedPhoto], prefix: str
) -> dict[str, float]:
    """Return the rank-1 of the probes in each face width group, keyed ``PREFIX rank-1 (GROUP, N probes)``."""

    def group_of(result: MatedResult) -> str:
        photo = photos.get(result.path)
        if photo is None or photo.face is None:
            return "no face"
        return face_width_group(photo.face.detection.width)

    return rank1_by_group(mated, group_of, prefix)


def lfw_pairs_accuracy(
    photos: Mapping[Path, AnalysedPhoto],
    pairs_file: Path,
    images_dir: Path,
    layout: DescriptorLayout,
    classifier: MaskClassifier,
) -> float:
    """Return the k-fold verification accuracy on an LFW pairs file, comparing faces as ``maskid verify`` does."""
    pairs = read_pairs(pairs_file, images_dir)
    faces = {path: photo.face for path, photo in photos.items() if photo.face is not None}
    same = np.array([pair.same for pair in pairs])
    scores = pair_scores(pairs, faces, lambda first, second: face_similarity(layout, first, second, classifier))
    return k_fold_accuracy(scores, same, split_folds(pairs)).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heads", type=Path, nargs="*", help="head files from `maskid train siamese`")
    parser.add_argument("--datasets", type=Path, help="datasets folder (default: MASKID_DATASETS)")
    parser.add_argument("--synthetic-masks", type=int, help="templates per gallery photo (default: settings)")
    parser.add_argument("--lfw-pairs", type=Path, help="also score this LFW pairs file (images in DATASETS/lfw)")
    parser.add_argument(
        "--fill-below",
        type=int,
        metavar="ROW",
        help="paint every aligned crop grey from this row down, to score matching on the upper face",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env(model=BASE_MODEL)
    datasets = args.datasets or settings.datasets_dir
    count = settings.synthetic_masks if args.synthetic_masks is None else args.synthetic_masks
    base = FacePipeline.from_settings(settings)
    classifier = shipped_classifier(base.feature_model_id)
    if classifier is None:
        raise SystemExit(f"no shipped mask classifier for {base.feature_model_id}; mask-aware matching needs one")
    protocol = standard_protocol(datasets)
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}

    with EmbeddingCache(settings.cache_dir / "eval" / "embeddings.sqlite3") as cache:
        photos, _ = analyse_protocol(base, protocol, synthetic_masks=0, cache=cache, **limits)
        lfw_photos: dict[Path, AnalysedPhoto] = {}
        if args.lfw_pairs is not None:
            pairs = read_pairs(args.lfw_pairs, datasets / "lfw")
            paths = sorted({pair.first for pair in pairs} | {pair.second for pair in pairs})
            lfw_photos = analyse_photos(base, paths, cache=cache, **limits)

    heads = [(path.name, *load_head(path)) for path in args.heads]
    # One trunk pass at the earliest layer any head starts from; later layers are derived from it.
    layers = {info.layer for _, _, info, _ in heads} | {DEFAULT_TRUNK_LAYER}
    first_layer = min(layers, key=FACENET_STAGES.index)
    gallery = {path for paths in protocol.gallery.values() for path in paths}
    tables = {first_layer: trunk_table(photos, gallery, count, base, settings, first_layer, args.fill_below)}
    if lfw_photos:
        lfw_table = trunk_table(lfw_photos, set(), 0, base, settings, first_layer, args.fill_below)
        tables[first_layer].plain.update(lfw_table.plain)
    facenet = load_facenet(settings)
    if first_layer != DEFAULT_TRUNK_LAYER:
        tables[DEFAULT_TRUNK_LAYER] = advance(tables[first_layer], facenet.repeat_3)

    flip, masked_flip = base.embedder.flip, base.embedder.flip and base.synthetic_mask_flip
    table = tables[DEFAULT_TRUNK_LAYER]
    base_head = SiameseHead.from_base(facenet, DEFAULT_TRUNK_LAYER)
    base_photos, base_synthetic = head_descriptors(base_head, photos, table, flip=flip, masked_flip=masked_flip)
    base_lfw, _ = head_descriptors(base_head, lfw_photos, table, flip=flip, masked_flip=masked_flip)
    scored = [("base", base_photos, base_synthetic, base_lfw, base.model_id, base.layout)]
    for name, head, info, model_id in heads:
        table = tables[info.layer]
        head_photos, head_synthetic = head_descriptors(head, photos, table, flip=flip, masked_flip=masked_flip)
        head_lfw, _ = head_descriptors(head, lfw_photos, table, flip=flip, masked_flip=masked_flip)
        routed_photos, routed_synthetic = with_base_part(head_photos, head_synthetic, base_photos, base_synthetic)
        routed_lfw, _ = with_base_part(head_lfw, {}, base_lfw, {})
        scored.append((name, routed_photos, routed_synthetic, routed_lfw, model_id, SiameseBackbone.layout))

    for label, model_photos, synthetic, model_lfw, model_id, layout in scored:
        row = identification_row(protocol, model_photos, synthetic, model_id, classifier, count, layout)
        if lfw_photos:
            row["LFW pairs"] = lfw_pairs_accuracy(model_lfw, args.lfw_pairs, datasets / "lfw", layout, classifier)
        print(label, " ".join(f"{key}={value:.4f}" for key, value in row.items()), flush=True)


if __name__ == "__main__":
    main()
