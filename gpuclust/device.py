"""Devices: resolve the ``device=`` argument, and synchronize before clocks."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("gpuclust")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device into a device.

    ``"auto"`` (or None) picks CUDA when a GPU is usable, else the CPU. Asking for
    CUDA on a machine without one raises ValueError rather than failing later.

    Parameters
    ----------
    device : str, torch.device or None, default="auto"

    Returns
    -------
    torch.device
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device='auto' resolved to %s", resolved)
        return resolved
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}.")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was asked for but no CUDA GPU is available "
                "(torch.cuda.is_available() is False); use device='cpu' or 'auto'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device={str(device)!r} is not supported; use 'auto', 'cpu' or 'cuda'.")
    logger.info("using device %s", resolved)
    return resolved


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device``; a no-op on the CPU. Call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
