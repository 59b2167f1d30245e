"""Matplotlib, imported only when a plot is drawn, and PNGs written atomically."""

from __future__ import annotations

import io

from ._atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path):
    """Render ``fig`` to PNG in memory, close it, and write the file atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
