"""Cross-validate training the twin head on real masked photos, over the rof people.

The shipped head learns masks from synthetic ones drawn on LFW photos. rof is the
only set here with real masked photos of known people, so this script measures
whether those photos would train a better head. Its masked people are split into
``--folds`` folds. For each fold and seed, two heads are trained with the shipped
settings on the LFW training people plus the rof masked people of the other folds:

``synthetic``
    those rof people's neutral photos (gallery photos and unmasked probes), each
    gallery photo with its synthetic-mask variants;
``real``
    the same, plus their real masked photos, each as two masked variants (the crop
    and its mirror image).

Both heads are scored on the held-out fold's masked probes against a gallery
without the other folds' people, so neither a probe's person nor any enrolled
person was among the rof people trained on. The untrained head (the base network)
and ``--head`` (the shipped head by default) are scored on the same galleries.
Each line reports masked rank-1 over the probes of every fold, and the mean over
folds of masked TPIR at 1% FPIR (the masked strangers stay the non-mated probes).

Usage::

    .venv/bin/python scripts/siamese_real_mask_folds.py --seeds 0 1 2 --datasets ../shared/datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from siamese_epochs_rof import RealMaskScorer, base_settings, shipped_training_sets
from siamese_rof import TrunkTable

from cli.train_siamese import integer_at_least
from core.evaluation.identification import IdentificationProtocol, ProbeSet, ProbeSetResult
from core.siamese.data import CropRecord, FeatureSet, numbered_feature_set
from core.siamese.head import SiameseHead
from core.siamese.model_file import load_head
from core.siamese.training import TrainingConfig, train_head
from core.siamese.trunk import DEFAULT_TRUNK_LAYER, load_facenet

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
DEFAULT_HEAD = Path(__file__).resolve().parent.parent / "core" / "data" / "siamese_head.pt"
# rof names get this prefix in training, so that a name also found in LFW stays a person of its own.
ROF_LABEL_PREFIX = "rof/"
ARMS = ("synthetic", "real")
TARGET_FPIR = 0.01


@dataclasses.dataclass
class ArmScores:
    """Probe hits and per-fold TPIR of one head, or one way of training heads, over all folds."""

    hits: dict[Path, bool] = dataclasses.field(default_factory=dict)
    tpirs: list[float] = dataclasses.field(default_factory=list)

    def add(self, result: ProbeSetResult) -> None:
        self.hits.update((probe.path, probe.rank == 1) for probe in result.mated)
        self.tpirs.append(next(p.tpir for p in result.operating_points if p.target_fpir == TARGET_FPIR))

    def line(self, name: str) -> str:
        rank1 = np.mean(list(self.hits.values()))
        return f"{name}: masked rank-1 {rank1:.4f} ({len(self.hits)} probes), mean fold TPIR {np.mean(self.tpirs):.4f}"


def fold_people(people: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Split ``people`` into ``folds`` disjoint folds with a seeded shuffle.

    Raises:
        ValueError: there are fewer people than folds.
    """
    if folds > len(people):
        raise ValueError(f"{len(people)} people cannot fill {folds} folds; use --folds {len(people)} or fewer")
    shuffled = sorted(people)
    random.Random(seed).shuffle(shuffled)
    return [sorted(shuffled[start::folds]) for start in range(folds)]


def held_out_protocol(
    protocol: IdentificationProtocol, held_out: Sequence[str], trained: Sequence[str]
) -> IdentificationProtocol:
    """Return the masked probes of the ``held_out`` people against a gallery without the ``trained`` people."""
    masked = next(probe_set for probe_set in protocol.probe_sets if probe_set.name == "masked")
    trained_people, held_out_people = set(trained), set(held_out)
    gallery = {label: photos for label, photos in protocol.gallery.items() if label not in trained_people}
    probes = tuple(probe for probe in masked.mated if probe.label in held_out_people)
    return IdentificationProtocol(gallery, (ProbeSet("masked", probes, masked.non_mated),))


def rof_feature_rows(
    table: TrunkTable,
    neutral: dict[str, list[Path]],
    masked: dict[str, list[Path]],
    people: Sequence[str],
    *,
    real: bool,
) -> FeatureSet:
    """Return the training rows of the rof ``people``: neutral crops with synthetic masks, and real masks with ``real``.

    Neutral and synthetic-mask crops give their unmirrored trunk output only, as in LFW
    training. A real masked photo gives its crop and its mirror image.
    """
    records: list[CropRecord] = []
    features: list[np.ndarray] = []
    for person in people:
        label = ROF_LABEL_PREFIX + person
        for path in neutral.get(person, []):
            records.append(CropRecord(label, path, 0, None, ""))
            features.append(table.plain[path][0])
            for number, variant in enumerate(table.masked.get(path, []), start=1):
                records.append(CropRecord(label, path, number, None, ""))
                features.append(variant[0])
        for path in masked[person] if real else []:
            for number, side in enumerate(table.plain[path], start=1):
                records.append(CropRecord(label, path, number, None, ""))
                features.append(side)
    return numbered_feature_set(records, np.stack(features))


def concatenate(first: FeatureSet, second: FeatureSet) -> FeatureSet:
    """Return the rows of both sets as one, people and photos numbered anew."""
    features = np.concatenate([first.features, second.features]).astype(np.float16, copy=False)
    return numbered_feature_set(first.records + second.records, features)


def photos_by_person(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """Group photo paths by their folder name, the person's name."""
    grouped: dict[str, list[Path]] = {}
    for path in sorted(paths):
        grouped.setdefault(path.parent.name, []).append(path)
    return grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fold split and training seeds (default: 0)")
    parser.add_argument(
        "--folds",
        type=integer_at_least(2),
        default=DEFAULT_FOLDS,
        help="folds of rof masked people (default: %(default)s)",
    )
    parser.add_argument(
        "--head", type=Path, default=DEFAULT_HEAD, help="trained head to compare (default: the shipped one)"
    )
    parser.add_argument("--datasets", type=Path, help="datasets folder (default: MASKID_DATASETS)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = base_settings(args.datasets)
    scorer = RealMaskScorer(settings, settings.datasets_dir)
    lfw_train, lfw_validation = shipped_training_sets(settings)
    base = load_facenet(settings)
    compared = {"base": SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER), args.head.name: load_head(args.head)[0]}

    neutral = photos_by_person([path for path in scorer.table.plain if path.parent.parent.name == "neutral"])
    masked = photos_by_person(
        [probe.path for probe in scorer.protocol.probe_sets[0].mated if probe.path in scorer.table.plain]
    )
    for seed in args.seeds:
        scores = {name: ArmScores() for name in (*compared, *ARMS)}
        for number, held_out in enumerate(fold_people(list(masked), args.folds, seed)):
            trained = [person for person in masked if person not in held_out]
            protocol = held_out_protocol(scorer.protocol, held_out, trained)
            for name, head in compared.items():
                scores[name].add(scorer.masked_result(head, protocol))
            for arm in ARMS:
                rows = rof_feature_rows(scorer.table, neutral, masked, trained, real=arm == "real")
                config = TrainingConfig(loss="triplet", seed=seed)
                result = train_head(
                    SiameseHead.from_base(base, DEFAULT_TRUNK_LAYER),
                    concatenate(lfw_train, rows),
                    lfw_validation,
                    config,
                    show_progress=False,
                )
                scores[arm].add(scorer.masked_result(result.head, protocol))
                logger.info("seed %d fold %d %s: kept epoch %d", seed, number, arm, result.best_epoch)
            print(f"seed {seed}: fold {number + 1} of {args.folds} done ({len(held_out)} people)", flush=True)
        for name, arm_scores in scores.items():
            print(f"seed {seed} {arm_scores.line(name)}", flush=True)


if __name__ == "__main__":
    main()
