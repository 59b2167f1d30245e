"""Data-parallel KMeans and GaussianMixture with torch.distributed (NCCL on GPUs, gloo on CPUs).

Each rank holds a block of rows and runs the assignment or E-step on it; the
sufficient statistics (counts, sums, second moments, inertia, log-likelihood)
are all-reduced, so every rank ends with identical parameters. Initialization is
consistent across ranks: samples are gathered in rank order, seeded on rank 0
and broadcast.

Launch with torchrun, one process per GPU (or per CPU worker)::

    torchrun --nproc-per-node=2 -m gpuclust.cli cluster --distributed --algorithm gmm \\
        --covariance-type full --features feats.npy

or from your own script::

    from gpuclust.distributed import init_from_env, shard_rows
    init_from_env()                      # reads torchrun's RANK, WORLD_SIZE, MASTER_ADDR, ...
    X_local = shard_rows(X)              # this rank's block of rows
    gmm = GaussianMixture(10, distributed=True).fit(X_local)
    # or: labels = fit_on_shards(GaussianMixture(10, distributed=True), X)  # all labels, every rank

A rank that fails or disappears makes every other rank raise
:class:`DistributedFitError` within the process group's timeout instead of hanging.

Equal to a single-process fit on the concatenated rows (to rounding): explicit
initial parameters, and, while all rows fit in the seeding sample (2**25 values,
``gpuclust._kmeans_core.INIT_SAMPLE_ELEMENTS``), k-means++, ``init="random"``
(KMeans) and the GMM inits "kmeans", "k-means++" and "random_from_data". Beyond
that, seeding uses a uniform sample drawn from every rank. The GMM's ``init_params="random"``
draws each rank's responsibilities from its own copy of the random state, so it
is consistent across ranks but not equal to a single-process fit.
"""

from __future__ import annotations

import datetime
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

from ._comm import LocalComm

logger = logging.getLogger("gpuclust")

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

    def row_offset(self, n_local):
        counts = torch.zeros(self.world_size, dtype=torch.float64)
        counts[self.rank] = n_local
        self.sum_(counts, "row offsets")
        return int(counts[: self.rank].sum())


def init_from_env(backend=None, timeout_seconds=DEFAULT_TIMEOUT_SECONDS):
    """Initialize the default process group from torchrun's environment variables.

    Parameters
    ----------
    backend : {"nccl", "gloo"}, optional
        Default: NCCL when CUDA is available, else gloo.
    timeout_seconds : float
        How long a collective waits for a missing peer before every rank raises.

    Returns
    -------
    device : torch.device
        ``cuda:LOCAL_RANK`` under NCCL, else the CPU.
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} not set); launch with "
            "`torchrun --nproc-per-node=N -m gpuclust.cli cluster --distributed ...`."
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    logger.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, backend)
    return device


def shard_bounds(n_samples, rank=None, world_size=None):
    """[start, stop) of this rank's block when ``n_samples`` rows are split as evenly as possible."""
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    base, extra = divmod(n_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_rows(X, rank=None, world_size=None):
    """This rank's consecutive block of rows of X (a view, not a copy)."""
    start, stop = shard_bounds(len(X), rank, world_size)
    return X[start:stop]


def fit_on_shards(estimator, X):
    """Fit ``estimator`` (built with ``distributed=True``) on this rank's block of X.

    Returns every sample's label, gathered in row order, on every rank.
    """
    start, stop = shard_bounds(len(X))
    local = estimator.fit_predict(X[start:stop])
    local = torch.as_tensor(np.asarray(local) if not isinstance(local, torch.Tensor) else local)
    local = local.to(estimator._device)
    return TorchDistComm().gather_rows(local.unsqueeze(1).to(torch.float64), "labels")[:, 0].long()
