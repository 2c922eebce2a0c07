"""Build a gallery from a folder-per-person dataset, incrementally and resumably.

Layout: ``ROOT/<person>/<image>``, for example LFW's ``Name/Name_0001.jpg`` or a
plain ``alice/holiday.jpg``. A person's name is the folder name with underscores
shown as spaces. Each photo is committed in its own transaction, so an
interrupted build loses at most the photos in flight. A rerun skips every photo
whose sha256 the gallery already contains for the current model, enrolled or
known to contain no face. One build at a time writes a gallery (see :func:`exclusive_build`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.errors import DatasetError, InvalidImageError, NoFaceError, StorageError
from core.images import DecodedImage, load_image, read_image_bytes
from core.pipeline import Face
from core.service import FaceService
from core.storage import ImageRecord
from core.storage.records import validate_person

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
BATCH_SIZE = 16  # photos decoded and analysed per model call
NOT_IN_PERSON_FOLDER = "not inside a person folder; expected ROOT/<person>/<image>"


@dataclass(frozen=True)
class DatasetImage:
    """One photo of a folder-per-person dataset."""

    person_name: str
    path: Path

    @property
    def label(self) -> str:
        """The path for messages and the database, with bytes that are not valid UTF-8 escaped."""
        return str(printable_path(self.path))


@dataclass
class BuildSummary:
    """Counts of what a build did, plus each skipped file with its reason and each photo without a face."""

    people: set[str] = field(default_factory=set)
    enrolled: int = 0
    already_known: int = 0
    no_face: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    no_face_paths: list[Path] = field(default_factory=list)

    @property
    def images_seen(self) -> int:
        return self.enrolled + self.already_known + self.no_face + len(self.skipped)


def person_name_from_folder(folder_name: str) -> str:
    """Turn a dataset folder name into a display name: ``George_W_Bush`` becomes ``George W Bush``.

    The name is normalized to Unicode NFC, so a folder written in decomposed form (as
    macOS file systems store names) and one typed in composed form name the same person.
    """
    return unicodedata.normalize("NFC", " ".join(folder_name.replace("_", " ").split()))


def printable_path(path: Path) -> Path:
    """Return ``path`` with bytes that are not valid UTF-8 written as ``\\xNN`` escapes.

    Python keeps such bytes of a file name as lone surrogates, which SQLite, JSON output and
    a UTF-8 terminal reject. The result is for messages and the database only: open the
    original path.
    """
    return Path(os.fsencode(path).decode("utf-8", "backslashreplace"))


def scan_dataset(root: Path, summary: BuildSummary | None = None) -> list[DatasetImage]:
    """List the photos under ``root``, sorted by person folder and file name.

    Skipped, each with its reason in ``summary.skipped``: files without an image suffix,
    files directly under ``root``, person folders whose name is not valid UTF-8 or not a
    valid person name, folders that cannot be listed, broken links, and symbolic links to
    folders inside a person's folder. A person folder may be a symbolic link to a folder
    outside ``root``, but a link to ``root``, to a folder above it or to a folder inside it
    is skipped, so a link loop can neither trap the scan nor enroll photos under a second
    name. The walk below a person folder follows no folder link and does not recurse in
    Python, so any depth of nesting is scanned.

    Raises:
        DatasetError: ``root`` is missing, not a folder, or cannot be listed.
    """
    if not root.exists():
        raise DatasetError(f"dataset folder {root} not found")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected ROOT/<person>/<image> files")

    skipped = summary.skipped if summary is not None else []
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        raise DatasetError(
            f"cannot list dataset folder {root}: {exc.strerror or exc}; make it readable for this user"
        ) from exc

    real_root = Path(os.path.realpath(root))
    images = []
    for entry in entries:
        folder = Path(entry.path)
        problem = _person_folder_problem(entry, real_root)
        if problem is not None:
            skipped.append((printable_path(folder), problem))
            continue
        person_name = person_name_from_folder(entry.name)
        for path in sorted(_files_below(folder, skipped)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(DatasetImage(person_name, path))
            else:
                skipped.append((printable_path(path), "not an image file name"))
    return images


def _person_folder_problem(entry: os.DirEntry[str], real_root: Path) -> str | None:
    """Return why the top-level ``entry`` cannot be a person folder, or None if it can."""
    try:
        is_folder = entry.is_dir()
    except OSError as exc:  # ELOOP from a link that points at itself
        return f"cannot follow the symbolic link: {exc.strerror or exc}"
    if not is_folder:
        if entry.is_symlink():
            return "broken symbolic link: its target does not exist"
        return NOT_IN_PERSON_FOLDER

    if not _is_utf8(entry.name):
        return "folder name is not valid UTF-8, so it cannot be shown as a person's name; rename the folder"
    try:
        validate_person(person_name_from_folder(entry.name), "dataset", None)
    except ValueError as exc:
        return f"folder name is not a valid person name ({exc}); rename the folder"

    if entry.is_symlink():
        target = Path(os.path.realpath(entry.path))
        if target == real_root or target in real_root.parents:
            return f"symbolic link loop: the link points to {printable_path(target)}, which contains the dataset folder"
        if real_root in target.parents:
            return (
                f"symbolic link to {printable_path(target)}, which is inside the dataset folder "
                "and is scanned under its own name"
            )
    return None


def _files_below(folder: Path, skipped: list[tuple[Path, str]]) -> Iterator[Path]:
    """Yield every file below ``folder``, reporting folders that cannot be listed and links to folders."""
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as exc:
            reason = f"cannot list the folder: {exc.strerror or exc}; make it readable for this user"
            skipped.append((printable_path(directory), reason))
            continue

        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif entry.is_symlink() and _is_folder_link(entry):
                skipped.append((printable_path(path), "symbolic link to a folder, not followed"))
            else:
                yield path  # a file, a link to a file, or something load_image rejects with a reason


def _is_folder_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop is reported when the file is read
        return False


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def build_gallery(service: FaceService, root: Path, *, show_progress: bool = True) -> BuildSummary:
    """Enroll every new photo under ``root`` as a ``dataset`` person of ``service``'s gallery.

    Already-known photos (by sha256 and model id) are skipped. Photos without a
    face are recorded so that a rerun skips them too, and unreadable files are
    reported in the summary with their reason.

    Raises:
        StorageError: another build holds the build lock of the same gallery (see
            :func:`exclusive_build`).
    """
    with exclusive_build(service.settings.db_path):
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


@contextlib.contextmanager
def exclusive_build(db_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<db_path>.build-lock`` for the duration of one build.

    Each build reads the known photo hashes once, at its start, so two builds into one
    gallery would both enroll every new photo. The second one fails at once instead. The
    kernel releases the lock when the process ends, SIGKILL included, so no stale lock
    remains. The lock file itself stays next to the database, because removing it would let
    a third build lock a new file while the second still holds the old one.

    Raises:
        StorageError: another process holds the lock, or the lock file cannot be opened.
    """
    lock_path = db_path.with_name(db_path.name + ".build-lock")
    try:
        lock_file = lock_path.open("a")
    except OSError as exc:
        raise StorageError(
            f"cannot open the build lock file {lock_path}: {exc.strerror or exc}; "
            "make the gallery database's folder writable"
        ) from exc

    with lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StorageError(
                f"another `maskid gallery build` is writing gallery {db_path} (it holds {lock_path}); "
                "run this build again when that one has finished"
            ) from exc
        logger.debug("holding the build lock %s", lock_path)
        yield


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
            data = read_image_bytes(item.path, max_bytes=service.settings.max_image_bytes, label=item.label)
        except InvalidImageError as exc:
            summary.skipped.append((printable_path(item.path), str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in without_face:
            summary.no_face += 1
            summary.no_face_paths.append(printable_path(item.path))
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
                label=item.label,
            )
        except InvalidImageError as exc:
            summary.skipped.append((printable_path(item.path), str(exc)))
            continue
        decoded.append((item, image))
    return decoded, service.pipeline.analyze_batch([image for _, image in decoded])


async def _store_result(
    service: FaceService, item: DatasetImage, image: DecodedImage, faces: list[Face], summary: BuildSummary
) -> None:
    try:
        await service.enroll(item.person_name, image, source="dataset", faces=faces)
    except NoFaceError:
        record = ImageRecord(sha256=image.sha256, path=item.label, width=image.width, height=image.height)
        await service.store.record_no_face(model_id=service.model_id, image=record, faces_found=0)
        summary.no_face += 1
        summary.no_face_paths.append(printable_path(item.path))
        logger.debug("no face in %s", item.path)
        return
    summary.enrolled += 1
    summary.people.add(item.person_name)
