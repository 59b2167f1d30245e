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
import socket

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


# How long start-up waits for every rank to join before giving up (init_from_env's default).
DEFAULT_STARTUP_TIMEOUT_SECONDS = 60


def _int_env(name, lowest, highest=None):
    text = os.environ[name]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer.") from None
    if value < lowest or (highest is not None and value > highest):
        bound = f"between {lowest} and {highest}" if highest is not None else f"at least {lowest}"
        raise ValueError(f"{name}={value} must be {bound}.")
    return value


def _environment():
    """torchrun's variables, validated: (rank, world_size, local_rank, master_addr, master_port)."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} not set); launch with "
            "`torchrun --nproc-per-node=N -m gpuclust cluster --distributed ...`."
        )
    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    if rank >= world_size:
        raise ValueError(f"RANK={rank} must be less than WORLD_SIZE={world_size}.")
    local_rank = _int_env("LOCAL_RANK", 0) if os.environ.get("LOCAL_RANK") else 0
    port = _int_env("MASTER_PORT", 1, 65535)
    addr = os.environ["MASTER_ADDR"]
    try:
        socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"MASTER_ADDR={addr!r} cannot be resolved ({exc}).") from None
    return rank, world_size, local_rank, addr, port


def init_from_env(
    backend=None, timeout_seconds=DEFAULT_TIMEOUT_SECONDS, startup_timeout_seconds=DEFAULT_STARTUP_TIMEOUT_SECONDS
):
    """Initialize the default process group from torchrun's environment variables.

    The environment is validated first (every variable set, integers where integers are
    due, ``0 <= RANK < WORLD_SIZE``, a resolvable ``MASTER_ADDR``), and the wait for the
    other ranks is bounded.

    Parameters
    ----------
    backend : {"nccl", "gloo"}, optional
        Default: NCCL when CUDA is available, else gloo.
    timeout_seconds : float
        How long a collective waits for a missing peer before every rank raises.
    startup_timeout_seconds : float
        How long start-up waits for all ``WORLD_SIZE`` ranks to join.

    Returns
    -------
    device : torch.device
        ``cuda:LOCAL_RANK`` under NCCL, else the CPU.

    Raises
    ------
    ValueError
        The environment is missing, malformed or inconsistent; the message names the variable.
    TimeoutError
        The ranks did not all join within ``startup_timeout_seconds``.
    """
    if not startup_timeout_seconds > 0:
        raise ValueError(f"startup_timeout_seconds={startup_timeout_seconds!r} must be positive.")
    rank, world_size, local_rank, addr, port = _environment()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but {torch.cuda.device_count()} CUDA device(s) are visible.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        startup = datetime.timedelta(seconds=startup_timeout_seconds)
        try:
            # torch's own env:// rendezvous (it knows torchrun's agent store), with a bounded wait.
            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=startup))
        except (RuntimeError, OSError) as exc:  # DistStoreError is a RuntimeError
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise TimeoutError(
                f"rank {rank}: the {world_size} ranks did not assemble at {addr}:{port} within "
                f"{startup_timeout_seconds:g} s ({first})"
            ) from None
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )
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
