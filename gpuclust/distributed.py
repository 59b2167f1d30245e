"""Data-parallel KMeans and GaussianMixture with torch.distributed (NCCL on GPUs, gloo on CPUs).

Each rank holds a block of rows and runs the assignment or E-step on it; the
sufficient statistics (counts, sums, second moments, inertia, log-likelihood)
are all-reduced, so every rank ends with identical parameters. Initialization is
consistent across ranks: samples are gathered in rank order, seeded on rank 0
and broadcast.

Launch with torchrun, one process per GPU (or per CPU worker)::

    torchrun --nproc-per-node=2 -m gpuclust cluster --distributed --algorithm gmm \\
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
``gpuclust._comm.INIT_SAMPLE_ELEMENTS``), k-means++, ``init="random"``
(KMeans) and the GMM inits "kmeans", "k-means++" and "random_from_data". Beyond
that, seeding uses a uniform sample drawn from every rank. The GMM's ``init_params="random"``
draws each rank's responsibilities from its own copy of the random state, so it
is consistent across ranks but not equal to a single-process fit.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from ._arrays import as_torch
from ._comm import DEFAULT_TIMEOUT_SECONDS, DistributedFitError, TorchDistComm

logger = logging.getLogger("gpuclust")

__all__ = [
    "DistributedFitError",
    "TorchDistComm",
    "fit_on_shards",
    "init_from_env",
    "shard_bounds",
    "shard_rows",
]


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
            "`torchrun --nproc-per-node=N -m gpuclust cluster --distributed ...`."
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
    # The labels come back in the input's array type (numpy, torch, CuPy): view them as a
    # tensor without a host round trip; the collective moves them where its backend needs.
    local = as_torch(estimator.fit_predict(X[start:stop]), name="labels")
    return TorchDistComm().gather_rows(local.unsqueeze(1).to(torch.float64), "labels")[:, 0].long()
