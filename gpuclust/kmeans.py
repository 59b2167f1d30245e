"""KMeans: a scikit-learn-compatible estimator with a PyTorch core, on CUDA or CPU."""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from . import _kmeans_core as core
from ._arrays import as_sample_weight, as_tensor, as_torch, to_output
from ._backends import cuml_available, require
from ._base import TorchEstimatorMixin, check_nonnegative_float, check_positive_int
from ._chunks import rows_per_chunk
from ._comm import gather_init_sample, make_comm
from .device import resolve_device

logger = logging.getLogger("gpuclust")

__all__ = ["KMeans", "kmeans_plusplus"]

BACKENDS = ("auto", "torch", "sklearn", "cuml")
ALGORITHMS = ("auto", "lloyd", "hamerly")
# What backend="auto" picks on a CPU: the faster one in benchmarks/results/cpu.md
# (ours ran 60000x784, k=10 at a lower time per iteration than scikit-learn's lloyd).
CPU_AUTO_BACKEND = "torch"


class KMeans(TorchEstimatorMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """K-Means clustering (Lloyd's algorithm) with a PyTorch core.

    Same parameters and semantics as :class:`sklearn.cluster.KMeans` (greedy
    k-means++, ``tol`` relative to the mean feature variance, ``n_init``
    restarts keeping the lowest inertia, empty clusters re-seeded), computed in
    row tiles on a CUDA GPU or the CPU.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters and of centres.
    init : {"k-means++", "random"} or array-like of shape (n_clusters, n_features), default="k-means++"
        ``"k-means++"``: greedy k-means++ seeding (:func:`kmeans_plusplus`);
        ``"random"``: ``n_clusters`` distinct samples drawn at random; an array: the
        initial centres themselves.
    n_init : "auto" or int, default="auto"
        Runs with different seeds, keeping the lowest inertia; ``"auto"`` is 1 for
        k-means++ and array init, 10 for random.
    max_iter : int, default=300
        Maximum number of Lloyd iterations per run.
    tol : float, default=1e-4
        Relative to the mean per-feature variance of X, on the total squared centre shift.
    verbose : int, default=0
        Log the inertia of each restart at INFO level.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization; the same seed chooses the same initial centres as
        scikit-learn's.
    algorithm : {"auto", "lloyd", "hamerly"}, default="auto"
        ``"hamerly"`` keeps Hamerly's distance bounds and re-assigns only the samples
        that may change cluster; the labels and centres are the same as ``"lloyd"``'s.
        ``"auto"``: hamerly on the CPU (where the distance GEMM dominates), lloyd on a
        GPU (where the bookkeeping costs more than the GEMM it saves).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where the computation runs; ``"auto"`` picks CUDA when a GPU is available.
    dtype : {None, "float32", "float64"}, default=None
        None keeps float32/float64 input and computes other input in float32.
    backend : {"auto", "torch", "sklearn", "cuml"}, default="auto"
        ``"torch"`` is ours; ``"sklearn"`` wraps :class:`sklearn.cluster.KMeans` (CPU);
        ``"cuml"`` wraps :class:`cuml.cluster.KMeans` (GPU). ``"auto"``: cuML on a GPU
        when installed, else ours.
    chunk_size : int, default=None
        Rows per tile; by default derived from ``memory_budget``.
    memory_budget : int, default=None
        Bytes of temporary memory per tile (default 64 MiB on the CPU, 512 MiB on CUDA).
    distributed : bool, default=False
        Fit data-parallel under an initialized torch.distributed process group: each
        rank passes its own block of rows to ``fit``; counts, sums and inertia are
        all-reduced, and every rank ends with the same centres. ``labels_`` are the
        rank's own rows'. See :mod:`gpuclust.distributed`.

    Attributes
    ----------
    cluster_centers_ : array of shape (n_clusters, n_features)
        Centres, in the array type of the ``fit`` input (numpy, torch or CuPy).
    labels_ : array of shape (n_samples,)
        Index of each training sample's centre.
    inertia_ : float
        Sum of (weighted) squared distances of the samples to their centres.
    n_iter_ : int
        Iterations of the best run.
    n_features_in_ : int
        Number of features seen during ``fit``.
    backend_ : str
        The backend that ran.

    See Also
    --------
    kmeans_plusplus : the seeding on its own.
    GaussianMixture : soft assignments with a covariance per cluster.
    sklearn.cluster.KMeans : the reference implementation.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuclust import KMeans
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> km = KMeans(n_clusters=2, random_state=0, device="cpu").fit(X)
    >>> km.cluster_centers_[np.argsort(km.cluster_centers_[:, 0])]
    array([[ 1.,  2.],
           [10.,  2.]])
    >>> bool(km.predict([[0.0, 0.0]])[0] == km.labels_[0])
    True
    >>> round(km.inertia_, 6)
    16.0
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        verbose=0,
        random_state=None,
        algorithm="auto",
        device="auto",
        dtype=None,
        backend="auto",
        chunk_size=None,
        memory_budget=None,
        distributed=False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.algorithm = algorithm
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.distributed = distributed

    # ------------------------------------------------------------------ checks
    def _check_params(self, n_samples):
        n_samples = int(self._comm.sum_float(n_samples, "sample count"))
        k = check_positive_int(self.n_clusters, "n_clusters")
        check_positive_int(self.max_iter, "max_iter")
        check_nonnegative_float(self.tol, "tol")
        if n_samples < k:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={k}.")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r} is not one of {ALGORITHMS}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {BACKENDS}.")
        is_array_init = not isinstance(self.init, str)
        if isinstance(self.init, str) and self.init not in ("k-means++", "random"):
            raise ValueError(
                f"init={self.init!r} must be 'k-means++', 'random' or an array of shape (n_clusters, n_features)."
            )
        if self.n_init == "auto":
            n_init = 1 if (is_array_init or self.init == "k-means++") else 10
        else:
            n_init = check_positive_int(self.n_init, "n_init")
        if is_array_init and n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            n_init = 1
        return k, n_init

    def _resolve_backend(self):
        if self.backend != "auto":
            if self.backend == "cuml":
                require("cuml")
                if self._device.type != "cuda":
                    raise ValueError("backend='cuml' runs on a GPU only; use device='cuda' or backend='torch'.")
            if self.backend == "sklearn" and self._device.type != "cpu":
                raise ValueError("backend='sklearn' runs on the CPU only; use device='cpu' or backend='torch'.")
            return self.backend
        if self._device.type == "cuda":
            if cuml_available() and self.chunk_size is None and self.memory_budget is None:
                logger.info("backend='auto': cuML is installed, using it on %s", self._device)
                return "cuml"
            logger.info(
                "backend='auto': using torch on %s (cuML %s)",
                self._device,
                "not installed" if not cuml_available() else "skipped: chunking options given",
            )
            return "torch"
        logger.info("backend='auto': using %s on the CPU (faster in our benchmark)", CPU_AUTO_BACKEND)
        return CPU_AUTO_BACKEND

    # --------------------------------------------------------------------- fit
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy array, torch tensor (CPU or CUDA) or DLPack-capable array (CuPy).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self : KMeans
        """
        X_t, kind = self._prepare_fit_input(X)
        n, d = X_t.shape
        self._comm = make_comm(self.distributed)
        k, n_init = self._check_params(n)
        w = as_sample_weight(sample_weight, n, device=self._device, dtype=self._dtype)
        init_t = None
        if not isinstance(self.init, str):
            init_t, _ = as_tensor(self.init, device=self._device, dtype=self._dtype, name="init")
            if tuple(init_t.shape) != (k, d):
                raise ValueError(
                    f"init has shape {tuple(init_t.shape)}, expected (n_clusters, n_features) = ({k}, {d})."
                )
        self.backend_ = self._resolve_backend()
        if self.distributed and self.backend_ != "torch":
            raise ValueError(f"distributed=True needs backend='torch' (got {self.backend_!r}).")
        if self.backend_ == "torch":
            centers, labels, inertia, n_iter = self._fit_torch(X_t, w, k, n_init, init_t, sample_weight is None)
        elif self.backend_ == "sklearn":
            centers, labels, inertia, n_iter = self._fit_sklearn(X_t, w, k, n_init, init_t, sample_weight)
        else:
            centers, labels, inertia, n_iter = self._fit_cuml(X_t, w, k, n_init, init_t, sample_weight)
        self._centers = centers
        sizes = self._comm.sum_(torch.bincount(labels, minlength=k).to(torch.float64), "cluster sizes")
        n_distinct = int((sizes > 0).sum())
        if n_distinct < k:
            warnings.warn(
                f"Number of distinct clusters ({n_distinct}) found smaller than n_clusters ({k}). "
                "Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.cluster_centers_ = self._output(centers, kind)
        self.labels_ = self._output(labels, kind)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        return self

    def _chunk(self, n, d, k):
        itemsize = torch.finfo(self._dtype).bits // 8
        # per row: the (k,) scores, and on a GPU the (k,) one-hot of the centre-sum GEMM
        return rows_per_chunk(n, (2 * k + 2) * itemsize, self._device, self.chunk_size, self.memory_budget)

    def _fit_torch(self, X, w, k, n_init, init_t, unit_weight):
        n, d = X.shape
        rs = check_random_state(self.random_state)
        x_sq = core.squared_norms(X)
        comm = self._comm
        tol = 0.0 if self.tol == 0 else core.mean_feature_variance(X, x_sq, comm) * self.tol
        chunk = self._chunk(n, d, k)
        prune = self.algorithm == "hamerly" or (self.algorithm == "auto" and X.device.type == "cpu")
        # Under torch.distributed every rank seeds from the same gathered rows; rank 0's centres
        # are broadcast so that all ranks start identically.
        X_all, w_all = (X, w) if init_t is not None else gather_init_sample(X, w, comm, rs)
        best = None
        for run in range(n_init):
            if init_t is not None:
                centers = init_t.clone()
            elif self.init == "k-means++":
                centers, _ = core.kmeans_plusplus(
                    X_all, k, w_all, core.squared_norms(X_all) if X_all is not X else x_sq, rs
                )
            else:
                seeds = torch.as_tensor(rs.permutation(X_all.shape[0])[:k], device=X.device)
                centers = X_all[seeds].clone()
            comm.broadcast_(centers, 0, "initial centres")
            labels, inertia, centers, n_iter = core.lloyd(
                X,
                w,
                x_sq,
                centers,
                max_iter=self.max_iter,
                tol=tol,
                chunk=chunk,
                unit_weight=unit_weight,
                prune=prune,
                comm=comm,
            )
            if self.verbose:
                logger.info("KMeans init %d: inertia %.6g after %d iterations", run, inertia, n_iter)
            if best is None or inertia < best[2]:
                best = (centers, labels, inertia, n_iter)
        return best

    def _fit_sklearn(self, X, w, k, n_init, init_t, sample_weight):
        from sklearn.cluster import KMeans as SkKMeans

        init = init_t.cpu().numpy() if init_t is not None else self.init
        est = SkKMeans(
            n_clusters=k,
            init=init,
            n_init=n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=self.random_state,
            algorithm="lloyd",
        )
        est.fit(X.cpu().numpy(), sample_weight=None if sample_weight is None else w.cpu().numpy())
        as_t = lambda a: torch.as_tensor(np.asarray(a), device=X.device)
        return as_t(est.cluster_centers_).to(X.dtype), as_t(est.labels_).to(torch.int64), est.inertia_, est.n_iter_

    def _fit_cuml(self, X, w, k, n_init, init_t, sample_weight):
        cuml = require("cuml")
        cupy = require("cupy")
        # DLPack hands the device buffer to CuPy/cuML without a host round trip.
        X_cp = cupy.from_dlpack(X.contiguous())
        init = (
            cupy.from_dlpack(init_t.contiguous())
            if init_t is not None
            else ("scalable-k-means++" if self.init == "k-means++" else "random")
        )
        seed = self.random_state if isinstance(self.random_state, numbers.Integral) else None
        est = cuml.cluster.KMeans(
            n_clusters=k,
            init=init,
            n_init=n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=seed,
            output_type="cupy",
        )
        est.fit(X_cp, sample_weight=None if sample_weight is None else cupy.from_dlpack(w.contiguous()))
        centers = torch.from_dlpack(cupy.asarray(est.cluster_centers_)).to(X.dtype)
        labels = torch.from_dlpack(cupy.asarray(est.labels_)).to(torch.int64)
        return centers, labels, float(est.inertia_), int(getattr(est, "n_iter_", self.max_iter))

    # --------------------------------------------------------------- inference
    def _assign(self, X):
        centers = self._centers.to(X.dtype)
        x_sq = core.squared_norms(X)
        chunk = self._chunk(X.shape[0], X.shape[1], centers.shape[0])
        return core.assign(X, x_sq, centers, chunk)

    def predict(self, X):
        """Index of the nearest centre for each sample, as an array of the input's type."""
        X_t, kind = self._prepare_input(X, "_centers")
        return self._output(self._assign(X_t)[0], kind)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances to every centre, shape (n_samples, n_clusters)."""
        X_t, kind = self._prepare_input(X, "_centers")
        centers = self._centers
        c_sq, x_sq = core.squared_norms(centers), core.squared_norms(X_t)
        d2 = torch.addmm(c_sq.unsqueeze(0) + x_sq.unsqueeze(1), X_t, centers.T, alpha=-2.0).clamp_min_(0)
        return self._output(d2.sqrt_(), kind)

    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit, then return the distances of X to the centres."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the inertia of X against the fitted centres (higher is better)."""
        X_t, _ = self._prepare_input(X, "_centers")
        w = as_sample_weight(sample_weight, X_t.shape[0], device=self._device, dtype=self._dtype)
        _, distances = self._assign(X_t)
        return -float((distances.to(torch.float64) * w.to(torch.float64)).sum())


def kmeans_plusplus(
    X, n_clusters, *, sample_weight=None, x_squared_norms=None, random_state=None, n_local_trials=None, device=None
):
    """Initial centres chosen by greedy k-means++, as :func:`sklearn.cluster.kmeans_plusplus`.

    Each step draws ``2 + log(n_clusters)`` candidates with probability proportional
    to their weighted squared distance to the nearest chosen centre and keeps the one
    that lowers the potential most. The draws come from ``random_state`` on the host,
    so the same seed chooses the same samples as scikit-learn, on the CPU or a GPU.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        numpy array, torch tensor or DLPack-capable array.
    n_clusters : int
        Number of centres to choose.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights; None gives every sample weight one.
    x_squared_norms : array-like of shape (n_samples,), default=None
        Squared Euclidean norms of the rows of X, if already known.
    random_state : int, RandomState instance or None, default=None
    n_local_trials : int, default=None
        Candidates per step; None means ``2 + int(log(n_clusters))``.
    device : {"cpu", "cuda", "cuda:N"}, torch.device or None, default=None
        Where to compute; None computes where X lives.

    Returns
    -------
    centers : array of shape (n_clusters, n_features)
        In X's array type.
    indices : ndarray of shape (n_clusters,)
        Row of X each centre was taken from.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuclust import kmeans_plusplus
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> centers, indices = kmeans_plusplus(X, n_clusters=2, random_state=0)
    >>> centers.shape, sorted(X[indices, 0].tolist())
    ((2, 2), [1.0, 10.0])
    """
    target = as_torch(X).device if device is None else resolve_device(device)
    X_t, kind = as_tensor(X, device=target)
    n = X_t.shape[0]
    k = check_positive_int(n_clusters, "n_clusters")
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    if n_local_trials is not None:
        n_local_trials = check_positive_int(n_local_trials, "n_local_trials")
    w = as_sample_weight(sample_weight, n, device=target, dtype=X_t.dtype)
    if x_squared_norms is None:
        x_sq = core.squared_norms(X_t)
    else:
        x_sq, _ = as_tensor(x_squared_norms, device=target, dtype=X_t.dtype, name="x_squared_norms", ndim=1)
        if x_sq.shape[0] != n:
            raise ValueError(f"x_squared_norms has {x_sq.shape[0]} entries but X has {n} samples.")
    centers, indices = core.kmeans_plusplus(X_t, k, w, x_sq, check_random_state(random_state), n_local_trials)
    return to_output(centers, kind), indices
