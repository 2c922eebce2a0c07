"""``maskid train siamese``: fine-tune FaceNet's last layers as a twin network on masked and unmasked crops."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cli.commands import CommandResult
from core.evaluation.identification import EmbeddingCache
from core.evaluation.mask_detection import DEFAULT_SKIPPED_PEOPLE
from core.pipeline import FacePipeline
from core.settings import BASE_MODEL, Settings
from core.siamese.cache import TrunkCache
from core.siamese.curves import plot_training_curves
from core.siamese.data import (
    DEFAULT_MASKS_PER_PHOTO,
    DEFAULT_VALIDATION_FRACTION,
    FeatureSet,
    build_feature_set,
    select_people,
    split_people,
    subset,
)
from core.siamese.head import SiameseHead
from core.siamese.losses import LOSS_NAMES
from core.siamese.model_file import SiameseModelInfo, save_head
from core.siamese.training import TrainingConfig, TrainingResult, train_head
from core.siamese.trunk import DEFAULT_TRUNK_LAYER, TRUNK_LAYERS, TrunkRunner, load_facenet

logger = logging.getLogger(__name__)

EMBEDDING_CACHE_FILE = Path("eval") / "embeddings.sqlite3"
TRUNK_CACHE_FOLDER = "siamese-trunk"


def add_siamese_parser(train: argparse._SubParsersAction) -> None:
    """Register ``maskid train siamese`` under the ``train`` subcommands."""
    defaults = TrainingConfig()
    parser = train.add_parser(
        "siamese",
        help="fine-tune FaceNet's last layers on masked and unmasked crops (twin network)",
        description=(
            "Run the frozen FaceNet trunk once on each photo's aligned crop and on synthetic-mask variants of it, "
            "cache the outputs, and train a head shared by both branches of a twin network with contrastive "
            "and/or batch-hard triplet loss. People with at least 2 photos are split into training and "
            "validation sets; training stops early when the validation masked rank-1 stops improving."
        ),
    )
    parser.add_argument("--dataset", type=Path, help="folder-per-person photos (default: MASKID_DATASETS/lfw)")
    parser.add_argument("--out", type=Path, required=True, help="head file to write (.pt), with the curves beside it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the sampling and the people sample")
    parser.add_argument(
        "--loss",
        choices=(*LOSS_NAMES, "both"),
        default="both",
        help="loss to train with, or 'both' to train one head per loss and keep the better (default: both)",
    )
    parser.add_argument(
        "--skip-people",
        type=integer_at_least(0),
        default=DEFAULT_SKIPPED_PEOPLE,
        metavar="N",
        help=f"leave out the first N people in sorted order (default: {DEFAULT_SKIPPED_PEOPLE}, the ones the "
        "identification benchmark uses as strangers)",
    )
    parser.add_argument(
        "--people", type=integer_at_least(2), help="use a seeded random sample of this many people (default: all)"
    )
    parser.add_argument(
        "--masks",
        type=integer_at_least(1),
        default=DEFAULT_MASKS_PER_PHOTO,
        help=f"synthetic-mask variants per photo (default: {DEFAULT_MASKS_PER_PHOTO})",
    )
    parser.add_argument(
        "--layer",
        choices=TRUNK_LAYERS,
        default=DEFAULT_TRUNK_LAYER,
        help=f"last frozen FaceNet stage; the head trains the blocks after it (default: {DEFAULT_TRUNK_LAYER})",
    )
    parser.add_argument(
        "--validation-fraction",
        type=fraction,
        default=DEFAULT_VALIDATION_FRACTION,
        help=f"fraction of people held out for validation (default: {DEFAULT_VALIDATION_FRACTION})",
    )
    parser.add_argument(
        "--max-epochs",
        type=integer_at_least(1),
        default=defaults.max_epochs,
        help="maximum epochs per loss (default: %(default)s)",
    )
    parser.add_argument(
        "--patience",
        type=integer_at_least(1),
        default=defaults.patience,
        help="epochs without a better validation rank-1 before stopping (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-people",
        type=integer_at_least(2),
        default=defaults.batch_people,
        help="people per batch, 4 crops each (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="Adam learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--distillation",
        type=float,
        default=defaults.distillation,
        help="weight of the pull of unmasked descriptors towards the base network's; the Siamese model "
        "compares unmasked faces on the base network's descriptors, so it needs none (default: %(default)s)",
    )
    parser.add_argument(
        "--masked-distillation",
        type=float,
        default=defaults.masked_distillation,
        help="weight of the pull of each masked descriptor towards the base network's descriptor of the same "
        "photo unmasked; 0 turns it off (default: %(default)s)",
    )
    parser.add_argument(
        "--unmasked-tolerance",
        type=float,
        default=defaults.unmasked_tolerance,
        help="validation unmasked rank-1 an epoch may lose against the base network and still be kept; "
        "1 turns the check off (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=train_siamese)


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that parses an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """Parse a number strictly between 0 and 1, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def build_training_sets(
    settings: Settings,
    runner: TrunkRunner,
    photos: Mapping[str, Sequence[Path]],
    training_people: Sequence[str],
    validation_people: Sequence[str],
    *,
    masks: int,
    show_progress: bool = True,
) -> tuple[FeatureSet, FeatureSet]:
    """Return the trunk outputs of the photos' crops and masked variants, split into training and validation people.

    Every photo is detected (or read from the detection cache), aligned and masked, and the trunk
    runs only on crops whose output is not cached yet.
    """
    # Crops come from the base network's pipeline whatever the model setting, because the head
    # trains on its trunk. The detections cached by base-model runs are reused too.
    pipeline = FacePipeline.from_settings(dataclasses.replace(settings, model=BASE_MODEL))
    trunk_cache = TrunkCache(settings.cache_dir / TRUNK_CACHE_FOLDER, model_id=runner.model_id, layer=runner.layer)
    with EmbeddingCache(settings.cache_dir / EMBEDDING_CACHE_FILE) as embedding_cache:
        features = build_feature_set(
            pipeline,
            runner,
            trunk_cache,
            photos,
            masks=masks,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            embedding_cache=embedding_cache,
            show_progress=show_progress,
        )
    return subset(features, training_people), subset(features, validation_people)


async def train_siamese(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Build the trunk cache, train one head per requested loss, and save the best one with its curves."""
    dataset = args.dataset if args.dataset is not None else settings.datasets_dir / "lfw"
    photos = select_people(dataset, skip=args.skip_people, max_people=args.people, seed=args.seed)
    training_people, validation_people = split_people(list(photos), args.validation_fraction, args.seed)

    runner = TrunkRunner(settings, args.layer)
    train, validation = build_training_sets(
        settings, runner, photos, training_people, validation_people, masks=args.masks, show_progress=not args.json
    )
    logger.info(
        "training on %d crops of %d people, validating on %d crops of %d people",
        len(train),
        len(train.people),
        len(validation),
        len(validation.people),
    )

    base = load_facenet(settings)
    losses = LOSS_NAMES if args.loss == "both" else (args.loss,)
    results: list[TrainingResult] = []
    for loss in losses:
        config = TrainingConfig(
            loss=loss,
            max_epochs=args.max_epochs,
            patience=args.patience,
            batch_people=args.batch_people,
            learning_rate=args.learning_rate,
            seed=args.seed,
            distillation=args.distillation,
            masked_distillation=args.masked_distillation,
            unmasked_tolerance=args.unmasked_tolerance,
        )
        head = SiameseHead.from_base(base, args.layer)
        results.append(train_head(head, train, validation, config, show_progress=not args.json))
    chosen = max(results, key=lambda result: (result.best.masked_rank1, -result.best.loss))

    validation_numbers = {"base_masked_rank1": chosen.base.masked_rank1, "masked_rank1": chosen.best.masked_rank1}
    for result in results:
        validation_numbers[f"{result.config.loss}_masked_rank1"] = result.best.masked_rank1
    info = SiameseModelInfo(
        base_model_id=runner.model_id,
        layer=args.layer,
        loss=chosen.config.loss,
        seed=args.seed,
        dataset=str(dataset),
        training_people=len(train.people),
        validation_people=len(validation.people),
        masks_per_photo=args.masks,
        best_epoch=chosen.best_epoch,
        validation=validation_numbers,
    )
    model_id = save_head(args.out, chosen.head, info)
    curves = plot_training_curves(results, args.out.with_suffix(".curves.png"))
    history = args.out.with_suffix(".history.json")
    history.write_text(json.dumps([_history(result) for result in results], indent=2))
    data = {
        "model_id": model_id,
        "out": str(args.out),
        "curves": str(curves),
        "history": str(history),
        "info": dataclasses.asdict(info),
    }
    return CommandResult(_format(model_id, args.out, curves, results, chosen), data)


def _history(result: TrainingResult) -> dict:
    return {
        "loss": result.config.loss,
        "best_epoch": result.best_epoch,
        "epochs": [
            {"epoch": record.epoch, "train_loss": record.train_loss, **dataclasses.asdict(record.validation)}
            for record in result.history
        ],
    }


def _format(model_id: str, out: Path, curves: Path, results: list[TrainingResult], chosen: TrainingResult) -> str:
    lines = [f"model     {model_id}", f"saved     {out}", f"curves    {curves}"]
    lines.append(
        f"untrained head: validation masked rank-1 {chosen.base.masked_rank1:.4f} of {chosen.base.probes} probes"
    )
    for result in results:
        marker = " (kept)" if result is chosen else ""
        lines.append(
            f"{result.config.loss:<12} best epoch {result.best_epoch}: validation masked rank-1 "
            f"{result.best.masked_rank1:.4f}, loss {result.best.loss:.4f}{marker}"
        )
    return "\n".join(lines)
