"""Two-part descriptors: normalisation per part and the probe's comparison on one part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.descriptors import DescriptorLayout, single_part
from core.embedding import normalize_parts

LAYOUT = DescriptorLayout((4, 4), masked_part=0, unmasked_part=1)


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


def stored(head: np.ndarray, base: np.ndarray) -> np.ndarray:
    return np.concatenate([head, base]) / np.sqrt(2)


def test_normalize_parts_gives_unit_parts_and_unit_rows() -> None:
    raw = torch.tensor([[3.0, 0.0, 0.0, 4.0, 0.0, 2.0, 0.0, 0.0]])

    normalised = normalize_parts(raw, (4, 4))

    assert torch.linalg.norm(normalised, dim=1).item() == pytest.approx(1.0)
    assert torch.linalg.norm(normalised[:, :4]).item() == pytest.approx(1 / np.sqrt(2))
    assert torch.linalg.norm(normalised[:, 4:]).item() == pytest.approx(1 / np.sqrt(2))


def test_probe_vector_picks_part() -> None:
    head_a, base_a = unit([1, 0, 0, 0]), unit([1, 1, 0, 0])
    head_b, base_b = unit([1, 1, 0, 0]), unit([0, 0, 1, 0])
    probe, template = stored(head_a, base_a), stored(head_b, base_b)

    masked = LAYOUT.probe_vector(probe, masked=True) @ template
    unmasked = LAYOUT.probe_vector(probe, masked=False) @ template

    assert masked == pytest.approx(head_a @ head_b)
    assert unmasked == pytest.approx(base_a @ base_b)
    assert LAYOUT.similarity(probe, template, masked=True) == pytest.approx(masked)
    # Two stored descriptors compare as the mean of their parts' cosines.
    assert probe @ template == pytest.approx((head_a @ head_b + base_a @ base_b) / 2)


def test_single_part_probe_unchanged() -> None:
    vector = unit([1, 2, 3])

    assert single_part(3).probe_vector(vector, masked=True) is vector
    assert single_part(3).dim == 3


@pytest.mark.parametrize(
    ("sizes", "masked_part"),
    [((), 0), ((4, 0), 0), ((4, 4), 2)],
)
def test_layout_rejects_bad_parts(sizes: tuple[int, ...], masked_part: int) -> None:
    with pytest.raises(ValueError, match="part"):
        DescriptorLayout(sizes, masked_part=masked_part)
