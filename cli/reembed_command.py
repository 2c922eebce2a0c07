"""``maskid gallery reembed``: embed a gallery's stored photos again for the configured model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cli.commands import CommandResult, require_gallery
from core.errors import DatasetError
from core.reembed import NO_STORED_FILE, ReembedSummary, reembed_gallery
from core.service import FaceService
from core.settings import Settings

logger = logging.getLogger(__name__)


def register(gallery: argparse._SubParsersAction) -> None:
    """Register ``reembed`` under the ``gallery`` subcommands."""
    parser = gallery.add_parser(
        "reembed",
        help="embed the gallery's photos again for the current model (--model / MASKID_MODEL)",
        description=(
            "Read every photo enrolled under another model from the path stored at enrollment, check that it is "
            "unchanged (SHA-256), and enroll it again under the current model for the same person. Photos that "
            "are gone or changed are listed; relative paths are read from the current folder. Resumable."
        ),
    )
    parser.add_argument(
        "--from-model",
        metavar="MODEL_ID",
        help="model id to read images from (default: the only other model in the gallery; when there are "
        "several, the error lists them)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=gallery_reembed)


async def gallery_reembed(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Re-embed the gallery and fail (exit 1) when any photo could not be read again."""
    require_gallery(settings)
    service = FaceService.from_settings(settings)
    service.check_other_models = False
    async with service:
        source = args.from_model or await _only_other_model(service)
        if source == service.model_id:
            raise DatasetError(f"the gallery is already embedded with {source}; choose another model with --model")
        summary = await reembed_gallery(service, source, show_progress=not args.json)

    if summary.images == 0:
        raise DatasetError(f"no images are enrolled under {source}; check --from-model")
    return CommandResult(_format(summary), _json(summary), exit_code=1 if summary.missing else 0)


async def _only_other_model(service: FaceService) -> str:
    others = await service.other_models()
    if not others:
        raise DatasetError(
            f"no other model to re-embed from: every image is embedded with {service.model_id}; choose the model "
            "to move the gallery to with --model, for example `maskid --model base gallery reembed`"
        )
    if len(others) > 1:
        raise DatasetError(
            f"the gallery has images of several models; choose one with --from-model: {', '.join(others)}"
        )
    return others[0]


def _format(summary: ReembedSummary) -> str:
    lines = [
        f"re-embedded {summary.source_model_id} -> {summary.target_model_id}",
        f"  images:          {summary.images}",
        f"  embedded now:    {summary.reembedded}",
        f"  already present: {summary.already_done}",
        f"  no face found:   {summary.no_face}",
        f"  not re-embedded: {len(summary.missing)}",
    ]
    lines += [f"    {reason}" if label in reason else f"    {label}: {reason}" for label, reason in summary.missing]
    if summary.missing:
        lines.append(
            "  the new model does not search these photos: restore the files and run this command again, "
            "or enroll new photos of their people"
        )
    if any(not Path(label).is_absolute() for label, reason in summary.missing if reason != NO_STORED_FILE):
        lines.append("  relative paths are read from the current folder, so run it where the gallery was built")
    return "\n".join(lines)


def _json(summary: ReembedSummary) -> dict[str, Any]:
    return {
        "source_model_id": summary.source_model_id,
        "target_model_id": summary.target_model_id,
        "images": summary.images,
        "reembedded": summary.reembedded,
        "already_done": summary.already_done,
        "no_face": summary.no_face,
        "missing": [{"image": label, "reason": reason} for label, reason in summary.missing],
    }
