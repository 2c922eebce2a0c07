"""The ``maskid mask`` subcommand: draw synthetic face masks on every face in a photo.

``maskid mask IMAGE -o OUT`` writes one masked copy to OUT. With ``--count N`` and
N > 1 it writes N copies, each with different random masks, named OUT with ``-1``,
``-2``, ... before the suffix (``masked.jpg`` becomes ``masked-1.jpg``,
``masked-2.jpg``, ...). The output format follows OUT's suffix.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cli.commands import CommandResult
from core.errors import MaskidError, NoFaceError
from core.images import load_image
from core.masks import MASK_TYPES, draw_mask, random_mask_style
from core.pipeline import FacePipeline
from core.settings import Settings

logger = logging.getLogger(__name__)

MAX_COUNT = 100
JPEG_QUALITY = 92


def add_mask_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``maskid mask`` on the ``subcommands`` of the main parser and return its parser."""
    parser = subcommands.add_parser(
        "mask",
        help="draw synthetic face masks on every face in a photo",
        description=(
            "Draw a random synthetic face mask on every face that the detector finds. "
            "With --count N > 1, writes N files named OUT with -1 ... -N before the suffix."
        ),
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="photo to mask")
    parser.add_argument(
        "-o",
        "--output",
        type=output_path,
        required=True,
        metavar="OUT",
        help="file to write, in the format its suffix names (.jpg, .png, .webp, ...)",
    )
    parser.add_argument("--kind", choices=MASK_TYPES, help="mask kind (default: a random kind for each face)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask styles (default: 0)")
    parser.add_argument(
        "--count", type=int, default=1, metavar="N", help=f"masked copies to write, 1 to {MAX_COUNT} (default: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.set_defaults(handler=mask)
    return parser


def output_path(value: str) -> Path:
    """Parse OUT for argparse, rejecting a suffix that Pillow cannot write."""
    path = Path(value)
    try:
        image_format(path)
    except MaskidError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def image_format(path: Path) -> str:
    """Return the Pillow format name that writes ``path``, chosen by its suffix.

    Raises:
        MaskidError: the suffix is missing or names no format that Pillow can write.
    """
    format_name = Image.registered_extensions().get(path.suffix.lower())
    if format_name is None or format_name not in Image.SAVE:
        raise MaskidError(f"{str(path)!r}: unknown image file suffix {path.suffix!r}. Use .jpg, .png or .webp.")
    return format_name


def numbered_paths(path: Path, count: int) -> list[Path]:
    """Return ``[path]`` for one copy, else ``path`` with ``-1`` ... ``-count`` before the suffix."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{number}{path.suffix}") for number in range(1, count + 1)]


async def mask(args: argparse.Namespace, settings: Settings) -> CommandResult:
    """Draw masks on every face in ``args.image`` and write the masked copies."""
    if not 1 <= args.count <= MAX_COUNT:
        raise MaskidError(f"--count must be between 1 and {MAX_COUNT}, got {args.count}")
    save_format = image_format(args.output)
    image = load_image(args.image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)

    detector = FacePipeline.from_settings(settings).detector
    faces = detector.detect(image.pixels)
    if not faces:
        raise NoFaceError(
            f"{image.source}: no face found, so no mask was drawn; use a sharper, frontal, well-lit photo "
            f"with faces at least {settings.min_face_size} px wide"
        )

    rng = np.random.default_rng(args.seed)
    written: list[dict[str, Any]] = []
    for path in numbered_paths(args.output, args.count):
        pixels = image.pixels
        masks = []
        for face in faces:
            style = random_mask_style(rng, args.kind)
            pixels = draw_mask(pixels, face.landmarks, style)
            masks.append({"box": [round(value, 1) for value in face.box], "kind": style.kind, "pattern": style.pattern})
        save(pixels, path, save_format)
        logger.info("wrote %s with %d masked faces", path, len(faces))
        written.append({"path": str(path), "faces": masks})

    lines = [f"{item['path']}: masked {describe_kinds(item['faces'])}" for item in written]
    return CommandResult("\n".join(lines), {"image": image.source, "written": written})


def describe_kinds(masks: list[dict[str, Any]]) -> str:
    """Summarise the masks of one file, for example ``2 faces (surgical, kn95)``."""
    noun = "face" if len(masks) == 1 else "faces"
    return f"{len(masks)} {noun} ({', '.join(item['kind'] for item in masks)})"


def save(pixels: np.ndarray, path: Path, save_format: str) -> None:
    """Write an RGB image to ``path`` in ``save_format``, JPEG files at quality 92."""
    options = {"quality": JPEG_QUALITY} if save_format == "JPEG" else {}
    try:
        Image.fromarray(pixels).save(path, format=save_format, **options)
    except OSError as exc:
        raise MaskidError(f"cannot write {str(path)!r}: {exc}. Check that the folder exists and is writable.") from exc
