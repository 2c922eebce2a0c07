"""Batched, thread-safe inference of a :class:`~core.backbones.Backbone` on aligned crops."""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from core.backbones import Backbone
from core.devices import torch_device

logger = logging.getLogger(__name__)


class Embedder:
    """Turn aligned face crops into L2-normalised float32 descriptors.

    Args:
        backbone: the network and its preprocessing.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        batch_size: crops per forward pass.
        flip: also embed each crop mirrored left-right and average the two
            descriptors before normalising (test-time augmentation).
        torch_threads: intra-op threads for PyTorch on the CPU; 0 keeps its default.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        flip: bool = True,
        torch_threads: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.backbone = backbone
        self.device = device
        self.batch_size = batch_size
        self.flip = flip
        self.torch_threads = torch_threads
        self._network: torch.nn.Module | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Embedding space id: the backbone's, plus ``+flip`` when mirrored crops are averaged in."""
        return f"{self.backbone.model_id}+flip" if self.flip else self.backbone.model_id

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def _load(self) -> torch.nn.Module:
        with self._lock:
            if self._network is None:
                device = torch_device(self.device)
                if self.torch_threads:
                    torch.set_num_threads(self.torch_threads)
                logger.info("loading %s on %s", self.backbone.model_id, device)
                self._network = self.backbone.load(device)
            return self._network

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed (N, S, S, 3) uint8 RGB crops.

        Returns:
            (N, D) float32 array of unit-length rows; (0, D) for an empty input.
        """
        size = self.backbone.input_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"expected (N, {size}, {size}, 3) uint8 crops, got shape {crops.shape} dtype {crops.dtype}"
            )
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)

        network = self._load()
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = self.backbone.preprocess(crops[start : start + self.batch_size])
            batch = batch.to(next(network.parameters()).device)
            outputs.append(self._forward(network, batch))
        return np.concatenate(outputs)

    def _forward(self, network: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            if self.flip:
                # One pass over both orientations keeps the batch large.
                both = network(torch.cat([batch, batch.flip(3)]))
                descriptors = both[: len(batch)] + both[len(batch) :]
            else:
                descriptors = network(batch)
            descriptors = torch.nn.functional.normalize(descriptors, dim=1)
        return descriptors.float().cpu().numpy()
