"""Tests for the template index, checked against a brute-force search over every template."""

from __future__ import annotations

import numpy as np
import pytest

from core import matching
from core.matching import Candidate, TemplateIndex, is_match

DIM = 32


def unit_rows(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.normal(size=(count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def brute_force(
    vectors: np.ndarray, person_ids: np.ndarray, template_ids: np.ndarray, probe: np.ndarray, k: int
) -> list[tuple[int, float, int]]:
    """Return the top ``k`` people as ``(person_id, score, template_id)``, each scored by their best template."""
    scores = vectors.astype(np.float64) @ probe.astype(np.float64)
    best: dict[int, tuple[float, int]] = {}
    for score, person_id, template_id in zip(scores, person_ids, template_ids, strict=True):
        if int(person_id) not in best or score > best[int(person_id)][0]:
            best[int(person_id)] = (float(score), int(template_id))
    ranked = sorted(best.items(), key=lambda item: item[1][0], reverse=True)
    return [(person_id, score, template_id) for person_id, (score, template_id) in ranked[:k]]


def assert_matches_reference(candidates: list[Candidate], expected: list[tuple[int, float, int]]) -> None:
    assert [candidate.person_id for candidate in candidates] == [person_id for person_id, _, _ in expected]
    assert [candidate.template_id for candidate in candidates] == [template_id for _, _, template_id in expected]
    np.testing.assert_allclose([candidate.score for candidate in candidates], [s for _, s, _ in expected], atol=1e-5)


def random_gallery(rng: np.random.Generator, people: int, max_templates: int):
    """Return ``(template_ids, person_ids, vectors)`` with 1 to ``max_templates`` templates per person."""
    counts = rng.integers(1, max_templates + 1, size=people)
    person_ids = np.repeat(np.arange(100, 100 + people), counts)
    rng.shuffle(person_ids)
    template_ids = rng.permutation(len(person_ids)) + 5000
    return template_ids, person_ids, unit_rows(rng, len(person_ids))


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
@pytest.mark.parametrize("k", [1, 3, 10], ids=["k1", "k3", "k10"])
def test_search_matches_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    template_ids, person_ids, vectors = random_gallery(rng, people=60, max_templates=20)
    index = TemplateIndex(DIM)
    index.add(template_ids, person_ids, vectors)

    for probe in unit_rows(rng, 5):
        expected = brute_force(vectors, person_ids, template_ids, probe, k)
        assert_matches_reference(index.search(probe, k=k), expected)


def test_search_added_in_several_batches() -> None:
    rng = np.random.default_rng(3)
    template_ids, person_ids, vectors = random_gallery(rng, people=30, max_templates=8)
    index = TemplateIndex(DIM)
    for rows in np.array_split(np.arange(len(vectors)), 4):
        index.add(template_ids[rows], person_ids[rows], vectors[rows])
    probe = unit_rows(rng, 1)[0]

    assert len(index) == len(vectors)
    assert index.person_count == 30
    assert_matches_reference(index.search(probe, k=5), brute_force(vectors, person_ids, template_ids, probe, 5))


def test_search_k_above_person_count_returns_everyone() -> None:
    rng = np.random.default_rng(4)
    template_ids, person_ids, vectors = random_gallery(rng, people=4, max_templates=3)
    index = TemplateIndex(DIM)
    index.add(template_ids, person_ids, vectors)
    probe = unit_rows(rng, 1)[0]

    candidates = index.search(probe, k=10)

    assert len(candidates) == 4
    assert_matches_reference(candidates, brute_force(vectors, person_ids, template_ids, probe, 10))


@pytest.mark.parametrize("k", [2, 3, 5], ids=["k2", "k3", "k5"])
def test_search_falls_back_when_one_person_fills_top(k: int) -> None:
    # Person 1 has 600 templates that all beat every other person's, so the top
    # k * _SCAN_FACTOR templates contain only person 1 and the full sort must run.
    rng = np.random.default_rng(5)
    probe = unit_rows(rng, 1)[0]
    crowd = probe + 0.01 * rng.normal(size=(600, DIM)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    others = unit_rows(rng, 40)
    vectors = np.concatenate([crowd, others])
    person_ids = np.concatenate([np.full(600, 1), np.repeat(np.arange(2, 22), 2)])
    template_ids = np.arange(len(vectors)) + 1
    index = TemplateIndex(DIM)
    index.add(template_ids, person_ids, vectors)
    assert k * matching._SCAN_FACTOR < 600

    candidates = index.search(probe, k=k)

    assert len(candidates) == k
    assert candidates[0].person_id == 1
    assert_matches_reference(candidates, brute_force(vectors, person_ids, template_ids, probe, k))


def test_search_empty_index_returns_empty_list() -> None:
    index = TemplateIndex(DIM)

    assert index.search(unit_rows(np.random.default_rng(6), 1)[0], k=3) == []


def test_remove_person_drops_their_templates() -> None:
    rng = np.random.default_rng(7)
    template_ids, person_ids, vectors = random_gallery(rng, people=10, max_templates=5)
    index = TemplateIndex(DIM)
    index.add(template_ids, person_ids, vectors)
    probe = unit_rows(rng, 1)[0]
    removed_person = index.search(probe, k=1)[0].person_id
    template_count = int((person_ids == removed_person).sum())

    removed = index.remove_person(removed_person)

    keep = person_ids != removed_person
    assert removed == template_count
    assert len(index) == len(vectors) - template_count
    assert index.person_count == 9
    assert_matches_reference(
        index.search(probe, k=20), brute_force(vectors[keep], person_ids[keep], template_ids[keep], probe, 20)
    )


def test_remove_unknown_person_returns_zero() -> None:
    index = TemplateIndex(DIM)
    index.add(np.array([1, 2]), np.array([7, 7]), unit_rows(np.random.default_rng(8), 2))

    assert index.remove_person(99) == 0
    assert len(index) == 2


def test_remove_last_person_empties_index() -> None:
    rng = np.random.default_rng(9)
    index = TemplateIndex(DIM)
    index.add(np.array([1, 2, 3]), np.array([7, 7, 7]), unit_rows(rng, 3))

    assert index.remove_person(7) == 3
    assert len(index) == 0
    assert index.search(unit_rows(rng, 1)[0]) == []


def test_index_rejects_nonpositive_dim() -> None:
    with pytest.raises(ValueError, match="dim must be positive, got 0"):
        TemplateIndex(0)


@pytest.mark.parametrize(
    ("template_ids", "person_ids", "vectors", "message"),
    [
        ([1, 2], [1, 1], np.zeros((2, DIM + 1)), rf"expected \(N, {DIM}\) vectors, got shape \(2, {DIM + 1}\)"),
        ([1], [1], np.zeros(DIM), rf"expected \(N, {DIM}\) vectors, got shape \({DIM},\)"),
        ([1, 2, 3], [1, 1], np.zeros((2, DIM)), r"one value per vector \(2\), got lengths \{'template_ids': 3"),
        ([1, 2], [1, 1], np.zeros((3, DIM)), r"one value per vector \(3\), got lengths \{'template_ids': 2"),
    ],
    ids=["wrong-dim", "one-dimensional", "extra-template-id", "extra-vector"],
)
def test_add_rejects_inconsistent_input(
    template_ids: list[int], person_ids: list[int], vectors: np.ndarray, message: str
) -> None:
    index = TemplateIndex(DIM)

    with pytest.raises(ValueError, match=message):
        index.add(np.array(template_ids), np.array(person_ids), vectors)
    assert len(index) == 0


@pytest.mark.parametrize("k", [0, -1], ids=["zero", "negative"])
def test_search_rejects_k_below_one(k: int) -> None:
    index = TemplateIndex(DIM)

    with pytest.raises(ValueError, match=f"k must be at least 1, got {k}"):
        index.search(np.zeros(DIM, dtype=np.float32), k=k)


@pytest.mark.parametrize(
    "shape",
    [(DIM + 1,), (1, DIM), ()],
    ids=["wrong-length", "row-vector", "scalar"],
)
def test_search_rejects_probe_shape(shape: tuple[int, ...]) -> None:
    index = TemplateIndex(DIM)

    with pytest.raises(ValueError, match=rf"expected a \({DIM},\) probe"):
        index.search(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize(
    ("score", "threshold", "expected"),
    [(0.45, 0.45, True), (0.5, 0.45, True), (0.4499, 0.45, False), (-1.0, -1.0, True)],
    ids=["equal", "above", "below", "equal-at-minimum"],
)
def test_is_match_threshold_boundary(score: float, threshold: float, expected: bool) -> None:
    assert is_match(Candidate(person_id=1, score=score, template_id=1), threshold) is expected


def test_is_match_without_candidate() -> None:
    assert is_match(None, -1.0) is False


def test_search_sees_only_templates_visible_in_the_chat() -> None:
    rng = np.random.default_rng(11)
    vectors = unit_rows(rng, 4)
    index = TemplateIndex(DIM)
    # Person 1 is a dataset entry, 2 enrolled in group -100, 3 enrolled by user 42 in group -200.
    index.add([1, 2, 3, 4], [1, 2, 3, 3], vectors, chat_ids=[0, -100, -200, -200], owner_ids=[0, 7, 42, 42])

    def people(chat_id: int | None) -> set[int]:
        return {candidate.person_id for candidate in index.search(vectors[0], k=5, chat_id=chat_id)}

    assert people(None) == {1, 2, 3}
    assert people(-100) == {1, 2}
    assert people(-200) == {1, 3}
    assert people(42) == {1, 3}  # the owner's private chat
    assert people(-300) == {1}


def test_search_keeps_synthetic_templates_apart() -> None:
    rng = np.random.default_rng(12)
    vectors = unit_rows(rng, 3)
    index = TemplateIndex(DIM)
    index.add([1, 2, 3], [1, 1, 2], vectors, synthetic=[False, True, True])

    assert [(c.person_id, c.template_id) for c in index.search(vectors[1], k=5)] == [(1, 1)]
    synthetic = index.search(vectors[1], k=5, synthetic=True)
    assert [c.template_id for c in synthetic] == [2, 3]
    assert synthetic[0].score == pytest.approx(1.0)


def brute_force_masked(vectors, person_ids, synthetic, probe, weight):
    scores = vectors @ probe
    fused = {}
    for person in np.unique(person_ids):
        mine = person_ids == person
        originals = scores[mine & ~synthetic]
        masks = scores[mine & synthetic]
        if not len(originals):
            continue  # never matched without a source photo
        masked_term = masks.max() if len(masks) else originals.max()
        fused[int(person)] = weight * masked_term + (1 - weight) * originals.mean()
    return sorted(fused.items(), key=lambda item: -item[1])


@pytest.mark.parametrize("weight", [0.0, 0.7, 1.0])
def test_search_masked_fuses_synthetic_max_with_original_mean(weight: float) -> None:
    rng = np.random.default_rng(13)
    vectors = unit_rows(rng, 60)
    person_ids = rng.integers(0, 12, size=60)
    synthetic = rng.random(60) < 0.6
    synthetic[person_ids == 0] = False  # person 0 was enrolled before synthetic templates existed
    index = TemplateIndex(DIM)
    index.add(np.arange(60), person_ids, vectors, synthetic=synthetic)
    probe = unit_rows(rng, 1)[0]

    expected = brute_force_masked(vectors, person_ids, synthetic, probe, weight)
    found = index.search_masked(probe, k=5, synthetic_weight=weight)

    assert [c.person_id for c in found] == [person for person, _ in expected[:5]]
    assert [c.score for c in found] == pytest.approx([score for _, score in expected[:5]], abs=1e-6)


def test_search_masked_respects_chat_scope() -> None:
    rng = np.random.default_rng(14)
    vectors = unit_rows(rng, 4)
    index = TemplateIndex(DIM)
    index.add(
        [1, 2, 3, 4],
        [1, 1, 2, 2],
        vectors,
        synthetic=[False, True, False, True],
        chat_ids=[0, 0, -100, -100],
        owner_ids=[0, 0, 5, 5],
    )

    assert {c.person_id for c in index.search_masked(vectors[3], k=5, chat_id=-200)} == {1}
    found = index.search_masked(vectors[3], k=5, chat_id=-100)
    assert found[0].person_id == 2
    assert found[0].template_id == 4
