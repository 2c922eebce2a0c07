"""Descriptors made of parts, and the part a probe is compared on.

A model may output several unit descriptors of one face, each from its own embedding
layer: the Siamese model outputs its fine-tuned head's descriptor, which places masked
faces well, and the base network's, which places unmasked faces best. The parts are
concatenated and each is scaled by ``1 / sqrt(parts)``, so the whole is unit length and
the dot product of two stored descriptors is the mean of their parts' cosine
similarities.

A probe is compared on one part only: :meth:`DescriptorLayout.probe_vector` zeroes the
other parts and scales the kept one so that its dot product with a stored template is
exactly that part's cosine similarity. A masked probe uses ``masked_part``, any other
probe ``unmasked_part``. A single-part layout leaves every vector as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DescriptorLayout:
    """Part lengths of a model's descriptor, and which part each kind of probe is compared on.

    Attributes:
        part_sizes: length of each part, in descriptor order.
        masked_part: index of the part a masked probe is compared on.
        unmasked_part: index of the part any other probe is compared on.
    """

    part_sizes: tuple[int, ...]
    masked_part: int = 0
    unmasked_part: int = 0

    def __post_init__(self) -> None:
        if not self.part_sizes or min(self.part_sizes) < 1:
            raise ValueError(f"part_sizes must be positive lengths, got {self.part_sizes}")
        for name in ("masked_part", "unmasked_part"):
            if not 0 <= getattr(self, name) < len(self.part_sizes):
                raise ValueError(f"{name} must index one of {len(self.part_sizes)} parts, got {getattr(self, name)}")

    @property
    def dim(self) -> int:
        return sum(self.part_sizes)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """Start and end column of each part."""
        ends = np.cumsum(self.part_sizes).tolist()
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def part_for(self, masked: bool) -> int:
        return self.masked_part if masked else self.unmasked_part

    def probe_vector(self, embedding: np.ndarray, masked: bool) -> np.ndarray:
        """Return the (dim,) vector whose dot product with a stored descriptor is the cosine of the probe's part.

        Args:
            embedding: the probe's stored-form descriptor.
            masked: whether the probe wears a mask, which picks the part.
        """
        if len(self.part_sizes) == 1:
            return embedding
        start, end = self.bounds[self.part_for(masked)]
        vector = np.zeros_like(embedding)
        vector[start:end] = embedding[start:end] * len(self.part_sizes)
        return vector

    def similarity(self, first: np.ndarray, second: np.ndarray, masked: bool) -> float:
        """Return the cosine similarity of two stored-form descriptors on the part for ``masked``."""
        return float(self.probe_vector(first, masked) @ second)


def single_part(dim: int) -> DescriptorLayout:
    """Return the layout of a plain descriptor of ``dim`` values."""
    return DescriptorLayout((dim,))
