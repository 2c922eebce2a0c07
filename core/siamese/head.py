"""The twin network's trainable head: FaceNet's last blocks on top of the cached trunk output."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn

from core.siamese.trunk import TRUNK_CHANNELS, check_layer

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 512
# Block8 residual scale and last_bn epsilon of facenet-pytorch's InceptionResnetV1 (version 2.6).
BLOCK8_SCALE = 0.20
LAST_BN_EPS = 0.001


class SpatialGate(nn.Module):
    """Per-position weights ``1 + tanh(conv1x1(x))`` on a feature map, such as more weight on the eyes.

    The convolution starts at zero, so the untrained gate passes its input through unchanged.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * (1.0 + torch.tanh(self.conv(features)))


def _blocks_after(layer: str) -> nn.Sequential:
    from facenet_pytorch.models.inception_resnet_v1 import Block8

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    if layer == "mixed_7a":
        blocks["repeat_3"] = nn.Sequential(*(Block8(scale=BLOCK8_SCALE) for _ in range(5)))
    blocks["block8"] = Block8(noReLU=True)
    return nn.Sequential(blocks)


class SiameseHead(nn.Module):
    """FaceNet's layers after the trunk, plus a spatial gate before pooling.

    ``forward`` maps (N, 1792, 3, 3) trunk outputs to (N, 512) descriptors before L2
    normalisation, and :meth:`embed` normalises them.

    Args:
        layer: the trunk's last stage, which decides which blocks the head repeats.
    """

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = check_layer(layer)
        self.blocks = _blocks_after(layer)
        self.gate = SpatialGate(TRUNK_CHANNELS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(TRUNK_CHANNELS, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=LAST_BN_EPS)

    @classmethod
    def from_base(cls, model: nn.Module, layer: str) -> SiameseHead:
        """Build a head whose weights are copies of ``model``'s (a loaded InceptionResnetV1).

        With the zero-initialised gate, the new head reproduces the base network's output.
        """
        head = cls(layer)
        for name, block in head.blocks.named_children():
            block.load_state_dict(getattr(model, name).state_dict())
        head.last_linear.load_state_dict(model.last_linear.state_dict())
        head.last_bn.load_state_dict(model.last_bn.state_dict())
        return head.eval()

    def train(self, mode: bool = True) -> SiameseHead:
        """Set training mode, but keep every batch norm on the base network's running statistics.

        Batches of a few identities would give noisy statistics, so they stay frozen.
        """
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, trunk_output: torch.Tensor) -> torch.Tensor:
        features = self.gate(self.blocks(trunk_output))
        pooled = self.pool(features).flatten(1)
        return self.last_bn(self.last_linear(pooled))

    def embed(self, trunk_output: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised (N, 512) descriptors."""
        return nn.functional.normalize(self(trunk_output), dim=1)
