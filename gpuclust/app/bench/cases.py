"""The benchmark's cases: what each one measures, the named grids of them, and how each timed fit stops."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...gaussian_mixture import COVARIANCE_TYPES


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


class CaseSkipped(Exception):
    """A case that cannot run here (no GPU for a CUDA case, cuML on the CPU): a skipped row."""


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
