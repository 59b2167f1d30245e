"""Optional libraries behind one availability check each, with the install hint in the error."""

from __future__ import annotations

import importlib
import logging

import torch

logger = logging.getLogger("gpuclust")

INSTALL_HINTS = {
    "cuml": "cuML is not installed: pip install 'gpuclust[cuml]' (or cuml-cu12 from pypi.nvidia.com; "
    "see https://docs.rapids.ai/install), on a machine with an NVIDIA GPU.",
    "cupy": "CuPy is not installed: pip install 'gpuclust[gpu]' (cupy-cuda12x).",
}


def optional_import(name: str):
    """Import ``name`` or return None (any import-time failure counts as not installed)."""
    try:
        return importlib.import_module(name)
    except Exception:  # cuML raises more than ImportError on machines without a driver
        return None


def require(name: str):
    """Import ``name`` or raise ImportError with the install hint."""
    module = optional_import(name)
    if module is None:
        raise ImportError(INSTALL_HINTS.get(name, f"{name} is not installed."))
    return module


def cuml_available() -> bool:
    return torch.cuda.is_available() and optional_import("cuml") is not None
