"""Texts the bot sends: help, identification results, /me, /forget and /stats.

Every function here is pure, so the wording is tested without Telegram. Replies are
plain text (no parse mode), so names need no escaping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from core.calibration import Thresholds
from core.service import EnrollResult, Identification
from core.storage import PersonSummary, RemovedPerson

logger = logging.getLogger(__name__)

# Telegram's limit on a photo caption, in characters.
MAX_CAPTION_LENGTH = 1024

NO_FACE = (
    "I found no face in this photo. A closer, frontal, well-lit photo helps: "
    "the face should fill a good part of the picture and look at the camera."
)
BUSY = "I am busy with many photos right now. Please send yours again in a minute."
IDENTIFY_USAGE = (
    "Send /identify as the caption of a photo, or as a reply to a photo. "
    "In a private chat with me, a photo alone is enough."
)
ERROR = "Sorry, something went wrong while handling this message. Please try again later."

_PUBLIC_HELP = """\
I name the people in photos, also when they wear a face mask.

Identify: send me a photo in a private chat. In a group, reply to a photo with /identify, \
or write /identify as the caption of a photo.

Enroll yourself: /enroll with a photo of your face, as the photo's caption or as a reply to it, \
or send /enroll and then the photo. I use your Telegram name.

/me shows what I store about you, /forget deletes all of it, /cancel stops a pending /enroll.

What I store: for each photo you enroll, face templates (lists of 512 numbers computed from the face, \
and possibly from copies of it with a drawn-on face mask), the face's position, the photo's SHA-256 hash, \
size and file name, your name, your Telegram user id, the chat where you enrolled and the time. \
I never store the photos themselves, and photos sent for identification are not stored at all.

Who sees whom: people enrolled in a chat are named only in that chat and in the enrolling user's \
private chat with me. Public figures added by admins are named in every chat."""

_ADMIN_HELP = """

Admin commands: /enroll NAME enrolls someone else under NAME in this chat; \
/celebrity NAME adds a public figure who is named in every chat; \
/stats shows the gallery size, the model and the match thresholds."""


def help_text(*, admin: bool) -> str:
    """Return the /start and /help text; admins also get their commands."""
    return _PUBLIC_HELP + (_ADMIN_HELP if admin else "")


def mask_text(identification: Identification) -> str:
    """Return the mask detector's verdict for one face: "detected (93%)", "not detected (7%)" or "not checked"."""
    probability = identification.mask_probability
    share = f" ({probability:.0%})" if probability is not None else ""
    if identification.masked:
        return "detected" + share
    if probability is None:
        return "not checked"
    return "not detected" + share


def single_face_text(identification: Identification) -> str:
    """Describe the only face of a photo: best name and score, or unknown with the best score, then the next two."""
    lines = [_verdict(identification), f"Mask: {mask_text(identification)}."]
    others = identification.candidates[1:3]
    if others:
        lines.append("Next candidates: " + ", ".join(f"{item.person.name} {item.score:.2f}" for item in others) + ".")
    return "\n".join(lines)


def face_list_text(identifications: Sequence[Identification]) -> str:
    """Number every face of a group photo in one line each, matching the numbers drawn on the photo."""
    lines = [f"{len(identifications)} faces, numbered in the photo:"]
    for number, identification in enumerate(identifications, start=1):
        lines.append(f"{number}. {face_label(identification)}; mask {mask_text(identification)}")
    return "\n".join(lines)


def face_label(identification: Identification) -> str:
    """Return the short label drawn next to a face: the name and score, or "unknown" with the best score."""
    if identification.match is not None:
        return f"{identification.match.person.name} {identification.match.score:.2f}"
    if identification.candidates:
        return f"unknown (best {identification.candidates[0].score:.2f})"
    return "unknown"


def rate_limited_text(retry_after_s: float, limit: int, window_s: float) -> str:
    """Explain the per-user limit and when the user may send again."""
    return (
        f"You are sending photos faster than I can take them: at most {limit} every {window_s:g} seconds. "
        f"Please wait {max(1, round(retry_after_s))} seconds, then send it again."
    )


def consent_request_text() -> str:
    """Ask for consent before a user's first enrollment."""
    return (
        "Before I enroll anyone for you, I need your consent. I will store face templates "
        "(lists of 512 numbers computed from the face in the photo), the face's position, the photo's hash, "
        "the name and your Telegram user id. I do not store the photo. The template is used to name "
        "the person in this chat and in your private chat with me. /forget deletes everything at any time.\n\n"
        "Do you agree?"
    )


def enrolled_text(result: EnrollResult, *, self_enrolled: bool, public: bool) -> str:
    """Confirm an enrollment and state where the person will be recognised, or state that nothing changed."""
    if result.already_enrolled:
        return f"This photo is already enrolled for {result.person_name}; nothing was stored."
    if public:
        lines = [f"Added {result.person_name} as a public figure. I will recognise them in every chat."]
    elif self_enrolled:
        lines = [
            f"Enrolled you as {result.person_name}. I will recognise you in this chat and in your private chat with me."
        ]
    else:
        lines = [f"Enrolled {result.person_name}. I will recognise them in this chat and in your private chat with me."]
    if result.faces_in_image > 1:
        lines.append(f"The photo has {result.faces_in_image} faces; I used the largest, most central one.")
    if not public:
        lines.append("/me shows what I store, /forget deletes it.")
    return "\n".join(lines)


def me_text(summaries: Sequence[PersonSummary], consent_at: datetime | None) -> str:
    """List what the bot stores about a user: each person they enrolled, with counts and dates."""
    if not summaries and consent_at is None:
        return "I store nothing about you."
    lines = []
    if summaries:
        lines.append("What I store about you:")
        for summary in summaries:
            person = summary.person
            lines.append(
                f"- {person.name}: {_count(summary.image_count, 'photo')} enrolled, "
                f"{_count(summary.template_count, 'face template')}{_synthetic_note(summary.synthetic_count)}; "
                f"first {_time(person.created_at)}, last {_time(person.updated_at)}"
            )
    else:
        lines.append("I store no face templates of yours.")
    if consent_at is not None:
        lines.append(f"Your consent to storing face templates, given {_time(consent_at)}.")
    lines.append("/forget deletes all of it.")
    return "\n".join(lines)


def forget_question_text(summaries: Sequence[PersonSummary]) -> str:
    """Ask to confirm /forget, naming what will be deleted."""
    templates = sum(summary.template_count for summary in summaries)
    names = ", ".join(summary.person.name for summary in summaries) or "no one"
    return (
        f"Delete everything I store about you: {_count(templates, 'face template')} of {names}, "
        "and your consent record? This cannot be undone."
    )


def forgotten_text(removed: Sequence[RemovedPerson], consent_deleted: bool) -> str:
    """Say what /forget deleted."""
    if not removed and not consent_deleted:
        return "There was nothing to delete."
    parts = [
        f"{item.person.name} ({_count(item.image_count, 'photo')}, {_count(item.template_count, 'face template')})"
        for item in removed
    ]
    if consent_deleted:
        parts.append("your consent record")
    return "Deleted: " + "; ".join(parts) + ". I no longer recognise anyone you enrolled."


def stats_text(
    counts: dict[str, Any], *, model_id: str, thresholds: Thresholds, indexed: int, pending: int, max_pending: int
) -> str:
    """Summarise the gallery and the bot's load for /stats."""
    model = counts.get("models", {}).get(model_id, {})
    return "\n".join(
        [
            f"People: {counts.get('people', 0)}",
            f"Templates of this model: {model.get('templates', 0)} ({model.get('synthetic_templates', 0)} synthetic), "
            f"from {_count(model.get('images', 0), 'photo')}",
            f"Templates in memory: {indexed}",
            f"Model: {model_id}",
            f"Match thresholds: unmasked {thresholds.unmasked:.2f} ({thresholds.unmasked_source}), "
            f"masked {thresholds.masked:.2f} ({thresholds.masked_source})",
            f"Photo requests in flight: {pending} of at most {max_pending}",
        ]
    )


def _verdict(identification: Identification) -> str:
    threshold = identification.threshold
    match = identification.match
    if match is not None:
        return f"{match.person.name}: similarity {match.score:.2f} (a match needs {threshold:.2f})."
    if identification.candidates:
        best = identification.candidates[0]
        return (
            f"Unknown person. The closest is {best.person.name} with similarity {best.score:.2f}, "
            f"under the {threshold:.2f} a match needs."
        )
    return "Unknown person: nobody enrolled is visible in this chat yet."


def _synthetic_note(synthetic_count: int) -> str:
    return f" ({synthetic_count} of them with a drawn-on mask)" if synthetic_count else ""


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
