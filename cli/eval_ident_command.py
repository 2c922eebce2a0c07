"""The ``maskid eval ident`` command: open-set identification benchmark with CMC and DET plots.

Usage::

    maskid eval ident --standard [DATASETS_DIR]
    maskid eval ident --gallery DIR [--gallery-size K]
        [--mated NAME=DIR ...] [--mated-from-gallery NAME=FIRST-LAST ...]
        [--non-mated NAME=DIR ...] [--non-mated-people NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.commands import CommandResult
from core.errors import DatasetError, ModelError
from core.evaluation.identification import (
    DEFAULT_GALLERY_SIZE,
    DEFAULT_TARGET_FPIRS,
    STANDARD_LFW_PEOPLE,
    EmbeddingCache,
    IdentificationEvaluation,
    IdentificationProtocol,
    MaskAwareMatcher,
    Matcher,
    MatedProbe,
    MatedResult,
    NonMatedResult,
    OperatingPoint,
    PlainMatcher,
    ProbeSet,
    ProbeSetResult,
    evaluate_identification,
    select_first_photo_per_person,
    select_gallery,
    select_mated,
    select_unlabelled,
    standard_protocol,
)
from core.evaluation.plots import plot_cmc, plot_det
from core.evaluation.reference import REFERENCE_MARGIN, ReferencePipeline
from core.mask_detection import MaskClassifier, shipped_classifier
from core.pipeline import FacePipeline
from core.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = Path("eval-ident")
CACHE_FILE_NAME = "embeddings.sqlite3"

MATCHER_NAMES = ("mask-aware", "plain")

# Value of --standard when it is given without a folder: use the datasets_dir setting.
_DATASETS_FROM_SETTINGS = Path("<MASKID_DATASETS>")


def add_eval_ident_parser(eval_subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``ident`` under ``maskid eval`` and return its parser."""
    parser = eval_subcommands.add_parser(
        "ident",
        help="open-set identification: rank-1/5, TPIR at FPIR, CMC and DET plots",
        description=(
            "Enroll the first K photos of each person of a folder-per-person gallery, then rank each probe "
            "against it. Mated probes are labelled by their person folder's name, which must match a gallery "
            "folder name. Non-mated probes show people who are not enrolled."
        ),
    )

    protocol_source = parser.add_mutually_exclusive_group(required=True)
    protocol_source.add_argument(
        "--standard",
        type=Path,
        nargs="?",
        const=_DATASETS_FROM_SETTINGS,
        metavar="DATASETS_DIR",
        help=(
            "run the standard protocol over the datasets folder (default: MASKID_DATASETS): gallery = first K "
            "rof/neutral photos; 'masked' = rof/masked vs masked-strangers; 'unmasked' = rof/neutral photos "
            f"6 to 10 vs the first photo of the first {STANDARD_LFW_PEOPLE} lfw people who are not in rof"
        ),
    )
    protocol_source.add_argument(
        "--gallery", type=Path, metavar="DIR", help="folder-per-person gallery (DIR/<name>/<image>)"
    )

    parser.add_argument(
        "--gallery-size",
        type=int,
        metavar="K",
        help=f"photos enrolled per person, the first K by sorted file name (default: {DEFAULT_GALLERY_SIZE}; "
        "at most 5 with --standard)",
    )

    parser.add_argument(
        "--mated",
        type=_named_path,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="add every photo of each person folder in DIR to probe set NAME as mated probes, labelled by "
        "folder name (repeatable)",
    )

    parser.add_argument(
        "--mated-from-gallery",
        type=_named_range,
        action="append",
        default=[],
        metavar="NAME=FIRST-LAST",
        help="add photos FIRST to LAST (1-based, inclusive; 'FIRST-' for every photo from FIRST on) of each "
        "gallery person, by sorted file name, to probe set NAME as mated probes; FIRST must be above the "
        "gallery size (repeatable)",
    )

    parser.add_argument(
        "--non-mated",
        type=_named_path,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="add every image under DIR, at any depth, as non-mated probes of probe set NAME (repeatable)",
    )

    parser.add_argument(
        "--non-mated-people",
        type=_named_path,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="add the first photo of each person folder in DIR whose name is not a gallery name "
        "(case, '_' and '-' ignored) as non-mated probes of probe set NAME (repeatable)",
    )

    parser.add_argument(
        "--max-non-mated-people",
        type=int,
        metavar="N",
        help=f"use only the first N people, in sorted order, of each --non-mated-people folder "
        f"(default: all; {STANDARD_LFW_PEOPLE} lfw people with --standard)",
    )

    parser.add_argument(
        "--matcher",
        choices=MATCHER_NAMES,
        default="mask-aware",
        help="'mask-aware' (default) matches as identify does: the mask detector routes each probe, masked "
        "probes also use synthetic-mask templates of the gallery; 'plain' compares every probe with the "
        "gallery photos' own templates",
    )

    parser.add_argument(
        "--synthetic-masks",
        type=int,
        metavar="N",
        help="synthetic-mask templates per gallery photo for the mask-aware matcher (default: MASKID_SYNTHETIC_MASKS)",
    )

    parser.add_argument(
        "--mask-classifier",
        type=Path,
        metavar="FILE",
        help="mask classifier for the mask-aware matcher (default: the one maskid ships)",
    )

    parser.add_argument(
        "--pipeline",
        choices=("maskid", "reference"),
        default="maskid",
        help="maskid's pipeline (default), or 'reference': the plain facenet-pytorch recipe (MTCNN's largest "
        "face, no retry, no mirror averaging) with the same weights, to compare against",
    )

    parser.add_argument(
        "--reference-margin",
        type=int,
        default=REFERENCE_MARGIN,
        metavar="PIXELS",
        help=f"margin of the reference recipe's crop, in facenet-pytorch's convention (default: {REFERENCE_MARGIN})",
    )

    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        metavar="DIR",
        help=f"folder for cmc.png and det.png (default: {DEFAULT_OUT_DIR})",
    )

    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="folder of the embedding cache, keyed by model and file SHA-256 (default: MASKID_CACHE_DIR/eval)",
    )

    parser.add_argument("--no-cache", action="store_true", help="analyse every photo again and cache nothing")
    parser.add_argument("--json", action="store_true", help="print every result, including per-probe ranks, as JSON")

    parser.set_defaults(handler=eval_ident)
    return parser


async def eval_ident(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Run the identification benchmark, write the plots and summarise each probe set."""
    protocol = build_protocol(args, settings)
    if args.pipeline == "reference":
        pipeline = ReferencePipeline(settings, margin=args.reference_margin)
    else:
        pipeline = FacePipeline.from_settings(settings)
    matcher = build_matcher(args, settings, pipeline)
    cache_dir = args.cache_dir if args.cache_dir is not None else settings.cache_dir / "eval"
    cache = None if args.no_cache else EmbeddingCache(cache_dir / CACHE_FILE_NAME)

    started = time.perf_counter()
    try:
        evaluation = evaluate_identification(
            pipeline,
            protocol,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            matcher=matcher,
            cache=cache,
            batch_size=settings.batch_size,
            show_progress=not args.json,
        )
    finally:
        if cache is not None:
            cache.close()
    seconds = time.perf_counter() - started
    plots = write_plots(evaluation, args.out)

    return CommandResult(format_text(evaluation, seconds, plots), evaluation_json(evaluation, seconds, plots))


def build_matcher(args: argparse.Namespace, settings: Settings, pipeline: FacePipeline) -> Matcher:
    """Return the matcher that ``--matcher`` names for ``pipeline``'s descriptors.

    Raises:
        ModelError: the mask-aware matcher has no mask classifier for the pipeline's
            pooled-feature space, which the classifier reads.
    """
    model_id = pipeline.feature_model_id
    if args.matcher == "plain":
        return PlainMatcher()
    classifier = MaskClassifier.load(args.mask_classifier) if args.mask_classifier else shipped_classifier(model_id)
    if classifier is None or classifier.model_id != model_id:
        raise ModelError(
            f"no mask classifier for {model_id}: train one with `maskid train mask-detector --out FILE` and pass "
            "--mask-classifier FILE, or use --matcher plain"
        )
    count = settings.synthetic_masks if args.synthetic_masks is None else args.synthetic_masks
    return MaskAwareMatcher(classifier, synthetic_masks=count, layout=pipeline.layout)


def build_protocol(args: argparse.Namespace, settings: Settings) -> IdentificationProtocol:
    """Build the protocol from ``--standard`` or from the explicit gallery and probe options.

    Raises:
        DatasetError: options conflict or are missing, or a folder is missing.
    """
    probe_options = args.mated or args.mated_from_gallery or args.non_mated or args.non_mated_people
    if args.standard is not None:
        if probe_options:
            raise DatasetError(
                "--standard builds its own probe sets. Drop --mated, --mated-from-gallery, --non-mated "
                "and --non-mated-people, or use --gallery instead of --standard."
            )
        datasets_dir = settings.datasets_dir if args.standard == _DATASETS_FROM_SETTINGS else args.standard
        return standard_protocol(
            datasets_dir,
            gallery_size=_or_default(args.gallery_size, DEFAULT_GALLERY_SIZE),
            lfw_people=_or_default(args.max_non_mated_people, STANDARD_LFW_PEOPLE),
        )

    if not (args.mated or args.mated_from_gallery):
        raise DatasetError("--gallery needs at least one --mated NAME=DIR or --mated-from-gallery NAME=FIRST-LAST")
    gallery = select_gallery(args.gallery, _or_default(args.gallery_size, DEFAULT_GALLERY_SIZE))

    mated: dict[str, list[MatedProbe]] = {}
    for name, folder in args.mated:
        mated.setdefault(name, []).extend(select_mated(folder))
    for name, (start, stop) in args.mated_from_gallery:
        mated.setdefault(name, []).extend(select_mated(args.gallery, start=start, stop=stop))

    non_mated: dict[str, list[Path]] = {}
    for name, folder in args.non_mated:
        non_mated.setdefault(name, []).extend(select_unlabelled(folder))
    for name, folder in args.non_mated_people:
        people = select_first_photo_per_person(folder, exclude=gallery, people=args.max_non_mated_people)
        non_mated.setdefault(name, []).extend(people)
    orphans = sorted(set(non_mated) - set(mated))
    if orphans:
        raise DatasetError(
            f"non-mated probes for {orphans} have no mated probe set of that name. "
            "Give each NAME a --mated or --mated-from-gallery option too."
        )

    probe_sets = tuple(ProbeSet(name, tuple(probes), tuple(non_mated.get(name, ()))) for name, probes in mated.items())
    return IdentificationProtocol(gallery, probe_sets)


def write_plots(evaluation: IdentificationEvaluation, out_dir: Path) -> dict[str, Path]:
    """Write ``cmc.png`` and, when a probe set has non-mated probes, ``det.png`` into ``out_dir``."""
    title = f"{evaluation.model_id} ({evaluation.matcher})"
    plots = {"cmc": plot_cmc({item.name: item.cmc for item in evaluation.probe_sets}, out_dir / "cmc.png", title=title)}
    det_curves = {item.name: (item.det.fpir, item.det.fnir) for item in evaluation.probe_sets if item.det is not None}
    if det_curves:
        plots["det"] = plot_det(det_curves, out_dir / "det.png", title=title, target_fpirs=DEFAULT_TARGET_FPIRS)
    return plots


def format_text(evaluation: IdentificationEvaluation, seconds: float, plots: dict[str, Path]) -> str:
    """Summarise the run: the gallery, then a small table per probe set."""
    templates = evaluation.gallery_photos - len(evaluation.gallery_without_face)
    lines = [
        f"model    {evaluation.model_id}",
        f"matcher  {evaluation.matcher}",
        f"gallery  {evaluation.gallery_people} people, {evaluation.gallery_photos} photos, {templates} with a face",
    ]
    for result in evaluation.probe_sets:
        lines.append("")
        lines.extend(_probe_set_lines(result))
    if evaluation.failed:
        lines.append("")
        lines.append(f"{len(evaluation.failed)} photos could not be read or analysed and count as having no face:")
        lines.extend(f"  {path}: {reason}" for path, reason in evaluation.failed)
    lines.append("")
    lines.append(f"plots    {', '.join(str(path) for path in plots.values())}")
    lines.append(f"runtime  {seconds:.1f} s")
    return "\n".join(lines)


def _probe_set_lines(result: ProbeSetResult) -> list[str]:
    lines = [
        f"{result.name}: {len(result.mated)} mated, {len(result.non_mated)} non-mated probes",
        f"  faces found (mated)      {_faces_found(result.mated)}",
    ]
    if result.non_mated:
        lines.append(f"  faces found (non-mated)  {_faces_found(result.non_mated)}")
    if any(item.masked is not None for item in result.mated):
        lines.append(f"  called masked (mated)    {_called_masked(result.mated)}")
        if result.non_mated:
            lines.append(f"  called masked (non-mated) {_called_masked(result.non_mated)}")
    lines.append(f"  rank-1                   {result.rank1:.3f}")
    lines.append(f"  rank-5                   {result.rank5:.3f}")
    for point in result.operating_points:
        lines.append(f"  TPIR @ FPIR {point.target_fpir:<6.1%}       {point.tpir:.3f}  {_describe_threshold(point)}")
    if not result.non_mated:
        lines.append("  no non-mated probes, so no open-set rates")
    return lines


def _faces_found(results: Sequence[MatedResult] | Sequence[NonMatedResult]) -> str:
    """Describe how many probes have a face and how the detector found them, e.g. "9/10 (90.0%; 9 mtcnn)"."""
    methods = _detection_methods(results)
    found = sum(methods.values())
    by_method = ", ".join(f"{count} {method}" for method, count in methods.items())
    return f"{found}/{len(results)} ({found / len(results):.1%}{'; ' + by_method if by_method else ''})"


def _called_masked(results: Sequence[MatedResult] | Sequence[NonMatedResult]) -> str:
    """Describe how many probes with a face the mask detector called masked, e.g. "300/303 (99.0%)"."""
    decided = [result.masked for result in results if result.masked is not None]
    share = sum(decided) / len(decided) if decided else math.nan
    return f"{sum(decided)}/{len(decided)} ({share:.1%})"


def _detection_methods(results: Sequence[MatedResult] | Sequence[NonMatedResult]) -> dict[str, int]:
    counts = Counter(result.detection_method for result in results if result.detection_method is not None)
    return dict(sorted(counts.items()))


def _describe_threshold(point: OperatingPoint) -> str:
    if point.threshold == -math.inf:
        return f"(any threshold: only {point.false_positives} of {point.non_mated} non-mated probes have a face)"
    text = f"(threshold {point.threshold:.4f}, FPIR {point.fpir:.4f} = {point.false_positives}/{point.non_mated})"
    if point.below_resolution:
        text += f", above every non-mated score because 1/{point.non_mated} is above the target"
    return text


def evaluation_json(evaluation: IdentificationEvaluation, seconds: float, plots: dict[str, Path]) -> dict[str, Any]:
    """Collect everything the run measured as JSON-ready data, with NaN and infinite values as null."""
    return {
        "model_id": evaluation.model_id,
        "matcher": evaluation.matcher,
        "runtime_seconds": round(seconds, 2),
        "plots": {name: str(path) for name, path in plots.items()},
        "gallery": {
            "people": evaluation.gallery_people,
            "photos": evaluation.gallery_photos,
            "photos_without_face": [str(path) for path in evaluation.gallery_without_face],
        },
        "failed": [{"path": str(path), "reason": reason} for path, reason in evaluation.failed],
        "probe_sets": [_probe_set_json(result) for result in evaluation.probe_sets],
    }


def _probe_set_json(result: ProbeSetResult) -> dict[str, Any]:
    det = None
    if result.det is not None:
        det = {
            "thresholds": [_number(value) for value in result.det.thresholds],
            "fpir": result.det.fpir.tolist(),
            "fnir": result.det.fnir.tolist(),
        }
    return {
        "name": result.name,
        "mated": len(result.mated),
        "non_mated": len(result.non_mated),
        "mated_faces_found": len(result.mated) - len(result.mated_without_face),
        "non_mated_faces_found": len(result.non_mated) - len(result.non_mated_without_face),
        "mated_detection_methods": _detection_methods(result.mated),
        "non_mated_detection_methods": _detection_methods(result.non_mated),
        "rank1": result.rank1,
        "rank5": result.rank5,
        "cmc": {"ranks": list(range(1, len(result.cmc) + 1)), "rates": list(result.cmc)},
        "operating_points": [
            {
                "target_fpir": point.target_fpir,
                "threshold": _number(point.threshold),
                "any_threshold": point.threshold == -math.inf,
                "fpir": point.fpir,
                "tpir": point.tpir,
                "false_positives": point.false_positives,
                "below_resolution": point.below_resolution,
            }
            for point in result.operating_points
        ],
        "det": det,
        "mated_without_face": [str(path) for path in result.mated_without_face],
        "non_mated_without_face": [str(path) for path in result.non_mated_without_face],
        "mated_probes": [
            {
                "path": str(item.path),
                "label": item.label,
                "rank": None if math.isinf(item.rank) else int(item.rank),
                "score": _number(item.score),
                "top_label": item.top_label,
                "top_score": _number(item.top_score),
                "detection_method": item.detection_method,
                "masked": item.masked,
            }
            for item in result.mated
        ],
        "non_mated_probes": [
            {
                "path": str(item.path),
                "top_label": item.top_label,
                "top_score": _number(item.top_score),
                "detection_method": item.detection_method,
                "masked": item.masked,
            }
            for item in result.non_mated
        ],
    }


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _named_path(text: str) -> tuple[str, Path]:
    name, folder = _split_named(text, "NAME=DIR")
    return name, Path(folder)


def _named_range(text: str) -> tuple[str, tuple[int, int | None]]:
    """Parse ``NAME=FIRST-LAST`` (1-based, inclusive) into a 0-based slice ``(start, stop)``."""
    name, span = _split_named(text, "NAME=FIRST-LAST")
    first, separator, last = span.partition("-")
    try:
        start = int(first) - 1
        stop = int(last) if last else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid range {span!r}: expected FIRST-LAST, for example 6-10") from None
    if not separator or start < 0 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(
            f"invalid range {span!r}: expected FIRST-LAST with 1 <= FIRST <= LAST, for example 6-10"
        )
    return name, (start, stop)


def _split_named(text: str, form: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {form}")
    return name, value
