"""Collective operations the estimators' loops call; a no-op for one process.

The KMeans and GaussianMixture loops are written once against this interface.
In one process every call returns its input. Under torch.distributed
(:class:`TorchDistComm`) the same calls all-reduce the
sufficient statistics across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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


LOCAL = LocalComm()


DEFAULT_TIMEOUT_SECONDS = 120


class DistributedFitError(RuntimeError):
    """A collective operation failed: a peer rank crashed, was killed, or timed out."""


class TorchDistComm(LocalComm):
    """The estimators' collectives over the default torch.distributed process group."""

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialized torch.distributed process group: launch with "
                "torchrun and call gpuclust.distributed.init_from_env() (or "
                "torch.distributed.init_process_group) before fit."
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._backend = dist.get_backend(group)

    def _run(self, what, fn, *args, **kwargs):
        try:
            work = fn(*args, group=self.group, **kwargs)
            return work
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedFitError(
                f"rank {self.rank} of {self.world_size}: the collective '{what}' failed, so a peer rank has "
                f"failed, exited or timed out; the fit is abandoned ({type(exc).__name__}: {first})"
            ) from exc

    def _on_backend_device(self, tensor):
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones via a copy).
        if self._backend == "nccl" and tensor.device.type != "cuda":
            return tensor.cuda(), True
        return tensor, False

    def sum_(self, tensor, what=""):
        t, moved = self._on_backend_device(tensor)
        self._run(what or "all_reduce", dist.all_reduce, t, op=dist.ReduceOp.SUM)
        if moved:
            tensor.copy_(t)
        return tensor

    def sum_float(self, value, what=""):
        t = torch.tensor([float(value)], dtype=torch.float64)
        return float(self.sum_(t, what)[0])

    def broadcast_(self, tensor, src=0, what=""):
        t, moved = self._on_backend_device(tensor)
        self._run(what or "broadcast", dist.broadcast, t, src=src)
        if moved:
            tensor.copy_(t)
        return tensor

    def gather_rows(self, tensor, what=""):
        counts = torch.zeros(self.world_size, dtype=torch.float64, device=tensor.device)
        counts[self.rank] = tensor.shape[0]
        self.sum_(counts, what)
        largest = int(counts.max())
        padded = torch.zeros((largest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        p, moved = self._on_backend_device(padded)
        if moved:
            parts = [q.cuda() for q in parts]
        self._run(what or "all_gather", dist.all_gather, parts, p)
        return torch.cat([q[: int(c)].to(tensor.device) for q, c in zip(parts, counts.tolist())])


def make_comm(distributed: bool):
    """The collectives for an estimator's ``distributed`` setting."""
    return TorchDistComm() if distributed else LOCAL
