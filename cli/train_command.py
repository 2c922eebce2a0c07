"""The ``maskid train`` subcommands: fit the models maskid ships.

``maskid train mask-detector`` fits the mask classifier on a folder-per-person
dataset with synthetic masks and validates it on real masked and unmasked photos.
``maskid train siamese`` (see :mod:`cli.train_siamese`) fine-tunes FaceNet's last
layers as a twin network on masked and unmasked crops.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from cli.commands import CommandResult
from cli.train_siamese import add_siamese_parser
from core.errors import DatasetError
from core.evaluation.identification import EmbeddingCache, analyse_photos
from core.evaluation.mask_detection import (
    DEFAULT_NEUTRAL_PER_PERSON,
    DEFAULT_SKIPPED_PEOPLE,
    DEFAULT_TRAINING_PEOPLE,
    MaskValidationResult,
    balanced_accuracy,
    standard_validation_sets,
    train_on_dataset,
    training_photos,
    validate,
)
from core.pipeline import FacePipeline
from core.settings import Settings

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "embeddings.sqlite3"


def add_train_parser(subcommands: argparse._SubParsersAction) -> None:
    """Register ``maskid train`` and its subcommands."""
    train = subcommands.add_parser("train", help="train the models maskid ships").add_subparsers(
        dest="train_command", required=True, metavar="MODEL"
    )
    detector = train.add_parser(
        "mask-detector",
        help="fit the mask classifier on synthetic masks, validate it on real ones",
        description=(
            "Embed the first photo of each person of a folder-per-person dataset, draw one synthetic mask on "
            "each, and fit a logistic regression on the descriptors. Then report its accuracy on the real "
            "masked and unmasked photos of the datasets folder."
        ),
    )
    detector.add_argument(
        "--dataset", type=Path, help="folder-per-person training photos (default: MASKID_DATASETS/lfw)"
    )
    detector.add_argument(
        "--people",
        type=int,
        default=DEFAULT_TRAINING_PEOPLE,
        help=f"people to train on (default: {DEFAULT_TRAINING_PEOPLE})",
    )
    detector.add_argument(
        "--skip-people",
        type=int,
        default=DEFAULT_SKIPPED_PEOPLE,
        metavar="N",
        help=f"leave out the first N people in sorted order (default: {DEFAULT_SKIPPED_PEOPLE}, the ones the "
        "identification benchmark uses as strangers)",
    )
    detector.add_argument("--out", type=Path, required=True, help="classifier file to write (.npz)")
    detector.add_argument("--no-validation", action="store_true", help="skip the validation on real masked photos")
    detector.add_argument("--json", action="store_true", help="print the result as JSON")
    detector.set_defaults(handler=train_mask_detector)
    add_siamese_parser(train)


async def train_mask_detector(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Fit the mask classifier, save it, and validate it on the real photos."""
    dataset = args.dataset if args.dataset is not None else settings.datasets_dir / "lfw"
    paths = training_photos(dataset, people=args.people, skip=args.skip_people)
    if not paths:
        raise DatasetError(f"no training photos in {dataset} after skipping {args.skip_people} people")
    pipeline = FacePipeline.from_settings(settings)
    limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}

    with EmbeddingCache(settings.cache_dir / "eval" / CACHE_FILE_NAME) as cache:
        classifier = train_on_dataset(pipeline, paths, cache=cache, show_progress=not args.json, **limits)
        results: list[MaskValidationResult] = []
        if not args.no_validation:
            sets = standard_validation_sets(settings.datasets_dir, neutral_per_person=DEFAULT_NEUTRAL_PER_PERSON)
            all_paths = [path for validation_set in sets for path in validation_set.paths]
            photos = analyse_photos(pipeline, all_paths, cache=cache, show_progress=not args.json, **limits)
            results = validate(classifier, sets, photos)

    summary = classifier.summary
    if results:
        summary += "; validation: " + ", ".join(
            f"{result.name} {result.accuracy:.4f} of {result.with_face}" for result in results
        )
    classifier = dataclasses.replace(classifier, summary=summary)
    classifier.save(args.out)
    return CommandResult(_format(classifier.model_id, args.out, classifier.summary, results), _json(args.out, results))


def _format(model_id: str, out: Path, summary: str, results: list[MaskValidationResult]) -> str:
    lines = [f"model     {model_id}", f"training  {summary.split('; validation')[0]}", f"saved     {out}"]
    for result in results:
        expected = "masked" if result.masked else "unmasked"
        lines.append(
            f"{result.name:<18} {result.correct}/{result.with_face} called {expected} ({result.accuracy:.1%}); "
            f"{result.photos - result.with_face} of {result.photos} photos had no face"
        )
    by_name = {result.name: result for result in results}
    if "rof/masked" in by_name and "rof/neutral" in by_name:
        accuracy = balanced_accuracy(by_name["rof/masked"], by_name["rof/neutral"])
        lines.append(f"rof masked vs neutral, balanced accuracy {accuracy:.4f}")
    return "\n".join(lines)


def _json(out: Path, results: list[MaskValidationResult]) -> dict:
    return {
        "out": str(out),
        "validation": [
            {"set": r.name, "masked": r.masked, "photos": r.photos, "with_face": r.with_face, "correct": r.correct}
            for r in results
        ],
    }
