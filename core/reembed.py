"""Move a gallery to another embedding model by embedding its stored source photos again.

Templates of different models are never compared, so after a model change the
gallery has to be embedded again. A template cannot be converted, only recomputed
from its photo, so each enrolled image is read again from the path stored at
enrollment and checked against its SHA-256. Images without a readable, unchanged
file are listed with the reason; their people keep the old model's templates,
which the new model does not search.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidImageError, NoFaceError
from core.images import load_image, read_image_bytes
from core.service import FaceService
from core.storage import ImageRecord, StoredImage

logger = logging.getLogger(__name__)

NO_STORED_FILE = "no file was stored: the photo came from a chat, and maskid keeps no photos"


@dataclass
class ReembedSummary:
    """Outcome of one re-embedding run.

    Attributes:
        source_model_id: model whose images were read.
        target_model_id: model the new templates belong to.
        images: enrolled images of the source model.
        reembedded: images enrolled under the target model by this run.
        already_done: images the target model had before this run (an earlier, interrupted run).
        no_face: images in which the target pipeline found no face.
        missing: label and reason of each image that was not re-embedded (gone, changed or never stored).
    """

    source_model_id: str
    target_model_id: str
    images: int = 0
    reembedded: int = 0
    already_done: int = 0
    no_face: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)


async def reembed_gallery(service: FaceService, source_model_id: str, *, show_progress: bool = True) -> ReembedSummary:
    """Enroll every image of ``source_model_id`` again under the service's model.

    Each image goes to the same person, owner and chat as before. The run is
    resumable: images the target model already has are skipped.
    """
    from tqdm import tqdm

    summary = ReembedSummary(source_model_id, service.model_id)
    images = await service.store.enrolled_images(source_model_id)
    # A photo counts as done per person, because one photo may be enrolled for two people.
    enrolled = {(image.person.id, image.sha256) for image in await service.store.enrolled_images(service.model_id)}
    without_face = await service.store.known_image_hashes(service.model_id, status="no_face")
    summary.images = len(images)
    logger.info("re-embedding %d images from %s to %s", len(images), source_model_id, service.model_id)

    for stored in tqdm(images, unit="photo", desc="re-embedding", disable=not show_progress):
        if (stored.person.id, stored.sha256) in enrolled or stored.sha256 in without_face:
            summary.already_done += 1
            continue
        await _reembed_image(service, stored, summary)

    logger.info(
        "re-embedded %d images, %d missing, %d without a face",
        summary.reembedded,
        len(summary.missing),
        summary.no_face,
    )
    return summary


async def _reembed_image(service: FaceService, stored: StoredImage, summary: ReembedSummary) -> None:
    label = stored.path or f"image {stored.image_id} of {stored.person.name}"
    if stored.path is None:
        summary.missing.append((label, NO_STORED_FILE))
        return

    settings = service.settings
    try:
        data = read_image_bytes(Path(stored.path), max_bytes=settings.max_image_bytes, label=stored.path)
        if hashlib.sha256(data).hexdigest() != stored.sha256:
            summary.missing.append((label, "the file changed after enrollment"))
            return
        image = load_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels, label=label)
    except InvalidImageError as exc:
        summary.missing.append((label, str(exc)))
        return

    person = stored.person
    try:
        await service.enroll(person.name, image, source=person.source, owner_id=person.owner_id, chat_id=stored.chat_id)
    except NoFaceError:
        record = ImageRecord(sha256=image.sha256, path=stored.path, width=image.width, height=image.height)
        await service.store.record_no_face(model_id=service.model_id, image=record)
        summary.no_face += 1
        logger.info("no face in %s under %s", label, service.model_id)
        return
    summary.reembedded += 1
