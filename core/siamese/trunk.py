"""The frozen FaceNet trunk: Inception-ResNet-v1 run up to a chosen layer."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from core.backbones import FaceNetCasia
from core.devices import torch_device
from core.facenet_weights import build_model, load_facenet_state_dict
from core.settings import Settings

logger = logging.getLogger(__name__)

# Children of facenet-pytorch's InceptionResnetV1 in the order its forward() runs them,
# up to the last convolutional block.
FACENET_STAGES = (
    "conv2d_1a",
    "conv2d_2a",
    "conv2d_2b",
    "maxpool_3a",
    "conv2d_3b",
    "conv2d_4a",
    "conv2d_4b",
    "repeat_1",
    "mixed_6a",
    "repeat_2",
    "mixed_7a",
    "repeat_3",
)

# Layers the trunk may end at. Both output (N, 1792, 3, 3) for 160 x 160 crops. The head
# repeats whatever follows: block8 alone after repeat_3, or repeat_3 and block8 after mixed_7a.
TRUNK_LAYERS = ("repeat_3", "mixed_7a")
DEFAULT_TRUNK_LAYER = "repeat_3"
TRUNK_CHANNELS = 1792


def check_layer(layer: str) -> str:
    """Return ``layer`` if the trunk can end there, or raise ValueError naming the choices."""
    if layer not in TRUNK_LAYERS:
        raise ValueError(f"unsupported trunk layer {layer!r}; use one of {', '.join(TRUNK_LAYERS)}")
    return layer


class FaceNetTrunk(nn.Module):
    """The stages of a loaded InceptionResnetV1 from its input up to and including ``layer``.

    The modules are shared with ``model``, not copied.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        stop = FACENET_STAGES.index(check_layer(layer)) + 1
        self.layer = layer
        self.stages = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in FACENET_STAGES[:stop]))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.stages(batch)


def load_facenet(settings: Settings) -> nn.Module:
    """Load the base FaceNet network on the CPU in eval mode."""
    return build_model(load_facenet_state_dict(settings.facenet_graph, settings.cache_dir))


class TrunkRunner:
    """Run the frozen trunk on aligned crops in batches. The network loads on first use.

    Args:
        settings: FaceNet weights, device, batch size and thread count.
        layer: the last trunk stage, one of :data:`TRUNK_LAYERS`.
    """

    def __init__(self, settings: Settings, layer: str = DEFAULT_TRUNK_LAYER) -> None:
        self.settings = settings
        self.layer = check_layer(layer)
        self.backbone = FaceNetCasia(graph_path=settings.facenet_graph, cache_dir=settings.cache_dir)
        self._trunk: FaceNetTrunk | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Id of the base network whose trunk this runs, without test-time flip."""
        return self.backbone.model_id

    def _load(self) -> FaceNetTrunk:
        with self._lock:
            if self._trunk is None:
                if self.settings.torch_threads:
                    torch.set_num_threads(self.settings.torch_threads)
                logger.info("loading the %s trunk up to %s", self.model_id, self.layer)
                device = torch_device(self.settings.device)
                self._trunk = FaceNetTrunk(load_facenet(self.settings), self.layer).to(device).eval()
            return self._trunk

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Return the trunk output of (N, 160, 160, 3) uint8 RGB crops as (N, 1792, 3, 3) float16."""
        size = self.backbone.input_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"expected (N, {size}, {size}, 3) uint8 crops, got shape {crops.shape} dtype {crops.dtype}"
            )
        trunk = self._load()
        device = next(trunk.parameters()).device
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.settings.batch_size):
                batch = self.backbone.preprocess(crops[start : start + self.settings.batch_size]).to(device)
                outputs.append(trunk(batch).cpu().numpy().astype(np.float16))
        if not outputs:
            return np.zeros((0, TRUNK_CHANNELS, 3, 3), dtype=np.float16)
        return np.concatenate(outputs)
