"""Benchmark harness: speed, memory and quality of KMeans and GaussianMixture across backends.

Each case is one (algorithm, covariance type, backend, device, data, N, D, K, dtype).
Timing follows the usual rules: a warm-up fit first, CUDA synchronized before every
clock read, several repeats, median and spread reported. Per-iteration time is
differential, ``(T(1 + iters) - T(1)) / iters`` with ``tol=0``, so set-up, init and
final passes cancel for every backend alike; a pair whose long fit is not slower than
its short one is timed again (the fastest of each kept), and a case whose iterations
stay below the clock's noise is a skipped row, never a time at or below zero. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the kernel's peak resident set size
(``VmHWM``, restarted per fit; sampled every 2 ms where it cannot be restarted) on
the CPU, both taken after the previous fit's estimator has been freed (and CUDA's
cache emptied), so one fit's figure never includes another's. scikit-learn runs on
the host's cores and its rows say device "cpu" in every grid. Every row records
quality (completeness, NMI, ARI; log-likelihood for GMM) and the environment
(versions, card, commit). Rows are appended to a JSON-lines file case by case and
flushed, so a killed run keeps what it measured; tables and plots are made from
the stored rows by :func:`summarize` (or :func:`summarize_file`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import statistics
import threading
import time
import traceback
import warnings
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ..device import resolve_device, synchronize
from ..gaussian_mixture import COVARIANCE_TYPES
from ._atomic import atomic_write_text
from ._plots import pyplot, save_png
from .costs import gmm_flops_per_iteration, kmeans_flops_per_iteration
from .environment import device_name, environment


@dataclass(frozen=True)
class Case:
    algorithm: str  # "kmeans" or "gmm"
    backend: str  # "torch", "sklearn", "cuml", or a peer (PEER_KMEANS, PEER_GMM): "faiss", "torchgmm", ...
    device: str  # "cpu" or "cuda"
    data: str  # "synthetic", "pixels", "pca-<d>", "ae-<preset>-<epochs>"
    n: int
    d: int
    k: int
    covariance_type: str | None = None
    dtype: str = "float32"
    mode: str = "per_iter"  # "per_iter" (tol=0, differential) or "converged" (end to end)
    iters: int = 10
    kmeans_algorithm: str = "auto"

    def __post_init__(self):
        if self.backend in CPU_ONLY_BACKENDS and self.device != "cpu":
            raise ValueError(f"{self.backend} runs on the CPU: its cases have device 'cpu', not {self.device!r}.")

    @property
    def label(self):
        if self.algorithm == "kmeans":
            # gpuclust's "auto" picks lloyd or hamerly (KMeans' docstring); the peers run their own Lloyd.
            auto = "auto" if self.backend == "torch" else "lloyd"
            alg = f"kmeans-{self.kmeans_algorithm if self.kmeans_algorithm != 'auto' else auto}"
        else:
            alg = f"gmm-{self.covariance_type}"
        return f"{alg} {self.backend}/{self.device} {self.data} n={self.n} d={self.d} k={self.k} {self.dtype}"


# Backends that run on the host's cores whatever device the grid is for (faiss: the faiss-cpu wheel).
CPU_ONLY_BACKENDS = ("sklearn", "faiss", "faiss-all-rows")


def _device_for(backend, device):
    """scikit-learn and faiss-cpu always run on the host's cores, whatever device the grid is for."""
    return "cpu" if backend in CPU_ONLY_BACKENDS else device


def _kmeans_cases(
    backends,
    device,
    data,
    n,
    d,
    k,
    dtype="float32",
    iters=20,
    algorithms=("auto",),
    sklearn_algorithms=("lloyd",),
    mode="per_iter",
):
    return [
        Case(
            "kmeans", b, _device_for(b, device), data, n, d, k, dtype=dtype, mode=mode, iters=iters, kmeans_algorithm=a
        )
        for b in backends
        for a in (sklearn_algorithms if b == "sklearn" else algorithms)
    ]


def _gmm_cases(
    backends,
    device,
    data,
    n,
    d,
    k,
    covs=COVARIANCE_TYPES,
    dtype="float32",
    iters=5,
    mode="per_iter",
):
    return [
        Case("gmm", b, _device_for(b, device), data, n, d, k, covariance_type=c, dtype=dtype, iters=iters, mode=mode)
        for c in covs
        for b in backends
    ]


PEER_KMEANS = ("faiss", "faiss-all-rows", "fast-pytorch-kmeans", "pycave")
PEER_GMM = ("torchgmm", "pycave")
# Converged fits get room to converge: scikit-learn's default max_iter for KMeans, and 100 for GMM.
MAX_ITER = {"kmeans": 300, "gmm": 100}


def _peer_cases(kmeans=(), gmm=(), device="cpu"):
    """Every library on the same data, per iteration and then to a converged fit, case by case.

    ``kmeans`` holds ``(data, n, d, k, iters)``, ``gmm`` holds ``(data, n, d, k, covs, iters)``;
    ``iters`` is the per-iteration count, converged fits run up to ``MAX_ITER``.
    """
    km = PEER_KMEANS + ("torch", "sklearn")
    cases = []
    for data, n, d, k, iters in kmeans:
        for mode, it in (("per_iter", iters), ("converged", MAX_ITER["kmeans"])):
            cases += _kmeans_cases(
                km, device, data, n, d, k, iters=it, sklearn_algorithms=("lloyd", "elkan"), mode=mode
            )
    for data, n, d, k, covs, iters in gmm:
        for mode, it in (("per_iter", iters), ("converged", MAX_ITER["gmm"])):
            cases += _gmm_cases(("torch",) + PEER_GMM + ("sklearn",), device, data, n, d, k, covs, iters=it, mode=mode)
    return cases


GRIDS = {
    # Seconds: what the tests run.
    "cpu-small": (
        _kmeans_cases(("torch", "sklearn"), "cpu", "synthetic", 2000, 8, 5, iters=5)
        + _gmm_cases(("torch", "sklearn"), "cpu", "synthetic", 2000, 8, 5, iters=3)
    ),
    # The committed CPU results (tens of minutes on 2 cores).
    "cpu": (
        _kmeans_cases(
            ("torch", "sklearn"),
            "cpu",
            "pixels",
            60000,
            784,
            10,
            iters=20,
            algorithms=("lloyd", "hamerly"),
            sklearn_algorithms=("lloyd", "elkan"),
        )
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-50", 60000, 50, 10, dtype="float64")
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-98", 60000, 98, 10, dtype="float64")
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-50", 60000, 50, 10, dtype="float64", mode="converged", iters=100)
    ),
    # Issue 4's memory case: diag, N=1e6, D=32, K=256, float32.
    "cpu-memory": _gmm_cases(("torch", "sklearn"), "cpu", "synthetic", 1_000_000, 32, 256, covs=("diag",), iters=2),
    # The GPU headline cases (benchmarks/gpu_check.sh), scikit-learn on the host's cores as the peer.
    # Ordered cheap to expensive, so that a run stopped by its time limit has measured the most
    # cases; the two full-covariance cases (D=6272, K=10 and N=1e6, K=1024) come last.
    "gpu": (
        _kmeans_cases(
            ("torch", "cuml", "fast-pytorch-kmeans", "sklearn"),
            "cuda",
            "pixels",
            60000,
            784,
            10,
            iters=20,
            algorithms=("lloyd",),
        )
        + _gmm_cases(("torch", "sklearn"), "cuda", "pca-50", 60000, 50, 10, dtype="float64")
        # torchgmm on CUDA (its wheel travels in .whl/; benchmarks/README.md), the cheap case only.
        + _gmm_cases(("torchgmm",), "cuda", "pca-50", 60000, 50, 10, covs=("diag",), dtype="float64")
        + _gmm_cases(("torch",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("diag", "spherical", "tied"), iters=3)
        + _gmm_cases(("sklearn",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("diag", "spherical"), iters=2)
        + _gmm_cases(("torch",), "cuda", "synthetic", 1_000_000, 128, 1024, covs=("diag", "spherical"), iters=3)
        + _gmm_cases(("torch",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("full",), iters=3)
        + _gmm_cases(("torch",), "cuda", "synthetic", 1_000_000, 128, 1024, covs=("full",), iters=3)
    ),
    # What users could pick instead (issue 16; the `peers` extra), same data and centres where
    # they accept them, per iteration and to a converged fit. Seconds: what the tests run.
    "peers-small": _peer_cases(
        kmeans=[("synthetic", 2000, 8, 5, 5)], gmm=[("synthetic", 2000, 8, 5, ("diag", "tied"), 3)]
    ),
    "peers": _peer_cases(
        kmeans=[("pixels", 60000, 784, 10, 20), ("pca-50", 60000, 50, 10, 20), ("synthetic", 1_000_000, 32, 256, 5)],
        gmm=[("pca-50", 60000, 50, 10, COVARIANCE_TYPES, 5), ("synthetic", 1_000_000, 32, 256, ("diag",), 2)],
    ),
}


def toy_case(case: Case) -> Case:
    """The same case at toy size on the CPU (the GPU check's dry run): same data kind and code path.

    The seed autoencoder's 6272-d latent becomes the dense10 preset's 10-d one trained for one
    epoch; cuML cases keep their CUDA device (and so are skipped without a GPU).
    """
    data, d = case.data, case.d
    if data.startswith("ae-"):
        data, d = "ae-dense10-1", 10
    elif data == "synthetic":
        d = min(d, 8)
    device = case.device if case.backend == "cuml" else "cpu"
    return replace(case, device=device, data=data, n=min(case.n, 240), d=d, k=min(case.k, 4), iters=1)


GRIDS["gpu-toy"] = [toy_case(c) for c in GRIDS["gpu"]]


# ---------------------------------------------------------------------------------------- data

_DATA_CACHE: dict = {}


def make_data(case: Case, seed: int = 0):
    """(X, labels) for a case, as a float64 numpy array (converted per backend later) and int labels."""
    key = (case.data, case.n, case.d, case.k, seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    if case.data == "synthetic":
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=4.0, size=(case.k, case.d)).astype(np.float32)
        labels = rng.integers(0, case.k, size=case.n)
        X = centers[labels] + rng.normal(size=(case.n, case.d)).astype(np.float32)
    else:
        from .datasets import flatten_pixels, load_fashion_mnist

        images, labels = load_fashion_mnist("train", os.environ.get("GPUCLUST_DATA"))
        images, labels = images[: case.n], labels[: case.n]
        if case.data == "pixels":
            X = flatten_pixels(images)
        elif case.data.startswith("pca-"):
            from sklearn.decomposition import PCA

            X = PCA(int(case.data[4:]), random_state=seed).fit_transform(flatten_pixels(images)).astype(np.float32)
        elif case.data.startswith("ae-"):
            _, preset, epochs = case.data.split("-")
            from .training import encode, train_autoencoder

            device = resolve_device("auto")
            split = int(0.8 * len(images))
            model, _ = train_autoencoder(
                images[:split],
                images[split:],
                preset=preset,
                epochs=int(epochs),
                seed=seed,
                device=device,
                progress=False,
            )
            X = encode(model, images).cpu().numpy()
        else:
            raise ValueError(f"unknown data {case.data!r}")
    if X.shape != (case.n, case.d):
        raise ValueError(f"{case.data} gave shape {X.shape}, the case says ({case.n}, {case.d})")
    _DATA_CACHE[key] = (X, np.asarray(labels))
    return _DATA_CACHE[key]


# ------------------------------------------------------------------------------------ measuring


def _status_bytes(field):
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak resident set size (``VmHWM``) at the current one (Linux 4.0+).

    True only where the restart took: right after it the peak is the current size. It is the
    whole process's peak that restarts, so ``getrusage``'s ``ru_maxrss`` (and ``/usr/bin/time``'s
    maximum resident set size) of a benchmark process cover its last fit only.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    peak, now = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    # A write that was accepted and ignored (an emulated /proc) leaves the old, higher peak.
    return peak is not None and now is not None and peak <= now + (4 << 20)


class _PeakRss:
    """Peak resident set size of this process over a block.

    The kernel's own peak (``VmHWM``, restarted on entry through ``/proc/self/clear_refs``)
    where it can be restarted: counted by the kernel, not sampled, and nothing runs beside the
    fit. Elsewhere, with ``/proc/self/statm`` readable, a thread samples the resident set size
    every 2 ms; that thread takes the interpreter lock every time it wakes, which slowed a torch
    fit of many small calls (KMeans on 60000x50, a development A/B: 56 -> 61 ms) and not
    scikit-learn's compiled loop, so it is only the fallback. Without either (no ``/proc``),
    nothing is measured and ``peak`` is None. ``method`` says which: "high-water mark",
    "sampled" or "unavailable".
    """

    def __init__(self):
        self.peak = self.start = None
        self.method = None
        self._thread = None
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        self.peak = self.start = self._rss()
        if self.start is None:
            self.method = "unavailable"
        elif _reset_peak_rss():
            self.method = "high-water mark"
        else:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() or 0)

    def __exit__(self, *exc):
        if self.method == "unavailable":
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = max(self.peak, _status_bytes("VmHWM") or 0)
        self.peak = max(self.peak, self._rss() or 0)


def _mib(nbytes):
    """A peak-memory figure for the tables: MiB, or "n/a" where it could not be measured."""
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


class _Skipped(Exception):
    """A case that cannot run here (no GPU for a CUDA case, cuML on the CPU): a skipped row."""


# The last timed fit's estimator, weakly: a full garbage collection (a quarter second with torch
# loaded) is needed only when reference counting alone did not free it.
_last_estimator = None


def _release(device: torch.device, collect: bool = False) -> None:
    """Free what the previous fit left (call with no estimator alive) and restart the peak count."""
    if collect or (_last_estimator is not None and _last_estimator() is not None):
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _initial_params(case, X, seed):
    """Shared starting point (GMM: weights, means, precisions; KMeans: centres) for all backends."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), case.k, replace=False)].astype(np.float64)
    if case.algorithm == "kmeans":
        return {"init": means}
    var = X.var(0).astype(np.float64) + 1e-3
    prec = {
        "full": lambda: np.repeat(np.diag(1 / var)[None], case.k, 0),
        "tied": lambda: np.diag(1 / var),
        "diag": lambda: np.repeat((1 / var)[None], case.k, 0),
        "spherical": lambda: np.full(case.k, 1 / var.mean()),
    }[case.covariance_type]()
    return {"weights_init": np.full(case.k, 1.0 / case.k), "means_init": means, "precisions_init": prec}


def _make_estimator(case, max_iter, init, tol):
    if case.backend in PEERS:
        return PEERS[case.backend](case, max_iter, init, tol)
    if case.algorithm == "kmeans":
        if case.backend == "sklearn":
            from sklearn.cluster import KMeans as SkKMeans

            return SkKMeans(
                case.k,
                init=init["init"],
                n_init=1,
                max_iter=max_iter,
                tol=tol,
                algorithm="elkan" if case.kmeans_algorithm == "elkan" else "lloyd",
            )
        from ..kmeans import KMeans

        return KMeans(
            case.k,
            init=init["init"],
            max_iter=max_iter,
            tol=tol,
            device=case.device,
            backend=case.backend,
            algorithm=case.kmeans_algorithm,
        )
    kw = dict(covariance_type=case.covariance_type, max_iter=max_iter, tol=tol, reg_covar=1e-4, **init)
    if case.backend == "sklearn":
        from sklearn.mixture import GaussianMixture as SkGMM

        return SkGMM(case.k, **kw)
    from ..gaussian_mixture import GaussianMixture

    return GaussianMixture(case.k, device=case.device, **kw)


def _fit_device(case) -> torch.device:
    """Where the fit runs: scikit-learn on the CPU always, so its rows never get CUDA memory figures."""
    return torch.device("cpu" if case.backend in CPU_ONLY_BACKENDS else case.device)


def _to_backend(case, X):
    if case.backend in CPU_ONLY_BACKENDS:
        return X.astype(case.dtype, copy=False)
    return torch.as_tensor(X.astype(case.dtype, copy=False), device=_fit_device(case))


@dataclass
class _Fit:
    est: object
    seconds: float
    peak: int | None  # bytes: max_memory_allocated on CUDA, resident set size on the CPU (None: unmeasured)
    before: int | None  # bytes in use when the fit began (the data, the allocator's and torch's own)
    memory_method: str  # how ``peak`` was measured (the row's ``peak_memory_method``)


def _timed_fit(case, X, init, max_iter, tol) -> _Fit:
    """One fit, timed; the caller holds no earlier estimator (it would count in this fit's peak)."""
    device = _fit_device(case)
    global _last_estimator
    _release(device)
    est = _make_estimator(case, max_iter, init, tol)
    _last_estimator = weakref.ref(est)
    synchronize(device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    # On a GPU the allocator counts the peak; the host's resident set is not watched at all.
    with warnings.catch_warnings(), contextlib.nullcontext() if cuda else _PeakRss() as rss:
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X)
        synchronize(device)
        seconds = time.perf_counter() - t0
    if cuda:
        return _Fit(est, seconds, int(torch.cuda.max_memory_allocated(device)), int(before), "cuda allocator")
    if rss.method == "unavailable":
        return _Fit(est, seconds, None, None, rss.method)
    return _Fit(est, seconds, int(rss.peak), int(rss.start), rss.method)


def _quality(case, est, X, labels):
    from ..metrics import adjusted_rand_score, completeness_score, normalized_mutual_info_score

    pred = est.predict(X)
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    q = {
        "completeness": completeness_score(labels, pred),
        "nmi": normalized_mutual_info_score(labels, pred),
        "ari": adjusted_rand_score(labels, pred),
    }
    if case.algorithm == "gmm":
        q["log_likelihood"] = float(est.score(X))
    else:
        q["inertia"] = float(est.inertia_)
    return q


def work_per_iteration(case) -> dict:
    """Bytes of X read and floating-point operations per iteration: the floors' numerators."""
    n, d, k = case.n, case.d, case.k
    item = 8 if case.dtype == "float64" else 4
    if case.algorithm == "kmeans":
        flops = kmeans_flops_per_iteration(n, d, k)
    else:
        flops = gmm_flops_per_iteration(case.covariance_type, n, d, k)
    return {"bytes_per_iter": n * d * item, "flops_per_iter": flops}


def _check_runnable(case):
    if case.backend in _PEER_ALGORITHMS:
        _check_peer(case)
    if case.backend == "cuml":
        if not case.device.startswith("cuda"):
            raise _Skipped("cuML runs on CUDA only")
        import importlib

        importlib.import_module("cuml")
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        raise _Skipped("no CUDA GPU (torch.cuda.is_available() is False)")


@dataclass(frozen=True)
class Stopping:
    """How a case's timed fit stops: at most ``max_iter`` iterations, and ``tol`` under ``rule``."""

    max_iter: int
    tol: float | None
    rule: str


_SKLEARN_KMEANS_RULE = "squared centre shift summed <= tol x mean feature variance, or labels unchanged"
_SKLEARN_GMM_RULE = "gain of the lower bound (mean log-likelihood) < tol"
_FAISS_RULE = "at most niter=25 (its default), earlier once the objective is unchanged (early_stop_threshold=0)"
# Converged fits stop where each library stops by default, so "time to a converged answer" is what
# its users get; ours is scikit-learn's rule and tolerance (a drop-in). {(algorithm, backend): (tol, rule)}
DEFAULT_STOPPING = {
    ("kmeans", "torch"): (1e-4, f"scikit-learn's: {_SKLEARN_KMEANS_RULE}"),
    ("kmeans", "sklearn"): (1e-4, _SKLEARN_KMEANS_RULE),
    ("kmeans", "cuml"): (1e-4, "cuML's default tol"),
    ("kmeans", "faiss"): (0.0, _FAISS_RULE),
    ("kmeans", "faiss-all-rows"): (0.0, _FAISS_RULE),
    ("kmeans", "fast-pytorch-kmeans"): (1e-4, "squared centre shift summed <= tol, absolute (its default tol)"),
    ("gmm", "torch"): (1e-3, f"scikit-learn's: {_SKLEARN_GMM_RULE}"),
    ("gmm", "sklearn"): (1e-3, _SKLEARN_GMM_RULE),
    ("gmm", "torchgmm"): (1e-3, "mean NLL improves by < tol for one epoch (its default convergence_tolerance)"),
}
FAISS_NITER = 25  # faiss.Kmeans' default (most) iterations


def stopping(case: Case) -> Stopping:
    """The timed fit's stopping rule: tol=0 per iteration, each library's own default when converged.

    Per iteration, the long fit runs ``1 + case.iters`` iterations with ``tol=0``. Converged fits run
    up to ``case.iters`` iterations (faiss: its default niter) at the library's default tolerance.
    """
    if case.mode == "per_iter":
        return Stopping(1 + case.iters, 0.0, "tol=0: a fixed count, differential")
    tol, rule = DEFAULT_STOPPING.get((case.algorithm, case.backend), (None, "not applicable"))
    return Stopping(FAISS_NITER if case.backend in ("faiss", "faiss-all-rows") else case.iters, tol, rule)


def _iterations(est, asked):
    """The iterations a fit ran as the library reports them; ``asked`` only where it cannot say."""
    n = getattr(est, "n_iter_", None)
    return asked if n is None else int(n)


# How many (1-iteration, long) pairs a repeat may time before a case is declared below the clock's noise.
MAX_PAIRS = 5


def _per_iteration(case, X, init, max_iter):
    """One repeat's seconds per iteration, ``(T(max_iter) - T(1)) / (iterations beyond the first)``.

    Noise only ever adds time, so T(1) and T(max_iter) are each the fastest of the fits timed in
    this repeat. Where the long fit is not slower than the short one (the iterations' work is below
    the clock's noise: tiny cases, a busy machine), one more pair is timed, up to ``MAX_PAIRS``;
    then the case is a skipped row saying so, never a time at or below zero. Returns the seconds,
    the last long fit (for memory and quality; no earlier fit is kept alive while one is timed)
    and the number of pairs timed.
    """
    short = long = None
    for pairs in range(1, MAX_PAIRS + 1):
        fit = None  # the previous pair's long fit must not count in this pair's peaks
        first = _timed_fit(case, X, init, 1, 0.0)
        if short is None or first.seconds < short[0]:
            short = (first.seconds, _iterations(first.est, 1))
        del first
        fit = _timed_fit(case, X, init, max_iter, 0.0)
        extra = _iterations(fit.est, max_iter) - short[1]
        if extra < 1:
            raise _Skipped(
                f"no time per iteration: with tol=0 the fit stopped after {short[1] + extra} iteration(s), "
                "none beyond the first to time"
            )
        long = fit.seconds if long is None else min(long, fit.seconds)
        if long > short[0]:
            return (long - short[0]) / extra, fit, pairs
    raise _Skipped(
        f"no time per iteration: in {MAX_PAIRS} tries a {max_iter}-iteration fit was never slower than a "
        f"1-iteration fit ({1e3 * long:.3f} ms against {1e3 * short[0]:.3f} ms): the iterations take "
        "less time than the clock's noise here; use a larger N, D or K, or more iterations"
    )


def _measure(case, repeats, seed):
    X_np, labels = make_data(case, seed)
    X = _to_backend(case, X_np)
    init = _initial_params(case, X_np, seed)
    stop = stopping(case)
    _timed_fit(case, X, init, 2, 0.0)  # warm-up (kernels, allocator, thread pools); freed at once
    times, peaks, befores, methods = [], [], [], set()
    remeasured = 0
    for _ in range(repeats):
        fit = None  # the previous repeat's estimator must not count in this repeat's peak
        if case.mode == "per_iter":
            seconds, fit, pairs = _per_iteration(case, X, init, stop.max_iter)
            times.append(seconds)
            remeasured += pairs - 1
        else:
            fit = _timed_fit(case, X, init, stop.max_iter, stop.tol)
            times.append(fit.seconds)
        peaks.append(fit.peak)
        befores.append(fit.before)
        methods.add(fit.memory_method)
    n_iter = getattr(fit.est, "n_iter_", None)
    return {
        "status": "ok",
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "repeats": repeats,
        **({"remeasured": remeasured} if case.mode == "per_iter" else {}),
        # None where the library does not say (the row's n_iter_note says so); never a guess.
        "n_iter": None if n_iter is None else int(n_iter),
        **({"n_iter_note": "not reported by the library"} if n_iter is None else {}),
        # None where nothing could measure it (peak_memory_method "unavailable": no /proc).
        "peak_memory_bytes": None if None in peaks else max(peaks),
        "memory_before_fit_bytes": None if None in befores else max(befores),
        "peak_memory_method": " and ".join(sorted(methods)),
        **_quality(case, fit.est, X, labels),
    }


def row_head(case: Case, environment=None) -> dict:
    """What every row of a case says before it is measured: the case, its work, start and stopping rule."""
    row = {**asdict(case), "label": case.label, **work_per_iteration(case), "environment": environment}
    row["init"] = _INIT_NOTES.get(case.backend, "shared")  # the start every backend is given, or what differs
    stop = stopping(case)
    row.update(max_iter=stop.max_iter, tol=stop.tol, stopping_rule=stop.rule)
    return row


def run_case(case: Case, repeats: int = 3, seed: int = 0, environment=None) -> dict:
    """Measure one case; never raises for a backend that is missing or fails (the row says why).

    A missing backend (ImportError) or device is a "skipped" row; any other failure, CUDA out of
    memory included, is an "error" row with the exception's message and the end of its traceback.
    """
    row = row_head(case, environment)
    t0 = time.perf_counter()
    try:
        _check_runnable(case)
        row.update(_measure(case, repeats, seed))
    except _Skipped as exc:
        row.update(status="skipped", reason=str(exc))
    except ImportError as exc:
        row.update(status="skipped", reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        row.update(
            status="error",
            reason=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:],
        )
    finally:
        if case.device.startswith("cuda") and torch.cuda.is_available():
            _release(_fit_device(case), collect=True)  # what a failed case held must not burden the next one
    row["wall_seconds"] = time.perf_counter() - t0
    return row


# ------------------------------------------------------------------------------------------ peers
# What a user could install instead (the optional extra ``peers``). Each adapter gives the
# harness scikit-learn's surface: fit, predict, n_iter_, and inertia_ or score (mean
# log-likelihood). A peer that is not installed, or lacks what a case asks for, is a skipped row.

_PEER_MODULES = {
    "faiss": "faiss",
    "faiss-all-rows": "faiss",
    "fast-pytorch-kmeans": "fast_pytorch_kmeans",
    "torchgmm": "torchgmm",
    "pycave": "pycave",
}
_INIT_NOTES = {"torchgmm": "shared means; torchgmm's own weights and covariances"}
_PEER_ALGORITHMS = {
    "faiss": ("kmeans",),
    "faiss-all-rows": ("kmeans",),
    "fast-pytorch-kmeans": ("kmeans",),
    "torchgmm": ("gmm",),
    "pycave": ("kmeans", "gmm"),
}
# Checked with pip on torch 2.13 (benchmarks/README.md): what stops pycave, for every case.
PYCAVE_REASON = (
    "pycave does not install with torch 2: every release (1.0.5 to 3.0.1, the latest) requires torch<2.0, "
    "and 3.0.1 also pytorch-lightning<1.5, torchmetrics<0.6 and numpy<2, so pip cannot resolve it; installed "
    "with --no-deps, its import fails on pytorch-lightning 2 (no DataParallelPlugin). torchgmm is its fork"
)


def _check_peer(case):
    import importlib

    if case.algorithm not in _PEER_ALGORITHMS[case.backend]:
        raise _Skipped(f"{case.backend} has no {case.algorithm}")
    if case.backend == "pycave":
        raise _Skipped(PYCAVE_REASON)
    if case.backend == "torchgmm" and case.covariance_type == "tied":
        raise _Skipped("torchgmm has no 'tied' covariance (full, diag and spherical only)")
    try:
        importlib.import_module(_PEER_MODULES[case.backend])
    except ImportError as exc:
        raise _Skipped(f"{case.backend} is not installed ({exc}); pip install 'gpuclust[peers]'") from exc


class _FaissKMeans:
    """``faiss.Kmeans`` on the CPU from the shared centres, for ``niter`` iterations at most.

    faiss stops earlier once the objective is unchanged (its default ``early_stop_threshold=0``),
    and ignores ``tol``; ``n_iter_`` counts its per-iteration objectives (``obj``).

    By default faiss trains on at most 256 rows per centroid (a sample); ``all_rows`` lifts the
    cap so that it sees every row like the others ("faiss-all-rows").
    """

    def __init__(self, case, max_iter, init, tol, all_rows=False):
        self.k, self.max_iter, self.init, self.all_rows = case.k, max_iter, init["init"], all_rows

    def fit(self, X):
        import faiss

        X = np.ascontiguousarray(X, dtype=np.float32)
        kw = {"niter": self.max_iter, "seed": 0, "verbose": False}
        if self.all_rows:
            kw["max_points_per_centroid"] = len(X)
        self._km = faiss.Kmeans(X.shape[1], self.k, **kw)
        self._km.train(X, init_centroids=np.ascontiguousarray(self.init, dtype=np.float32))
        self.n_iter_ = len(self._km.obj)
        self.cluster_centers_ = self._km.centroids
        self._X = X
        return self

    def predict(self, X):
        return self._km.index.search(np.ascontiguousarray(X, dtype=np.float32), 1)[1][:, 0]

    @property
    def inertia_(self):
        return float(self._km.index.search(self._X, 1)[0].sum())


class _FastPytorchKMeans:
    """fast-pytorch-kmeans (torch, CPU or CUDA) from the shared centres.

    It keeps no iteration count; with ``verbose=1`` it prints one line at the end of a fit,
    "used N iterations (...)", which is read for ``n_iter_`` (None if the line is not there).
    """

    def __init__(self, case, max_iter, init, tol):
        self.k, self.max_iter, self.tol, self.init = case.k, max_iter, tol, init["init"]

    def fit(self, X):
        import io

        from fast_pytorch_kmeans import KMeans as FastKMeans

        self._km = FastKMeans(self.k, max_iter=self.max_iter, tol=self.tol, verbose=1, mode="euclidean")
        start = torch.as_tensor(self.init, dtype=X.dtype, device=X.device)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self._labels = self._km.fit_predict(X, centroids=start)
        self.n_iter_ = _fast_kmeans_iterations(printed.getvalue())
        self.cluster_centers_ = self._km.centroids
        self._X = X
        return self

    def predict(self, X):
        return self._km.predict(X)

    @property
    def inertia_(self):
        c = self._km.centroids
        return float(((self._X - c[self._labels]) ** 2).sum())


def _fast_kmeans_iterations(printed):
    """N from fast-pytorch-kmeans' closing line "used N iterations (...)", or None."""
    found = re.search(r"used (\d+) iterations", printed)
    return int(found.group(1)) if found else None


class _TorchGMM:
    """torchgmm's GaussianMixture (torch and Lightning, CPU or CUDA) from the shared means.

    It takes initial means only (not weights or precisions): its own start otherwise, marked
    in the row's ``init`` field. ``score`` is its mean negative log-likelihood, negated.
    """

    def __init__(self, case, max_iter, init, tol):
        self.case, self.max_iter, self.tol, self.means = case, max_iter, tol, init["means_init"]

    def fit(self, X):
        from torchgmm.bayes import GaussianMixture as TorchGMM

        for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):  # one banner per fit otherwise
            logging.getLogger(name).setLevel(logging.ERROR)
        device = X.device
        self._gmm = TorchGMM(
            self.case.k,
            covariance_type=self.case.covariance_type,
            init_means=torch.as_tensor(self.means, dtype=X.dtype, device=device),
            convergence_tolerance=self.tol,
            covariance_regularization=1e-4,
            trainer_params={
                "max_epochs": self.max_iter,
                "accelerator": "gpu" if device.type == "cuda" else "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "enable_checkpointing": False,
                "logger": False,
                "precision": 64 if X.dtype == torch.float64 else 32,  # it refuses float64 data otherwise
            },
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's deprecation notes, once per fit
            self._gmm.fit(X)
        self.n_iter_ = int(self._gmm.num_iter_)
        return self

    def predict(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._gmm.predict(X)

    def score(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return -float(self._gmm.score(X))


PEERS = {
    "faiss": _FaissKMeans,
    "faiss-all-rows": lambda case, max_iter, init, tol: _FaissKMeans(case, max_iter, init, tol, all_rows=True),
    "fast-pytorch-kmeans": _FastPytorchKMeans,
    "torchgmm": _TorchGMM,
}


# --------------------------------------------------------------------------------- the grid, I/O


def read_jsonl(path) -> list:
    """The rows of a JSON-lines file; a last line cut short (a killed writer) is left out."""
    p = Path(path)
    if not p.exists():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return rows


def write_jsonl(path, rows):
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path, row) -> None:
    """Append one row and push it to disk at once (flush and fsync): a killed run keeps it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# A converged fit predicted (per-iteration time x max_iter, warm-up and repeats included) to take
# longer than this is not run: scikit-learn's GMM on 1,000,000 x 32, K=256 takes 19 s per
# iteration on 2 cores, up to 100 iterations, 4 times over.
CONVERGED_LIMIT_SECONDS = 1800.0


def _same_case_per_iteration(case, rows):
    """This case's per-iteration seconds from ``rows`` (same library, data and sizes), or None."""
    key = asdict(replace(case, mode="per_iter", iters=0))
    for r in rows:
        if r.get("status") == "ok" and r.get("mode") == "per_iter":
            if all(r.get(f) == v for f, v in key.items() if f != "iters"):
                return r["seconds_median"]
    return None


def _too_long(case, rows, repeats, limit):
    """The reason a converged case is not run, or None: its predicted time is over ``limit`` seconds."""
    if case.mode != "converged" or limit is None:
        return None
    per_iter = _same_case_per_iteration(case, rows)
    if per_iter is None:
        return None
    predicted = per_iter * (stopping(case).max_iter * repeats + 2)  # faiss: its own iteration count
    if predicted <= limit:
        return None
    return (
        f"not run: {per_iter:.1f} s per iteration (this grid's per-iteration row) x up to "
        f"{stopping(case).max_iter} iterations "
        f"x {repeats} repeats = {predicted / 60:.0f} min predicted, over the limit of {limit / 60:.0f} min"
    )


def run_grid(cases, out_dir, tag, repeats=3, seed=0, say=lambda m: None, fresh=True,
             converged_limit=CONVERGED_LIMIT_SECONDS):  # fmt: skip
    """Run every case, appending its row to ``<out>/<tag>.jsonl`` as it is measured; then summarize.

    ``fresh=False`` keeps the rows already in the file (another run's, e.g. one cut short) and adds
    this run's after them; the summary is made from all the file's rows. A converged case whose
    per-iteration row predicts more than ``converged_limit`` seconds (None: no limit) is a
    skipped row saying so.
    """
    env = environment(resolve_device("auto"))
    path = Path(out_dir) / f"{tag}.jsonl"
    if fresh:
        path.unlink(missing_ok=True)
    rows = []
    for i, case in enumerate(cases, 1):
        say(f"[{i}/{len(cases)}] {case.label}")
        reason = _too_long(case, read_jsonl(path), repeats, converged_limit)
        if reason is not None:
            row = {**row_head(case, env), "status": "skipped", "reason": reason}
        else:
            row = run_case(case, repeats=repeats, seed=seed, environment=env)
        append_jsonl(path, row)
        rows.append(row)
        if row["status"] == "ok":
            say(
                f"    {1e3 * row['seconds_median']:.2f} ms{'/iter' if case.mode == 'per_iter' else ''}, "
                f"peak {_mib(row['peak_memory_bytes'])}, completeness {row['completeness']:.3f}"
            )
        else:
            say(f"    {row['status']}: {row['reason']}")
    summarize(read_jsonl(path) if not fresh else rows, Path(out_dir) / f"{tag}.md", Path(out_dir) / tag)
    return rows


def summarize_file(jsonl_path, plots=True) -> Path:
    """Table and plots next to a stored JSON-lines file (``x.jsonl`` -> ``x.md``, ``x_*.png``)."""
    path = Path(jsonl_path)
    stem = path.with_suffix("")
    summarize(read_jsonl(path), stem.with_suffix(".md"), stem if plots else None)
    return stem.with_suffix(".md")


def _peer_key(row):
    return (
        row["algorithm"],
        row.get("covariance_type"),
        row["data"],
        row["n"],
        row["d"],
        row["k"],
        row["dtype"],
        row["mode"],
    )


def summarize(rows, markdown_path, plot_prefix):
    """Markdown tables and plots from rows of the same run (no plots when ``plot_prefix`` is None).

    The first table has every row with its ratio to scikit-learn; the second (:func:`peer_table`)
    gpuclust against every other library; ``<prefix>_peers.png`` is :func:`plot_peers`.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    # The peer is scikit-learn's default algorithm (lloyd for KMeans), measured in the same run.
    sk = {_peer_key(r): r for r in ok if r["backend"] == "sklearn" and r["kmeans_algorithm"] in ("auto", "lloyd")}
    env = next((r["environment"] for r in rows if r.get("environment")), {}) or {}
    lines = [
        f"Device: {env.get('device_name', '?')} ({env.get('device', '?')}), {env.get('cpu_count', '?')} CPU "
        f"threads; torch {env.get('torch', '?')}, scikit-learn {env.get('sklearn', '?')}; commit "
        f"{env.get('git_commit', '?')}.",
        "",
        "| case | mode | time (median) | spread | vs scikit-learn | iterations | inertia / mean log-lik. | "
        "stopping | peak memory | GB/s of X | GFLOP/s | completeness | NMI | ARI |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['mode']} | {r['status']}: {r['reason'][:80]} |" + " |" * 11)
            continue
        per = r["mode"] == "per_iter"
        t = r["seconds_median"]
        peer = sk.get(_peer_key(r))
        ratio = "" if peer is None or r["backend"] == "sklearn" else _faster(peer["seconds_median"], t)
        bw = f"{r['bytes_per_iter'] / t / 1e9:.1f}" if per else ""
        gf = f"{r['flops_per_iter'] / t / 1e9:.1f}" if per else ""
        lines.append(
            f"| {r['label']} | {'per iteration' if per else 'converged fit'} | "
            f"{1e3 * t:.2f} ms | {1e3 * r['seconds_min']:.2f}-{1e3 * r['seconds_max']:.2f} | {ratio} | "
            f"{_n_iter(r)} | {_objective(r)} | {_stopping_cell(r)} | "
            f"{_mib(r['peak_memory_bytes'])} | {bw} | {gf} | {r['completeness']:.3f} | "
            f"{r['nmi']:.3f} | {r['ari']:.3f} |"
        )
    peers = peer_table(rows)
    if peers:
        lines += ["", "### gpuclust against every other library in this run", ""] + peers
    atomic_write_text(markdown_path, "\n".join(lines) + "\n")
    if ok and plot_prefix is not None:
        _plot(ok, plot_prefix)
        if peer_points(ok):
            plot_peers(ok, f"{plot_prefix}_peers.png")


def _faster(peer_seconds, our_seconds):
    """gpuclust against a peer: "2.10x faster" when it takes less time, else "1.30x slower".

    A differential time at or below zero (noise larger than the work, on tiny cases) has no ratio.
    """
    if min(peer_seconds, our_seconds) <= 0:
        return "no ratio: a time <= 0"
    if peer_seconds >= our_seconds:
        return f"{peer_seconds / our_seconds:.2f}x faster"
    return f"{our_seconds / peer_seconds:.2f}x slower"


def _duration(seconds):
    return f"{seconds:.2f} s" if abs(seconds) >= 1 else f"{1e3 * seconds:.2f} ms"


def _n_iter(r):
    return "unknown" if r.get("n_iter") is None else str(r["n_iter"])


def _objective(r):
    if r.get("log_likelihood") is not None:
        return f"{r['log_likelihood']:.4f}"
    return f"{r['inertia']:.6g}" if r.get("inertia") is not None else ""


def _stopping_cell(r):
    """tol=0 per iteration; converged: the library's tolerance (faiss: its iteration count)."""
    if r["mode"] == "per_iter" or r.get("tol") is None:
        return "tol=0" if r["mode"] == "per_iter" else ""
    return f"niter={r['max_iter']}" if r["backend"].startswith("faiss") else f"tol={r['tol']:g}"


def library(r) -> str:
    """What a user would pick, with the device it ran on: "gpuclust/cuda", "sklearn-elkan/cpu", "faiss/cpu"."""
    name = "gpuclust" if r["backend"] == "torch" else r["backend"]
    if r["algorithm"] == "kmeans" and r["kmeans_algorithm"] not in ("auto", "lloyd"):
        name += f"-{r['kmeans_algorithm']}"
    return f"{name}/{r['device']}"


def _case_title(r):
    alg = "KMeans" if r["algorithm"] == "kmeans" else f"GMM {r['covariance_type']}"
    return f"{alg} {r['data']} {r['n']}x{r['d']} K={r['k']} {r['dtype']}"


def _by_case(rows):
    """{case key: {library: row}}, in the rows' order; a case's first row of a library is kept."""
    cases = {}
    for r in rows:
        cases.setdefault(_peer_key(r), {}).setdefault(library(r), r)
    return cases


def _time_cell(r, ours):
    """A peer's time (converged: with its iterations) and gpuclust's ratio to it; its status if it did not run."""
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    t = _duration(r["seconds_median"]) + ("" if r["mode"] == "per_iter" else f", {_n_iter(r)} it.")
    if r["mode"] != "per_iter" and r.get("completeness") is not None:
        # A faster fit is only worth its time at the same quality (faiss samples rows by default).
        t += f", compl. {r['completeness']:.3f}"
    if ours is None or ours["status"] != "ok" or r is ours:
        return t
    ratio = _faster(r["seconds_median"], ours["seconds_median"])
    return f"{t}: {ratio}" if ratio.startswith("no ratio") else f"{t}: ours {ratio}"


def peer_table(rows) -> list:
    """gpuclust against every other library, per algorithm: a line per case and gpuclust variant.

    A case is the same data, n, d, k, dtype, algorithm, covariance type and mode. Each cell is a
    library's median time (converged fits: with its iteration count and completeness) and how much faster or slower
    gpuclust is than it; a library that did not run says "skipped" or "error" (the reason is in the
    rows). Empty when no case has gpuclust and another library.
    """
    lines = []
    for algorithm, title in (("kmeans", "KMeans"), ("gmm", "GaussianMixture")):
        cases = _by_case(r for r in rows if r["algorithm"] == algorithm)
        others = list(dict.fromkeys(lib for v in cases.values() for lib in v if not lib.startswith("gpuclust")))
        if not others or not any(lib.startswith("gpuclust") for v in cases.values() for lib in v):
            continue
        lines += [
            f"| {title} case | mode | gpuclust | " + " | ".join(others) + " |",
            "|" + "---|" * (3 + len(others)),
        ]
        for by_lib in cases.values():
            for ours_lib, ours in ((k, v) for k, v in by_lib.items() if k.startswith("gpuclust")):
                cells = [_time_cell(by_lib.get(lib), ours) for lib in others]
                mode = "per iteration" if ours["mode"] == "per_iter" else "converged fit"
                head = f"| {_case_title(ours)} | {mode} | {ours_lib}: {_time_cell(ours, ours)} | "
                lines.append(head + " | ".join(cells) + " |")
        lines.append("")
    if lines:
        lines.append(
            "Converged fits stop by each library's own default rule (the rows' `tol` and `stopping_rule`): "
            "gpuclust and scikit-learn at tol=1e-4 (KMeans) and 1e-3 (GMM), faiss after its default 25 "
            "iterations (earlier once its objective is unchanged), fast-pytorch-kmeans at its absolute "
            "tol=1e-4, torchgmm at its convergence_tolerance=1e-3."
        )
    return lines


def peer_points(rows) -> dict:
    """{case title: [(library, seconds, completeness)]} for converged cases that two libraries or more ran."""
    points = {}
    for by_lib in _by_case(r for r in rows if r["status"] == "ok" and r["mode"] == "converged").values():
        if len(by_lib) > 1:
            first = next(iter(by_lib.values()))
            points[_case_title(first)] = [(lib, r["seconds_median"], r["completeness"]) for lib, r in by_lib.items()]
    return points


def plot_peers(rows, path):
    """Completeness against seconds to a converged fit, one panel per case, a labelled point per library."""
    plt = pyplot()
    points = peer_points(rows)
    cols = min(3, len(points))
    nrows = -(-len(points) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, (title, pts) in zip(axes.flat, points.items()):
        for i, (lib, seconds, completeness) in enumerate(sorted(pts, key=lambda pt: pt[1])):
            style = (
                {"color": "tab:red", "marker": "o"}
                if lib.startswith("gpuclust")
                else {"color": "tab:blue", "marker": "x"}
            )
            ax.scatter(seconds, completeness, s=45, **style)
            # Neighbours in time alternate above and below: libraries with the same partition share a height.
            offset = (4, 4 if i % 2 == 0 else -10)
            ax.annotate(lib, (seconds, completeness), fontsize=7, xytext=offset, textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("seconds to a converged fit (log)", fontsize=7)
        ax.set_ylabel("completeness", fontsize=7)
        ax.margins(x=0.3, y=0.15)
    for ax in list(axes.flat)[len(points) :]:
        ax.set_visible(False)
    fig.suptitle("Time against quality, each library at its own default stopping rule: up and left is better")
    fig.tight_layout()
    save_png(fig, path)


_COLORS = {"kmeans": "tab:gray", "full": "tab:red", "tied": "tab:purple", "diag": "tab:blue", "spherical": "tab:green"}
_MARKERS = {"torch": "o", "sklearn": "x", "cuml": "s"}


def _plot(rows, prefix):
    """Time per iteration by covariance type and D, and completeness against time (Pareto view)."""
    plt = pyplot()

    def kind(r):
        return "kmeans" if r["algorithm"] == "kmeans" else r["covariance_type"]

    per_iter = [r for r in rows if r["mode"] == "per_iter" and r["algorithm"] == "gmm"]
    if per_iter:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for cov, backend, device in sorted({(r["covariance_type"], r["backend"], r["device"]) for r in per_iter}):
            pts = sorted(
                (r["d"], 1e3 * r["seconds_median"])
                for r in per_iter
                if (r["covariance_type"], r["backend"], r["device"]) == (cov, backend, device)
            )
            ax.plot(
                *zip(*pts),
                marker=_MARKERS.get(backend, "o"),
                color=_COLORS[cov],
                ls="-" if backend == "torch" else "--",
                label=f"{cov}, {backend}/{device}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("D (features, log)")
        ax.set_ylabel("ms per EM iteration (log)")
        ax.set_title("GaussianMixture time per iteration (solid: gpuclust, dashed: scikit-learn)")
        ax.legend(fontsize=7, ncol=2)
        save_png(fig, f"{prefix}_time_per_iter.png")
    # End-to-end fits where the grid has them (time to a converged model), else per-iteration times.
    mode = "converged" if any(r["mode"] == "converged" for r in rows) else "per_iter"
    chosen = [r for r in rows if r["mode"] == mode]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = set()
    for r in chosen:
        key = (kind(r), r["backend"])
        ax.scatter(
            r["seconds_median"],
            r["completeness"],
            color=_COLORS[kind(r)],
            marker=_MARKERS.get(r["backend"], "o"),
            s=50,
            label=None if key in seen else f"{kind(r)}, {r['backend']}",
        )
        seen.add(key)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per fit (log)" if mode == "converged" else "seconds per iteration (log)")
    ax.set_ylabel("completeness")
    ax.set_title("Quality against time: up and to the left is better")
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, f"{prefix}_pareto.png")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def default_tag(grid, cases) -> str:
    """The results file's name: the grid's, with the card's on a GPU ("gpu" -> "gpu_nvidia_h200")."""
    if any(c.device.startswith("cuda") and c.backend != "cuml" for c in cases) and torch.cuda.is_available():
        return f"{grid}_{_slug(device_name(torch.device('cuda')))}"
    return grid


def run_named_grid(grid, out_dir, *, tag=None, repeats=3, seed=0, device="auto", say=lambda m: None, fresh=True):
    """Run the grid ``GRIDS[grid]`` (on ``device`` where not "auto"); return its rows and the JSONL path.

    scikit-learn and faiss cases stay on the CPU and cuML cases on CUDA whatever ``device`` says. The
    default ``tag`` is the grid's name, with the card's appended when the grid runs on a GPU.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid {grid!r} is not one of {sorted(GRIDS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    cases = GRIDS[grid]
    if device != "auto":
        cases = [replace(c, device=device) if c.backend not in CPU_ONLY_BACKENDS + ("cuml",) else c for c in cases]
    tag = tag or default_tag(grid, cases)
    rows = run_grid(cases, out_dir, tag, repeats=repeats, seed=seed, say=say, fresh=fresh)
    return rows, Path(out_dir) / f"{tag}.jsonl"
