"""``torch.load`` with ``weights_only=True``, and one line saying why a file was refused."""

from __future__ import annotations

import pickle
import re

import torch


def load_plain(path, map_location="cpu"):
    """Tensors and plain containers from ``path``; anything else is refused without running it."""
    return torch.load(path, map_location=map_location, weights_only=True)


def why_refused(exc: BaseException) -> str:
    """What ``load_plain`` found wrong with a file, in one line.

    torch's own message runs to six lines and tells how to load the file with ``weights_only=False``
    (which runs whatever code the file carries); this names what the file holds, and nothing more.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return f"it holds {found.group(1) if found else 'Python objects'}; gpuclust loads only tensors and plain data"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
