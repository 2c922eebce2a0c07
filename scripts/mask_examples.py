"""Draw synthetic masks on LFW faces and save them as a grid, one row per mask kind.

Each cell is one LFW photo with a random mask of its row's kind, cropped around the
face. People are picked at random (by ``--seed``) from the LFW folder under
``MASKID_DATASETS`` (default ``../shared/datasets``).

Usage::

    .venv/bin/python scripts/mask_examples.py --out docs/img/mask_examples.jpg
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core.detection import DetectedFace, FaceDetector
from core.images import load_image
from core.masks import MASK_TYPES, draw_mask, random_mask_style
from core.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def central_face(faces: list[DetectedFace], width: int, height: int) -> DetectedFace | None:
    """Pick the face whose box centre is nearest the image centre, where LFW puts the labelled person."""
    if not faces:
        return None

    def distance(face: DetectedFace) -> float:
        return ((face.box[0] + face.box[2]) / 2 - width / 2) ** 2 + ((face.box[1] + face.box[3]) / 2 - height / 2) ** 2

    return min(faces, key=distance)


def face_cell(pixels: np.ndarray, face: DetectedFace, size: int) -> Image.Image:
    """Crop a square around the face, 1.2 box sides across, and resize it to ``size`` pixels.

    Parts of the square outside the photo are black.
    """
    x1, y1, x2, y2 = face.box
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2 + 0.05 * (y2 - y1)
    half = 0.6 * max(x2 - x1, y2 - y1)
    box = (round(centre_x - half), round(centre_y - half), round(centre_x + half), round(centre_y + half))
    return Image.fromarray(pixels).crop(box).resize((size, size), Image.Resampling.LANCZOS)


def pick_photos(lfw: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """Pick ``count`` first photos of different people at random."""
    people = sorted(path for path in lfw.iterdir() if path.is_dir())
    if len(people) < count:
        raise SystemExit(f"error: {lfw} has {len(people)} people folders; the grid needs {count}")
    chosen = rng.choice(len(people), size=count, replace=False)
    photos = []
    for index in chosen:
        first = sorted(people[index].glob("*.jpg"))
        if first:
            photos.append(first[0])
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, help="datasets folder with lfw/ (default: MASKID_DATASETS)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs/img/mask_examples.jpg", help="output JPEG")
    parser.add_argument("--columns", type=int, default=6, help="faces per mask kind (default: 6)")
    parser.add_argument("--cell", type=int, default=128, help="side of each cell, in pixels (default: 128)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality, 1 to 95 (default: 85)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the photo and style choices (default: 7)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env(env_file=REPO_ROOT / ".env")
    datasets = args.datasets or settings.datasets_dir
    if not datasets.is_absolute():
        datasets = (REPO_ROOT / datasets).resolve()
    lfw = datasets / "lfw"
    if not lfw.is_dir():
        print(f"error: LFW folder {lfw} not found; set MASKID_DATASETS or pass --datasets", file=sys.stderr)
        return 1

    rng = np.random.default_rng(args.seed)
    detector = FaceDetector(min_face_size=settings.min_face_size, min_probability=settings.min_detection_probability)
    rows = len(MASK_TYPES)
    # A few spare photos stand in for any in which no face is found.
    photos = pick_photos(lfw, rows * args.columns + 8, rng)

    grid = Image.new("RGB", (args.columns * args.cell, rows * args.cell), "white")
    cell_index = 0
    for path in photos:
        if cell_index == rows * args.columns:
            break
        image = load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        face = central_face(detector.detect(image.pixels), image.width, image.height)
        if face is None:
            logger.info("no face found in %s; skipped", path)
            continue
        row, column = divmod(cell_index, args.columns)
        style = random_mask_style(rng, MASK_TYPES[row])
        masked = draw_mask(image.pixels, face.landmarks, style)
        grid.paste(face_cell(masked, face, args.cell), (column * args.cell, row * args.cell))
        logger.info("%s: %s %s %s", path.name, style.kind, style.colour, style.pattern)
        cell_index += 1

    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, quality=args.quality, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {cell_index} faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
