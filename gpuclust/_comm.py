"""Collective operations the estimators' loops call; a no-op for one process.

The KMeans and GaussianMixture loops are written once against this interface.
In one process every call returns its input. Under torch.distributed
(:class:`gpuclust.distributed.TorchDistComm`) the same calls all-reduce the
sufficient statistics across ranks.
"""

from __future__ import annotations

import torch


class LocalComm:
    """One process holds all the data."""

    rank = 0
    world_size = 1

    def sum_(self, tensor: torch.Tensor, what: str = "") -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place; returns it."""
        return tensor

    def sum_float(self, value: float, what: str = "") -> float:
        return float(value)

    def broadcast_(self, tensor: torch.Tensor, src: int = 0, what: str = "") -> torch.Tensor:
        return tensor

    def gather_rows(self, tensor: torch.Tensor, what: str = "") -> torch.Tensor:
        """Concatenate every rank's rows, in rank order, on every rank."""
        return tensor

    def row_offset(self, n_local: int) -> int:
        """Global index of this rank's first row (ranks hold consecutive blocks)."""
        return 0


LOCAL = LocalComm()


def make_comm(distributed: bool):
    """The collectives for an estimator's ``distributed`` setting."""
    if not distributed:
        return LOCAL
    from .distributed import TorchDistComm

    return TorchDistComm()
