"""The maskid service: enroll, identify and verify faces against a stored gallery.

:class:`FaceService` ties a :class:`~core.storage.GalleryStore`, a
:class:`~core.pipeline.FacePipeline` and an in-memory
:class:`~core.matching.TemplateIndex` together. Model work runs on a small,
bounded thread pool so that an asyncio front end (the bot) keeps handling
updates while faces are embedded. The index is kept in step with every enroll and removal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self, TypeVar

from core.errors import NoFaceError, PersonNotFoundError
from core.images import DecodedImage
from core.matching import Candidate, TemplateIndex, is_match
from core.pipeline import Face, FacePipeline, main_face
from core.settings import Settings
from core.storage import (
    ANY_CHAT,
    NO_OWNER,
    GalleryStore,
    ImageRecord,
    NewTemplate,
    Person,
    RemovedPerson,
    SqliteGalleryStore,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RankedPerson:
    """A gallery person with the probe's similarity to their closest template."""

    person: Person
    score: float


@dataclass(frozen=True, eq=False)
class Identification:
    """The identification result for one face of a probe image.

    Attributes:
        face: the probe face (box, detection probability, descriptor).
        candidates: best-scoring people, best first (up to the requested top k).
        match: the best candidate when its score reaches ``threshold``, else None ("unknown").
        threshold: the cosine similarity a match needs.
        masked: whether the probe face wears a mask, as the mask detector decided.
        mask_probability: the mask detector's probability that it does, None without a detector.
    """

    face: Face
    candidates: tuple[RankedPerson, ...]
    match: RankedPerson | None
    threshold: float
    masked: bool = False
    mask_probability: float | None = None


@dataclass(frozen=True)
class Verification:
    """Whether two photos show the same person: their main faces' cosine similarity against the threshold.

    Attributes:
        boxes: the compared face of each photo, ``(x1, y1, x2, y2)`` in its pixels.
        faces_found: how many faces each photo had; the main one was compared.
    """

    score: float
    same: bool
    threshold: float
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    faces_found: tuple[int, ...] = ()


@dataclass(frozen=True)
class EnrollResult:
    """One enrolled photo: who it was added to and how many faces the photo had.

    ``already_enrolled`` is True, and ``template_ids`` empty, when the person
    already had this exact photo (same sha256) and nothing was stored.
    """

    person_id: int
    person_name: str
    template_ids: tuple[int, ...]
    faces_in_image: int
    created_person: bool
    already_enrolled: bool = False


class FaceService:
    """Gallery operations for the CLI and the bot.

    Args:
        settings: thresholds and limits.
        store: an unopened gallery store; the service opens and closes it.
        pipeline: detection, alignment and embedding.
        workers: threads that run model inference (the bounded worker pool).
    """

    def __init__(self, settings: Settings, store: GalleryStore, pipeline: FacePipeline, *, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.index = TemplateIndex(pipeline.embedder.embedding_dim)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskid-model")
        self._people: dict[int, Person] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, workers: int = 1) -> FaceService:
        """Build the default service: SQLite gallery at ``settings.db_path`` and the default pipeline."""
        return cls(
            settings, SqliteGalleryStore.from_settings(settings), FacePipeline.from_settings(settings), workers=workers
        )

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @property
    def threshold(self) -> float:
        return self.settings.match_threshold

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and load this model's templates into the index."""
        await self.store.open()
        templates = await self.store.load_templates(self.model_id)
        self.index.add_matrix(templates)
        logger.info("gallery %s: %d templates of model %s loaded", self.store, len(templates), self.model_id)

    async def close(self) -> None:
        """Close the store and stop the worker threads."""
        await self.store.close()
        self._executor.shutdown(wait=True)

    async def run_model(self, function: Callable[..., T], *args: object) -> T:
        """Run blocking model work on the worker pool and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def analyze(self, image: DecodedImage) -> list[Face]:
        """Detect and embed every face in ``image`` on the worker pool."""
        return await self.run_model(self.pipeline.analyze, image)

    async def enroll(
        self,
        name: str,
        image: DecodedImage,
        *,
        source: str = "cli",
        owner_id: int | None = None,
        chat_id: int | None = None,
        faces: Sequence[Face] | None = None,
    ) -> EnrollResult:
        """Add the main face of ``image`` to the person called ``name``, creating them if needed.

        Args:
            faces: faces already found in ``image``; analysed here when None.

        Raises:
            NoFaceError: no face was found; nothing is stored.
        """
        if faces is None:
            faces = await self.analyze(image)
        face = main_face(faces, image.width, image.height)
        if face is None:
            raise NoFaceError(f"{image.source or 'image'!r}: no face found; use a sharper, frontal, well-lit photo")
        if len(faces) > 1:
            logger.info("%s has %d faces; enrolling the main one for %r", image.source, len(faces), name)

        for person in await self.store.find_people(name, source=source, owner_id=owner_id):
            known = await self.store.known_image_hashes(self.model_id, status="enrolled", person_id=person.id)
            if image.sha256 in known:
                logger.info("image %s is already enrolled for person %d", image.sha256[:12], person.id)
                return EnrollResult(person.id, name, (), len(faces), created_person=False, already_enrolled=True)

        template = NewTemplate(embedding=face.embedding, box=face.box, detection_probability=face.probability)
        enrollment = await self.store.enroll(
            person_name=name,
            source=source,
            model_id=self.model_id,
            image=_image_record(image),
            templates=[template],
            owner_id=owner_id,
            chat_id=chat_id,
        )
        self.index.add(
            enrollment.template_ids,
            [enrollment.person_id] * len(enrollment.template_ids),
            [face.embedding],
            chat_ids=[chat_id or ANY_CHAT],
            owner_ids=[owner_id or NO_OWNER],
        )
        logger.info("enrolled image %s as person %d (%d templates)", image.sha256[:12], enrollment.person_id, 1)
        return EnrollResult(
            person_id=enrollment.person_id,
            person_name=name,
            template_ids=enrollment.template_ids,
            faces_in_image=len(faces),
            created_person=enrollment.created_person,
        )

    async def identify(
        self, image: DecodedImage, *, top_k: int = 3, chat_id: int | None = None
    ) -> list[Identification]:
        """Rank gallery people for every face in ``image``; an empty list means no face was found.

        Args:
            chat_id: the chat asking; only people visible there are returned (see
                :func:`core.storage.records.visible_in_chat`). None, for the command line, sees everyone.
        """
        faces = await self.analyze(image)
        return [await self.identify_face(face, top_k=top_k, chat_id=chat_id) for face in faces]

    async def identify_face(self, face: Face, *, top_k: int = 3, chat_id: int | None = None) -> Identification:
        """Rank gallery people for one analysed face, as seen from ``chat_id`` (None sees everyone)."""
        candidates = self.index.search(face.embedding, k=top_k, chat_id=chat_id)
        ranked = tuple(await self._rank(candidates))
        best = ranked[0] if ranked else None
        match = best if best is not None and is_match(candidates[0], self.threshold) else None
        return Identification(face=face, candidates=ranked, match=match, threshold=self.threshold)

    async def verify(self, first: DecodedImage, second: DecodedImage) -> Verification:
        """Compare the main faces of two photos on the worker pool; see :func:`verify_images`."""
        return await self.run_model(verify_images, self.pipeline, first, second, self.threshold)

    async def remove(self, name: str) -> list[RemovedPerson]:
        """Delete every person called ``name`` with their templates.

        Raises:
            PersonNotFoundError: no person has that name.
        """
        people = await self.store.find_people(name)
        if not people:
            raise PersonNotFoundError(f"no person named {name!r} in the gallery; `maskid people` lists them")
        removed = []
        for person in people:
            removed.append(await self.store.remove_person(person.id))
            self.index.remove_person(person.id)
            self._people.pop(person.id, None)
        return removed

    async def _rank(self, candidates: Sequence[Candidate]) -> list[RankedPerson]:
        missing = [candidate.person_id for candidate in candidates if candidate.person_id not in self._people]
        if missing:
            self._people.update(await self.store.people_by_ids(missing))
        return [
            RankedPerson(self._people[candidate.person_id], candidate.score)
            for candidate in candidates
            if candidate.person_id in self._people
        ]


def verify_images(pipeline: FacePipeline, first: DecodedImage, second: DecodedImage, threshold: float) -> Verification:
    """Compare the main faces of two photos: cosine similarity and whether it reaches ``threshold``.

    Raises:
        NoFaceError: either photo has no face; the message names it.
    """
    faces = []
    counts = []
    for image, found in zip((first, second), pipeline.analyze_batch([first, second]), strict=True):
        face = main_face(found, image.width, image.height)
        if face is None:
            raise NoFaceError(f"{image.source or 'image'!r}: no face found; use a sharper, frontal, well-lit photo")
        faces.append(face)
        counts.append(len(found))

    score = float(faces[0].embedding @ faces[1].embedding)
    return Verification(
        score=score,
        same=score >= threshold,
        threshold=threshold,
        boxes=tuple(face.box for face in faces),
        faces_found=tuple(counts),
    )


def _image_record(image: DecodedImage) -> ImageRecord:
    return ImageRecord(sha256=image.sha256, path=image.source, width=image.width, height=image.height)
