"""Tests for the LFW verification protocol on hand-written pairs files and score tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.evaluation.lfw import THRESHOLD_STEP, Pair, best_threshold, k_fold_accuracy, read_pairs, split_folds

IMAGES = Path("/images")


def image(name: str, number: int) -> Path:
    return IMAGES / name / f"{name}_{number:04d}.jpg"


def write_pairs(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text, encoding="utf-8")
    return path


def pairs_from_labels(labels: str) -> list[Pair]:
    """Build pairs from a string of ``S`` (same) and ``D`` (different) labels."""
    return [Pair(image("A", index), image("B", index), label == "S") for index, label in enumerate(labels)]


def fold_lists(folds: list[np.ndarray]) -> list[list[int]]:
    return [fold.tolist() for fold in folds]


@pytest.mark.parametrize(
    "header",
    ["", "10\t300\n", "10 300\n", "6000\n"],
    ids=["no-header", "tab-header", "space-header", "one-number-header"],
)
def test_read_pairs_parses_same_and_different(tmp_path: Path, header: str) -> None:
    text = header + "Abel_Pacheco\t1\t4\n\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh  1  Dean_Barker  12\n\n"
    pairs_file = write_pairs(tmp_path, text)

    pairs = read_pairs(pairs_file, IMAGES)

    assert pairs == [
        Pair(image("Abel_Pacheco", 1), image("Abel_Pacheco", 4), True),
        Pair(image("Akhmed_Zakayev", 1), image("Akhmed_Zakayev", 3), True),
        Pair(image("Abdel_Madi_Shabneh", 1), image("Dean_Barker", 12), False),
    ]


def test_read_pairs_empty_file(tmp_path: Path) -> None:
    assert read_pairs(write_pairs(tmp_path, "\n\n"), IMAGES) == []


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("Abel_Pacheco\t1", "expected 3 or 4 fields, got 2"),
        ("Abel_Pacheco\t1\tDean_Barker\t1\t2", "expected 3 or 4 fields, got 5"),
        ("Abel_Pacheco\tone\t4", "invalid literal for int"),
        ("Abel_Pacheco\t1\tDean_Barker\tx", "invalid literal for int"),
        ("10\t300", "expected 3 or 4 fields, got 2"),
    ],
    ids=["two-fields", "five-fields", "word-number", "word-number-different", "header-not-first"],
)
def test_read_pairs_rejects_bad_line_with_location(tmp_path: Path, bad_line: str, reason: str) -> None:
    pairs_file = write_pairs(tmp_path, f"10\t300\nAbel_Pacheco\t1\t4\n\n{bad_line}\nAkhmed_Zakayev\t1\t3\n")

    with pytest.raises(ValueError, match=rf"pairs\.txt:4: invalid pairs line .*{reason}"):
        read_pairs(pairs_file, IMAGES)


def test_read_pairs_error_names_the_file(tmp_path: Path) -> None:
    pairs_file = write_pairs(tmp_path, "Abel_Pacheco\t1\n")

    with pytest.raises(ValueError) as raised:
        read_pairs(pairs_file, IMAGES)

    assert str(raised.value).startswith(f"{pairs_file}:1: ")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ("SSDDSSDDSSDD", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]),
        ("SSSDSSDDSDDD", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]),
        ("SDSSSDD", [[0, 1], [2, 3, 4, 5, 6]]),
    ],
    ids=["equal-blocks", "filtered-blocks", "two-folds"],
)
def test_split_folds_recovers_blocks(labels: str, expected: list[list[int]]) -> None:
    assert fold_lists(split_folds(pairs_from_labels(labels))) == expected


@pytest.mark.parametrize(
    "labels",
    ["DSSDSDDSSDSD", "SSDDSSDDSSDS", "SSSSSSSSSSSS", "DDDDDDDDDDDD", "SSSSSSDDDDDD"],
    ids=["starts-different", "ends-same", "only-same", "only-different", "one-block"],
)
def test_split_folds_falls_back_to_contiguous(labels: str) -> None:
    folds = split_folds(pairs_from_labels(labels), default_folds=4)

    assert fold_lists(folds) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_split_folds_fallback_caps_folds_at_pair_count() -> None:
    folds = split_folds(pairs_from_labels("DSD"), default_folds=10)

    assert fold_lists(folds) == [[0], [1], [2]]


def test_split_folds_shuffled_file_gives_default_folds() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(list("S" * 60 + "D" * 60))
    rng.shuffle(labels)
    labels[0], labels[-1] = "S", "D"  # a 50:50 shuffle starts and ends like this a quarter of the time

    folds = split_folds(pairs_from_labels("".join(labels)), default_folds=10)

    assert len(folds) == 10


def test_k_fold_accuracy_separable_scores() -> None:
    same = np.array([True, True, False, False] * 4)
    scores = np.where(same, np.linspace(0.6, 0.9, 16), np.linspace(-0.2, 0.2, 16))
    folds = [np.arange(start, start + 4) for start in range(0, 16, 4)]

    result = k_fold_accuracy(scores, same, folds)

    assert result.accuracy == pytest.approx(1.0)
    assert result.accuracy_std == pytest.approx(0.0)
    assert result.fold_accuracies == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert result.pairs == 16
    for threshold in result.fold_thresholds:
        assert 0.2 - THRESHOLD_STEP < threshold <= 0.6 + THRESHOLD_STEP


def test_k_fold_accuracy_hand_computed() -> None:
    # Fold A is scored with fold B's threshold. B separates at any threshold in (0.2, 0.6],
    # so its threshold is about 0.4, and A's same pair at 0.3 is wrong (3 of 4 right).
    # Fold B is scored with fold A's threshold. A separates in (0.2, 0.3], so its
    # threshold is about 0.25, and every pair of B is right.
    scores = np.array([0.8, 0.3, 0.1, 0.2, 0.7, 0.6, 0.2, 0.0])
    same = np.array([True, True, False, False, True, True, False, False])
    folds = [np.arange(0, 4), np.arange(4, 8)]

    result = k_fold_accuracy(scores, same, folds)

    assert result.fold_accuracies == pytest.approx((0.75, 1.0))
    assert result.accuracy == pytest.approx(0.875)
    assert result.accuracy_std == pytest.approx(0.125)
    assert result.fold_thresholds[0] == pytest.approx(0.4, abs=THRESHOLD_STEP)
    assert result.fold_thresholds[1] == pytest.approx(0.25, abs=THRESHOLD_STEP)
    assert result.threshold == pytest.approx(0.325, abs=THRESHOLD_STEP)


@pytest.mark.parametrize("nan_position", [0, 2], ids=["same-pair", "different-pair"])
def test_k_fold_accuracy_nan_counts_as_error(nan_position: int) -> None:
    scores = np.array([0.8, 0.7, 0.1, 0.0, 0.9, 0.6, 0.2, -0.1])
    scores[nan_position] = np.nan
    same = np.array([True, True, False, False] * 2)
    folds = [np.arange(0, 4), np.arange(4, 8)]

    result = k_fold_accuracy(scores, same, folds)

    assert result.fold_accuracies == pytest.approx((0.75, 1.0))
    assert result.accuracy == pytest.approx(0.875)
    assert not np.isnan(result.fold_thresholds[1])


def test_k_fold_accuracy_rejects_single_fold() -> None:
    with pytest.raises(ValueError, match="at least 2 folds, got 1"):
        k_fold_accuracy(np.zeros(4), np.ones(4, dtype=bool), [np.arange(4)])


@pytest.mark.parametrize(
    ("same_score", "different_score", "middle"),
    [(0.5, -0.5, 0.0), (0.3, 0.1, 0.2), (0.9, 0.8, 0.85)],
    ids=["wide-gap", "narrow-gap", "high-gap"],
)
def test_best_threshold_takes_middle_of_tie_range(same_score: float, different_score: float, middle: float) -> None:
    # Every threshold in (different_score, same_score] classifies both pairs correctly.
    threshold = best_threshold(np.array([same_score, different_score]), np.array([True, False]))

    assert threshold == pytest.approx(middle, abs=THRESHOLD_STEP)


def test_best_threshold_on_grid() -> None:
    threshold = best_threshold(np.array([0.3, 0.1]), np.array([True, False]))
    steps = (threshold + 1.0) / THRESHOLD_STEP

    assert steps == pytest.approx(round(steps), abs=1e-6)


@pytest.mark.datasets
def test_real_dev_pairs_file(datasets_dir: Path) -> None:
    pairs = read_pairs(datasets_dir / "lfw-pairs-dev.txt", datasets_dir / "lfw")
    folds = split_folds(pairs)

    assert len(pairs) == 2251
    assert sum(pair.same for pair in pairs) == 1501
    assert len(folds) == 10
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(pairs)))
    missing = [str(path) for pair in pairs for path in (pair.first, pair.second) if not path.is_file()]
    assert missing == []
