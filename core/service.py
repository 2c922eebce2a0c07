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

import numpy as np

from core.calibration import (
    Calibration,
    Thresholds,
    calibrate,
    clear_calibration,
    load_calibration,
    resolve_thresholds,
    save_calibration,
)
from core.errors import ModelError, NoFaceError, PersonNotFoundError, StorageError
from core.images import DecodedImage
from core.mask_detection import MaskClassifier, shipped_classifier
from core.matching import Candidate, TemplateIndex, is_match
from core.pipeline import Face, FacePipeline, main_face, pair_is_masked
from core.search_index import AnnTemplateIndex, index_path, open_template_index, save_if_current, search_index_folder
from core.settings import Settings
from core.storage import (
    ANY_CHAT,
    NO_OWNER,
    SYNTHETIC,
    GalleryStore,
    ImageRecord,
    NewTemplate,
    Person,
    PersonSummary,
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
        masked: whether the mask detector found a mask on either face, which picks the
            descriptor part and the threshold.
    """

    score: float
    same: bool
    threshold: float
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    faces_found: tuple[int, ...] = ()
    masked: bool = False


def no_face_message(image: DecodedImage) -> str:
    """Return the error for a photo in which no face was found."""
    return f"{image.source or 'image'!r}: no face found; use a sharper, frontal, well-lit photo"


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
        mask_classifier: decides whether a probe wears a mask; without one every probe
            is matched as unmasked.
    """

    def __init__(
        self,
        settings: Settings,
        store: GalleryStore,
        pipeline: FacePipeline,
        *,
        workers: int = 1,
        mask_classifier: MaskClassifier | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if mask_classifier is not None and mask_classifier.model_id != pipeline.feature_model_id:
            raise ModelError(
                f"the mask classifier was trained for {mask_classifier.model_id}, not {pipeline.feature_model_id}; "
                "retrain it with `maskid train mask-detector`"
            )
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.mask_classifier = mask_classifier
        self.index = TemplateIndex(pipeline.embedder.embedding_dim)
        self.thresholds = self._resolve_thresholds(None)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskid-model")
        self._people: dict[int, Person] = {}
        # Warn at start about people with only other models' templates. A caller that moves
        # them to this model (gallery reembed) turns it off.
        self.check_other_models = True

    @classmethod
    def from_settings(cls, settings: Settings, *, workers: int = 1) -> FaceService:
        """Build the default service: SQLite gallery at ``settings.db_path``, the default pipeline and
        the shipped mask classifier."""
        pipeline = FacePipeline.from_settings(settings)
        return cls(
            settings,
            SqliteGalleryStore.from_settings(settings),
            pipeline,
            workers=workers,
            mask_classifier=shipped_classifier(pipeline.feature_model_id),
        )

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @property
    def threshold(self) -> float:
        """The unmasked threshold; :attr:`thresholds` has both."""
        return self.thresholds.unmasked

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and load this model's templates into the index."""
        await self.store.open()
        self.index = await open_template_index(self.store, self.model_id, self.index.dim, self.settings)
        logger.info("gallery %s: %d templates of model %s loaded", self.store, len(self.index), self.model_id)
        if self.check_other_models:
            await self._warn_about_other_models()
        self.thresholds = self._resolve_thresholds(await load_calibration(self.store, self.model_id))
        logger.info("thresholds: %s", self.thresholds)

    async def other_models(self) -> list[str]:
        """Return the ids of the models with enrolled images in the gallery, other than this service's."""
        return [model_id for model_id in await self.store.enrolled_model_ids() if model_id != self.model_id]

    async def _warn_about_other_models(self) -> None:
        """Warn when people of the gallery have only other models' templates, which no search reaches."""
        others = await self.other_models()
        if not others:
            return
        if len(self.index) == 0:
            logger.warning(
                "gallery %s has templates of %s but none of %s, so nobody can be found; embed its photos for "
                "this model with `maskid gallery reembed`, or use the gallery's model (--model or MASKID_MODEL)",
                self.settings.db_path,
                ", ".join(others),
                self.model_id,
            )
            return
        searched = len(await self.store.list_people(model_id=self.model_id))
        unsearched = len(await self.store.list_people()) - searched
        if unsearched:
            logger.warning(
                "gallery %s: %d people have templates of %s only and are not searched with %s; "
                "run `maskid gallery reembed` with this model to search them too",
                self.settings.db_path,
                unsearched,
                ", ".join(others),
                self.model_id,
            )

    async def close(self) -> None:
        """Save a changed approximate search index, close the store and stop the worker threads."""
        await self._save_search_index()
        await self.store.close()
        self._executor.shutdown(wait=True)

    async def _save_search_index(self) -> None:
        """Save the approximate index after enrolls or removals, so the next start need not rebuild it."""
        if not isinstance(self.index, AnnTemplateIndex) or not self.index.changed:
            return
        try:
            path = index_path(search_index_folder(self.settings, self.store), self.model_id, self.index.backend)
            await save_if_current(self.index, self.store, self.model_id, path)
        except (OSError, RuntimeError, StorageError) as exc:
            # RuntimeError: the store was already closed.
            logger.warning("search index: failed to save it at close (%s); the next start rebuilds it", exc)

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
            raise NoFaceError(no_face_message(image))
        if len(faces) > 1:
            logger.info("%s has %d faces; enrolling the main one for %r", image.source, len(faces), name)

        for person in await self.store.find_people(name, source=source, owner_id=owner_id):
            known = await self.store.known_image_hashes(self.model_id, status="enrolled", person_id=person.id)
            if image.sha256 in known:
                logger.info("image %s is already enrolled for person %d", image.sha256[:12], person.id)
                return EnrollResult(person.id, name, (), len(faces), created_person=False, already_enrolled=True)

        masked = await self.run_model(self.pipeline.embed_masked, image, face.detection, self.settings.synthetic_masks)
        templates = enrollment_templates(face, masked)
        enrollment = await self.store.enroll(
            person_name=name,
            source=source,
            model_id=self.model_id,
            image=_image_record(image),
            templates=templates,
            owner_id=owner_id,
            chat_id=chat_id,
        )
        if enrollment.already_enrolled:
            logger.info(
                "image %s was enrolled for person %d by a concurrent call", image.sha256[:12], enrollment.person_id
            )
            return EnrollResult(enrollment.person_id, name, (), len(faces), created_person=False, already_enrolled=True)
        count = len(templates)
        self.index.add(
            enrollment.template_ids,
            [enrollment.person_id] * count,
            np.stack([template.embedding for template in templates]),
            synthetic=[template.kind == SYNTHETIC for template in templates],
            chat_ids=[chat_id or ANY_CHAT] * count,
            owner_ids=[owner_id or NO_OWNER] * count,
        )
        logger.info("enrolled image %s as person %d (%d templates)", image.sha256[:12], enrollment.person_id, count)
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
                :func:`core.storage.records.visible_in_chat`). None (the command line) searches every template.
        """
        faces = await self.analyze(image)
        return [await self.identify_face(face, top_k=top_k, chat_id=chat_id) for face in faces]

    async def identify_face(self, face: Face, *, top_k: int = 3, chat_id: int | None = None) -> Identification:
        """Rank gallery people for one analysed face, as visible from ``chat_id`` (None searches every template).

        A face the mask detector calls masked is matched with :meth:`TemplateIndex.search_masked`
        and the masked threshold; any other face against original templates only.
        """
        masked, probability = self.mask_status(face)
        candidates = self.search(face, top_k=top_k, chat_id=chat_id, masked=masked)
        threshold = self.thresholds.for_probe(masked)
        ranked = tuple(await self._rank(candidates))
        best = ranked[0] if ranked else None
        match = best if best is not None and is_match(candidates[0], threshold) else None
        return Identification(
            face=face,
            candidates=ranked,
            match=match,
            threshold=threshold,
            masked=masked,
            mask_probability=probability,
        )

    def mask_status(self, face: Face) -> tuple[bool, float | None]:
        """Return whether ``face`` wears a mask and the classifier's probability (None without one)."""
        if self.mask_classifier is None or face.features is None:
            return False, None
        probability = float(self.mask_classifier.probability(face.features))
        return probability >= self.mask_classifier.threshold, probability

    def search(self, face: Face, *, top_k: int, chat_id: int | None, masked: bool) -> list[Candidate]:
        """Rank people by the rule of the probe's kind: fused synthetic and original templates for a
        masked face, original templates for an unmasked one."""
        probe = self.pipeline.layout.probe_vector(face.embedding, masked)
        if masked:
            return self.index.search_masked(probe, k=top_k, chat_id=chat_id, locator=face.embedding)
        return self.index.search(probe, k=top_k, chat_id=chat_id, locator=face.embedding)

    async def calibrate(self, faces: Sequence[Face], target_fpir: float) -> Calibration:
        """Pick and store each probe kind's threshold from ``faces`` of people who are not enrolled.

        Each face is routed by the mask detector as :meth:`identify_face` would route it,
        so each threshold reaches ``target_fpir`` on the faces its rule scores.
        """
        scores: dict[bool, list[float]] = {False: [], True: []}
        for face in faces:
            masked, _ = self.mask_status(face)
            candidates = self.search(face, top_k=1, chat_id=None, masked=masked)
            if candidates:
                scores[masked].append(candidates[0].score)
        calibration = calibrate(self.model_id, np.array(scores[False]), np.array(scores[True]), target_fpir=target_fpir)
        await save_calibration(self.store, calibration)
        self.thresholds = self._resolve_thresholds(await load_calibration(self.store, self.model_id))
        return calibration

    async def reset_calibration(self) -> bool:
        """Delete this model's stored calibration and go back to the settings' or built-in thresholds.

        Returns False when no calibration was stored.
        """
        removed = await clear_calibration(self.store, self.model_id)
        self.thresholds = self._resolve_thresholds(None)
        return removed

    def _resolve_thresholds(self, calibration: Calibration | None) -> Thresholds:
        return resolve_thresholds(
            self.settings.match_threshold,
            self.settings.masked_match_threshold,
            calibration,
            masked_default=self.pipeline.embedder.backbone.masked_threshold,
        )

    async def verify(self, first: DecodedImage, second: DecodedImage) -> Verification:
        """Compare the main faces of two photos on the worker pool; see :func:`verify_images`."""
        return await self.run_model(verify_images, self.pipeline, first, second, self.settings, self.mask_classifier)

    async def remove(self, name: str) -> list[RemovedPerson]:
        """Delete every person called ``name`` with their templates.

        Raises:
            PersonNotFoundError: no person has that name.
        """
        people = await self.store.find_people(name)
        if not people:
            similar = sorted(
                {
                    summary.person.name
                    for summary in await self.store.list_people()
                    if _loose_name(summary.person.name) == _loose_name(name)
                }
            )
            hint = f"did you mean {' or '.join(map(repr, similar))}?" if similar else "`maskid people` lists them"
            raise PersonNotFoundError(f"no person named {name!r} in the gallery; {hint}")
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

    # A user's own data, for the bot's /me and /forget.

    async def user_summary(self, owner_id: int) -> list[PersonSummary]:
        """Return the people that the user ``owner_id`` enrolled, with their image and template counts."""
        return await self.store.people_of_owner(owner_id)

    async def forget_user(self, owner_id: int) -> list[RemovedPerson]:
        """Delete every person that the user ``owner_id`` enrolled, from the store and from the index."""
        removed = await self.store.remove_people_of_owner(owner_id)
        for item in removed:
            self.index.remove_person(item.person.id)
            self._people.pop(item.person.id, None)
        logger.info("forgot user %d: %d people removed", owner_id, len(removed))
        return removed


def verify_images(
    pipeline: FacePipeline,
    first: DecodedImage,
    second: DecodedImage,
    settings: Settings,
    mask_classifier: MaskClassifier | None = None,
) -> Verification:
    """Compare the main faces of two photos: cosine similarity and whether it reaches the threshold.

    With ``mask_classifier``, a pair with a masked face is compared on the model's masked
    part (see :func:`core.pipeline.face_similarity`) against :func:`verify_threshold` for it.

    Raises:
        NoFaceError: either photo has no face; the message names it.
    """
    faces = []
    counts = []
    for image, found in zip((first, second), pipeline.analyze_batch([first, second]), strict=True):
        face = main_face(found, image.width, image.height)
        if face is None:
            raise NoFaceError(no_face_message(image))
        faces.append(face)
        counts.append(len(found))

    masked = pair_is_masked(faces[0], faces[1], mask_classifier)
    score = pipeline.layout.similarity(faces[0].embedding, faces[1].embedding, masked)
    threshold = verify_threshold(settings, pipeline, masked)
    return Verification(
        score=score,
        same=score >= threshold,
        threshold=threshold,
        boxes=tuple(face.box for face in faces),
        faces_found=tuple(counts),
        masked=masked,
    )


def verify_threshold(settings: Settings, pipeline: FacePipeline, masked: bool) -> float:
    """Return the verification threshold for a pair: the masked one when either face wears a mask.

    For a masked pair: ``settings.masked_verify_threshold``, else the model's own default,
    else the unmasked ``settings.verify_threshold``.
    """
    if not masked:
        return settings.verify_threshold
    if settings.masked_verify_threshold is not None:
        return settings.masked_verify_threshold
    model_default = pipeline.embedder.backbone.masked_verify_threshold
    return settings.verify_threshold if model_default is None else model_default


def _loose_name(name: str) -> str:
    """Return ``name`` in lower case with underscores as spaces, for suggesting the name the user meant."""
    return " ".join(name.replace("_", " ").casefold().split())


def enrollment_templates(face: Face, masked: np.ndarray) -> list[NewTemplate]:
    """Return the templates of one enrolled face: its own descriptor, then one per synthetic mask."""
    original = NewTemplate(embedding=face.embedding, box=face.box, detection_probability=face.probability)
    synthetic = [
        NewTemplate(
            embedding=vector,
            box=face.box,
            detection_probability=face.probability,
            kind=SYNTHETIC,
            parent_index=0,
        )
        for vector in masked
    ]
    return [original, *synthetic]


def _image_record(image: DecodedImage) -> ImageRecord:
    return ImageRecord(sha256=image.sha256, path=image.source, width=image.width, height=image.height)
