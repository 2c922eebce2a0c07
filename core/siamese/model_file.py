"""The trained head's file: weights plus the metadata needed to rebuild and trust it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelError
from core.siamese.cache import write_atomically
from core.siamese.head import SiameseHead

logger = logging.getLogger(__name__)

FILE_FORMAT = 1
MAX_FILE_BYTES = 30 * 1024 * 1024


@dataclass(frozen=True)
class SiameseModelInfo:
    """Provenance and validation numbers of a trained head.

    Attributes:
        base_model_id: id of the FaceNet network whose trunk feeds the head.
        layer: the trunk's last stage.
        loss: ``"contrastive"`` or ``"triplet"``.
        seed: seed of the split and of batch sampling.
        dataset: the training folder.
        training_people: people the head was trained on.
        validation_people: people held out for validation.
        masks_per_photo: synthetic-mask variants per training photo.
        best_epoch: the epoch whose weights were kept.
        validation: validation numbers, such as ``{"masked_rank1": 0.8}``, of the base and the trained head.
    """

    base_model_id: str
    layer: str
    loss: str
    seed: int
    dataset: str
    training_people: int
    validation_people: int
    masks_per_photo: int
    best_epoch: int
    validation: dict[str, float] = field(default_factory=dict)


def head_model_id(base_model_id: str, head: SiameseHead) -> str:
    """Return the descriptor-space id of trunk plus head: the base id and a hash of the head's weights."""
    digest = hashlib.sha256(head.layer.encode())
    for name, tensor in sorted(head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{base_model_id}+siamese-{digest.hexdigest()[:10]}"


def save_head(path: Path, head: SiameseHead, info: SiameseModelInfo) -> str:
    """Write the head and ``info`` to ``path`` atomically and return the model id.

    Raises:
        ModelError: the file would exceed :data:`MAX_FILE_BYTES`.
    """
    model_id = head_model_id(info.base_model_id, head)
    payload = {
        "format": FILE_FORMAT,
        "model_id": model_id,
        "info": asdict(info),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in head.state_dict().items()},
    }
    write_atomically(path, lambda temporary: torch.save(payload, temporary))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        path.unlink()
        raise ModelError(
            f"head file {path} is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit; "
            "train on the repeat_3 layer, whose head is smaller"
        )
    logger.info("saved head %s to %s (%.1f MiB)", model_id, path, size / 2**20)
    return model_id


def load_head(path: Path) -> tuple[SiameseHead, SiameseModelInfo, str]:
    """Read a head file written by :func:`save_head` and return the head in eval mode, its info and model id.

    Raises:
        ModelError: the file is missing, unreadable, of another format, or its weights do not match its id.
    """
    if path.is_dir():
        raise ModelError(f"head file {path} is a folder; pass the .pt file that `maskid train siamese --out` wrote")
    if not path.is_file():
        raise ModelError(f"head file {path} not found; train one with `maskid train siamese`")
    not_a_head = f"{path} is not a head file from `maskid train siamese`"
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise ModelError(f"{not_a_head}: PyTorch cannot load it ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or not {"format", "info", "state_dict", "model_id"} <= payload.keys():
        raise ModelError(f"{not_a_head}: it lacks the format, info, state_dict and model_id entries")
    if payload["format"] != FILE_FORMAT:
        raise ModelError(f"head file {path} has format {payload['format']!r}, but this maskid reads {FILE_FORMAT}")
    try:
        info = SiameseModelInfo(**payload["info"])
        head = SiameseHead(info.layer)
        head.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{not_a_head}: its contents do not match a head ({exc})") from exc
    head.eval()
    model_id = head_model_id(info.base_model_id, head)
    if model_id != payload["model_id"]:
        raise ModelError(f"head file {path} claims id {payload['model_id']} but its weights hash to {model_id}")
    return head, info, model_id
