"""gpuclust.device: resolve_device."""

import logging

import pytest
import torch

from gpuclust import resolve_device


def test_auto_resolves_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="gpuclust"):
        dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "resolved to" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["tpu", "gpu0", "mps"])
def test_unknown_device(bad):
    with pytest.raises(ValueError, match="device="):
        resolve_device(bad)


def test_device_type_error():
    with pytest.raises(TypeError):
        resolve_device(3)
