"""Score every epoch of a twin-network training run on the real masked photos of rof.

Trains heads as ``maskid train siamese --loss triplet`` does (same people, split and
training settings, one head per ``--seeds`` value), but runs all ``--epochs`` epochs.
After each epoch the head is scored on the rof protocol's masked probes with the
service's mask-aware matching (masked rank-1, as ``scripts/siamese_rof.py`` reports it
for the Siamese model). Each run then reports:

- the epoch that the command's early stopping would keep (validation on synthetic masks
  of the LFW validation people, with the command's default patience), and its rof score;
- the best rof score of any epoch. It bounds what choosing the epoch on the real
  masks could reach, and it is optimistic, because the same photos choose and score;
- the rof score of the head whose weights are the mean of the weights of every epoch
  from ``--average-from`` to the last (stochastic weight averaging).

The trunk outputs of the LFW crops share the training command's cache, and those of the
rof photos share ``scripts/siamese_rof.py``'s cache. With ``--plot``, a PNG shows the
rof and the synthetic validation rank-1 of each epoch.

Usage::

    .venv/bin/python scripts/siamese_epochs_rof.py --seeds 0 1 2 --datasets ../shared/datasets \\
        --plot docs/img/siamese_epochs_rof.png
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from siamese_rof import head_descriptors, trunk_table, with_base_part

from cli.train_siamese import build_training_sets, integer_at_least
from core.evaluation.identification import (
    AnalysedPhoto,
    EmbeddingCache,
    IdentificationProtocol,
    MaskAwareMatcher,
    ProbeSetResult,
    analyse_protocol,
    score_protocol,
    standard_protocol,
)
from core.evaluation.mask_detection import DEFAULT_SKIPPED_PEOPLE
from core.mask_detection import shipped_classifier
from core.pipeline import FacePipeline
from core.settings import BASE_MODEL, Settings
from core.siamese.backbone import SiameseBackbone
from core.siamese.data import (
    DEFAULT_MASKS_PER_PHOTO,
    DEFAULT_VALIDATION_FRACTION,
    FeatureSet,
    select_people,
    split_people,
)
from core.siamese.head import SiameseHead
from core.siamese.training import EpochRecord, TrainingConfig, is_better, train_head
from core.siamese.trunk import DEFAULT_TRUNK_LAYER, TrunkRunner, load_facenet

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 20
DEFAULT_AVERAGE_FROM = 12
# The plot marks the untrained head's score plus this gain, the masked rank-1 gain the head aims at.
TARGET_GAIN = 0.10


class RealMaskScorer:
    """Scorer of a head on the rof protocol's real masked probes, with the mask-aware matcher."""

    def __init__(self, settings: Settings, datasets: Path) -> None:
        pipeline = FacePipeline.from_settings(settings)
        full = standard_protocol(datasets)
        # Only the masked probes are scored, because unmasked probes are compared on the base network's part.
        self.protocol = IdentificationProtocol(full.gallery, tuple(s for s in full.probe_sets if s.name == "masked"))
        limits = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}
        with EmbeddingCache(settings.cache_dir / "eval" / "embeddings.sqlite3") as cache:
            # The full protocol's photos, so that the trunk outputs share siamese_rof.py's cache file.
            self.photos, _ = analyse_protocol(pipeline, full, synthetic_masks=0, cache=cache, **limits)

        gallery = {path for paths in full.gallery.values() for path in paths}
        self.count = settings.synthetic_masks
        self.table = trunk_table(self.photos, gallery, self.count, pipeline, settings, DEFAULT_TRUNK_LAYER)
        self.flip = pipeline.embedder.flip
        self.masked_flip = pipeline.embedder.flip and pipeline.synthetic_mask_flip
        base_head = SiameseHead.from_base(load_facenet(settings), DEFAULT_TRUNK_LAYER)
        self.base_photos, self.base_synthetic = self._descriptors(base_head)
        classifier = shipped_classifier(pipeline.feature_model_id)
        if classifier is None:
            raise SystemExit(
                f"no shipped mask classifier for {pipeline.feature_model_id}, which mask-aware matching needs"
            )
        self.matcher = MaskAwareMatcher(classifier, synthetic_masks=self.count, layout=SiameseBackbone.layout)

    def _descriptors(self, head: SiameseHead) -> tuple[dict[Path, AnalysedPhoto], dict[Path, np.ndarray]]:
        return head_descriptors(head, self.photos, self.table, flip=self.flip, masked_flip=self.masked_flip)

    def masked_result(self, head: SiameseHead, protocol: IdentificationProtocol | None = None) -> ProbeSetResult:
        """Score the Siamese model with ``head`` on the masked probes, and leave ``head`` in eval mode.

        ``protocol`` defaults to the rof protocol's masked probe set. Another protocol must
        use the same photos and list its masked probe set first.
        """
        if protocol is None:
            protocol = self.protocol
        head_photos, head_synthetic = self._descriptors(head)
        photos, synthetic = with_base_part(head_photos, head_synthetic, self.base_photos, self.base_synthetic)
        evaluation = score_protocol(protocol, photos, model_id="head", matcher=self.matcher, synthetic=synthetic)
        return evaluation.probe_sets[0]

    def masked_rank1(self, head: SiameseHead) -> float:
        """Return the Siamese model's masked rank-1 with ``head``, and leave ``head`` in eval mode."""
        return self.masked_result(head).rank1


def base_settings(datasets: Path | None) -> Settings:
    """Return the settings of the base model, with ``datasets`` as the datasets folder when given."""
    settings = Settings.from_env(model=BASE_MODEL)
    if datasets is None:
        return settings
    return dataclasses.replace(settings, datasets_dir=datasets)


def shipped_training_sets(settings: Settings) -> tuple[FeatureSet, FeatureSet]:
    """Return the training and validation crops of ``maskid train siamese`` with its default people and masks."""
    photos = select_people(settings.datasets_dir / "lfw", skip=DEFAULT_SKIPPED_PEOPLE, seed=0)
    training_people, validation_people = split_people(list(photos), DEFAULT_VALIDATION_FRACTION, 0)
    runner = TrunkRunner(settings, DEFAULT_TRUNK_LAYER)
    return build_training_sets(
        settings, runner, photos, training_people, validation_people, masks=DEFAULT_MASKS_PER_PHOTO
    )


@dataclasses.dataclass
class SeedRun:
    """Per-epoch scores of one training run and the scores of its kept and averaged heads."""

    seed: int
    rof: list[float]
    synthetic: list[float]
    kept_epoch: int
    averaged: dict[int, float]


def early_stopping_epoch(history: Sequence[EpochRecord], config: TrainingConfig, patience: int) -> int:
    """Return the epoch that early stopping with ``patience`` would keep, replaying the training's rule."""
    best = 0
    for record in history[1:]:
        if is_better(record.validation, history[best].validation, history[0].validation, config.unmasked_tolerance):
            best = record.epoch
        elif record.epoch - best >= patience:
            break
    return best


def averaged_head(base: torch.nn.Module, states: dict[int, dict], first: int) -> SiameseHead:
    """Return a head whose floating-point weights are the mean over the epochs from ``first`` on."""
    epochs = [epoch for epoch in states if epoch >= first]
    last = states[epochs[-1]]
    mean = {
        name: sum(states[epoch][name] for epoch in epochs) / len(epochs) if value.is_floating_point() else value
        for name, value in last.items()
    }
    head = SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER)
    head.load_state_dict(mean)
    return head.eval()


def run_seed(
    seed: int,
    args: argparse.Namespace,
    base: torch.nn.Module,
    train: FeatureSet,
    validation: FeatureSet,
    scorer: RealMaskScorer,
) -> SeedRun:
    """Train one head for ``args.epochs`` epochs and score each epoch and the weight averages on rof."""
    config = TrainingConfig(loss="triplet", seed=seed, max_epochs=args.epochs, patience=args.epochs)
    rof: list[float] = [scorer.masked_rank1(SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER))]
    states: dict[int, dict] = {}

    def after_epoch(epoch: int, head: SiameseHead) -> None:
        states[epoch] = copy.deepcopy(head.state_dict())
        rof.append(scorer.masked_rank1(head))

    result = train_head(
        SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER), train, validation, config, after_epoch=after_epoch
    )

    synthetic = [record.validation.masked_rank1 for record in result.history]
    kept = early_stopping_epoch(result.history, config, TrainingConfig().patience)
    averaged = {first: scorer.masked_rank1(averaged_head(base, states, first)) for first in args.average_from}
    return SeedRun(seed, rof, synthetic, kept, averaged)


def plot_runs(runs: Sequence[SeedRun], path: Path) -> None:
    """Draw rof masked rank-1 (solid) and synthetic validation masked rank-1 (dashed) per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8.0, 4.5))
    FigureCanvasAgg(figure)
    rof_axes = figure.subplots()
    synthetic_axes = rof_axes.twinx()
    for index, run in enumerate(runs):
        color = f"C{index}"
        epochs = range(len(run.rof))
        rof_axes.plot(
            epochs, run.rof, marker="o", color=color, label=f"seed {run.seed}, rof (kept epoch {run.kept_epoch})"
        )
        synthetic_axes.plot(epochs, run.synthetic, "--", color=color, alpha=0.6)
        rof_axes.axvline(run.kept_epoch, linestyle=":", color=color)
    target = runs[0].rof[0] + TARGET_GAIN
    rof_axes.axhline(target, color="grey", linestyle="--", label=f"untrained + {TARGET_GAIN:.2f} ({target:.4f})")
    rof_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    rof_axes.set(xlabel="epoch (0 = untrained head)", ylabel="rof masked rank-1 (solid)")
    synthetic_axes.set_ylabel("LFW validation masked rank-1, synthetic masks (dashed)")
    rof_axes.set_title("Real-mask and synthetic-mask validation per epoch")
    rof_axes.grid(True, alpha=0.3)
    rof_axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def print_run(run: SeedRun) -> None:
    """Print one run's per-epoch scores and its summary line."""
    for epoch, (rof, synthetic) in enumerate(zip(run.rof, run.synthetic, strict=True)):
        print(f"seed {run.seed} epoch {epoch:2d}: rof masked rank-1 {rof:.4f}, synthetic validation {synthetic:.4f}")
    best = max(range(1, len(run.rof)), key=lambda epoch: run.rof[epoch])
    averages = ", ".join(f"epochs {first}-{len(run.rof) - 1} {score:.4f}" for first, score in run.averaged.items())
    print(
        f"seed {run.seed}: kept epoch {run.kept_epoch} {run.rof[run.kept_epoch]:.4f}; "
        f"best rof epoch {best} {run.rof[best]:.4f}; averaged weights: {averages}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one run each (default: 0)")
    parser.add_argument(
        "--epochs", type=integer_at_least(1), default=DEFAULT_EPOCHS, help="epochs per run (default: %(default)s)"
    )
    parser.add_argument(
        "--average-from",
        type=integer_at_least(1),
        nargs="+",
        default=[DEFAULT_AVERAGE_FROM],
        metavar="EPOCH",
        help="first epoch of each weight average, which runs to the last epoch (default: %(default)s)",
    )
    parser.add_argument("--datasets", type=Path, help="datasets folder (default: MASKID_DATASETS)")
    parser.add_argument("--plot", type=Path, help="write a PNG of the per-epoch scores here")
    args = parser.parse_args()
    if max(args.average_from) > args.epochs:
        parser.error(f"--average-from epochs must be at most --epochs ({args.epochs}), got {args.average_from}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = base_settings(args.datasets)
    scorer = RealMaskScorer(settings, settings.datasets_dir)
    train, validation = shipped_training_sets(settings)

    base = load_facenet(settings)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args, base, train, validation, scorer))
        print_run(runs[-1])
    if args.plot is not None:
        plot_runs(runs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
