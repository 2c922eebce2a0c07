"""Resolve the configured compute device, with a clear error when CUDA is missing."""

from __future__ import annotations

import torch

from core.errors import ConfigurationError


def torch_device(name: str) -> torch.device:
    """Return ``torch.device(name)`` for ``"cpu"`` or ``"cuda[:N]"``.

    Raises:
        ConfigurationError: the name is invalid, CUDA was requested but is not
            available, or the GPU index does not exist.
    """
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigurationError(f"invalid device {name!r}: {exc}; use 'cpu' or 'cuda[:N]'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPUs are visible; use a lower index"
            )
    return device
