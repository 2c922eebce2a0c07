"""Open-set matching of face descriptors against an in-memory gallery of templates.

The gallery is an (N, D) float32 matrix of unit-length templates with the person
each belongs to. A probe's score for a person is the maximum cosine similarity
over that person's templates. Candidates are returned best first, and the best
one is accepted only when its score reaches the threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Templates examined per requested candidate before falling back to a full sort;
# a person rarely has more templates than this among the top scores.
_SCAN_FACTOR = 64


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

    def __len__(self) -> int:
        return len(self._template_ids)

    @property
    def person_count(self) -> int:
        return len(np.unique(self._person_ids))

    def add(self, template_ids: np.ndarray, person_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append templates. ``vectors`` is (N, dim) float32 with unit-length rows."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) vectors, got shape {vectors.shape}")
        if not len(template_ids) == len(person_ids) == len(vectors):
            raise ValueError(
                f"template_ids, person_ids and vectors differ in length: "
                f"{len(template_ids)}, {len(person_ids)}, {len(vectors)}"
            )
        self._vectors = np.concatenate([self._vectors, vectors])
        self._person_ids = np.concatenate([self._person_ids, np.asarray(person_ids, dtype=np.int64)])
        self._template_ids = np.concatenate([self._template_ids, np.asarray(template_ids, dtype=np.int64)])
        logger.debug("index: added %d templates, %d in total", len(vectors), len(self))

    def remove_person(self, person_id: int) -> int:
        """Drop every template of ``person_id``; returns how many were dropped."""
        keep = self._person_ids != person_id
        removed = int((~keep).sum())
        if removed:
            self._vectors = self._vectors[keep]
            self._person_ids = self._person_ids[keep]
            self._template_ids = self._template_ids[keep]
            logger.debug("index: removed %d templates of person %d", removed, person_id)
        return removed

    def search(self, probe: np.ndarray, k: int = 3) -> list[Candidate]:
        """Return up to ``k`` distinct people, best first, each scored by their closest template.

        Args:
            probe: (dim,) float32 unit-length descriptor.
            k: number of people to return (at least 1).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probe = np.asarray(probe, dtype=np.float32)
        if probe.shape != (self.dim,):
            raise ValueError(f"expected a ({self.dim},) probe, got shape {probe.shape}")
        if len(self) == 0:
            return []

        scores = self._vectors @ probe
        candidates = self._top_people(scores, k, min(len(scores), k * _SCAN_FACTOR))
        if len(candidates) < k and len(scores) > k * _SCAN_FACTOR:
            candidates = self._top_people(scores, k, len(scores))
        return candidates

    def _top_people(self, scores: np.ndarray, k: int, scan: int) -> list[Candidate]:
        # The best template of each of the top k people is among the top `scan`
        # templates whenever those contain k distinct people, so this is exact.
        if scan < len(scores):
            top = np.argpartition(-scores, scan - 1)[:scan]
        else:
            top = np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]

        candidates: list[Candidate] = []
        seen: set[int] = set()
        for row in top:
            person_id = int(self._person_ids[row])
            if person_id in seen:
                continue
            seen.add(person_id)
            candidates.append(Candidate(person_id, float(scores[row]), int(self._template_ids[row])))
            if len(candidates) == k:
                break
        return candidates


def is_match(candidate: Candidate | None, threshold: float) -> bool:
    """Accept a candidate when its similarity reaches ``threshold`` (open-set decision)."""
    return candidate is not None and candidate.score >= threshold
