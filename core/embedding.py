"""Batched, thread-safe inference of a :class:`~core.backbones.Backbone` on aligned crops."""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from core.backbones import Backbone
from core.devices import torch_device

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


class Embedder:
    """Turn aligned face crops into L2-normalised float32 descriptors.

    Args:
        backbone: the network and its preprocessing.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        batch_size: crops per forward pass.
        flip: also embed each crop mirrored left-right and average the two
            descriptors before normalising (test-time augmentation).
        torch_threads: intra-op threads for PyTorch on the CPU; 0 keeps its default.
        precision: ``"fp32"``, ``"bf16"`` (the network runs under bfloat16 autocast on the
            CPU) or ``"auto"``: bf16 on a CPU with native bfloat16 instructions, fp32
            elsewhere and on CUDA. Descriptors stay float32 either way.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        flip: bool = True,
        torch_threads: int = 0,
        precision: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.backbone = backbone
        self.device = device
        self.batch_size = batch_size
        self.flip = flip
        self.torch_threads = torch_threads
        self.precision = precision
        self._network: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self._captured = threading.local()

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
                logger.info("loading %s on %s (%s)", self.backbone.model_id, device, self.resolved_precision)
                network = self.backbone.load(device)
                # Each worker thread reads the pooled features of its own forward pass.
                network.get_submodule(self.backbone.feature_layer).register_forward_hook(self._capture)
                self._network = network
            return self._network

    @property
    def resolved_precision(self) -> str:
        """The arithmetic the network runs in: ``"bf16"`` or ``"fp32"``, with ``"auto"`` resolved."""
        if self.precision != "auto":
            return self.precision
        if torch_device(self.device).type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"

    def _capture(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._captured.output = output

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed (N, S, S, 3) uint8 RGB crops.

        Returns:
            (N, D) float32 array of unit-length rows; (0, D) for an empty input.
        """
        return self.embed_with_features(crops)[0]

    def embed_with_features(self, crops: np.ndarray, *, flip: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embed (N, S, S, 3) uint8 RGB crops and return the trunk's pooled features too.

        The pooled features are the backbone's last feature map averaged over space,
        the layer before its embedding projection (see
        :attr:`core.backbones.Backbone.feature_layer`). They describe what the face
        looks like, not only who it is, which suits attribute classifiers such as mask
        detection. With ``flip`` they are averaged over both orientations.

        Args:
            flip: average in the mirrored crops for this call; None uses :attr:`flip`.

        Returns:
            (N, D) float32 unit-length descriptors and (N, F) float32 pooled features.
        """
        size = self.backbone.input_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"expected (N, {size}, {size}, 3) uint8 crops, got shape {crops.shape} dtype {crops.dtype}"
            )
        if len(crops) == 0:
            empty = np.zeros((0, self.embedding_dim), dtype=np.float32)
            return empty, np.zeros((0, self.backbone.feature_dim), dtype=np.float32)

        network = self._load()
        descriptors, features = [], []
        for start in range(0, len(crops), self.batch_size):
            batch = self.backbone.preprocess(crops[start : start + self.batch_size])
            batch = batch.to(next(network.parameters()).device)
            batch_descriptors, batch_features = self._forward(network, batch, self.flip if flip is None else flip)
            descriptors.append(batch_descriptors)
            features.append(batch_features)
        return np.concatenate(descriptors), np.concatenate(features)

    def _forward(self, network: torch.nn.Module, batch: torch.Tensor, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        bf16 = self.resolved_precision == "bf16"
        autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.inference_mode(), autocast:
            if flip:
                # One pass over both orientations keeps the batch large.
                both = network(torch.cat([batch, batch.flip(3)]))
                descriptors = both[: len(batch)] + both[len(batch) :]
            else:
                descriptors = network(batch)
            descriptors = normalize_parts(descriptors.float(), self.backbone.layout.part_sizes)
        pooled = self._captured.output.flatten(1).float()
        if flip:
            pooled = (pooled[: len(batch)] + pooled[len(batch) :]) / 2
        return descriptors.float().cpu().numpy(), pooled.float().cpu().numpy()


def normalize_parts(descriptors: torch.Tensor, part_sizes: tuple[int, ...]) -> torch.Tensor:
    """Scale each part of (N, D) descriptors to length ``1 / sqrt(parts)``, so every row has unit length.

    See :mod:`core.descriptors`; with one part this is plain L2 normalisation.
    """
    parts = torch.split(descriptors, list(part_sizes), dim=1)
    scale = 1.0 / len(parts) ** 0.5
    return torch.cat([torch.nn.functional.normalize(part, dim=1) * scale for part in parts], dim=1)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Return whether this CPU has bfloat16 instructions that oneDNN uses (x86 AVX512-BF16 or AMX-BF16).

    oneDNN emulates bfloat16 on other AVX-512 CPUs, where it is no faster than float32. The
    flags are read from ``/proc/cpuinfo``, so it returns False outside Linux.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})
