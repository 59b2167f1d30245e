"""What machine and software a result came from, recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from .._version import __version__


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit the code came from: ``$GPUCLUST_COMMIT`` (set where ``.git`` does not travel), else git's."""
    if os.environ.get("GPUCLUST_COMMIT"):
        return os.environ["GPUCLUST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(device: torch.device) -> str:
    """The card's name on CUDA ("NVIDIA H200", ...), else the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device: torch.device) -> dict:
    """Versions and hardware, recorded with every result."""
    import sklearn

    return {
        "gpuclust": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "cpu_count": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_name": cpu_name(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "git_commit": git_commit(),
    }
