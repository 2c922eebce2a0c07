"""Open-set matching of face descriptors against an in-memory gallery of templates.

The gallery is an (N, D) float32 matrix of unit-length templates with the person
each belongs to. A probe's score for a person is the maximum cosine similarity
over that person's templates. Candidates are returned best first, and the best
one is accepted only when its score reaches the threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.storage.records import ANY_CHAT, NO_OWNER, SYNTHETIC, TemplateMatrix, visible_in_chat

logger = logging.getLogger(__name__)

# Weight of the closest synthetic-mask template in a masked probe's score; the rest goes to
# the mean over the person's original photos. Measured on the masked identification
# benchmark (docs/benchmarks.md), where 0.6 to 0.8 do about equally well.
DEFAULT_SYNTHETIC_WEIGHT = 0.7

# Templates examined per requested candidate before falling back to a full sort;
# a person rarely has more templates than this among the top scores.
_SCAN_FACTOR = 64

# A search restricted to fewer than 1 / _SUBSET_COPY_SHARE of the templates copies those rows
# and scores them. A larger share is cheaper to score in place with the rest.
_SUBSET_COPY_SHARE = 4


@dataclass(frozen=True)
class Candidate:
    """One gallery person ranked for a probe.

    Attributes:
        person_id: the person's id in the gallery store.
        score: cosine similarity of the probe with the person's closest template, in [-1, 1].
        template_id: id of that closest template.
    """

    person_id: int
    score: float
    template_id: int


class TemplateIndex:
    """Exact cosine search over templates, grouped by person.

    Each template carries its kind (original photo or synthetic mask) and the chat
    scope it was enrolled with, so one index serves every chat and matching rule.

    Args:
        dim: descriptor length; every added vector must have it.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._person_ids = np.zeros(0, dtype=np.int64)
        self._template_ids = np.zeros(0, dtype=np.int64)
        self._synthetic = np.zeros(0, dtype=bool)
        self._chat_ids = np.zeros(0, dtype=np.int64)
        self._owner_ids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._template_ids)

    @property
    def person_count(self) -> int:
        return len(np.unique(self._person_ids))

    def add(
        self,
        template_ids: np.ndarray | Sequence[int],
        person_ids: np.ndarray | Sequence[int],
        vectors: np.ndarray | Sequence[np.ndarray],
        *,
        synthetic: np.ndarray | Sequence[bool] | None = None,
        chat_ids: np.ndarray | Sequence[int] | None = None,
        owner_ids: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Append templates. ``vectors`` is (N, dim) float32 with unit-length rows.

        Args:
            synthetic: per template, True for a synthetic-mask copy; all False when None.
            chat_ids: per template, the chat it was enrolled in, ``ANY_CHAT`` (0) for every chat.
            owner_ids: per template, the enrolling user, ``NO_OWNER`` (0) for none.
        """
        vectors, columns = template_columns(
            self.dim, template_ids, person_ids, vectors, synthetic=synthetic, chat_ids=chat_ids, owner_ids=owner_ids
        )
        count = len(vectors)

        self._vectors = np.concatenate([self._vectors, vectors])
        self._person_ids = np.concatenate([self._person_ids, columns["person_ids"]])
        self._template_ids = np.concatenate([self._template_ids, columns["template_ids"]])
        self._synthetic = np.concatenate([self._synthetic, columns["synthetic"]])
        self._chat_ids = np.concatenate([self._chat_ids, columns["chat_ids"].astype(np.int64)])
        self._owner_ids = np.concatenate([self._owner_ids, columns["owner_ids"].astype(np.int64)])
        logger.debug("index: added %d templates, %d in total", count, len(self))

    def add_matrix(self, matrix: TemplateMatrix) -> None:
        """Append every template of a matrix loaded from the gallery store."""
        if len(matrix):
            self.add(
                matrix.template_ids,
                matrix.person_ids,
                matrix.vectors,
                synthetic=matrix.kinds == SYNTHETIC,
                chat_ids=matrix.chat_ids,
                owner_ids=matrix.owner_ids,
            )

    def remove_person(self, person_id: int) -> int:
        """Drop every template of ``person_id``; returns how many were dropped."""
        keep = self._person_ids != person_id
        removed = int((~keep).sum())
        if removed:
            self._vectors = self._vectors[keep]
            self._person_ids = self._person_ids[keep]
            self._template_ids = self._template_ids[keep]
            self._synthetic = self._synthetic[keep]
            self._chat_ids = self._chat_ids[keep]
            self._owner_ids = self._owner_ids[keep]
            logger.debug("index: removed %d templates of person %d", removed, person_id)
        return removed

    def search(
        self,
        probe: np.ndarray,
        k: int = 3,
        *,
        chat_id: int | None = None,
        synthetic: bool = False,
        locator: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Return up to ``k`` distinct people, best first, each scored by their closest template.

        Args:
            probe: (dim,) float32 descriptor, unit length or a part of one (see
                :meth:`core.descriptors.DescriptorLayout.probe_vector`).
            k: number of people to return (at least 1).
            chat_id: the chat the query comes from; only templates visible there are
                searched (see :func:`core.storage.records.visible_in_chat`). None searches all.
            synthetic: search the synthetic-mask templates instead of the original ones.
            locator: the probe's whole descriptor, which an approximate index uses to
                decide where to look; exact search ignores it.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probe = np.asarray(probe, dtype=np.float32)
        if probe.shape != (self.dim,):
            raise ValueError(f"expected a ({self.dim},) probe, got shape {probe.shape}")

        rows = self._rows(chat_id, synthetic)
        if len(self) == 0 or (rows is not None and len(rows) == 0):
            return []
        if rows is None:
            scores = self._vectors @ probe
        elif len(rows) * _SUBSET_COPY_SHARE < len(self):
            scores = self._vectors[rows] @ probe
        else:
            # Scoring every template and then selecting is cheaper than copying most of the matrix.
            scores = (self._vectors @ probe)[rows]
        candidates = self._top_people(scores, rows, k, min(len(scores), k * _SCAN_FACTOR))
        if len(candidates) < k and len(scores) > k * _SCAN_FACTOR:
            candidates = self._top_people(scores, rows, k, len(scores))
        return candidates

    def search_masked(
        self,
        probe: np.ndarray,
        k: int = 3,
        *,
        chat_id: int | None = None,
        synthetic_weight: float = DEFAULT_SYNTHETIC_WEIGHT,
        locator: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Rank people for a masked probe by fusing synthetic-mask and original templates.

        A person scores ``w * max(synthetic) + (1 - w) * mean(original)``, with ``w`` =
        ``synthetic_weight``: the closest synthetic mask measures how alike the masked
        faces are, and the mean over the original photos damps a mask-on-mask likeness that is
        only the mask. A person without synthetic templates uses the max over originals
        in place of the synthetic term. Each candidate's ``template_id`` is its best
        synthetic template (or original, without synthetic ones).

        Args:
            probe: (dim,) float32 unit-length descriptor of a masked face.
            k: number of people to return (at least 1).
            chat_id: as for :meth:`search`.
            synthetic_weight: ``w`` in [0, 1].
            locator: as for :meth:`search`.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0.0 <= synthetic_weight <= 1.0:
            raise ValueError(f"synthetic_weight must be in [0, 1], got {synthetic_weight}")
        probe = np.asarray(probe, dtype=np.float32)
        if probe.shape != (self.dim,):
            raise ValueError(f"expected a ({self.dim},) probe, got shape {probe.shape}")

        rows = np.arange(len(self)) if chat_id is None else self._visible_rows(chat_id)
        if len(rows) == 0:
            return []
        scores = self._vectors[rows] @ probe
        people, slot = np.unique(self._person_ids[rows], return_inverse=True)
        synthetic = self._synthetic[rows]

        best_synthetic, best_synthetic_row = _max_per_slot(scores, slot, synthetic, len(people))
        best_original, best_original_row = _max_per_slot(scores, slot, ~synthetic, len(people))
        original_count = np.bincount(slot[~synthetic], minlength=len(people))
        original_mean = np.bincount(slot[~synthetic], scores[~synthetic], minlength=len(people)) / np.maximum(
            original_count, 1
        )

        has_synthetic = np.isfinite(best_synthetic)
        masked_term = np.where(has_synthetic, best_synthetic, best_original)
        fused = synthetic_weight * masked_term + (1.0 - synthetic_weight) * original_mean
        fused[original_count == 0] = -np.inf  # a synthetic template without its source photo is never matched
        best_row = np.where(has_synthetic, best_synthetic_row, best_original_row)

        order = np.argsort(-fused, kind="stable")[:k]
        return [
            Candidate(
                int(people[slot_index]), float(fused[slot_index]), int(self._template_ids[rows[best_row[slot_index]]])
            )
            for slot_index in order
            if np.isfinite(fused[slot_index])
        ]

    def _visible_rows(self, chat_id: int) -> np.ndarray:
        return np.flatnonzero(visible_in_chat(chat_id, self._chat_ids, self._owner_ids))

    def _rows(self, chat_id: int | None, synthetic: bool) -> np.ndarray | None:
        """Return the rows a search may use, or None for all of them."""
        selected = self._synthetic == synthetic
        if chat_id is not None:
            selected &= visible_in_chat(chat_id, self._chat_ids, self._owner_ids)
        if selected.all():
            return None
        return np.flatnonzero(selected)

    def _top_people(self, scores: np.ndarray, rows: np.ndarray | None, k: int, scan: int) -> list[Candidate]:
        # The best template of each of the top k people is among the top `scan`
        # templates whenever those contain k distinct people, so this is exact.
        if scan < len(scores):
            top = np.argpartition(-scores, scan - 1)[:scan]
        else:
            top = np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]

        candidates: list[Candidate] = []
        seen: set[int] = set()
        for position in top:
            row = position if rows is None else rows[position]
            person_id = int(self._person_ids[row])
            if person_id in seen:
                continue
            seen.add(person_id)
            candidates.append(Candidate(person_id, float(scores[position]), int(self._template_ids[row])))
            if len(candidates) == k:
                break
        return candidates


def _max_per_slot(
    scores: np.ndarray, slot: np.ndarray, selected: np.ndarray, slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return each slot's highest score among ``selected`` rows (-inf where none) and that row's position."""
    best = np.full(slots, -np.inf)
    best_row = np.zeros(slots, dtype=np.int64)
    positions = np.flatnonzero(selected)
    if len(positions):
        # Sort by slot, then score; the last row of each slot's run is its maximum.
        ordered = positions[np.lexsort((scores[positions], slot[positions]))]
        ordered_slots = slot[ordered]
        last = np.flatnonzero(np.append(ordered_slots[1:] != ordered_slots[:-1], True))
        best[ordered_slots[last]] = scores[ordered[last]]
        best_row[ordered_slots[last]] = ordered[last]
    return best, best_row


def is_match(candidate: Candidate | None, threshold: float) -> bool:
    """Accept a candidate when its similarity reaches ``threshold`` (open-set decision)."""
    return candidate is not None and candidate.score >= threshold


def template_columns(
    dim: int,
    template_ids: np.ndarray | Sequence[int],
    person_ids: np.ndarray | Sequence[int],
    vectors: np.ndarray | Sequence[np.ndarray],
    *,
    synthetic: np.ndarray | Sequence[bool] | None = None,
    chat_ids: np.ndarray | Sequence[int] | None = None,
    owner_ids: np.ndarray | Sequence[int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Check new templates and return their (N, dim) float32 vectors and per-template columns.

    Missing columns get their defaults: not synthetic, visible in every chat, no owner.

    Raises:
        ValueError: the vectors are not (N, dim), or a column does not have N values.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected (N, {dim}) vectors, got shape {vectors.shape}")
    count = len(vectors)
    columns = {
        "template_ids": np.asarray(template_ids, dtype=np.int64),
        "person_ids": np.asarray(person_ids, dtype=np.int64),
        "synthetic": np.zeros(count, dtype=bool) if synthetic is None else np.asarray(synthetic, dtype=bool),
        "chat_ids": np.full(count, ANY_CHAT, dtype=np.int64) if chat_ids is None else np.asarray(chat_ids),
        "owner_ids": np.full(count, NO_OWNER, dtype=np.int64) if owner_ids is None else np.asarray(owner_ids),
    }
    lengths = {name: len(column) for name, column in columns.items()}
    if any(length != count for length in lengths.values()):
        raise ValueError(f"every column needs one value per vector ({count}), got lengths {lengths}")
    return vectors, columns
