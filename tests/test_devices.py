"""Tests for resolving the configured compute device."""

import pytest
import torch

from core.devices import torch_device
from core.errors import ConfigurationError


def test_cpu_device_resolves() -> None:
    assert torch_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_gpu_rejected() -> None:
    with pytest.raises(ConfigurationError, match="CUDA is not available; use --device cpu"):
        torch_device("cuda")


def test_invalid_device_name_rejected() -> None:
    with pytest.raises(ConfigurationError, match="invalid device 'gpu0'"):
        torch_device("gpu0")
