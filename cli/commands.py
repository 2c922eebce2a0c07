"""Handlers of the ``maskid`` subcommands.

Each handler takes the parsed arguments and the settings and returns a
:class:`CommandResult` with the text to print, the JSON-ready data for ``--json``
and the exit status. Input photos are decoded before the gallery is opened, so a
bad file fails the command without touching the database.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.backbones import FaceNetCasia
from core.errors import DatasetError, InvalidImageError, NoFaceError, StorageError
from core.evaluation.lfw import evaluate_pairs, read_pairs
from core.gallery_build import NOT_IN_PERSON_FOLDER, build_gallery, person_name_from_folder
from core.images import DecodedImage, load_image
from core.mask_detection import MaskClassifier, shipped_classifier
from core.pipeline import FacePipeline
from core.service import FaceService, Identification, no_face_message, verify_images
from core.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """Output of a command: human-readable ``text``, or ``data`` as JSON with ``--json``.

    ``errors`` are printed to stderr, one per line, whatever the output format.
    """

    text: str
    data: Any = None
    exit_code: int = 0
    errors: tuple[str, ...] = ()


def load_images(paths: list[Path], settings: Settings) -> list[DecodedImage]:
    """Decode every photo first, so that one bad file fails the command before any work is done."""
    return [
        load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels) for path in paths
    ]


def require_gallery(settings: Settings) -> None:
    """Fail a command that only reads the gallery when its database file does not exist.

    Opening a missing file would create an empty gallery, which hides a mistyped ``--db``.
    """
    if not settings.db_path.exists():
        raise StorageError(
            f"gallery database {settings.db_path} not found; create it with `maskid gallery build DIR` "
            "or `maskid enroll NAME IMAGE`, or point --db / MASKID_DB at an existing one"
        )


async def require_current_model(service: FaceService) -> None:
    """Fail when the gallery was embedded with other models only, which the service never searches."""
    others = await service.other_models()
    if others:
        raise DatasetError(
            f"the gallery {service.settings.db_path} has templates of {', '.join(map(model_label, others))} but "
            f"none of {model_label(service.model_id)}; embed its photos for this model with "
            f"`maskid --model {service.settings.model} gallery reembed`, or use the gallery's model with --model "
            "(base, siamese or a head file)"
        )


def model_label(model_id: str) -> str:
    """Return ``model_id`` with the ``--model`` value that selects it, where that is base or a Siamese head."""
    base_id = FaceNetCasia.model_id
    if model_id.startswith((f"{base_id}/", f"{base_id}+flip/")):
        return f"{model_id} (--model base)"
    if model_id.startswith(f"{base_id}+siamese-"):
        return f"{model_id} (--model siamese or a head file)"
    return model_id


async def gallery_build(args: argparse.Namespace, settings: Settings) -> CommandResult:
    if args.directory.exists() and not args.directory.is_dir():
        raise DatasetError(f"{args.directory} is a file, not a dataset folder; expected ROOT/<person>/<image> files")
    if not args.directory.is_dir():
        raise DatasetError(f"dataset folder {args.directory} not found; expected ROOT/<person>/<image> files")
    async with FaceService.from_settings(settings) as service:
        summary = await build_gallery(service, args.directory, show_progress=not args.json)

    lines = [
        f"gallery {settings.db_path}: {plural(len(summary.people), 'person', 'people')} from {args.directory}",
        f"  enrolled now:    {plural(summary.enrolled, 'photo')}",
        f"  already present: {plural(summary.already_known, 'photo')}",
        f"  no face found:   {plural(summary.no_face, 'photo')}",
        *(f"    {path}" for path in summary.no_face_paths),
        f"  skipped:         {plural(len(summary.skipped), 'file')}",
        *(f"    {path}: {reason_without_path(reason, path)}" for path, reason in summary.skipped),
    ]
    nothing_usable = summary.enrolled + summary.already_known == 0
    if nothing_usable and summary.skipped and all(reason == NOT_IN_PERSON_FOLDER for _, reason in summary.skipped):
        lines.append(f"{args.directory} holds photos directly; pass the folder above it, whose subfolders are people")
    data = {
        "database": str(settings.db_path),
        "people": len(summary.people),
        "enrolled": summary.enrolled,
        "already_known": summary.already_known,
        "no_face": summary.no_face,
        "no_face_paths": [str(path) for path in summary.no_face_paths],
        "skipped": [{"path": str(path), "reason": reason} for path, reason in summary.skipped],
    }
    return CommandResult("\n".join(lines), data, exit_code=1 if nothing_usable else 0)


async def _source_of_existing_person(service: FaceService, name: str) -> str:
    """Return the source under which the command line enrolls ``name``.

    A person that `gallery build` created keeps receiving the photos, so that one name
    stays one person; otherwise the person is the command line's.
    """
    people = await service.store.find_people(name)
    if any(person.source == "cli" and person.owner_id is None for person in people):
        return "cli"
    if any(person.source == "dataset" and person.owner_id is None for person in people):
        return "dataset"
    return "cli"


async def _other_owners(service: FaceService, image: DecodedImage, name: str) -> list[str]:
    """Return the names of other people who already have this exact photo, which is likely a mistake."""
    people = await service.store.people_with_image(service.model_id, image.sha256)
    return sorted({person.name for person in people if person.name != name})


async def enroll(args: argparse.Namespace, settings: Settings) -> CommandResult:
    # Names follow the gallery build's rule, so `enroll Colin_Powell` adds to the person that
    # `gallery build` created from the folder Colin_Powell.
    name = person_name_from_folder(args.name)
    service = FaceService.from_settings(settings)
    try:
        images = load_images(args.images, settings)
        # Analyse every photo before the gallery is opened, so a photo without a face stores nothing.
        analysed = [service.pipeline.analyze(image) for image in images]
        for image, faces in zip(images, analysed, strict=True):
            if not faces:
                raise NoFaceError(no_face_message(image))
    except (InvalidImageError, NoFaceError) as exc:
        if len(args.images) == 1:
            raise
        raise type(exc)(f"{exc}. None of the {len(args.images)} photos was stored") from exc
    async with service:
        source = await _source_of_existing_person(service, name)
        owners = [await _other_owners(service, image, name) for image in images]
        results = [
            await service.enroll(name, image, source=source, faces=faces)
            for image, faces in zip(images, analysed, strict=True)
        ]

    lines = []
    for image, result, others in zip(images, results, owners, strict=True):
        note = f" (main face of {result.faces_in_image})" if result.faces_in_image > 1 else ""
        if result.already_enrolled:
            lines.append(f"{image.source}: already enrolled as {result.person_name!r}; nothing stored")
        else:
            lines.append(f"{image.source}: enrolled as {result.person_name!r}{note}")
        if others:
            names = ", ".join(repr(other) for other in others)
            lines.append(f"  note: the same photo is also enrolled as {names}")
    data = [
        {"image": image.source, "person": result.person_name, "person_id": result.person_id,
         "faces_in_image": result.faces_in_image, "template_ids": list(result.template_ids),
         "already_enrolled": result.already_enrolled, "also_enrolled_as": others}
        for image, result, others in zip(images, results, owners, strict=True)
    ]  # fmt: skip
    return CommandResult("\n".join(lines), data)


async def identify(args: argparse.Namespace, settings: Settings) -> CommandResult:
    require_gallery(settings)
    images = []
    errors = []
    data: list[dict[str, Any]] = []
    for path in args.images:
        # A bad file fails the command, but the other photos are still identified.
        try:
            images.append(load_image(path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels))
        except InvalidImageError as exc:
            errors.append(str(exc))
            data.append({"image": str(path), "error": str(exc), "faces": []})
    async with FaceService.from_settings(settings) as service:
        if len(service.index) == 0:
            await require_current_model(service)
            logger.warning(
                "the gallery %s has no templates of model %s; every face will be unknown",
                settings.db_path,
                service.model_id,
            )
        results = [await service.identify(image, top_k=args.top) for image in images]

    lines = []
    for image, identifications in zip(images, results, strict=True):
        if not identifications:
            errors.append(no_face_message(image))
        for number, identification in enumerate(identifications, start=1):
            lines.append(f"{image.source} face {number}: {describe(identification)}")
        data.append({"image": image.source, "faces": [identification_json(item) for item in identifications]})
    # A photo without a face fails the command, but the other photos' results are still printed.
    return CommandResult("\n".join(lines), data, exit_code=1 if errors else 0, errors=tuple(errors))


def reason_without_path(reason: str, path: Path | str) -> str:
    """Return ``reason`` without the quoted path that read errors start with, for a line that shows the path."""
    return reason.removeprefix(f"{str(path)!r}: ")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """Return ``"1 photo"`` or ``"2 photos"``."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def describe(identification: Identification) -> str:
    """Format one face as a line: the name and similarity, or unknown with the best score, then the runners-up."""
    box = ", ".join(str(round(value)) for value in identification.face.box)
    if identification.match is not None:
        head = f"{identification.match.person.name} (similarity {identification.match.score:.3f})"
    elif identification.candidates:
        best = identification.candidates[0]
        head = f"unknown (best {best.person.name} at {best.score:.3f} < threshold {identification.threshold:.3f})"
    else:
        head = "unknown (the gallery is empty)"
    others = ", ".join(f"{item.person.name} {item.score:.3f}" for item in identification.candidates[1:])
    return f"{head} box=({box}){mask_note(identification)}" + (f"; next: {others}" if others else "")


def mask_note(identification: Identification) -> str:
    """Return ``" mask=yes (0.97)"``, or an empty string when no mask detector ran."""
    if identification.mask_probability is None:
        return ""
    return f" mask={'yes' if identification.masked else 'no'} ({identification.mask_probability:.2f})"


def identification_json(identification: Identification) -> dict[str, Any]:
    return {
        "box": [round(value, 1) for value in identification.face.box],
        "detection_probability": round(identification.face.probability, 4),
        "name": identification.match.person.name if identification.match else None,
        "similarity": round(identification.match.score, 4) if identification.match else None,
        "threshold": identification.threshold,
        "masked": identification.masked,
        "mask_probability": (
            round(identification.mask_probability, 4) if identification.mask_probability is not None else None
        ),
        "candidates": [
            {"name": item.person.name, "person_id": item.person.id, "similarity": round(item.score, 4)}
            for item in identification.candidates
        ],
    }


def mask_classifier_for(pipeline: FacePipeline) -> MaskClassifier | None:
    """Return the shipped mask classifier when the model compares masked faces on a part of their own, else None."""
    if len(pipeline.layout.part_sizes) == 1:
        return None
    return shipped_classifier(pipeline.feature_model_id)


async def verify(args: argparse.Namespace, settings: Settings) -> CommandResult:
    first, second = load_images([args.first, args.second], settings)
    pipeline = FacePipeline.from_settings(settings)
    verification = verify_images(pipeline, first, second, settings, mask_classifier_for(pipeline))
    verdict = "same person" if verification.same else "different people"
    kind = ", a masked face" if verification.masked else ""
    lines = [f"{verdict}: similarity {verification.score:.3f} (threshold {verification.threshold:.3f}{kind})"]
    for image, box, count in zip((first, second), verification.boxes, verification.faces_found, strict=True):
        if count > 1:
            compared = ", ".join(str(round(value)) for value in box)
            lines.append(f"  {image.source}: compared the main face of {count}, box=({compared})")
    data = {
        "same": verification.same,
        "similarity": round(verification.score, 4),
        "threshold": verification.threshold,
        "masked": verification.masked,
        "boxes": [[round(value, 1) for value in box] for box in verification.boxes],
        "faces_found": list(verification.faces_found),
    }
    return CommandResult("\n".join(lines), data)


async def people(args: argparse.Namespace, settings: Settings) -> CommandResult:
    require_gallery(settings)
    service = FaceService.from_settings(settings)
    # The listing ends with its own line about people of other models.
    service.check_other_models = False
    async with service:
        summaries = await service.store.list_people(model_id=service.model_id)
        everyone = await service.store.list_people()
    lines = [
        f"{summary.person.name}\t{summary.person.source}\t"
        f"{plural(summary.image_count, 'photo')}\t{plural(summary.template_count, 'template')}"
        for summary in summaries
    ]
    lines.insert(0, "name\tsource (dataset, cli or telegram)\tphotos\ttemplates")
    lines.append(f"{plural(len(summaries), 'person', 'people')} in {settings.db_path}")
    unsearchable = len(everyone) - len(summaries)
    if unsearchable:
        lines.append(
            f"{unsearchable} more {'person only has' if unsearchable == 1 else 'people only have'} templates of "
            "another model and are not searched; embed their photos for this model with "
            f"`maskid --model {settings.model} gallery reembed`"
        )
    data = [
        {"id": summary.person.id, "name": summary.person.name, "source": summary.person.source,
         "images": summary.image_count, "templates": summary.template_count,
         "created_at": summary.person.created_at.isoformat()}
        for summary in summaries
    ]  # fmt: skip
    return CommandResult("\n".join(lines), data)


async def remove(args: argparse.Namespace, settings: Settings) -> CommandResult:
    require_gallery(settings)
    async with FaceService.from_settings(settings) as service:
        name = args.name
        folder_name = person_name_from_folder(name)
        # `enroll Colin_Powell` stores "Colin Powell", so `remove Colin_Powell` finds that person
        # too, unless someone is named with the underscores.
        if (
            folder_name != name
            and not await service.store.find_people(name)
            and await service.store.find_people(folder_name)
        ):
            name = folder_name
        removed = await service.remove(name)
    lines = [
        f"removed {item.person.name!r} ({item.person.source}): "
        f"{plural(item.image_count, 'photo')}, {plural(item.template_count, 'template')}"
        for item in removed
    ]
    data = [
        {"id": item.person.id, "name": item.person.name, "images": item.image_count, "templates": item.template_count}
        for item in removed
    ]
    return CommandResult("\n".join(lines), data)


async def eval_lfw_pairs(args: argparse.Namespace, settings: Settings) -> CommandResult:
    if not args.pairs.is_file():
        raise DatasetError(f"pairs file {args.pairs} not found")
    if not args.images.is_dir():
        raise DatasetError(f"LFW image folder {args.images} not found")
    try:
        pairs = read_pairs(args.pairs, args.images)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
    missing = sorted({str(path) for pair in pairs for path in (pair.first, pair.second) if not path.is_file()})
    if missing:
        raise DatasetError(f"{len(missing)} images of {args.pairs} are missing under {args.images}, e.g. {missing[0]}")

    pipeline = FacePipeline.from_settings(settings)
    evaluation = evaluate_pairs(
        pipeline,
        pairs,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        batch_size=settings.batch_size,
        show_progress=not args.json,
        mask_classifier=mask_classifier_for(pipeline),
    )
    result = evaluation.result
    text = "\n".join(
        [
            f"LFW pairs {args.pairs}: {result.pairs} pairs in {len(result.fold_accuracies)} folds",
            f"model     {pipeline.model_id}",
            f"accuracy  {result.accuracy:.4f} ± {result.accuracy_std:.4f}",
            f"threshold {result.threshold:.3f} (cosine similarity, chosen on the other folds)",
            f"no face in {len(evaluation.images_without_face)} of {evaluation.images} images; "
            f"{evaluation.unscored_pairs} pairs counted as errors",
        ]
    )
    data = {
        "pairs": result.pairs,
        "model_id": pipeline.model_id,
        "accuracy": result.accuracy,
        "accuracy_std": result.accuracy_std,
        "threshold": result.threshold,
        "fold_accuracies": list(result.fold_accuracies),
        "fold_thresholds": list(result.fold_thresholds),
        "images": evaluation.images,
        "images_without_face": [str(path) for path in evaluation.images_without_face],
        "unscored_pairs": evaluation.unscored_pairs,
    }
    return CommandResult(text, data)
