"""Trunk and trained head run together as a :class:`~core.backbones.Backbone`.

With it, :class:`~core.embedding.Embedder` and :class:`~core.pipeline.FacePipeline`
embed through the fine-tuned head without changes, and the pipeline's model id names
the head, so its templates are never compared with the base model's.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.backbones import FaceNetCasia
from core.settings import Settings
from core.siamese.head import SiameseHead
from core.siamese.model_file import load_head
from core.siamese.trunk import FaceNetTrunk, load_facenet

logger = logging.getLogger(__name__)


class TrunkWithHead(nn.Module):
    """The frozen trunk followed by the trained head, plus the base network's own last blocks for features.

    Like facenet-pytorch's ``InceptionResnetV1`` (version 2.6), it returns L2-normalised
    descriptors, so test-time flip averages unit vectors exactly as for the base network.
    The base blocks run only so that ``base_pool`` (the backbone's feature layer) outputs
    the base network's pooled features: a mask classifier trained on those still applies.
    They cost about 1% of the trunk's compute for the repeat_3 layer (estimate from the
    multiply-accumulate counts of the layers).
    """

    def __init__(self, trunk: FaceNetTrunk, head: SiameseHead, base_blocks: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.base_blocks = base_blocks
        self.base_pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        trunk_output = self.trunk(batch)
        self.base_pool(self.base_blocks(trunk_output))  # read by the feature hook only
        return self.head.embed(trunk_output)


SHIPPED_HEAD_FILE = "siamese_head.pt"


def shipped_head_path() -> Path:
    """Return the path of the head shipped with maskid, in the ``core/data`` package data."""
    return Path(str(resources.files("core") / "data" / SHIPPED_HEAD_FILE))


class SiameseBackbone:
    """FaceNet's trunk with a head from ``maskid train siamese``.

    The head file is read at construction, so its model id is known before the
    network loads. The FaceNet weights load on :meth:`load`. The pooled features
    (:attr:`feature_layer`) are the base network's, not the head's.

    Args:
        settings: where the FaceNet weights are.
        head_path: the head file.
    """

    input_size = FaceNetCasia.input_size
    embedding_dim = FaceNetCasia.embedding_dim
    feature_layer = "base_pool"
    feature_dim = FaceNetCasia.feature_dim
    feature_model_id = FaceNetCasia.model_id

    def __init__(self, settings: Settings, head_path: Path) -> None:
        self.settings = settings
        self.head, self.info, self.model_id = load_head(head_path)
        base_id = FaceNetCasia.model_id
        if self.info.base_model_id != base_id:
            raise ValueError(f"head {head_path} was trained on {self.info.base_model_id}, not on {base_id}")
        self._base = FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir)

    def load(self, device: torch.device) -> nn.Module:
        base = load_facenet(self.settings)
        trunk = FaceNetTrunk(base, self.info.layer)
        base_blocks = SiameseHead.from_base(base, self.info.layer).blocks
        return TrunkWithHead(trunk, self.head, base_blocks).to(device).eval()

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        return self._base.preprocess(crops)
