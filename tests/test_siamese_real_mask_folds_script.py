"""Tests for the helpers of scripts/siamese_real_mask_folds.py that need no datasets."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_modules import load_script

from core.evaluation.identification import IdentificationProtocol, MatedProbe, ProbeSet

SHAPE = (4, 1, 1)


@pytest.fixture(scope="module")
def folds() -> ModuleType:
    return load_script("siamese_real_mask_folds.py")


def output(value: float) -> np.ndarray:
    """A crop's trunk outputs as the rof table stores them: the crop and its mirror image."""
    return np.stack([np.full(SHAPE, value), np.full(SHAPE, -value)]).astype(np.float16)


def test_fold_people_cover_everyone_once(folds: ModuleType) -> None:
    people = [f"person{index}" for index in range(11)]

    split = folds.fold_people(people, 3, seed=0)

    assert sorted(name for fold in split for name in fold) == sorted(people)
    assert [len(fold) for fold in split] == [4, 4, 3]
    assert split == folds.fold_people(list(reversed(people)), 3, seed=0)
    assert split != folds.fold_people(people, 3, seed=1)


def test_fold_people_rejects_too_many_folds(folds: ModuleType) -> None:
    with pytest.raises(ValueError, match="--folds 2 or fewer"):
        folds.fold_people(["a", "b"], 3, seed=0)


def test_held_out_protocol_drops_trained_people(folds: ModuleType) -> None:
    gallery = {name: (Path(f"neutral/{name}/1.jpg"),) for name in ("held", "trained", "never_masked")}
    mated = tuple(MatedProbe(Path(f"masked/{name}/1.jpg"), name) for name in ("held", "trained"))
    strangers = (Path("strangers/1.jpg"),)
    protocol = IdentificationProtocol(gallery, (ProbeSet("masked", mated, strangers),))

    held_out = folds.held_out_protocol(protocol, ["held"], ["trained"])

    assert set(held_out.gallery) == {"held", "never_masked"}
    (probe_set,) = held_out.probe_sets
    assert [probe.label for probe in probe_set.mated] == ["held"]
    assert probe_set.non_mated == strangers


def test_rof_feature_rows_real_masks_optional(folds: ModuleType) -> None:
    gallery_photo, probe_photo, masked_photo = Path("n/ann/1.jpg"), Path("n/ann/7.jpg"), Path("m/ann/1.jpg")
    table = folds.TrunkTable(
        plain={gallery_photo: output(1), probe_photo: output(2), masked_photo: output(3)},
        masked={gallery_photo: np.stack([output(4), output(5)])},
    )
    neutral, masked = {"ann": [gallery_photo, probe_photo]}, {"ann": [masked_photo]}

    synthetic = folds.rof_feature_rows(table, neutral, masked, ["ann"], real=False)
    real = folds.rof_feature_rows(table, neutral, masked, ["ann"], real=True)

    assert synthetic.people == ("rof/ann",)
    assert synthetic.features[:, 0, 0, 0].tolist() == [1, 4, 5, 2]
    assert synthetic.masked.tolist() == [False, True, True, False]
    assert synthetic.photos.tolist() == [0, 0, 0, 1]
    assert real.features[:, 0, 0, 0].tolist() == [1, 4, 5, 2, 3, -3]
    assert real.masked.tolist() == [False, True, True, False, True, True]
    assert real.photos.tolist() == [0, 0, 0, 1, 2, 2]


def test_concatenate_renumbers_people_and_photos(folds: ModuleType) -> None:
    first = folds.numbered_feature_set(
        [folds.CropRecord("zoe", Path("zoe/1.jpg"), 0, None, ""), folds.CropRecord("zoe", Path("zoe/1.jpg"), 1, 7, "")],
        np.zeros((2, *SHAPE)),
    )
    second = folds.numbered_feature_set(
        [folds.CropRecord("rof/ann", Path("ann/1.jpg"), 0, None, "")], np.ones((1, *SHAPE))
    )

    joined = folds.concatenate(first, second)

    assert joined.people == ("rof/ann", "zoe")
    assert joined.labels.tolist() == [1, 1, 0]
    assert joined.photos.tolist() == [0, 0, 1]
    assert joined.masked.tolist() == [False, True, False]
    assert joined.features.dtype == np.float16
    assert joined.features[:, 0, 0, 0].tolist() == [0, 0, 1]
