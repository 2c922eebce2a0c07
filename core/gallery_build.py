"""Build a gallery from a folder-per-person dataset, incrementally and resumably.

Layout: ``ROOT/<person>/<image>``, for example LFW's ``Name/Name_0001.jpg`` or a
plain ``alice/holiday.jpg``. A person's name is the folder name with underscores
shown as spaces. Each photo is committed in its own transaction, so an
interrupted build loses at most the photos in flight. A rerun skips every photo
whose sha256 the gallery already contains for the current model, enrolled or
known to contain no face.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.errors import DatasetError, InvalidImageError, NoFaceError
from core.images import DecodedImage, load_image, read_image_bytes
from core.pipeline import Face
from core.service import FaceService
from core.storage import ImageRecord

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
BATCH_SIZE = 16  # photos decoded and analysed per model call


@dataclass(frozen=True)
class DatasetImage:
    """One photo of a folder-per-person dataset."""

    person_name: str
    path: Path


@dataclass
class BuildSummary:
    """Counts of what a build did, plus each skipped file with its reason."""

    people: set[str] = field(default_factory=set)
    enrolled: int = 0
    already_known: int = 0
    no_face: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def images_seen(self) -> int:
        return self.enrolled + self.already_known + self.no_face + len(self.skipped)


def person_name_from_folder(folder_name: str) -> str:
    """Turn a dataset folder name into a display name: ``George_W_Bush`` becomes ``George W Bush``."""
    return " ".join(folder_name.replace("_", " ").split())


def scan_dataset(root: Path, summary: BuildSummary | None = None) -> list[DatasetImage]:
    """List the photos under ``root``, sorted by person folder and file name.

    Files without an image suffix, files directly under ``root`` and symbolic
    links to folders inside a person's folder are reported in ``summary.skipped``.
    Person folders may be symbolic links, but nothing below them is followed, so a
    link loop cannot trap the scan.

    Raises:
        DatasetError: ``root`` is missing or not a folder.
    """
    if not root.exists():
        raise DatasetError(f"dataset folder {root} not found")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected ROOT/<person>/<image> files")

    skipped = summary.skipped if summary is not None else []
    images = []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if not entry.is_dir():
            skipped.append((Path(entry.path), "not inside a person folder; expected ROOT/<person>/<image>"))
            continue
        for path in sorted(_files_below(Path(entry.path), skipped)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(DatasetImage(person_name_from_folder(entry.name), path))
            else:
                skipped.append((path, "not an image file name"))
    return images


def _files_below(folder: Path, skipped: list[tuple[Path, str]]) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(folder, followlinks=False):
        for name in subdirectories:
            if os.path.islink(os.path.join(directory, name)):
                skipped.append((Path(directory) / name, "symbolic link to a folder, not followed"))
        for name in files:
            yield Path(directory) / name


async def build_gallery(service: FaceService, root: Path, *, show_progress: bool = True) -> BuildSummary:
    """Enroll every new photo under ``root`` as a ``dataset`` person of ``service``'s gallery.

    Already-known photos (by sha256 and model id) are skipped. Photos without a
    face are recorded so that a rerun skips them too, and unreadable files are
    reported in the summary with their reason.
    """
    summary = BuildSummary()
    images = scan_dataset(root, summary)
    enrolled = await service.store.known_image_hashes(service.model_id, status="enrolled")
    without_face = await service.store.known_image_hashes(service.model_id, status="no_face")
    logger.info("gallery build of %s: %d photos found, %d hashes known", root, len(images), len(enrolled))

    with tqdm(total=len(images), unit="photo", desc="gallery build", disable=not show_progress) as progress:
        for start in range(0, len(images), BATCH_SIZE):
            batch = images[start : start + BATCH_SIZE]
            await _build_batch(service, batch, enrolled, without_face, summary)
            progress.update(len(batch))
            progress.set_postfix(enrolled=summary.enrolled, no_face=summary.no_face, skipped=len(summary.skipped))

    logger.info(
        "gallery build of %s done: %d enrolled, %d already known, %d without a face, %d skipped",
        root, summary.enrolled, summary.already_known, summary.no_face, len(summary.skipped),
    )  # fmt: skip
    return summary


async def _build_batch(
    service: FaceService,
    batch: list[DatasetImage],
    enrolled: set[str],
    without_face: set[str],
    summary: BuildSummary,
) -> None:
    fresh: list[tuple[DatasetImage, bytes]] = []
    for item in batch:
        try:
            data = read_image_bytes(item.path, max_bytes=service.settings.max_image_bytes)
        except InvalidImageError as exc:
            summary.skipped.append((item.path, str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in without_face:
            summary.no_face += 1
            continue
        if digest in enrolled:
            summary.already_known += 1
            summary.people.add(item.person_name)
            continue
        enrolled.add(digest)  # the same photo twice in one tree is enrolled once
        fresh.append((item, data))
    if not fresh:
        return

    decoded, analysed = await service.run_model(_decode_and_analyze, service, fresh, summary)
    for (item, image), faces in zip(decoded, analysed, strict=True):
        await _store_result(service, item, image, faces, summary)


def _decode_and_analyze(
    service: FaceService, fresh: list[tuple[DatasetImage, bytes]], summary: BuildSummary
) -> tuple[list[tuple[DatasetImage, DecodedImage]], list[list[Face]]]:
    decoded = []
    for item, data in fresh:
        try:
            image = load_image(
                data,
                max_bytes=service.settings.max_image_bytes,
                max_pixels=service.settings.max_image_pixels,
                label=str(item.path),
            )
        except InvalidImageError as exc:
            summary.skipped.append((item.path, str(exc)))
            continue
        decoded.append((item, image))
    return decoded, service.pipeline.analyze_batch([image for _, image in decoded])


async def _store_result(
    service: FaceService, item: DatasetImage, image: DecodedImage, faces: list[Face], summary: BuildSummary
) -> None:
    try:
        await service.enroll(item.person_name, image, source="dataset", faces=faces)
    except NoFaceError:
        record = ImageRecord(sha256=image.sha256, path=str(item.path), width=image.width, height=image.height)
        await service.store.record_no_face(model_id=service.model_id, image=record, faces_found=0)
        summary.no_face += 1
        logger.debug("no face in %s", item.path)
        return
    summary.enrolled += 1
    summary.people.add(item.person_name)
