"""Unit tests of the bot's reply texts and of the annotated group photo."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from bot.annotate import annotate_faces
from bot.identify import outcome_of
from bot.replies import (
    enrolled_text,
    face_label,
    face_list_text,
    forgotten_text,
    help_text,
    me_text,
    rate_limited_text,
    single_face_text,
    stats_text,
)
from core.calibration import Thresholds
from core.detection import DetectedFace
from core.images import DecodedImage
from core.pipeline import Face
from core.service import EnrollResult, Identification, RankedPerson
from core.storage import Person, PersonSummary, RemovedPerson

THRESHOLD = 0.45
WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def person(person_id: int, name: str) -> Person:
    return Person(person_id, name, "telegram", 7, WHEN, WHEN)


def identification(
    scores: list[tuple[str, float]],
    *,
    box: tuple[float, float, float, float] = (10, 10, 60, 70),
    masked: bool = False,
    mask_probability: float | None = None,
) -> Identification:
    face = Face(DetectedFace(box, 0.99, np.zeros((5, 2), np.float32)), np.zeros(512, np.float32))
    ranked = tuple(RankedPerson(person(number, name), score) for number, (name, score) in enumerate(scores, 1))
    match = ranked[0] if ranked and ranked[0].score >= THRESHOLD else None
    return Identification(face, ranked, match, THRESHOLD, masked=masked, mask_probability=mask_probability)


# One face.


def test_single_face_match_text() -> None:
    text = single_face_text(
        identification(
            [("Grace Hopper", 0.812), ("Ada Lovelace", 0.301), ("Alan Turing", 0.2), ("Edsger Dijkstra", 0.1)],
            masked=True,
            mask_probability=0.93,
        )
    )

    assert text.splitlines()[0] == "Grace Hopper: similarity 0.81 (a match needs 0.45)."
    assert "Mask: detected (93%)." in text
    assert "Next candidates: Ada Lovelace 0.30, Alan Turing 0.20." in text
    assert "Dijkstra" not in text


def test_single_face_unknown_shows_best_score() -> None:
    text = single_face_text(identification([("Grace Hopper", 0.31)], mask_probability=0.04))

    assert text.startswith("Unknown person.")
    assert "Grace Hopper with similarity 0.31, under the 0.45" in text
    assert "Mask: not detected (4%)." in text
    assert "Next candidates" not in text


def test_single_face_empty_gallery() -> None:
    text = single_face_text(identification([]))

    assert "nobody enrolled is visible in this chat" in text
    assert "Mask: not checked." in text


# Several faces.


def test_face_list_numbers_faces() -> None:
    faces = [identification([("Grace Hopper", 0.7)]), identification([("Ada Lovelace", 0.2)]), identification([])]

    lines = face_list_text(faces).splitlines()

    assert lines[0] == "3 faces, numbered in the photo:"
    assert lines[1] == "1. Grace Hopper 0.70; mask not checked"
    assert lines[2] == "2. unknown (best 0.20); mask not checked"
    assert lines[3] == "3. unknown; mask not checked"


def test_face_label() -> None:
    assert face_label(identification([("Grace Hopper", 0.7)])) == "Grace Hopper 0.70"
    assert face_label(identification([("Grace Hopper", 0.3)])) == "unknown (best 0.30)"


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([], "no_face"),
        ([[("A", 0.9)]], "match"),
        ([[("A", 0.1)]], "unknown"),
        ([[("A", 0.9)], [("A", 0.1)], []], "1/3_matched"),
    ],
)
def test_outcome_of(scores: list[list[tuple[str, float]]], expected: str) -> None:
    assert outcome_of([identification(face) for face in scores]) == expected


def test_annotated_photo_keeps_size_and_marks_faces() -> None:
    pixels = np.full((300, 400, 3), 128, dtype=np.uint8)
    image = DecodedImage(pixels=pixels, sha256="0" * 64, format="PNG", source="group.png")
    faces = [
        identification([("Grace Hopper", 0.8)], box=(20, 60, 120, 180)),
        identification([("Ada Lovelace", 0.1)], box=(250, 5, 350, 120)),
    ]

    annotated = Image.open(io.BytesIO(annotate_faces(image, faces)))
    drawn = np.asarray(annotated.convert("RGB")).astype(int)

    assert annotated.format == "JPEG"
    assert annotated.size == (400, 300)
    # Box edges: green on the left edge of the matched face, orange on the unknown one's.
    assert drawn[120, 20, 1] > 180
    assert drawn[120, 20, 0] < 120
    assert drawn[80, 250, 0] > 200
    assert drawn[80, 250, 2] < 90
    # Far from every box the photo is unchanged, up to JPEG error.
    assert np.abs(drawn[280, 200] - 128).max() < 10


def test_annotated_photo_scaled_to_telegram_size() -> None:
    image = DecodedImage(
        pixels=np.zeros((1000, 5120, 3), dtype=np.uint8), sha256="0" * 64, format="PNG", source="wide.png"
    )

    annotated = Image.open(io.BytesIO(annotate_faces(image, [identification([], box=(4000, 100, 4400, 600))])))

    assert annotated.size == (2560, 500)


# Enrollment, /me, /forget, /stats and the rest.


def test_enrolled_text_self() -> None:
    result = EnrollResult(3, "Ada Lovelace", (10,), 2, created_person=True)

    text = enrolled_text(result, self_enrolled=True, public=False)

    assert text.startswith("Enrolled you as Ada Lovelace.")
    assert "in this chat and in your private chat" in text
    assert "The photo has 2 faces" in text
    assert "/forget" in text


def test_enrolled_text_public_figure() -> None:
    result = EnrollResult(3, "Grace Hopper", (10,), 1, created_person=True)

    text = enrolled_text(result, self_enrolled=False, public=True)

    assert text == "Added Grace Hopper as a public figure. I will recognise them in every chat."


def test_enrolled_text_already_enrolled() -> None:
    result = EnrollResult(3, "Ada Lovelace", (), 1, created_person=False, already_enrolled=True)

    assert "nothing was stored" in enrolled_text(result, self_enrolled=True, public=False)


def test_me_text_lists_people_and_consent() -> None:
    summaries = [PersonSummary(person(1, "Ada Lovelace"), 2, 2, 0), PersonSummary(person(2, "Ada L"), 1, 3, 2)]

    text = me_text(summaries, WHEN)

    assert "- Ada Lovelace: 2 photos enrolled, 2 face templates; first 2026-03-01 09:30 UTC" in text
    assert "- Ada L: 1 photo enrolled, 3 face templates (2 of them with a drawn-on mask); first " in text
    assert "consent to storing face templates, given 2026-03-01 09:30 UTC" in text
    assert "/forget" in text


def test_me_text_nothing_stored() -> None:
    assert me_text([], None) == "I store nothing about you."


def test_forgotten_text() -> None:
    removed = [RemovedPerson(person(1, "Ada Lovelace"), 1, 1)]

    assert forgotten_text(removed, True) == (
        "Deleted: Ada Lovelace (1 photo, 1 face template); your consent record. "
        "I no longer recognise anyone you enrolled."
    )
    assert forgotten_text([], False) == "There was nothing to delete."


def test_stats_text() -> None:
    counts = {"people": 4, "models": {"m1": {"images": 5, "templates": 6, "synthetic_templates": 1}}}

    thresholds = Thresholds(0.45, 0.6, "settings", "calibrated")
    text = stats_text(counts, model_id="m1", thresholds=thresholds, indexed=6, pending=2, max_pending=32)

    assert "People: 4" in text
    assert "Templates of this model: 6 (1 synthetic), from 5 photos" in text
    assert "Model: m1" in text
    assert "Match thresholds: unmasked 0.45 (settings), masked 0.60 (calibrated)" in text
    assert "Photo requests in flight: 2 of at most 32" in text


def test_help_text_admin_commands_only_for_admins() -> None:
    assert "/stats" not in help_text(admin=False)
    assert "/stats" in help_text(admin=True)
    assert "/forget" in help_text(admin=False)
    assert "never store the photos" in help_text(admin=False)


def test_rate_limited_text() -> None:
    text = rate_limited_text(12.4, 10, 60.0)

    assert "at most 10 every 60 seconds" in text
    assert "wait 12 seconds" in text
