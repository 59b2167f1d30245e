"""Benchmark harness: speed, memory and quality of KMeans and GaussianMixture across backends.

Each case is one (algorithm, covariance type, backend, device, data, N, D, K, dtype).
Timing follows the usual rules: a warm-up fit first, CUDA synchronized before every
clock read, several repeats, median and spread reported. Per-iteration time is
differential, ``(T(1 + iters) - T(1)) / iters`` with ``tol=0``, so set-up, init and
final passes cancel for every backend alike. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the sampled resident set size on
the CPU, both taken after the previous fit's estimator has been freed (and CUDA's
cache emptied), so one fit's figure never includes another's. scikit-learn runs on
the host's cores and its rows say device "cpu" in every grid. Every row records
quality (completeness, NMI, ARI; log-likelihood for GMM) and the environment
(versions, card, commit). Rows are appended to a JSON-lines file case by case and
flushed, so a killed run keeps what it measured; tables and plots are made from
the stored rows by :func:`summarize` (or :func:`summarize_file`).
"""

from __future__ import annotations

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
    backend: str  # "torch", "sklearn", "cuml", or a peer: "faiss", "faiss-all-rows", "fast-pytorch-kmeans", "torchgmm"
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
            alg = f"kmeans-{self.kmeans_algorithm if self.kmeans_algorithm != 'auto' else 'lloyd'}"
        else:
            alg = f"gmm-{self.covariance_type}"
        return f"{alg} {self.backend}/{self.device} {self.data} n={self.n} d={self.d} k={self.k} {self.dtype}"


# Backends that run on the host's cores whatever device the grid is for (faiss: the faiss-cpu wheel).
CPU_ONLY_BACKENDS = ("sklearn", "faiss", "faiss-all-rows")


def _device_for(backend, device):
    """scikit-learn and faiss-cpu always run on the host's cores, whatever device the grid is for."""
    return "cpu" if backend in CPU_ONLY_BACKENDS else device


def _kmeans_cases(
    backends, device, data, n, d, k, dtype="float32", iters=20, algorithms=("auto",), sklearn_algorithms=("lloyd",)
):
    return [
        Case("kmeans", b, _device_for(b, device), data, n, d, k, dtype=dtype, iters=iters, kmeans_algorithm=a)
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


PEER_KMEANS = ("faiss", "faiss-all-rows", "fast-pytorch-kmeans")

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
        _kmeans_cases(("torch", "cuml", "sklearn"), "cuda", "pixels", 60000, 784, 10, iters=20, algorithms=("lloyd",))
        + _gmm_cases(("torch", "sklearn"), "cuda", "pca-50", 60000, 50, 10, dtype="float64")
        + _gmm_cases(("torch",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("diag", "spherical", "tied"), iters=3)
        + _gmm_cases(("sklearn",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("diag", "spherical"), iters=2)
        + _gmm_cases(("torch",), "cuda", "synthetic", 1_000_000, 128, 1024, covs=("diag", "spherical"), iters=3)
        + _gmm_cases(("torch",), "cuda", "ae-seed-3", 48000, 6272, 10, covs=("full",), iters=3)
        + _gmm_cases(("torch",), "cuda", "synthetic", 1_000_000, 128, 1024, covs=("full",), iters=3)
    ),
    # What users could pick instead (issue 16; the `peers` extra), same data and centres where
    # they accept them. Seconds: what the tests run.
    "peers-small": (
        _kmeans_cases(PEER_KMEANS + ("sklearn",), "cpu", "synthetic", 2000, 8, 5, iters=5)
        + _gmm_cases(("torchgmm", "sklearn"), "cpu", "synthetic", 2000, 8, 5, covs=("diag", "tied"), iters=3)
    ),
    "peers": (
        _kmeans_cases(
            PEER_KMEANS + ("torch", "sklearn"),
            "cpu",
            "pixels",
            60000,
            784,
            10,
            iters=20,
            sklearn_algorithms=("lloyd", "elkan"),
        )  # fmt: skip
        + _kmeans_cases(PEER_KMEANS + ("torch", "sklearn"), "cpu", "pca-50", 60000, 50, 10, iters=20)
        + _kmeans_cases(PEER_KMEANS + ("torch", "sklearn"), "cpu", "synthetic", 1_000_000, 32, 256, iters=5)
        + _gmm_cases(("torch", "torchgmm", "sklearn"), "cpu", "pca-50", 60000, 50, 10)
        + _gmm_cases(("torch", "torchgmm", "sklearn"), "cpu", "synthetic", 1_000_000, 32, 256, covs=("diag",), iters=2)
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
        from ..datasets import flatten_pixels, load_fashion_mnist

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


class _RssSampler:
    """Peak resident set size of this process while active (sampled every 2 ms from /proc)."""

    def __init__(self):
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            return 0

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


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
    peak: int  # bytes: max_memory_allocated on CUDA, resident set size on the CPU
    before: int  # bytes in use when the fit began (the data, the allocator's and torch's own)


def _timed_fit(case, X, init, max_iter, tol) -> _Fit:
    """One fit, timed; the caller holds no earlier estimator (it would count in this fit's peak)."""
    device = _fit_device(case)
    global _last_estimator
    _release(device)
    est = _make_estimator(case, max_iter, init, tol)
    _last_estimator = weakref.ref(est)
    synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with warnings.catch_warnings(), _RssSampler() as rss:
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X)
        synchronize(device)
        seconds = time.perf_counter() - t0
    if device.type == "cuda":
        return _Fit(est, seconds, int(torch.cuda.max_memory_allocated(device)), int(before))
    return _Fit(est, seconds, int(rss.peak), int(rss.start))


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
    if case.backend in PEERS:
        _check_peer(case)
    if case.backend == "cuml":
        if not case.device.startswith("cuda"):
            raise _Skipped("cuML runs on CUDA only")
        import importlib

        importlib.import_module("cuml")
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        raise _Skipped("no CUDA GPU (torch.cuda.is_available() is False)")


def _measure(case, repeats, seed):
    X_np, labels = make_data(case, seed)
    X = _to_backend(case, X_np)
    init = _initial_params(case, X_np, seed)
    _timed_fit(case, X, init, 2, 0.0)  # warm-up (kernels, allocator, thread pools); freed at once
    times, peaks, befores = [], [], []
    for _ in range(repeats):
        fit = None  # the previous repeat's estimator must not count in this repeat's peak
        if case.mode == "per_iter":
            first = _timed_fit(case, X, init, 1, 0.0)
            t_1, n_1 = first.seconds, first.est.n_iter_
            del first
            fit = _timed_fit(case, X, init, 1 + case.iters, 0.0)
            times.append((fit.seconds - t_1) / max(1, fit.est.n_iter_ - n_1))
        else:
            fit = _timed_fit(case, X, init, case.iters, 1e-4 if case.algorithm == "kmeans" else 1e-3)
            times.append(fit.seconds)
        peaks.append(fit.peak)
        befores.append(fit.before)
    return {
        "status": "ok",
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "repeats": repeats,
        "n_iter": int(fit.est.n_iter_),
        "peak_memory_bytes": max(peaks),
        "memory_before_fit_bytes": max(befores),
        **_quality(case, fit.est, X, labels),
    }


def run_case(case: Case, repeats: int = 3, seed: int = 0, environment=None) -> dict:
    """Measure one case; never raises for a backend that is missing or fails (the row says why).

    A missing backend (ImportError) or device is a "skipped" row; any other failure, CUDA out of
    memory included, is an "error" row with the exception's message and the end of its traceback.
    """
    row = {**asdict(case), "label": case.label, **work_per_iteration(case), "environment": environment}
    row["init"] = _INIT_NOTES.get(case.backend, "shared")  # the start every backend is given, or what differs
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
}
_INIT_NOTES = {"torchgmm": "shared means; torchgmm's own weights and covariances"}
_PEER_ALGORITHMS = {"faiss": "kmeans", "faiss-all-rows": "kmeans", "fast-pytorch-kmeans": "kmeans", "torchgmm": "gmm"}


def _check_peer(case):
    import importlib

    if _PEER_ALGORITHMS[case.backend] != case.algorithm:
        raise _Skipped(f"{case.backend} has no {case.algorithm}")
    if case.backend == "torchgmm" and case.covariance_type == "tied":
        raise _Skipped("torchgmm has no 'tied' covariance (full, diag and spherical only)")
    try:
        importlib.import_module(_PEER_MODULES[case.backend])
    except ImportError as exc:
        raise _Skipped(f"{case.backend} is not installed ({exc}); pip install 'gpuclust[peers]'") from exc


class _FaissKMeans:
    """``faiss.Kmeans`` on the CPU from the shared centres. faiss runs exactly ``niter`` iterations.

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
        self.n_iter_ = self.max_iter
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

    It keeps no iteration count: ``n_iter_`` is ``max_iter`` (it stops earlier only when the
    centres stop moving exactly).
    """

    def __init__(self, case, max_iter, init, tol):
        self.k, self.max_iter, self.tol, self.init = case.k, max_iter, tol, init["init"]

    def fit(self, X):
        from fast_pytorch_kmeans import KMeans as FastKMeans

        self._km = FastKMeans(self.k, max_iter=self.max_iter, tol=self.tol, verbose=0, mode="euclidean")
        start = torch.as_tensor(self.init, dtype=X.dtype, device=X.device)
        self._labels = self._km.fit_predict(X, centroids=start)
        self.n_iter_ = self.max_iter
        self.cluster_centers_ = self._km.centroids
        self._X = X
        return self

    def predict(self, X):
        return self._km.predict(X)

    @property
    def inertia_(self):
        c = self._km.centroids
        return float(((self._X - c[self._labels]) ** 2).sum())


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


def run_grid(cases, out_dir, tag, repeats=3, seed=0, say=lambda m: None, fresh=True):
    """Run every case, appending its row to ``<out>/<tag>.jsonl`` as it is measured; then summarize.

    ``fresh=False`` keeps the rows already in the file (another run's, e.g. one cut short) and adds
    this run's after them; the summary is made from all the file's rows.
    """
    env = environment(resolve_device("auto"))
    path = Path(out_dir) / f"{tag}.jsonl"
    if fresh:
        path.unlink(missing_ok=True)
    rows = []
    for i, case in enumerate(cases, 1):
        say(f"[{i}/{len(cases)}] {case.label}")
        row = run_case(case, repeats=repeats, seed=seed, environment=env)
        append_jsonl(path, row)
        rows.append(row)
        if row["status"] == "ok":
            say(
                f"    {1e3 * row['seconds_median']:.2f} ms{'/iter' if case.mode == 'per_iter' else ''}, "
                f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB, completeness {row['completeness']:.3f}"
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
    """Markdown table with ratios to scikit-learn from the same run, and the plots (unless ``plot_prefix`` is None)."""
    ok = [r for r in rows if r["status"] == "ok"]
    # The peer is scikit-learn's default algorithm (lloyd for KMeans), measured in the same run.
    sk = {_peer_key(r): r for r in ok if r["backend"] == "sklearn" and r["kmeans_algorithm"] in ("auto", "lloyd")}
    env = next((r["environment"] for r in rows if r.get("environment")), {}) or {}
    lines = [
        f"Device: {env.get('device_name', '?')} ({env.get('device', '?')}), {env.get('cpu_count', '?')} CPU "
        f"threads; torch {env.get('torch', '?')}, scikit-learn {env.get('sklearn', '?')}; commit "
        f"{env.get('git_commit', '?')}.",
        "",
        "| case | mode | time (median) | spread | vs scikit-learn | peak memory | GB/s of X | GFLOP/s | "
        "completeness | NMI | ARI |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['mode']} | {r['status']}: {r['reason'][:80]} |" + " |" * 8)
            continue
        per = r["mode"] == "per_iter"
        t = r["seconds_median"]
        peer = sk.get(_peer_key(r))
        ratio = (
            ""
            if peer is None or r["backend"] == "sklearn"
            else f"{peer['seconds_median'] / t:.2f}x faster"
            if peer["seconds_median"] >= t
            else f"{t / peer['seconds_median']:.2f}x slower"
        )
        bw = f"{r['bytes_per_iter'] / t / 1e9:.1f}" if per else ""
        gf = f"{r['flops_per_iter'] / t / 1e9:.1f}" if per else ""
        lines.append(
            f"| {r['label']} | {'per iteration' if per else 'converged fit'} | "
            f"{1e3 * t:.2f} ms | {1e3 * r['seconds_min']:.2f}-{1e3 * r['seconds_max']:.2f} | {ratio} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} MiB | {bw} | {gf} | {r['completeness']:.3f} | "
            f"{r['nmi']:.3f} | {r['ari']:.3f} |"
        )
    atomic_write_text(markdown_path, "\n".join(lines) + "\n")
    if ok and plot_prefix is not None:
        _plot(ok, plot_prefix)


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

    scikit-learn cases stay on the CPU and cuML cases on CUDA whatever ``device`` says. The
    default ``tag`` is the grid's name, with the card's appended when the grid runs on a GPU.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid {grid!r} is not one of {sorted(GRIDS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    cases = GRIDS[grid]
    if device != "auto":
        cases = [replace(c, device=device) if c.backend not in ("sklearn", "cuml") else c for c in cases]
    tag = tag or default_tag(grid, cases)
    rows = run_grid(cases, out_dir, tag, repeats=repeats, seed=seed, say=say, fresh=fresh)
    return rows, Path(out_dir) / f"{tag}.jsonl"
