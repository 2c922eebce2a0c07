"""The ``maskid calibrate`` subcommand: pick the match thresholds for a target false-positive rate.

Photos of people who are not in the gallery (non-mated probes) are identified
against the gallery. The mask detector sends each face to the masked or the
unmasked rule, and each rule's threshold is set so that at most the target share
of its faces would be matched to someone. The thresholds are stored in the
gallery and used by every later ``identify``, in the CLI and the bot.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

from cli.commands import CommandResult, reason_without_path, require_gallery
from core.calibration import DEFAULT_TARGET_FPIR, Calibration, Thresholds, minimum_probes
from core.errors import DatasetError
from core.evaluation.identification import AnalysedPhoto, EmbeddingCache, analyse_photos, list_images, name_key
from core.service import FaceService
from core.settings import Settings

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "embeddings.sqlite3"
# Faces of one kind below which a calibrated threshold gets a warning: with fewer, one
# stranger more or less moves it a lot, whatever FPIR was asked for.
STEADY_PROBES = 100
# Files without a usable face that the text output names. --json lists them all.
LISTED_PHOTOS = 10


def add_calibrate_parser(subcommands: argparse._SubParsersAction) -> None:
    """Register ``maskid calibrate``."""
    parser = subcommands.add_parser(
        "calibrate",
        help="set the match thresholds from photos of people who are not enrolled",
        description=(
            "Identify every photo under the given folders against the gallery and store, for masked and for "
            "unmasked faces, the lowest threshold at which at most --fpir of them would be matched. The photos "
            "must show people who are not in the gallery: photos already enrolled, and photos in a folder named "
            "like an enrolled person, are skipped."
        ),
    )
    parser.add_argument("folders", type=Path, nargs="*", metavar="DIR", help="photos of people who are not enrolled")
    parser.add_argument(
        "--reset",
        action="store_true",
        help="delete the stored calibration of the current model and go back to the built-in thresholds",
    )
    parser.add_argument(
        "--fpir",
        type=float,
        default=DEFAULT_TARGET_FPIR,
        help=f"target false-positive identification rate (default: {DEFAULT_TARGET_FPIR})",
    )
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON")
    parser.set_defaults(handler=calibrate)


async def calibrate(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Identify the non-mated photos, pick the thresholds and store them in the gallery."""
    if args.reset:
        return await _reset(args, settings)
    if not args.folders:
        raise DatasetError("missing DIR: pass at least one folder of photos of people who are not enrolled, or --reset")
    if not 0.0 < args.fpir < 1.0:
        raise DatasetError(f"--fpir must be between 0 and 1, got {args.fpir}; 0.01 means 1% of strangers matched")
    require_gallery(settings)
    paths = [path for folder in args.folders for path in list_images(folder, recursive=True)]
    if not paths:
        raise DatasetError(f"no photos under {', '.join(map(str, args.folders))}")

    async with FaceService.from_settings(settings) as service:
        paths, skipped = await _strangers_only(service, paths)
        with EmbeddingCache(settings.cache_dir / "eval" / CACHE_FILE_NAME) as cache:
            photos = analyse_photos(
                service.pipeline,
                paths,
                max_image_bytes=settings.max_image_bytes,
                max_image_pixels=settings.max_image_pixels,
                cache=cache,
                show_progress=not args.json,
            )
        faces = [photo.face for photo in photos.values() if photo.face is not None]
        unused = {str(photo.path): _unused_reason(photo) for photo in photos.values() if photo.face is None}
        for path, reason in unused.items():
            logger.info("calibration leaves out %s: %s", path, reason)
        if len(faces) < minimum_probes(args.fpir):
            raise DatasetError(
                f"{len(faces)} faces found in {len(paths)} photos, but FPIR {args.fpir} needs at least "
                f"{minimum_probes(args.fpir)} faces of people who are not enrolled. Add photos or raise --fpir."
            )
        calibration = await service.calibrate(faces, args.fpir)
        thresholds = service.thresholds

    lines = [
        f"model     {calibration.model_id}",
        f"photos    {len(paths)} used, {len(faces)} with a face, {skipped} skipped as enrolled people",
        _kind_line("unmasked", calibration.unmasked, calibration.unmasked_probes, calibration.achieved_unmasked_fpir),
        _kind_line("masked", calibration.masked, calibration.masked_probes, calibration.achieved_masked_fpir),
        _thresholds_line(thresholds),
        *_unused_lines(unused),
    ]
    return CommandResult("\n".join(lines), _json(calibration, skipped, unused))


async def _reset(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Delete the current model's calibration and report the thresholds now in use."""
    if args.folders:
        raise DatasetError("--reset takes no folders; run `maskid calibrate DIR...` on its own afterwards")
    require_gallery(settings)
    async with FaceService.from_settings(settings) as service:
        removed = await service.reset_calibration()
        thresholds = service.thresholds
        model_id = service.model_id

    done = "removed the stored calibration" if removed else "no calibration was stored"
    lines = [
        f"model     {model_id}",
        f"reset     {done}",
        _thresholds_line(thresholds),
    ]
    data = {"model_id": model_id, "removed": removed, "unmasked": thresholds.unmasked, "masked": thresholds.masked}
    return CommandResult("\n".join(lines), data)


async def _strangers_only(service: FaceService, paths: list[Path]) -> tuple[list[Path], int]:
    """Drop photos that are enrolled, or that sit in a folder named like an enrolled person."""
    enrolled_hashes = await service.store.known_image_hashes(service.model_id, status="enrolled")
    enrolled_names = {name_key(summary.person.name) for summary in await service.store.list_people()}
    strangers = []
    for path in paths:
        if name_key(path.parent.name) in enrolled_names:
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() in enrolled_hashes:
            continue
        strangers.append(path)
    skipped = len(paths) - len(strangers)
    if skipped:
        logger.info("calibration skips %d photos of enrolled people", skipped)
    return strangers, skipped


def _thresholds_line(thresholds: Thresholds) -> str:
    return (
        f"in use    unmasked {thresholds.unmasked:.4f} ({thresholds.unmasked_source}), "
        f"masked {thresholds.masked:.4f} ({thresholds.masked_source})"
    )


def _kind_line(kind: str, threshold: float | None, probes: int, achieved: float | None) -> str:
    if threshold is None:
        return f"{kind:<9} {probes} faces, too few for this FPIR: threshold not changed"
    line = f"{kind:<9} {probes} faces, threshold {threshold:.4f} (FPIR on them {achieved:.4f})"
    if probes < STEADY_PROBES:
        line += f"; from under {STEADY_PROBES} faces it is noisy, so add strangers or undo it with --reset"
    return line


def _unused_reason(photo: AnalysedPhoto) -> str:
    """Return why a photo gave no face, without the file name that read errors start with."""
    if photo.error is None:
        return "no face found"
    return reason_without_path(photo.error, photo.path)


def _unused_lines(unused: dict[str, str]) -> list[str]:
    """Return lines that name each file without a usable face and why, so that broken files show up."""
    if not unused:
        return []
    lines = [f"left out  {len(unused)} files with no usable face:"]
    lines += [f"  {path}: {reason}" for path, reason in list(unused.items())[:LISTED_PHOTOS]]
    if len(unused) > LISTED_PHOTOS:
        lines.append(f"  and {len(unused) - LISTED_PHOTOS} more (--json lists them all)")
    return lines


def _json(calibration: Calibration, skipped: int, unused: dict[str, str]) -> dict[str, Any]:
    return {"skipped_enrolled": skipped, "left_out": unused, **dict(calibration.__dict__)}
