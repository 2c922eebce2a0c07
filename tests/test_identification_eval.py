"""Tests for the open-set identification benchmark: metrics, protocol selection, plots and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import eval_ident_command
from cli.eval_ident_command import add_eval_ident_parser, build_protocol, eval_ident
from core.detection import DetectedFace, FaceDetector
from core.errors import DatasetError
from core.evaluation.identification import (
    AnalysedPhoto,
    EmbeddingCache,
    IdentificationProtocol,
    MaskAwareMatcher,
    MatedProbe,
    PlainMatcher,
    ProbeSet,
    analyse_photos,
    analysis_id,
    cmc_curve,
    det_curve,
    evaluate_identification,
    fnir_at,
    fpir_at,
    list_images,
    mated_rank,
    name_key,
    score_protocol,
    select_first_photo_per_person,
    select_gallery,
    select_mated,
    select_unlabelled,
    standard_protocol,
    tpir_at_fpir,
)
from core.evaluation.plots import plot_cmc, plot_det
from core.images import DecodedImage
from core.mask_detection import MaskClassifier
from core.pipeline import Face, FacePipeline
from core.settings import Settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = math.nan
INF = math.inf

# A hand-made score table. Mated probes: three rank-1 hits scoring 0.95, 0.8 and 0.6,
# one rank-2 probe and one probe with no face. Non-mated probes: four top scores and
# one probe with no face.
MATED_RANKS = np.array([1, 1, 1, 2, INF])
MATED_SCORES = np.array([0.95, 0.8, 0.6, 0.85, NAN])
NON_MATED_SCORES = np.array([0.9, 0.7, 0.5, 0.3, NAN])


# --- Helpers --------------------------------------------------------------------------------------------------


def touch_images(folder: Path, names: list[str]) -> list[Path]:
    """Create empty files; selection looks only at names, never at pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"")
    return paths


def numbered(count: int, suffix: str = ".jpg") -> list[str]:
    return [f"{number:06d}{suffix}" for number in range(1, count + 1)]


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def face(*values: float) -> Face:
    detection = DetectedFace((10.0, 20.0, 50.0, 70.0), 0.99, np.arange(10, dtype=np.float32).reshape(5, 2))
    return Face(detection, unit(*values))


def ident_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskid eval")
    add_eval_ident_parser(parser.add_subparsers(dest="eval_command", required=True))
    return parser


# --- Metrics --------------------------------------------------------------------------------------------------


def test_mated_rank_of_listed_identity() -> None:
    candidates = [("alice", 0.9), ("bob", 0.8), ("carol", 0.7)]

    assert mated_rank(candidates, "alice") == (1.0, 0.9)
    assert mated_rank(candidates, "bob") == (2.0, 0.8)
    assert mated_rank(candidates, "carol") == (3.0, 0.7)


def test_mated_rank_ties_count_against_probe() -> None:
    candidates = [("alice", 0.8), ("bob", 0.8), ("carol", 0.5)]

    assert mated_rank(candidates, "alice") == (2.0, 0.8)
    assert mated_rank(candidates, "bob") == (2.0, 0.8)
    assert mated_rank(candidates, "carol") == (3.0, 0.5)


def test_mated_rank_of_missing_identity() -> None:
    rank, score = mated_rank([("alice", 0.9)], "zoe")

    assert rank == INF
    assert math.isnan(score)
    assert mated_rank([], "alice")[0] == INF


def test_cmc_counts_no_face_as_miss() -> None:
    # Ranks 1, 2 (a tie for first counts as rank 2), 6, and a probe with no face.
    ranks = np.array([1, 2, 6, INF])

    cmc = cmc_curve(ranks, max_rank=7)

    np.testing.assert_allclose(cmc, [0.25, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75])


def test_cmc_rank1_and_rank5_from_table() -> None:
    cmc = cmc_curve(MATED_RANKS, max_rank=20)

    assert cmc[0] == pytest.approx(3 / 5)
    assert cmc[4] == pytest.approx(4 / 5)
    assert cmc[-1] == pytest.approx(4 / 5)
    assert len(cmc) == 20


def test_cmc_rejects_empty_ranks() -> None:
    with pytest.raises(ValueError, match="without mated probes"):
        cmc_curve(np.array([]))


def test_fpir_never_counts_no_face() -> None:
    fpir = fpir_at(NON_MATED_SCORES, np.array([0.9, 0.8, 0.5, 0.0, -INF]))

    # At or above: 1, 1, 3, 4, 4 of 5 probes; the no-face probe stays in the denominator.
    np.testing.assert_allclose(fpir, [0.2, 0.2, 0.6, 0.8, 0.8])


def test_fnir_needs_rank1_and_threshold() -> None:
    fnir = fnir_at(MATED_RANKS, MATED_SCORES, np.array([0.96, 0.9, 0.8, 0.5, -INF]))

    # Rank-1 hits at or above: 0, 1, 2, 3, 3 of 5; the rank-2 probe scoring 0.85 never counts.
    np.testing.assert_allclose(fnir, [1.0, 0.8, 0.6, 0.4, 0.4])


def test_tpir_at_fpir_with_known_threshold() -> None:
    # 20% of 5 non-mated probes allows one false positive, so the threshold must
    # sit just above the second-highest non-mated score, 0.7.
    point = tpir_at_fpir(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES, 0.2)

    assert point.threshold == np.nextafter(0.7, np.inf)
    assert point.fpir == pytest.approx(0.2)
    assert point.false_positives == 1
    assert point.tpir == pytest.approx(2 / 5)  # hits scoring 0.95 and 0.8
    assert point.non_mated == 5
    assert not point.below_resolution


def test_tpir_at_fpir_between_steps() -> None:
    # 50% of 5 allows 2 (2.5 rounded down), so the threshold sits above 0.5, the third-highest.
    point = tpir_at_fpir(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES, 0.5)

    assert point.threshold == np.nextafter(0.5, np.inf)
    assert point.fpir == pytest.approx(0.4)
    assert point.tpir == pytest.approx(3 / 5)


def test_tpir_at_fpir_below_resolution() -> None:
    # 10% of 5 probes is half a probe: only FPIR 0 meets it, above every non-mated score.
    point = tpir_at_fpir(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES, 0.1)

    assert point.threshold == np.nextafter(0.9, np.inf)
    assert point.fpir == 0.0
    assert point.false_positives == 0
    assert point.tpir == pytest.approx(1 / 5)  # only the hit scoring 0.95
    assert point.below_resolution


def test_tpir_at_fpir_unreachable_tenth_percent() -> None:
    rng = np.random.default_rng(7)
    non_mated = np.concatenate([rng.uniform(-0.2, 0.6, size=600), np.full(26, NAN)])
    ranks = np.ones(10)
    mated = np.linspace(0.3, 0.9, 10)

    point = tpir_at_fpir(ranks, mated, non_mated, 0.001)

    assert point.non_mated == 626
    assert point.below_resolution
    assert point.fpir == 0.0
    assert point.threshold > np.nanmax(non_mated)
    assert point.tpir == pytest.approx(np.mean(mated > np.nanmax(non_mated)))


def test_tpir_at_one_percent_of_600() -> None:
    non_mated = np.linspace(0.0, 0.599, 600)  # the 7th highest is 0.593
    point = tpir_at_fpir(np.ones(3), np.array([0.59, 0.5935, 0.7]), non_mated, 0.01)

    assert point.false_positives == 6
    assert point.fpir == pytest.approx(0.01)
    assert point.threshold == np.nextafter(non_mated[-7], np.inf)
    assert point.tpir == pytest.approx(2 / 3)
    assert not point.below_resolution


def test_tpir_tied_non_mated_scores_push_threshold_up() -> None:
    # One false positive is allowed, but the two highest scores tie, so both must go.
    point = tpir_at_fpir(np.ones(2), np.array([0.7, 0.8]), np.array([0.7, 0.7, 0.2]), 0.34)

    assert point.threshold == np.nextafter(0.7, np.inf)
    assert point.false_positives == 0
    assert point.tpir == pytest.approx(0.5)


def test_tpir_any_threshold_when_few_faces() -> None:
    # 90% of 5 allows 4 false positives and only 4 non-mated probes have a face.
    point = tpir_at_fpir(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES, 0.9)

    assert point.threshold == -INF
    assert point.fpir == pytest.approx(0.8)
    assert point.tpir == pytest.approx(3 / 5)  # the rank-1 rate


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1], ids=["zero", "one", "negative"])
def test_tpir_rejects_invalid_target(target: float) -> None:
    with pytest.raises(ValueError, match="target FPIR"):
        tpir_at_fpir(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES, target)


def test_det_curve_steps_at_non_mated_scores() -> None:
    curve = det_curve(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES)

    expected_thresholds = [np.nextafter(value, np.inf) for value in (0.9, 0.7, 0.5, 0.3)] + [-INF]
    np.testing.assert_array_equal(curve.thresholds, expected_thresholds)
    np.testing.assert_allclose(curve.fpir, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(curve.fnir, [0.8, 0.6, 0.4, 0.4, 0.4])


# --- Scoring with a matcher -----------------------------------------------------------------------------------


def test_plain_matcher_ranks_every_person() -> None:
    searcher = PlainMatcher().build({"alice": [face(1, 0), face(1, 0.2)], "bob": [face(0, 1)], "carol": []})

    ranked = searcher.search(face(1, 0.1), 5)

    assert [label for label, _ in ranked] == ["alice", "bob"]
    assert ranked[0][1] == pytest.approx(float(unit(1, 0.1) @ unit(1, 0.2)), abs=1e-6)


def test_mask_aware_matcher_routing_and_fusion() -> None:
    # The classifier calls a probe masked when the first of its features is positive.
    classifier = MaskClassifier("m", np.array([50.0, 0.0]), 0.0, np.zeros(2), np.ones(2))
    gallery = {"alice": [face(1, 0, 0)], "bob": [face(0, 1, 0)]}
    synthetic = {"alice": unit(0, 0, 1)[None], "bob": unit(0, 0.2, 1)[None]}
    searcher = MaskAwareMatcher(classifier, synthetic_masks=1, synthetic_weight=0.5).build(gallery, synthetic)
    masked_probe = Face(face(0.1, 0.1, 1).detection, unit(0.1, 0.1, 1), np.array([1.0, 0.0]))
    unmasked_probe = Face(face(0.1, 0.1, 1).detection, unit(0.1, 0.1, 1), np.array([-1.0, 0.0]))

    masked_ranked = searcher.search(masked_probe, 5)
    unmasked_ranked = searcher.search(unmasked_probe, 5)

    assert searcher.is_masked(masked_probe)
    assert not searcher.is_masked(unmasked_probe)
    probe = unit(0.1, 0.1, 1)
    expected_bob = 0.5 * float(probe @ unit(0, 0.2, 1)) + 0.5 * float(probe @ unit(0, 1, 0))
    assert masked_ranked[0] == ("bob", pytest.approx(expected_bob, abs=1e-6))
    # Unmasked probes never see synthetic templates: both people score against their photo only.
    assert dict(unmasked_ranked) == pytest.approx(
        {"alice": float(probe @ unit(1, 0, 0)), "bob": float(probe @ unit(0, 1, 0))}, abs=1e-6
    )


def test_score_protocol_counts_no_face_probes(tmp_path: Path) -> None:
    paths = {name: tmp_path / f"{name}.jpg" for name in ["a1", "b1", "a2", "b2", "a3", "x1", "x2", "x3"]}
    photos = {
        paths["a1"]: AnalysedPhoto(paths["a1"], face(1, 0), 1),
        paths["b1"]: AnalysedPhoto(paths["b1"], face(0, 1), 1),
        paths["a2"]: AnalysedPhoto(paths["a2"], face(1, 0.1), 1),  # alice at rank 1
        paths["b2"]: AnalysedPhoto(paths["b2"], face(1, 0.3), 1),  # bob, but alice ranks first
        paths["a3"]: AnalysedPhoto(paths["a3"], None, 0),  # no face: a miss
        paths["x1"]: AnalysedPhoto(paths["x1"], face(1, 1), 2),
        paths["x2"]: AnalysedPhoto(paths["x2"], None, 0),
        paths["x3"]: AnalysedPhoto(paths["x3"], None, 0, "truncated image"),
    }
    protocol = IdentificationProtocol(
        {"alice": (paths["a1"],), "bob": (paths["b1"],)},
        (
            ProbeSet(
                "masked",
                (MatedProbe(paths["a2"], "alice"), MatedProbe(paths["b2"], "bob"), MatedProbe(paths["a3"], "alice")),
                (paths["x1"], paths["x2"], paths["x3"]),
            ),
        ),
    )

    evaluation = score_protocol(protocol, photos, model_id="test-model", target_fpirs=(0.5,), max_rank=3)

    result = evaluation.probe_sets[0]
    assert evaluation.matcher == "plain"
    assert evaluation.gallery_without_face == ()
    assert evaluation.failed == ((paths["x3"], "truncated image"),)
    assert result.rank1 == pytest.approx(1 / 3)
    assert result.rank5 == pytest.approx(2 / 3)
    assert result.cmc == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    assert result.mated_without_face == (paths["a3"],)
    assert result.non_mated_without_face == (paths["x2"], paths["x3"])
    assert [item.rank for item in result.mated] == [1.0, 2.0, INF]
    assert result.mated[1].top_label == "alice"
    # 50% of 3 allows one false positive and only one non-mated probe has a face.
    assert result.operating_points[0].threshold == -INF
    assert result.operating_points[0].tpir == pytest.approx(1 / 3)


def test_score_protocol_without_non_mated(tmp_path: Path) -> None:
    gallery_photo, probe = tmp_path / "a1.jpg", tmp_path / "a2.jpg"
    photos = {gallery_photo: AnalysedPhoto(gallery_photo, None, 0), probe: AnalysedPhoto(probe, face(1, 0), 1)}
    protocol = IdentificationProtocol({"alice": (gallery_photo,)}, (ProbeSet("plain", (MatedProbe(probe, "alice"),)),))

    evaluation = score_protocol(protocol, photos, model_id="test-model")

    result = evaluation.probe_sets[0]
    assert evaluation.gallery_without_face == (gallery_photo,)
    assert result.rank1 == 0.0  # alice has no template, so she cannot be found
    assert result.operating_points == ()
    assert result.det is None


# --- Protocol selection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("George_W_Bush", "george w bush"),
        ("george_w_bush", "george w bush"),
        ("Jean-Claude_Van_Damme", "jean claude van damme"),
        ("LeBron_James", "lebron james"),
        ("Zoë  Saldaña", "zoe saldana"),
    ],
    ids=["lfw", "rof", "hyphen", "camel-case", "accents"],
)
def test_name_key_normalises(name: str, key: str) -> None:
    assert name_key(name) == key


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    touch_images(tmp_path, ["b.JPG", "a.png", "notes.txt", ".hidden.jpg", "c.webp"])
    (tmp_path / "sub").mkdir()

    assert [path.name for path in list_images(tmp_path)] == ["a.png", "b.JPG", "c.webp"]


def test_list_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        list_images(tmp_path / "missing")


def test_select_gallery_takes_first_k(tmp_path: Path) -> None:
    alice = touch_images(tmp_path / "alice", list(reversed(numbered(7))))
    bob = touch_images(tmp_path / "bob", numbered(3))
    touch_images(tmp_path / "carol", ["readme.txt"])
    touch_images(tmp_path / ".cache", numbered(2))

    gallery = select_gallery(tmp_path, 5)

    assert list(gallery) == ["alice", "bob"]
    assert gallery["alice"] == tuple(sorted(alice)[:5])
    assert gallery["bob"] == tuple(bob)


def test_select_gallery_rejects_zero_size(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least 1"):
        select_gallery(tmp_path, 0)


def test_select_mated_index_range(tmp_path: Path) -> None:
    alice = touch_images(tmp_path / "alice", numbered(12))
    touch_images(tmp_path / "bob", numbered(5))
    carol = touch_images(tmp_path / "carol", numbered(7))

    probes = select_mated(tmp_path, start=5, stop=10)

    assert probes == tuple(
        [MatedProbe(path, "alice") for path in alice[5:10]] + [MatedProbe(path, "carol") for path in carol[5:7]]
    )


def test_select_mated_all_photos(tmp_path: Path) -> None:
    alice = touch_images(tmp_path / "alice", numbered(2))

    assert select_mated(tmp_path) == tuple(MatedProbe(path, "alice") for path in alice)


@pytest.mark.parametrize(("start", "stop"), [(-1, None), (5, 5), (6, 2)], ids=["negative", "empty", "reversed"])
def test_select_mated_rejects_bad_range(tmp_path: Path, start: int, stop: int | None) -> None:
    with pytest.raises(DatasetError, match="invalid probe range"):
        select_mated(tmp_path, start=start, stop=stop)


def test_select_unlabelled_recursive(tmp_path: Path) -> None:
    first = touch_images(tmp_path / "0000", ["0001.jpg", "0000.jpg"])
    second = touch_images(tmp_path / "0002" / "deeper", ["x.png"])
    touch_images(tmp_path / "0002", ["list.txt"])
    touch_images(tmp_path, ["top.jpg"])

    assert select_unlabelled(tmp_path) == (*sorted(first), *second, tmp_path / "top.jpg")


def test_first_photo_per_person_excludes_gallery_names(tmp_path: Path) -> None:
    for name in ["George_W_Bush", "AJ_Cook", "Aaron_Eckhart", "Jean-Claude_Van_Damme", "Bill_Gates", "Zoe_Ball"]:
        touch_images(tmp_path / name, [f"{name}_0002.jpg", f"{name}_0001.jpg"])
    touch_images(tmp_path / "Empty_Person", ["notes.txt"])
    gallery_names = ["george_w_bush", "jean_claude_van_damme", "bill_gates"]

    everyone = select_first_photo_per_person(tmp_path, exclude=gallery_names)
    first_two = select_first_photo_per_person(tmp_path, exclude=gallery_names, people=2)

    # Sorted by code point, so "AJ_Cook" comes before "Aaron_Eckhart".
    assert [path.name for path in everyone] == ["AJ_Cook_0001.jpg", "Aaron_Eckhart_0001.jpg", "Zoe_Ball_0001.jpg"]
    assert [path.name for path in first_two] == ["AJ_Cook_0001.jpg", "Aaron_Eckhart_0001.jpg"]


def test_protocol_rejects_unknown_mated_label(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not in the gallery"):
        IdentificationProtocol(
            {"alice": (tmp_path / "a1.jpg",)}, (ProbeSet("masked", (MatedProbe(tmp_path / "z.jpg", "zoe"),)),)
        )


def test_protocol_rejects_probe_in_gallery(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="also gallery photos"):
        IdentificationProtocol(
            {"alice": (tmp_path / "a1.jpg",)}, (ProbeSet("same", (MatedProbe(tmp_path / "a1.jpg", "alice"),)),)
        )


def test_protocol_rejects_empty_probe_set(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no mated probes"):
        IdentificationProtocol({"alice": (tmp_path / "a1.jpg",)}, (ProbeSet("masked", ()),))


def make_fake_datasets(root: Path) -> Path:
    """A small copy of the shared datasets layout with empty image files."""
    for name, count in [("bill_gates", 12), ("george_w_bush", 8), ("tom_hanks", 3)]:
        touch_images(root / "rof" / "neutral" / name, numbered(count))
    touch_images(root / "rof" / "masked" / "bill_gates", numbered(2))
    touch_images(root / "rof" / "masked" / "tom_hanks", numbered(1))
    touch_images(root / "masked-strangers" / "0000", ["0000.jpg", "0001.jpg"])
    touch_images(root / "masked-strangers" / "0002", ["a.png"])
    for name in ["AJ_Cook", "Bill_Gates", "George_W_Bush", "Tom_Hanks", "Zico"]:
        touch_images(root / "lfw" / name, [f"{name}_0001.jpg", f"{name}_0002.jpg"])
    return root


def test_standard_protocol_on_fake_tree(tmp_path: Path) -> None:
    root = make_fake_datasets(tmp_path)
    neutral = root / "rof" / "neutral"

    protocol = standard_protocol(root, lfw_people=600)

    assert protocol.gallery["bill_gates"] == tuple(neutral / "bill_gates" / name for name in numbered(5))
    assert protocol.gallery["tom_hanks"] == tuple(neutral / "tom_hanks" / name for name in numbered(3))
    masked, unmasked = protocol.probe_sets
    assert masked.name == "masked"
    assert [probe.label for probe in masked.mated] == ["bill_gates", "bill_gates", "tom_hanks"]
    assert len(masked.non_mated) == 3
    assert unmasked.name == "unmasked"
    assert [probe.path.name for probe in unmasked.mated] == [
        *numbered(10)[5:10],
        *numbered(8)[5:8],
    ]
    assert [path.name for path in unmasked.non_mated] == ["AJ_Cook_0001.jpg", "Zico_0001.jpg"]


def test_standard_protocol_keeps_probes_for_smaller_gallery(tmp_path: Path) -> None:
    root = make_fake_datasets(tmp_path)

    protocol = standard_protocol(root, gallery_size=2, lfw_people=1)

    assert len(protocol.gallery["bill_gates"]) == 2
    assert [probe.path.name for probe in protocol.probe_sets[1].mated][:5] == numbered(10)[5:10]
    assert [path.name for path in protocol.probe_sets[1].non_mated] == ["AJ_Cook_0001.jpg"]


def test_standard_protocol_rejects_large_gallery(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="1 to 5 photos"):
        standard_protocol(make_fake_datasets(tmp_path), gallery_size=6)


# --- Embedding cache ------------------------------------------------------------------------------------------


def test_embedding_cache_round_trip(tmp_path: Path) -> None:
    original = face(0.6, 0.8)

    with EmbeddingCache(tmp_path / "eval" / "cache.sqlite3") as cache:
        cache.put("model-a", {"sha-face": (2, original), "sha-none": (0, None)})
        found = cache.get("model-a", ["sha-face", "sha-none", "sha-missing"])
        other_model = cache.get("model-b", ["sha-face"])

    assert set(found) == {"sha-face", "sha-none"}
    assert found["sha-none"] == (0, None)
    count, restored = found["sha-face"]
    assert count == 2
    assert restored is not None
    assert restored.box == original.box
    assert restored.probability == pytest.approx(original.probability)
    np.testing.assert_array_equal(restored.detection.landmarks, original.detection.landmarks)
    np.testing.assert_array_equal(restored.embedding, original.embedding)
    assert other_model == {}


class FakePipeline:
    """Stands in for FacePipeline: one whole-image face per photo, described by its mean colour.

    Like MTCNN on a photo narrower than its minimum face size, it raises ValueError
    for a whole batch when any photo in it is narrower than 20 pixels.
    """

    model_id = "fake-model"

    def __init__(self) -> None:
        self.detector = FaceDetector()
        self.attempted: list[str] = []

    def analyze_batch(self, images: list[DecodedImage]) -> list[list[Face]]:
        self.attempted.extend(Path(image.source or "").name for image in images)
        if any(image.width < 20 for image in images):
            raise ValueError("expected a non-empty list of Tensors")
        return [[self._face(image)] for image in images]

    @staticmethod
    def _face(image: DecodedImage) -> Face:
        box = (0.0, 0.0, float(image.width), float(image.height))
        detection = DetectedFace(box, 0.99, np.zeros((5, 2), dtype=np.float32))
        return Face(detection, unit(*image.pixels.reshape(-1, 3).mean(axis=0) + 1.0))


def test_analyse_photos_isolates_failures_and_caches(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    blue = tmp_path / "blue.png"
    tiny = tmp_path / "tiny.png"
    corrupt = tmp_path / "corrupt.jpg"
    Image.new("RGB", (40, 50), (255, 0, 0)).save(red)
    Image.new("RGB", (40, 50), (0, 0, 255)).save(blue)
    Image.new("RGB", (10, 12), (0, 255, 0)).save(tiny)
    corrupt.write_bytes(b"not an image")
    paths = [red, tiny, corrupt, blue, red]
    options = {"max_image_bytes": 1_000_000, "max_image_pixels": 1_000_000, "batch_size": 4, "show_progress": False}
    fake = FakePipeline()

    with EmbeddingCache(tmp_path / "cache.sqlite3") as cache:
        first = analyse_photos(fake, paths, cache=cache, **options)
        attempts_first = list(fake.attempted)
        fake.attempted.clear()
        again = analyse_photos(fake, paths, cache=cache, **options)

    assert list(first) == [red, tiny, corrupt, blue]
    assert first[red].face is not None
    assert first[red].face_count == 1
    assert first[tiny].face is None
    assert first[tiny].error is not None and "face analysis failed" in first[tiny].error
    assert first[corrupt].face is None
    assert first[corrupt].error is not None and "not a supported image" in first[corrupt].error
    # The batch of three decodable photos failed, then each was analysed alone.
    assert attempts_first == ["red.png", "tiny.png", "blue.png", "red.png", "tiny.png", "blue.png"]
    # Failures are not cached, so only the tiny photo is analysed again.
    assert fake.attempted == ["tiny.png"]
    assert again[blue].face is not None and first[blue].face is not None
    np.testing.assert_array_equal(again[blue].face.embedding, first[blue].face.embedding)


def test_analysis_id_includes_detector_settings() -> None:
    fake = FakePipeline()
    default_id = analysis_id(fake)

    fake.detector = FaceDetector(min_face_size=40)

    assert default_id.startswith("fake-model|FaceDetector ")
    assert "min_face_size=20" in default_id
    assert analysis_id(fake) != default_id


# --- Plots ----------------------------------------------------------------------------------------------------


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    curve = det_curve(MATED_RANKS, MATED_SCORES, NON_MATED_SCORES)

    cmc_path = plot_cmc(
        {"masked": cmc_curve(MATED_RANKS), "unmasked": [0.9] * 20}, tmp_path / "out" / "cmc.png", title="m"
    )
    det_path = plot_det(
        {"masked": (curve.fpir, curve.fnir)}, tmp_path / "out" / "det.png", title="m", target_fpirs=[0.01]
    )

    for path in (cmc_path, det_path):
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
            assert image.size[0] > 100


def test_det_plot_with_only_zero_fpir(tmp_path: Path) -> None:
    path = plot_det({"masked": ([0.0], [1.0])}, tmp_path / "det.png", title="m")

    assert path.read_bytes().startswith(PNG_SIGNATURE)


# --- CLI options ----------------------------------------------------------------------------------------------


def test_cli_builds_explicit_protocol(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    alice = touch_images(gallery / "alice", numbered(8))
    touch_images(gallery / "bob", numbered(3))
    masked = touch_images(tmp_path / "masked" / "alice", numbered(1))
    strangers = touch_images(tmp_path / "strangers" / "0000", ["0000.jpg"])
    touch_images(tmp_path / "lfw" / "Alice", ["Alice_0001.jpg"])
    others = touch_images(tmp_path / "lfw" / "Zed", ["Zed_0001.jpg"])
    args = ident_parser().parse_args(
        ["ident", "--gallery", str(gallery), "--gallery-size", "2",
         "--mated", f"masked={tmp_path / 'masked'}", "--non-mated", f"masked={tmp_path / 'strangers'}",
         "--mated-from-gallery", "unmasked=6-7", "--non-mated-people", f"unmasked={tmp_path / 'lfw'}"]
    )  # fmt: skip

    protocol = build_protocol(args, Settings())

    assert protocol.gallery["alice"] == tuple(alice[:2])
    masked_set, unmasked_set = protocol.probe_sets
    assert masked_set.mated == (MatedProbe(masked[0], "alice"),)
    assert masked_set.non_mated == tuple(strangers)
    assert unmasked_set.mated == tuple(MatedProbe(path, "alice") for path in alice[5:7])
    assert unmasked_set.non_mated == tuple(others)


def test_cli_standard_uses_settings_folder(tmp_path: Path) -> None:
    root = make_fake_datasets(tmp_path)
    args = ident_parser().parse_args(["ident", "--standard", "--max-non-mated-people", "1"])

    protocol = build_protocol(args, Settings(datasets_dir=root))

    assert [probe_set.name for probe_set in protocol.probe_sets] == ["masked", "unmasked"]
    assert len(protocol.probe_sets[1].non_mated) == 1


def test_cli_rejects_standard_with_probe_options(tmp_path: Path) -> None:
    args = ident_parser().parse_args(["ident", "--standard", str(tmp_path), "--mated", f"x={tmp_path}"])

    with pytest.raises(DatasetError, match="--standard builds its own probe sets"):
        build_protocol(args, Settings())


def test_cli_rejects_non_mated_without_mated_set(tmp_path: Path) -> None:
    touch_images(tmp_path / "gallery" / "alice", numbered(6))
    args = ident_parser().parse_args(
        ["ident", "--gallery", str(tmp_path / "gallery"), "--mated-from-gallery", "unmasked=6-6",
         "--non-mated", f"masked={tmp_path}"]
    )  # fmt: skip

    with pytest.raises(DatasetError, match="no mated probe set"):
        build_protocol(args, Settings())


@pytest.mark.parametrize(
    "value",
    ["unmasked", "unmasked=6", "unmasked=0-3", "unmasked=7-6", "unmasked=a-b", "=6-10"],
    ids=["no-range", "no-dash", "zero", "reversed", "letters", "no-name"],
)
def test_cli_rejects_bad_range(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ident_parser().parse_args(["ident", "--gallery", "g", "--mated-from-gallery", value])

    assert "FIRST-LAST" in capsys.readouterr().err


def test_cli_needs_gallery_or_standard(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ident_parser().parse_args(["ident", "--mated", "x=y"])

    assert "--standard" in capsys.readouterr().err


# --- End to end on real photos --------------------------------------------------------------------------------

REAL_PEOPLE = ["bill_gates", "bruno_fernandes", "carlos_sainz", "cory_booker"]
MASKED_PHOTOS = 6  # the first 2 masked photos of each, and two of them have only 1


@pytest.fixture(scope="module")
def real_subset(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy 4 people's first 3 neutral photos and first 2 masked photos, plus 3 strangers, once per module.

    The folder also holds ``cache/``, the embedding cache the end-to-end tests share,
    so that the real photos are analysed once.
    """
    root = tmp_path_factory.mktemp("real-subset")
    for name in REAL_PEOPLE:
        for kind, count in [("neutral", 3), ("masked", 2)]:
            target = root / kind / name
            target.mkdir(parents=True)
            for path in list_images(datasets_dir / "rof" / kind / name)[:count]:
                shutil.copy(path, target / path.name)
    target = root / "strangers"
    target.mkdir()
    for path in select_unlabelled(datasets_dir / "masked-strangers")[:3]:
        shutil.copy(path, target / path.name)
    return root


@pytest.mark.datasets
def test_real_subset_end_to_end(real_subset: Path, pipeline: FacePipeline) -> None:
    root = real_subset
    protocol = IdentificationProtocol(
        select_gallery(root / "neutral", 2),
        (
            ProbeSet("masked", select_mated(root / "masked"), select_unlabelled(root / "strangers")),
            ProbeSet("unmasked", select_mated(root / "neutral", start=2)),
        ),
    )
    settings = Settings()
    options = {"max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels}

    with EmbeddingCache(root / "cache" / "embeddings.sqlite3") as cache:
        first = evaluate_identification(pipeline, protocol, cache=cache, show_progress=False, **options)
        again = evaluate_identification(pipeline, protocol, cache=cache, show_progress=False, **options)

    masked, unmasked = first.probe_sets
    assert first.model_id == pipeline.model_id
    assert first.gallery_people == 4
    assert first.gallery_photos == 8
    assert len(masked.mated) == MASKED_PHOTOS
    assert len(masked.non_mated) == 3
    assert len(unmasked.mated) == 4
    assert 0.0 <= masked.rank1 <= masked.rank5 <= 1.0
    assert unmasked.rank1 >= 0.5  # unmasked neutral photos of 4 people are easy
    assert len(masked.operating_points) == 2
    assert masked.operating_points[1].below_resolution  # 0.1% of 3 non-mated probes
    for cached, fresh in zip(again.probe_sets, first.probe_sets, strict=True):
        assert cached.rank1 == fresh.rank1
        assert [item.score for item in cached.mated] == pytest.approx([item.score for item in fresh.mated], nan_ok=True)


@pytest.mark.datasets
async def test_cli_handler_end_to_end(
    real_subset: Path, pipeline: FacePipeline, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = real_subset
    monkeypatch.setattr(eval_ident_command.FacePipeline, "from_settings", lambda _settings: pipeline)
    out = tmp_path / "plots"
    args = ident_parser().parse_args(
        ["ident", "--gallery", str(root / "neutral"), "--gallery-size", "2",
         "--mated", f"masked={root / 'masked'}", "--non-mated", f"masked={root / 'strangers'}",
         "--mated-from-gallery", "unmasked=3-3", "--out", str(out), "--cache-dir", str(root / "cache"), "--json"]
    )  # fmt: skip

    result = await eval_ident(args, settings)

    assert result.exit_code == 0
    assert f"masked: {MASKED_PHOTOS} mated, 3 non-mated probes" in result.text
    assert "unmasked: 4 mated, 0 non-mated probes" in result.text
    data = json.loads(json.dumps(result.data, allow_nan=False))
    assert [item["name"] for item in data["probe_sets"]] == ["masked", "unmasked"]
    assert len(data["probe_sets"][0]["mated_probes"]) == MASKED_PHOTOS
    assert data["probe_sets"][1]["det"] is None
    assert (out / "cmc.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "det.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (root / "cache" / "embeddings.sqlite3").is_file()


def test_list_images_follows_symlinked_folders_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    touch_images(real / "batch", ["a.jpg", "b.png"])
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "linked").symlink_to(real / "batch", target_is_directory=True)
    (real / "batch" / "loop").symlink_to(real, target_is_directory=True)

    found = list_images(tree, recursive=True)

    assert [path.name for path in found] == ["a.jpg", "b.png"]
