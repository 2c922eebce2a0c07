"""Trunk, trained head and base network run together as a :class:`~core.backbones.Backbone`.

The model's descriptor has two parts (see :mod:`core.descriptors`): the trained head's,
on which masked probes are compared, and the base network's, on which unmasked probes
are compared. The head is trained only to bring masked faces to their person, so
unmasked faces keep the base network's accuracy. Both parts share the trunk and
the head's layers cost about 1% of its compute, so the second part is nearly free.

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
from core.descriptors import DescriptorLayout
from core.settings import Settings
from core.siamese.head import SiameseHead
from core.siamese.model_file import load_head
from core.siamese.trunk import FaceNetTrunk, load_facenet

logger = logging.getLogger(__name__)


class TrunkWithHead(nn.Module):
    """The frozen trunk followed by the trained head and by the base network's own last layers.

    It returns the head's and the base network's unit descriptors side by side, (N, 1024);
    :class:`~core.embedding.Embedder` averages in the mirrored crop and scales each part
    as :mod:`core.descriptors` describes. The base layers' pooling (``base.pool``) is the
    backbone's feature layer, so a mask classifier trained on the base network's pooled
    features still applies.
    """

    def __init__(self, trunk: FaceNetTrunk, head: SiameseHead, base: SiameseHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.base = base

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        trunk_output = self.trunk(batch)
        return torch.cat([self.head.embed(trunk_output), self.base.embed(trunk_output)], dim=1)


SHIPPED_HEAD_FILE = "siamese_head.pt"
# Added to the head's model id, because the descriptor contains the base network's part too.
ROUTED_SUFFIX = "+two-part"


def shipped_head_path() -> Path:
    """Return the path of the head shipped with maskid, in the ``core/data`` package data."""
    return Path(str(resources.files("core") / "data" / SHIPPED_HEAD_FILE))


class SiameseBackbone:
    """FaceNet's trunk with a head from ``maskid train siamese`` and FaceNet's own last layers.

    The head file is read at construction, so its model id is known before the
    network loads. The FaceNet weights load on :meth:`load`. The pooled features
    (:attr:`feature_layer`) are the base network's, not the head's.

    Args:
        settings: where the FaceNet weights are.
        head_path: the head file.
    """

    input_size = FaceNetCasia.input_size
    layout = DescriptorLayout((FaceNetCasia.embedding_dim, FaceNetCasia.embedding_dim), masked_part=0, unmasked_part=1)
    embedding_dim = layout.dim
    # The head's masked scores run higher than the base network's: 0.69 is the 1% FPIR
    # threshold of the masked benchmark (docs/benchmarks.md) with the shipped head.
    masked_threshold = 0.67
    # Masked probe against unmasked photo on the head's part: 1% of the pairs of different
    # people on the rof benchmark reach 0.50, as 0.40 does with the base network.
    masked_verify_threshold = 0.50
    feature_layer = "base.pool"
    feature_dim = FaceNetCasia.feature_dim
    feature_model_id = FaceNetCasia.model_id

    def __init__(self, settings: Settings, head_path: Path) -> None:
        self.settings = settings
        self.head, self.info, head_id = load_head(head_path)
        self.model_id = f"{head_id}{ROUTED_SUFFIX}"
        base_id = FaceNetCasia.model_id
        if self.info.base_model_id != base_id:
            raise ValueError(f"head {head_path} was trained on {self.info.base_model_id}, not on {base_id}")
        self._base = FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir)

    def load(self, device: torch.device) -> nn.Module:
        base = load_facenet(self.settings)
        trunk = FaceNetTrunk(base, self.info.layer)
        base_layers = SiameseHead.from_base(base, self.info.layer)
        return TrunkWithHead(trunk, self.head, base_layers).to(device).eval()

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        return self._base.preprocess(crops)
