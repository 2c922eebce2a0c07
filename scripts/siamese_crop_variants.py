"""Train a twin-network head on changed training crops, to score with ``scripts/siamese_rof.py``.

The shipped head trains on each LFW photo's aligned crop and three synthetic-mask
crops, aligned with the landmarks found on the unmasked photo (``plain``: those crops
unchanged, to measure the spread over training seeds). The other variants aim at
the real masked photos of the rof protocol:

- ``redetect``: align each synthetic-mask crop with the landmarks MTCNN finds on the
  masked photo, as the service aligns a real masked probe (the face whose box
  overlaps the unmasked detection most, or that detection when none overlaps by half).
- ``raised``: draw every synthetic mask with its top edge 0.1 eye-to-mouth distances
  higher, nearer the eyes, where many of the rof masks sit.
- ``tight``: add a tight, small copy of every crop as a photo of its own. The copy
  is the image cut to the detection box, each side moved by -15% to +10% of the
  box, and shrunk so that the box is 70 to 130 px wide, like the rof photos.
- ``tight-redetect``: as ``tight``, but align each tight copy on the face the service's
  detector finds on it (its retry and whole-photo passes included), so that the head
  meets the shifted crops that tight masked photos get.
- ``small``: as ``tight``, but shrunk so that the box is 24 to 60 px wide, like the
  smallest quarter of the rof masked faces; the copies get the photo key ``PATH#small``.
- ``upper``: paint every crop grey from row 88 of 160 down, between the eyes at row
  65 and the nose tip at row 91 of the alignment template. The head then gets the
  upper face only, where real and synthetic masks look alike. Score it with
  ``scripts/siamese_rof.py --fill-below 88``.
- ``mirror``: add the mirror image of every crop as a photo of its own. The service
  averages each face's descriptor with its mirror image's, so the head meets both.

Everything else follows ``maskid train siamese --loss triplet`` with its defaults
(people, split, seed 0, training settings), and the trunk outputs share its cache.
The head is saved like that command's output. With several ``--seeds``, one head
is trained per seed of batch sampling and variant choice, on the same people split,
and ``OUT`` gets the suffix ``-sSEED``.

Usage::

    .venv/bin/python scripts/siamese_crop_variants.py tight /tmp/tight.pt
    .venv/bin/python scripts/siamese_rof.py /tmp/tight.pt --datasets ../shared/datasets
    .venv/bin/python scripts/siamese_crop_variants.py plain /tmp/plain.pt --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from siamese_rof import GREY
from tqdm import tqdm

from cli.train_siamese import EMBEDDING_CACHE_FILE, TRUNK_CACHE_FOLDER
from core.alignment import align_face
from core.detection import DetectedFace, FaceDetector
from core.evaluation.identification import EmbeddingCache, analyse_photos
from core.evaluation.mask_detection import DEFAULT_SKIPPED_PEOPLE
from core.images import load_image
from core.masks import MaskStyle, synthesize_masked
from core.pipeline import FacePipeline, masked_variants_seed
from core.settings import BASE_MODEL, Settings
from core.siamese.cache import TrunkCache, crop_sha256
from core.siamese.data import (
    DEFAULT_MASKS_PER_PHOTO,
    DEFAULT_VALIDATION_FRACTION,
    TRUNK_CHUNK,
    CropRecord,
    FeatureSet,
    assemble_feature_set,
    select_people,
    split_people,
    subset,
)
from core.siamese.head import SiameseHead
from core.siamese.model_file import SiameseModelInfo, save_head
from core.siamese.training import TrainingConfig, train_head
from core.siamese.trunk import DEFAULT_TRUNK_LAYER, TrunkRunner, load_facenet

logger = logging.getLogger(__name__)

VARIANTS = ("plain", "redetect", "raised", "tight", "tight-redetect", "small", "upper", "mirror")
UPPER_FACE_ROWS = 88
# Sides of the tight copy, as fractions of the detection box, and its box width in pixels.
TIGHT_MARGINS = (-0.15, 0.10)
TIGHT_BOX_WIDTHS = (70.0, 130.0)
# Box widths of the small copy: a quarter of the rof masked photos have faces under 55 px.
SMALL_BOX_WIDTHS = (24.0, 60.0)
MIN_REDETECT_OVERLAP = 0.5
# How far the raised variant moves each mask's top edge up, in eye-to-mouth distances.
RAISED_MASK_LIFT = 0.1


def box_overlap(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    """Return the intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = width * height
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1]) - inter
    return inter / union if union > 0 else 0.0


def redetected(detector: FaceDetector, pixels: np.ndarray, unmasked: DetectedFace) -> DetectedFace:
    """Return the face found on a masked copy where ``unmasked`` was, or ``unmasked`` when none overlaps enough."""
    faces = detector.detect(pixels)
    best = max(faces, key=lambda face: box_overlap(face.box, unmasked.box), default=None)
    if best is None or box_overlap(best.box, unmasked.box) < MIN_REDETECT_OVERLAP:
        return unmasked
    return best


def tight_copy(
    pixels: np.ndarray,
    face: DetectedFace,
    rng: np.random.Generator,
    box_widths: tuple[float, float] = TIGHT_BOX_WIDTHS,
) -> tuple[np.ndarray, DetectedFace]:
    """Cut the image close to the face's box and shrink it to a random box width in ``box_widths`` pixels.

    Returns the copy and the face with its box and landmarks moved onto the copy.
    """
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = face.box
    box_width, box_height = x2 - x1, y2 - y1
    left, right, top, bottom = rng.uniform(*TIGHT_MARGINS, size=4)
    columns = (round(max(0.0, x1 - left * box_width)), round(min(width, x2 + right * box_width)))
    rows = (round(max(0.0, y1 - top * box_height)), round(min(height, y2 + bottom * box_height)))
    cut = pixels[rows[0] : rows[1], columns[0] : columns[1]]

    scale = min(1.0, rng.uniform(*box_widths) / box_width)
    size = (max(1, round(cut.shape[1] * scale)), max(1, round(cut.shape[0] * scale)))
    small = np.asarray(Image.fromarray(cut).resize(size, Image.BILINEAR, reducing_gap=2.0))

    factors = np.array([size[0] / cut.shape[1], size[1] / cut.shape[0]], dtype=np.float32)
    offset = np.array([columns[0], rows[0]], dtype=np.float32)
    corners = (np.array([[x1, y1], [x2, y2]], dtype=np.float32) - offset) * factors
    moved = dataclasses.replace(
        face,
        box=(float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 0]), float(corners[1, 1])),
        landmarks=((face.landmarks - offset) * factors).astype(np.float32),
    )
    return small, moved


def raised_mask(style: MaskStyle) -> MaskStyle:
    """Return ``style`` with its top edge :data:`RAISED_MASK_LIFT` higher, at the nose bridge and at the sides."""
    return dataclasses.replace(style, top=style.top - RAISED_MASK_LIFT, top_side=style.top_side - RAISED_MASK_LIFT)


def upper_face(crop: np.ndarray) -> np.ndarray:
    """Return a copy of a 160 px aligned crop painted grey from :data:`UPPER_FACE_ROWS` down."""
    painted = crop.copy()
    painted[UPPER_FACE_ROWS:] = GREY
    return painted


def photo_crops(
    variant: str, pipeline: FacePipeline, path: Path, face: DetectedFace, settings: Settings, masks: int
) -> list[tuple[str, int, int | None, np.ndarray]]:
    """Return ``(photo key, variant number, mask seed, crop)`` for each training crop of one photo.

    The tight copies get the photo key ``PATH#tight``, the small copies ``PATH#small`` and the mirror images
    ``PATH#mirror``, so that they count as photos of their own.
    """
    image = load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    seed = masked_variants_seed(image.sha256)
    restyle = raised_mask if variant == "raised" else None
    masked = synthesize_masked(image.pixels, face.landmarks, masks, seed=seed, restyle=restyle)
    crops: list[tuple[str, int, int | None, np.ndarray]] = [
        (str(path), 0, None, align_face(image.pixels, face, pipeline.alignment))
    ]
    for number, pixels in enumerate(masked, start=1):
        aligned_on = redetected(pipeline.detector, pixels, face) if variant == "redetect" else face
        crops.append((str(path), number, seed, align_face(pixels, aligned_on, pipeline.alignment)))
    if variant in ("plain", "redetect", "raised"):
        return crops

    if variant == "upper":
        return [(key, number, mask_seed, upper_face(crop)) for key, number, mask_seed, crop in crops]

    if variant == "mirror":
        mirrored = [(f"{path}#mirror", number, mask_seed, crop[:, ::-1]) for _, number, mask_seed, crop in crops]
        return crops + mirrored

    rng = np.random.default_rng(seed)
    widths, suffix = (SMALL_BOX_WIDTHS, "#small") if variant == "small" else (TIGHT_BOX_WIDTHS, "#tight")
    for number, pixels in enumerate([image.pixels, *masked]):
        shrunk, moved = tight_copy(pixels, face, rng, widths)
        if variant == "tight-redetect":
            moved = redetected(pipeline.detector, shrunk, moved)
        crop = align_face(shrunk, moved, pipeline.alignment)
        crops.append((f"{path}{suffix}", number, seed if number else None, crop))
    return crops


def run_pending(runner: TrunkRunner, trunk_cache: TrunkCache, pending: dict[str, np.ndarray]) -> None:
    """Run the trunk on the crops not yet cached and store their outputs."""
    if pending:
        trunk_cache.put(dict(zip(pending, runner.run(np.stack(list(pending.values()))), strict=True)))
        pending.clear()


def seeded_path(out: Path, seed: int, seeds: list[int]) -> Path:
    """Return ``out`` for a single seed, or ``out`` with the suffix ``-sSEED`` when there are several."""
    return out if len(seeds) == 1 else out.with_name(f"{out.stem}-s{seed}{out.suffix}")


def train_per_seed(
    args: argparse.Namespace,
    dataset_label: str,
    base_model_id: str,
    base: torch.nn.Module,
    train: FeatureSet,
    validation: FeatureSet,
) -> None:
    """Train and save one head per seed of ``args.seeds`` on the same training and validation people."""
    for training_seed in args.seeds:
        config = TrainingConfig(loss="triplet", seed=training_seed)
        result = train_head(SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER), train, validation, config)
        info = SiameseModelInfo(
            base_model_id=base_model_id,
            layer=DEFAULT_TRUNK_LAYER,
            loss=config.loss,
            seed=config.seed,
            dataset=dataset_label,
            training_people=len(train.people),
            validation_people=len(validation.people),
            masks_per_photo=args.masks,
            best_epoch=result.best_epoch,
            validation={"base_masked_rank1": result.base.masked_rank1, "masked_rank1": result.best.masked_rank1},
        )
        out = seeded_path(args.out, training_seed, args.seeds)
        model_id = save_head(out, result.head, info)
        print(f"{out}: {model_id}, epoch {result.best_epoch}, validation masked rank-1 {result.best.masked_rank1:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("out", type=Path, help="head file to write")
    parser.add_argument("--people", type=int, help="a seeded sample of this many people (default: all)")
    parser.add_argument(
        "--masks",
        type=int,
        default=DEFAULT_MASKS_PER_PHOTO,
        help=f"synthetic-mask variants per photo (default: {DEFAULT_MASKS_PER_PHOTO})",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one head each (default: 0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env(model=BASE_MODEL)
    dataset = settings.datasets_dir / "lfw"
    photos = select_people(dataset, skip=DEFAULT_SKIPPED_PEOPLE, max_people=args.people, seed=0)
    training_people, validation_people = split_people(list(photos), DEFAULT_VALIDATION_FRACTION, 0)
    pipeline = FacePipeline.from_settings(settings)
    runner = TrunkRunner(settings, DEFAULT_TRUNK_LAYER)
    trunk_cache = TrunkCache(
        settings.cache_dir / TRUNK_CACHE_FOLDER, model_id=runner.model_id, layer=DEFAULT_TRUNK_LAYER
    )
    person_of = {path: person for person, paths in photos.items() for path in paths}
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}
    with EmbeddingCache(settings.cache_dir / EMBEDDING_CACHE_FILE) as embedding_cache:
        analysed = analyse_photos(pipeline, list(person_of), cache=embedding_cache, **limits)

    records: list[CropRecord] = []
    pending: dict[str, np.ndarray] = {}
    for path, photo in tqdm(analysed.items(), unit="photo", desc=f"{args.variant} crops"):
        if photo.face is None:
            continue
        for key, number, seed, crop in photo_crops(
            args.variant, pipeline, path, photo.face.detection, settings, args.masks
        ):
            sha = crop_sha256(crop)
            records.append(CropRecord(person_of[path], Path(key), number, seed, sha))
            if sha not in trunk_cache:
                pending[sha] = crop
        if len(pending) >= TRUNK_CHUNK:
            run_pending(runner, trunk_cache, pending)
    run_pending(runner, trunk_cache, pending)

    features = assemble_feature_set(records, trunk_cache)
    train, validation = subset(features, training_people), subset(features, validation_people)
    train_per_seed(
        args, f"{dataset} ({args.variant} crops)", runner.model_id, load_facenet(settings), train, validation
    )


if __name__ == "__main__":
    main()
