"""KMeans: a scikit-learn-compatible estimator with a PyTorch core, on CUDA or CPU."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from . import _kmeans_core as core
from ._arrays import ArrayKind, as_sample_weight, as_tensor, as_torch, is_sparse, resolve_dtype, to_output
from ._backends import cuml_available, fit_cuml, fit_sklearn, require
from ._base import (
    TORCH_PARAMETER_CONSTRAINTS,
    TorchEstimatorMixin,
    check_positive_int,
    no_autocast,
    unchanged_on_error,
    warn_user,
)
from ._chunks import tile_rows_for
from ._comm import LOCAL, make_comm
from .device import resolve_device
from .sources import (
    TensorRows,
    centred_sums,
    check_fit_out,
    column_sums,
    init_sample,
    is_out_of_core,
    squared_norms_total,
)

logger = logging.getLogger("gpuclust")

__all__ = ["KMeans", "kmeans_plusplus"]

BACKENDS = ("auto", "torch", "sklearn", "cuml")
ALGORITHMS = ("auto", "lloyd", "elkan", "hamerly")
# What backend="auto" picks on a CPU: the faster one in benchmarks/results/cpu.md
# (ours ran 60000x784, k=10 at a lower time per iteration than scikit-learn's lloyd).
CPU_AUTO_BACKEND = "torch"
# algorithm="auto" on the CPU: Hamerly's bounds from this n_features * n_clusters on, a heuristic.
# Per iteration on 2 Xeon cores (60000 rows of blobs or Fashion-MNIST), lloyd / hamerly in ms:
# d*k = 80: 1.31 / 1.78; 500: 1.80 / 2.70; 1000: 3.22 / 4.13; 2000: 3.32 / 3.46; 2048 (32x64):
# 4.31 / 3.01; 7840 (pixels): 14.1 / 12.0. On overlapping blobs at d*k = 2048 Lloyd was twice as
# fast (few samples keep their bounds): the pruning pays only where clusters are apart.
HAMERLY_FROM_GEMM_WIDTH = 2048
# ``matmul_precision`` by the name :func:`gpuclust._fused.assign` gives it ("highest": exact float32 products).
FUSED_PRECISIONS = {"highest": "ieee", "tf32": "tf32", "bf16": "bf16"}


class KMeans(TorchEstimatorMixin, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """K-Means clustering (Lloyd's algorithm) with a PyTorch core.

    Same parameters and semantics as :class:`sklearn.cluster.KMeans` (greedy
    k-means++, ``tol`` relative to the mean feature variance, ``n_init``
    restarts keeping the lowest inertia, empty clusters re-seeded), computed in
    row tiles on a CUDA GPU or the CPU.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters and of centres.
    init : {"k-means++", "random"}, callable or array-like of shape (n_clusters, n_features), default="k-means++"
        ``"k-means++"``: greedy k-means++ seeding (:func:`kmeans_plusplus`);
        ``"random"``: ``n_clusters`` distinct samples drawn with probability proportional
        to ``sample_weight``; a callable ``init(X, n_clusters, random_state=rs)`` returning
        the centres (X validated, as an array of the input's type: NumPy for NumPy arrays, lists and
        DataFrames); an array: the initial centres.
    n_init : "auto" or int, default="auto"
        Runs with different seeds, keeping the lowest inertia; ``"auto"`` is 1 for
        k-means++ and array init, 10 for random.
    max_iter : int, default=300
        Maximum number of Lloyd iterations per run.
    tol : float, default=1e-4
        Relative to the mean per-feature variance of X, on the total squared centre shift.
    verbose : int, default=0
        Print what scikit-learn prints: "Initialization complete", the inertia of each
        iteration and how the run converged.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization; the same seed chooses the same initial centres as
        scikit-learn's.
    copy_x : bool, default=True
        Accepted for scikit-learn compatibility; gpuclust never writes into X, so X is
        left unmodified either way.
    algorithm : {"auto", "lloyd", "elkan", "hamerly"}, default="auto"
        ``"hamerly"`` keeps Hamerly's distance bounds and re-assigns only the samples
        that may change cluster; the labels and centres are the same as ``"lloyd"``'s.
        ``"elkan"`` (scikit-learn's name for its bounds-based variant) runs ``"hamerly"``.
        ``"auto"``: hamerly on the CPU when ``n_features * n_clusters >= 2048`` (where the
        distance GEMM it saves dominates), lloyd otherwise and on a GPU (where the bounds'
        bookkeeping costs more than the GEMM it saves). The threshold is a heuristic from
        well-separated data; where clusters overlap, few samples can be skipped and
        ``"lloyd"`` can be faster. Sparse X always runs plain Lloyd.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where the computation runs; ``"auto"`` picks CUDA when a GPU is available.
    dtype : {None, "float32", "float64"}, default=None
        None keeps float32/float64 input; other input (integers, float16) is computed in
        float64 on the CPU, as scikit-learn does, and in float32 on a GPU.
    backend : {"auto", "torch", "sklearn", "cuml"}, default="auto"
        ``"torch"`` is ours; ``"sklearn"`` wraps :class:`sklearn.cluster.KMeans` (CPU);
        ``"cuml"`` wraps :class:`cuml.cluster.KMeans` (GPU). ``"auto"``: cuML on a GPU
        when installed and neither ``chunk_size`` nor ``memory_budget`` is given (they set
        gpuclust's tiles, which cuML does not have), else ours.
    chunk_size : int, default=None
        Rows per tile; by default derived from ``memory_budget``.
    memory_budget : int, default=None
        Bytes of temporary memory per tile (default 64 MiB on the CPU, 512 MiB on CUDA).
    distributed : bool, default=False
        Fit data-parallel under an initialized torch.distributed process group: each
        rank passes its own block of rows to ``fit``; counts, sums and inertia are
        all-reduced, and every rank ends with the same centres. ``labels_`` are the
        rank's own rows'. See :mod:`gpuclust.distributed`.
    matmul_precision : {"highest", "tf32", "bf16"}, default="highest"
        Precision of the distance product of the fused assignment, the one a Lloyd fit of
        dense float32 X in memory runs on CUDA when triton is installed
        (``pip install gpuclust[triton]``): ``"tf32"`` and ``"bf16"`` multiply on tensor
        cores in that format. The labels are still the float32 GEMM path's, since every
        sample whose two nearest centres are within the product's rounding bound is re-checked
        on that path (so are "highest"'s, whose float32 products the kernel sums in another
        order); the centres, sums of X over those labels, do not depend on it either. On
        every other path (CPU, float64, sparse or out-of-core X, Hamerly, the scikit-learn
        and cuML backends) it has no effect.

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

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "random"}), callable, "array-like"],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "copy_x": ["boolean"],
        "algorithm": [StrOptions(set(ALGORITHMS))],
        "backend": [StrOptions(set(BACKENDS))],
        "matmul_precision": [StrOptions(set(FUSED_PRECISIONS))],
        **TORCH_PARAMETER_CONSTRAINTS,
    }
    _accept_sparse = True

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
        copy_x=True,
        algorithm="auto",
        device="auto",
        dtype=None,
        backend="auto",
        chunk_size=None,
        memory_budget=None,
        distributed=False,
        matmul_precision="highest",
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.distributed = distributed
        self.matmul_precision = matmul_precision

    def __setstate__(self, state):
        # A KMeans pickled before ``matmul_precision`` existed has no such attribute: get_params,
        # repr and a refit would raise AttributeError. It takes the default, which it ran with.
        state.setdefault("matmul_precision", "highest")
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------ checks
    def _check_params(self, n_local, comm):
        """Checks that need the data (the parameters' types and ranges are checked by ``_fit_context``).

        Returns ``(n_global, n_clusters, n_init)``.
        """
        n_global = int(comm.sum_float(n_local, "sample count"))
        k = int(self.n_clusters)
        if n_global < k:
            raise ValueError(f"n_samples={n_global} should be >= n_clusters={k}.")
        is_array_init = not isinstance(self.init, str) and not callable(self.init)
        if self.n_init == "auto":
            n_init = 1 if (is_array_init or self.init == "k-means++") else 10
        else:
            n_init = int(self.n_init)
        if is_array_init and n_init != 1:
            warn_user(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
            )
            n_init = 1
        if self.algorithm == "elkan" and k == 1:
            warn_user(
                "algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.", RuntimeWarning
            )
        return n_global, k, n_init

    @staticmethod
    def _check_centers(centers, name, k, d, device, dtype):
        """Initial centres as a tensor of shape (k, d), with scikit-learn's messages (tools match on them)."""
        t, _ = as_tensor(centers, device=device, dtype=dtype, name=name)
        shape = tuple(t.shape)
        if shape[0] != k:
            raise ValueError(f"The shape of the initial centers {shape} does not match the number of clusters {k}.")
        if shape[1] != d:
            raise ValueError(
                f"The shape of the initial centers {shape} does not match the number of features of the data {d}."
            )
        return t

    def _resolve_backend(self, rows):
        """The backend that runs this fit (``backend="auto"``: see the class docstring)."""
        if rows.out_of_core:
            if self.backend not in ("auto", "torch"):
                raise ValueError(f"backend={self.backend!r} needs X in memory; out-of-core data runs backend='torch'.")
            if callable(self.init):
                raise ValueError(
                    "A callable init needs X in memory; pass 'k-means++', 'random' or an array of centres."
                )
            return "torch"
        if is_sparse(rows.tensor):
            if self.backend not in ("auto", "torch"):
                raise ValueError(f"backend={self.backend!r} does not take sparse input; use backend='torch'.")
            return "torch"
        if callable(self.init) and self.backend == "cuml":
            raise ValueError("backend='cuml' takes init='k-means++', 'random' or an array, not a callable.")
        if self.backend == "cuml":
            require("cuml")
            if rows.device.type != "cuda":
                raise ValueError("backend='cuml' runs on a GPU only; use device='cuda' or backend='torch'.")
        if self.backend == "sklearn" and rows.device.type != "cpu":
            raise ValueError("backend='sklearn' runs on the CPU only; use device='cpu' or backend='torch'.")
        return self.backend if self.backend != "auto" else self._auto_backend(rows.device)

    def _auto_backend(self, device):
        if device.type != "cuda":
            logger.info("backend='auto': using %s on the CPU (faster in our benchmark)", CPU_AUTO_BACKEND)
            return CPU_AUTO_BACKEND
        # chunk_size and memory_budget are ours: a fit that sets them wants our tiles, so runs ours.
        if cuml_available() and self.chunk_size is None and self.memory_budget is None:
            logger.info("backend='auto': cuML is installed, using it on %s", device)
            return "cuml"
        why = "not installed" if not cuml_available() else "skipped: chunk_size or memory_budget given"
        logger.info("backend='auto': using torch on %s (cuML %s)", device, why)
        return "torch"

    # --------------------------------------------------------------------- fit
    @no_autocast
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features), or out-of-core data
            numpy array, pandas DataFrame, torch tensor (CPU or CUDA), DLPack-capable array
            (CuPy), scipy sparse matrix/array or torch sparse CSR tensor (never densified).
            Out of core: a NumPy memmap, a path to a 2-d ``.npy`` file, a list of 2-d row
            blocks, or a callable returning a new iterator of row blocks on every call. Such
            data is read tile by tile in every pass (Lloyd without Hamerly's per-sample bounds;
            the centres equal an in-memory ``algorithm="lloyd"`` fit's) and ``labels_`` is a
            NumPy array. k-means++ and ``"random"`` seed from a uniform sample of at most
            ``INIT_SAMPLE_ELEMENTS`` (2**25) values, i.e. ``2**25 // n_features`` rows, drawn
            from ``random_state`` (all rows, in order, when the data is no larger).
        y : ignored
        sample_weight : array-like of shape (n_samples,) or float, optional
            Weights of the samples; also the probabilities of ``init="random"``'s draws.

        Returns
        -------
        self : KMeans
        """
        with unchanged_on_error(self):
            return self._fit(X, sample_weight)

    def _fit(self, X, sample_weight, out=None):
        """Validate everything, plan the fit, run ``n_init`` times, record the best run."""
        rows, kind, scanned = self._fit_rows(X)
        comm = make_comm(self.distributed)
        n_global, k, n_init = self._check_params(rows.shape[0], comm)
        backend = self._resolve_backend(rows)
        if self.distributed and backend != "torch":
            raise ValueError(f"distributed=True needs backend='torch' (got {backend!r}).")
        w = None
        if sample_weight is not None or not rows.out_of_core:  # out of core, unit weights stay None
            w_device = torch.device("cpu") if rows.out_of_core else rows.device
            w = as_sample_weight(sample_weight, rows.shape[0], device=w_device, dtype=rows.dtype)
        labels_out = None if out is None else rows.empty((rows.shape[0],), torch.int64, out).numpy()
        init = None
        if not isinstance(self.init, str) and not callable(self.init):
            init = self._check_centers(self.init, "init", k, rows.shape[1], rows.device, rows.dtype)
        data = _SourceData(rows, scanned, comm) if rows.out_of_core else _TensorData(rows, comm, backend == "torch")
        if backend == "torch":
            plan = self._plan(data, comm, n_global, k, n_init, init, sample_weight is None)
            # A callable init gets X validated, in the array type of the input (numpy for lists and DataFrames).
            user_X = _callable_init_input(X, rows.tensor, kind) if callable(self.init) else None
            best = self._fit_all_inits(data, w, plan, user_X, labels_out)
        else:
            plan = None
            fit_backend = fit_sklearn if backend == "sklearn" else fit_cuml
            best = _Run(*fit_backend(self, rows.tensor, w, k, n_init, init, sample_weight))
        self._record_fit(rows, kind, backend, best, comm, None if plan is None else plan.shift)
        if labels_out is not None and not np.shares_memory(best.labels.numpy(), labels_out):
            labels_out[...] = best.labels.numpy()  # the caller's out was not the run's labels
        self.labels_ = rows.result(best.labels, kind, out)
        return self

    def _fit_rows(self, X):
        """``fit``'s X as rows (:class:`TensorRows` in memory, :class:`SourceRows` out of core), its
        output kind, and for out-of-core X the sums of the pass that checked it (else None)."""
        if is_out_of_core(X):
            rows, scanned = self._source_rows(X, resolve_device(self.device), resolve_dtype(self.dtype))
            return rows, ArrayKind("numpy", torch.device("cpu")), scanned
        X_t, kind = self._convert_fit_input(X)
        return TensorRows(X_t), kind, None

    def _plan(self, data, comm, n_global, k, n_init, init, unit_weight):
        """The fit's :class:`_FitPlan`: everything its runs need, resolved once."""
        rows, shift = data.rows, data.shift
        n, d = rows.shape
        if init is not None and shift is not None:
            init = init - shift.to(init.dtype)
        hamerly = (
            k > 1
            and not rows.out_of_core
            and not is_sparse(rows.tensor)
            and (
                self.algorithm in ("hamerly", "elkan")
                or (self.algorithm == "auto" and rows.device.type == "cpu" and d * k >= HAMERLY_FROM_GEMM_WIDTH)
            )
        )
        tile_rows = self._tile_rows(n, d, k, rows.device, rows.dtype)
        tol = 0.0 if self.tol == 0 else data.mean_feature_variance(comm) * self.tol
        # The fused kernels take dense X in memory; Hamerly's bounds need the second-nearest distance.
        dense_lloyd = not hamerly and not rows.out_of_core and not is_sparse(rows.tensor)
        fused = self._fused_kernels() if dense_lloyd and self._assigns_fused(rows.device, rows.dtype) else None
        settings = core.LloydSettings(
            max_iter=self.max_iter,
            tol=tol,
            tile_rows=tile_rows,
            unit_weight=unit_weight,
            onehot=self._accumulates_onehot(rows.device),
            comm=comm,
            log=print if self.verbose else None,
            fused=fused,
        )
        return _FitPlan(rows.device, rows.dtype, comm, n, n_global, d, k, n_init, shift, tile_rows,
                        data.keeps_centred_copy, init, "hamerly" if hamerly else "lloyd", settings)  # fmt: skip

    @staticmethod
    def _accumulates_onehot(device):
        """The accumulation of this fit's centre sums (:func:`gpuclust._kmeans_core.accumulates_onehot`).

        Chosen once per fit and carried by the plan; tests subclass to run the other one on any device.
        """
        return core.accumulates_onehot(device)

    def _assigns_fused(self, device, dtype):
        """Whether a dense, in-memory Lloyd fit assigns by the fused Triton kernel (``LloydSettings.fused``).

        Float32 on CUDA with triton installed (:func:`gpuclust._fused.available`); never on a CPU,
        and never for float64, which the kernel would hand back to the torch path. Chosen once per
        fit; tests force it on CPU tensors (triton's interpreter) by overriding this method.
        """
        if dtype != torch.float32 or torch.device(device).type != "cuda":
            return False
        from . import _fused  # imports triton: only for a fit that could use it

        return _fused.available(device)

    def _fused_kernels(self):
        """The :class:`gpuclust._kmeans_core.FusedKernels` of a fit :meth:`_assigns_fused` chose them for."""
        from . import _fused

        return core.FusedKernels(_fused.assign, _fused.cluster_sums, FUSED_PRECISIONS[self.matmul_precision])

    def _fit_all_inits(self, data, w, plan, user_X, labels_out):
        """``n_init`` runs; the kept one by scikit-learn's rule (:meth:`_replaces`), as a :class:`_Run`."""
        rs = check_random_state(self.random_state)
        seeds = None
        if plan.init is None and not callable(self.init):
            # Under torch.distributed every rank seeds from the same rows (gpuclust.sources.init_sample);
            # rank 0's centres are broadcast so that all ranks start identically.
            seeds = data.seed_rows(w, plan.comm, rs)
        log, final_w = plan.settings.log, None if plan.settings.unit_weight else w
        best = None
        for _ in range(plan.n_init):
            centers = self._initial_centers(seeds, plan, rs, user_X)
            plan.comm.broadcast_(centers, 0, "initial centres")
            if log is not None:
                log("Initialization complete")
            labels = data.new_labels(labels_out if plan.n_init == 1 else None)
            run = data.run(centers, plan, w, labels)
            run = self._finish_run(data.tiles(plan.tile_rows), run.centers, run.n_iter, plan, final_w, labels)
            if _replaces(run, best, plan.comm):
                best = run
        return best

    def _initial_centers(self, seeds, plan, rs, user_X):
        """One run's starting centres, in the fit's coordinates (``seeds``: rows every rank shares)."""
        k = plan.n_clusters
        if plan.init is not None:
            return plan.init.clone()
        if self.init == "k-means++":
            centers, _ = core.kmeans_plusplus(seeds.X, k, seeds.w, seeds.x_sq, rs)
        elif self.init == "random":
            # scikit-learn's draw: k distinct rows, with probability proportional to the weight.
            w64 = seeds.w.to(torch.float64).cpu().numpy()
            chosen = rs.choice(seeds.X.shape[0], size=k, replace=False, p=w64 / w64.sum())
            centers = core.dense_rows(seeds.X, torch.as_tensor(chosen, device=seeds.X.device))
        else:
            centers = self.init(user_X, k, random_state=rs)
            centers = self._check_centers(centers, "init(X) result", k, plan.n_features, plan.device, plan.dtype)
            if plan.shift is not None:  # the callable saw the caller's X; the fit runs on centred data
                centers = centers - plan.shift.to(centers.dtype)
        return centers.clone()

    def _finish_run(self, tiles, centers, n_iter, plan, sample_weight, labels):
        """A run's :class:`_Run`: its centres as published, and the labels and inertia inference gives them.

        ``centers`` are the run's final centres in the fit's coordinates (centred by ``plan.shift``
        if not None); ``tiles`` yields the training rows in those coordinates. The centres are
        rounded as publishing rounds them (``centred + mean`` in the data's dtype) and every row is
        labelled by :meth:`_assign_tiles`, the routine behind ``predict`` and ``score``, so that
        ``predict(X) == labels_`` and ``score(X) == -inertia_`` hold exactly. This pass stays on
        the GEMM tiles where Lloyd ran the fused kernel (``plan.settings.fused``): one pass per
        run, and it is predict's own routine (the kernel's labels equal it, near ties re-checked,
        but its distances carry the kernel's rounding, and the inertia must be predict's).
        """
        published, shift = centers, plan.shift
        if shift is not None:
            published = (centers.to(torch.float64) + shift.to(centers.device)).to(centers.dtype)
            centers = published - shift.to(device=centers.device, dtype=centers.dtype)
        local = self._assign_tiles(tiles, centers, sample_weight, labels)
        return _Run(published, labels, plan.comm.sum_float(local, "inertia"), n_iter)

    def _record_fit(self, rows, kind, backend, run, comm, shift):
        """Every check has passed and the runs are done: record the input and the kept run."""
        if rows.out_of_core:
            self._set_fit_source(rows)
        else:
            self._set_fit_input(rows.tensor, kind)
        self.backend_ = backend
        sizes = comm.sum_(torch.bincount(torch.as_tensor(run.labels), minlength=run.centers.shape[0])
                          .to(device=run.centers.device, dtype=torch.float64), "cluster sizes")  # fmt: skip
        self._warn_if_few_clusters(int((sizes > 0).sum()), run.centers.shape[0])
        self._fit_shift = shift
        self._n_features_out = int(run.centers.shape[0])
        self.cluster_centers_ = self._output(run.centers, self._input_kind)
        self.inertia_ = float(run.inertia)
        self.n_iter_ = int(run.n_iter)

    def _model_centers(self, dtype):
        """The centres inference uses, in the geometry ``fit`` used.

        As in scikit-learn, ``cluster_centers_`` is the model: it is read anew on every call, so an
        assigned array or an in-place edit (also after a pickle round trip) changes what predict,
        transform and score use. Where ``fit`` centred the data (far from the origin), the centres
        are moved by the same data mean as every tile (:meth:`_centred_tiles`).
        """
        k, d = self._n_features_out, self.n_features_in_
        centers, _ = as_tensor(self.cluster_centers_, device=self._device, dtype=dtype, name="cluster_centers_")
        if tuple(centers.shape) != (k, d):
            raise ValueError(f"cluster_centers_ has shape {tuple(centers.shape)}, expected ({k}, {d}).")
        shift = self._data_shift(dtype)
        return centers if shift is None else centers - shift

    def _data_shift(self, dtype):
        """The data mean ``fit`` subtracted before expanding distances (None if it did not), in ``dtype``."""
        shift = getattr(self, "_fit_shift", None)
        return None if shift is None else shift.to(device=self._device, dtype=dtype)

    def _centred_tiles(self, rows, dtype, tile_rows):
        """Yield ``(rows, tile)`` with the fit's data mean subtracted (sparse tiles densified then)."""
        shift = self._data_shift(dtype)
        for r, tile in rows.tiles(tile_rows):
            if tile.dtype != dtype:
                tile = tile.to(dtype)
            if shift is not None:
                tile = (tile.to_dense() if core.is_sparse(tile) else tile) - shift
            yield r, tile

    @staticmethod
    def _assign_tiles(tiles, centers, sample_weight=None, labels=None, inertia=True):
        """Label every tile by its nearest centre; return the weighted inertia (float64, this rank's rows).

        The one routine behind ``predict``, ``score`` and a fit's final labels and inertia. Labels
        come from the expanded distances; the inertia sums the exact ``||x - c||^2`` of each row to
        its centre, as scikit-learn's does, so it keeps the dtype's precision on any data.
        ``labels``: where the labels go (any device), or None. ``inertia=False`` skips the exact
        distances (``predict`` needs the labels alone) and returns 0.0.
        """
        c_sq = core.center_norms(centers)
        total = torch.zeros((), dtype=torch.float64, device=centers.device)
        for r, tile in tiles:
            x_sq = core.squared_norms(tile)
            _check_no_overflow(x_sq)
            lab, _ = core.nearest_center(tile, centers, c_sq, x_sq, distances=False)
            if labels is not None:
                labels[r].copy_(lab)
            if not inertia:
                continue
            dist = core.distances_to_own_center(tile, x_sq, centers, lab).to(torch.float64)
            if sample_weight is not None:
                dist = dist * sample_weight[r].to(device=dist.device, dtype=torch.float64)
            total += dist.sum()
        return float(total)

    def _inference_tiles(self, rows):
        """The centred tiles of ``rows`` (in ``rows.dtype``) and the model's centres."""
        centers = self._model_centers(rows.dtype)
        n, d = rows.shape
        return self._centred_tiles(rows, rows.dtype, self._tile_rows(n, d, centers.shape[0])), centers

    def _tile_rows(self, n, d, k, device=None, dtype=None):
        """Rows per tile for ``n`` rows against ``k`` centres (default: on the fitted device and dtype)."""
        device = self._device if device is None else device
        itemsize = torch.finfo(self._dtype if dtype is None else dtype).bits // 8
        # per row: the (k,) scores, on a GPU the (k,) one-hot of the centre-sum GEMM (or instead of
        # both, which are then freed, the (2k,) one-hot of Lloyd's moved-row update), and the row
        # itself, which a tile copies when it is read from disk, centred or densified
        return tile_rows_for(n, (2 * k + 2 + d) * itemsize, device, self.chunk_size, self.memory_budget)

    def _warn_if_few_clusters(self, n_distinct, k):
        if n_distinct < k:
            warn_user(
                f"Number of distinct clusters ({n_distinct}) found smaller than n_clusters ({k}). "
                "Possibly due to duplicate points in X.",
                ConvergenceWarning,
            )

    # --------------------------------------------------------------- inference
    @no_autocast
    def predict(self, X, out=None):
        """Index of the nearest centre for each sample, as an array of the input's type.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or out-of-core data (see ``fit``)
        out : ndarray of shape (n_samples,), optional
            For out-of-core X: a writable integer array (e.g. a memmap) the labels are written into.
            It must not lie on X's memory or file (ValueError: checked for a memmap, a .npy path
            and a sequence of blocks, not for the blocks a callable makes).

        Returns
        -------
        labels : array of shape (n_samples,)
            ``out`` if given; a NumPy array for out-of-core X.
        """
        rows, kind = self._prepare_rows(X, "cluster_centers_")
        labels = rows.empty((rows.shape[0],), torch.int64, out)
        self._assign_tiles(*self._inference_tiles(rows), labels=labels, inertia=False)
        return rows.result(labels, kind, out)

    @no_autocast
    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X, y=None, sample_weight=None, out=None):
        """Fit and return ``labels_`` (for out-of-core X written into ``out`` if given, see ``predict``)."""
        check_fit_out(X, out)  # before any pass over X, not after the fit
        with unchanged_on_error(self):
            return self._fit(X, sample_weight, out).labels_

    @no_autocast
    def transform(self, X):
        """Euclidean distances to every centre, shape (n_samples, n_clusters).

        Computed as accurately as scikit-learn's: the expansion ``||x||^2 - 2 x.c + ||c||^2``
        runs in float64, one tile at a time, and the distances it cannot resolve (those small
        against the norms, where it cancels) are recomputed from the differences, so a
        centre's distance to itself is 0 and float32 results carry float32's precision.
        For out-of-core X the result is a NumPy array.
        """
        rows, kind = self._prepare_rows(X, "cluster_centers_")
        centers = self._model_centers(torch.float64)
        c_sq = core.center_norms(centers)
        n, d = rows.shape
        out = rows.empty((n, centers.shape[0]), rows.dtype)
        for r, tile in self._centred_tiles(rows, torch.float64, self._tile_rows(n, d, 2 * centers.shape[0])):
            out[r].copy_(_distances(tile, centers, c_sq))
        return rows.result(out, kind)

    @no_autocast
    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit, then return the distances of X to the centres."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    @no_autocast
    def score(self, X, y=None, sample_weight=None):
        """Opposite of the inertia of X against the fitted centres (higher is better)."""
        rows, _ = self._prepare_rows(X, "cluster_centers_")
        w = None
        if sample_weight is not None:
            w = as_sample_weight(sample_weight, rows.shape[0], device=torch.device("cpu"), dtype=torch.float64)
        return -self._assign_tiles(*self._inference_tiles(rows), sample_weight=w)


@dataclass
class _Run:
    """One run of ``n_init``: final centres (in the data's coordinates), labels, inertia, iterations."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int


@dataclass(frozen=True)
class _FitPlan:
    """What a fit resolves once, before its first run, and hands to every step explicitly."""

    device: torch.device
    dtype: torch.dtype
    comm: object  # gpuclust._comm.LocalComm or TorchDistComm
    n_local: int  # this rank's rows
    n_global: int  # all ranks' rows
    n_features: int
    n_clusters: int
    n_init: int
    shift: torch.Tensor | None  # the data mean subtracted before expanding distances (float64), or None
    tile_rows: int
    keeps_centred_copy: bool  # in memory and far from the origin: a centred copy of X is kept for the fit
    init: torch.Tensor | None  # validated initial centres, in the fit's coordinates
    algorithm: str  # "lloyd" or "hamerly"
    settings: core.LloydSettings


class _Seeds(NamedTuple):
    """The rows seeding draws from, their weights and squared norms (in the fit's coordinates)."""

    X: torch.Tensor
    w: torch.Tensor
    x_sq: torch.Tensor


class _TensorData:
    """In-memory X as a fit's runs see it: centred (a kept copy) where it sits far from the origin."""

    def __init__(self, rows, comm, centre):
        X = rows.tensor
        self.rows, self.x_sq = rows, core.squared_norms(X)
        _check_no_overflow(self.x_sq)
        self.shift = _centring_shift(X, self.x_sq, comm) if centre and not is_sparse(X) else None
        self.keeps_centred_copy = self.shift is not None
        if self.shift is not None:
            # Distances as |x|^2 - 2 x.c + |c|^2 lose every digit to rounding when the data sit
            # far from the origin: fit on centred data, as scikit-learn does with every dense X.
            X = X - self.shift.to(X.dtype)
            self.x_sq = core.squared_norms(X)
        self.X = X

    def mean_feature_variance(self, comm):
        return core.mean_feature_variance(self.X, self.x_sq, comm)

    def seed_rows(self, w, comm, rs):
        X, w_all = init_sample(TensorRows(self.X), w, comm, rs)
        return _Seeds(X, w_all, self.x_sq if X is self.X else core.squared_norms(X))

    def tiles(self, tile_rows):
        """``(rows, tile)`` of the centred X: slices, or CSR tensors sharing a sparse X's storage."""
        return TensorRows(self.X).tiles(tile_rows)

    def new_labels(self, out=None):
        return torch.empty(self.X.shape[0], dtype=torch.int64, device=self.X.device)

    def run(self, centers, plan, w, labels):
        lloyd = core.hamerly if plan.algorithm == "hamerly" else core.lloyd
        return lloyd(self.X, w, self.x_sq, centers, plan.settings)


class _SourceData:
    """Out-of-core X as a fit's runs see it: tiles read in every pass, centred one at a time."""

    def __init__(self, rows, scanned, comm):
        col_sums, total_sq, largest_sq = scanned
        _check_no_overflow(torch.tensor([largest_sq], dtype=rows.dtype))
        self.rows, self.scanned = rows, scanned
        # As in memory: data far from the origin are centred (tile by tile here) before the
        # distances are expanded, or float32 loses every digit of them.
        self.shift = _centring_shift_from_sums(col_sums, total_sq, rows.shape[0], comm)
        self._shift_t = None if self.shift is None else self.shift.to(device=rows.device, dtype=rows.dtype)
        self.keeps_centred_copy = False

    def mean_feature_variance(self, comm):
        """As in memory, from the centred rows' sums (one more pass where the data were centred)."""
        col_sums, total_sq, _ = self.scanned
        if self._shift_t is not None:
            col_sums, total_sq = centred_sums(self.rows, self._shift_t)
        return core.variance_from_sums(col_sums, total_sq, self.rows.shape[0], comm)

    def seed_rows(self, w, comm, rs):
        X, w_all = init_sample(self.rows, w, comm, rs)
        if self._shift_t is not None:
            X = X - self._shift_t
        return _Seeds(X, w_all, core.squared_norms(X))

    def tiles(self, tile_rows):
        if self._shift_t is None:
            return self.rows.tiles(tile_rows)
        return ((r, tile - self._shift_t) for r, tile in self.rows.tiles(tile_rows))

    def new_labels(self, out=None):
        """Host labels; the caller's int64 ``out`` doubles as them (one run)."""
        direct = out is not None and out.dtype == np.int64
        return torch.from_numpy(out if direct else np.empty(self.rows.shape[0], dtype=np.int64))

    def run(self, centers, plan, w, labels):
        tiles = functools.partial(self.tiles, plan.tile_rows)
        return core.lloyd_streamed(tiles, self.rows.shape[0], w, centers, plan.settings, labels=labels.numpy())


def _replaces(run, best, comm):
    """scikit-learn's rule for ``n_init``: a later run wins only with a lower inertia and another partition."""
    if best is None:
        return True
    k = run.centers.shape[0]
    return run.inertia < best.inertia and not core.same_clustering(run.labels, best.labels, k, comm)


def _callable_init_input(X, X_t, kind):
    """What a callable ``init`` receives: X validated, in the caller's array type.

    As scikit-learn passes it: dense input as an array of the input's type (NumPy for lists and
    DataFrames), scipy sparse input as a CSR matrix or array (as given), torch sparse input as
    a torch CSR tensor.
    """
    if not is_sparse(X_t):
        return to_output(X_t, kind)
    if kind.namespace != "numpy":
        return X_t.to(kind.device)
    import scipy.sparse as sp

    parts = (X_t.values().cpu().numpy(), X_t.col_indices().cpu().numpy(), X_t.crow_indices().cpu().numpy())
    container = sp.csr_array if isinstance(X, sp.sparray) else sp.csr_matrix
    return container(parts, shape=tuple(X_t.shape))


def _distances(tile, centers, c_sq):
    """Euclidean distances of a tile's rows to float64 ``centers`` (see ``KMeans.transform``), float64."""
    tile = tile.to(torch.float64)
    x_sq = core.squared_norms(tile)
    scale = c_sq.unsqueeze(0) + x_sq.unsqueeze(1)
    d2 = torch.addmm(scale, tile, centers.T, alpha=-2.0).clamp_min_(0)
    _refine_small_distances(d2, scale, tile, centers)
    return d2.sqrt_()


def _refine_small_distances(d2, scale, tile, centers, rel=1e-6, pairs=4096):
    """Recompute ``d2[i, j]`` as ``||x_i - c_j||^2`` where the expansion lost its precision (float64).

    The expansion's rounding error is about ``eps * (||x||^2 + ||c||^2)``; below ``rel`` times that
    scale it leaves fewer than ~7 correct digits, so those few pairs are computed directly.
    """
    i, j = torch.nonzero(d2 < rel * scale, as_tuple=True)
    for start in range(0, i.numel(), pairs):
        ii, jj = i[start : start + pairs], j[start : start + pairs]
        diff = core.dense_rows(tile, ii) - centers[jj]
        d2[ii, jj] = (diff * diff).sum(1)


def _centring_shift(X, x_sq, comm):
    """The data mean (float64) when it is farther from the origin than the data's spread, else None.

    Where the offset dominates, the expanded distances need centring to keep their digits; where
    it does not, centring would only cost a copy of X.
    """
    # The sums an out-of-core scan takes, in its tiles and order: the same mean and the same choice,
    # so a fit on a file or blocks centres as the fit in memory does, bit for bit (a float32
    # ``ones @ X`` product here differed from them by an ulp of the mean).
    return _centring_shift_from_sums(column_sums(X), squared_norms_total(x_sq), X.shape[0], comm)


def _centring_shift_from_sums(col_sums, total_sq, n_local, comm):
    """:func:`_centring_shift` from this rank's column sums, sum of squared norms and row count."""
    col_sums = torch.as_tensor(col_sums, dtype=torch.float64)
    extra = torch.tensor([float(total_sq), float(n_local)], dtype=torch.float64, device=col_sums.device)
    totals = comm.sum_(torch.cat([col_sums, extra]), "data mean")
    n = float(totals[-1])
    mean = totals[:-2] / n
    offset = float(mean @ mean)
    spread = float(totals[-2]) / n - offset
    return mean if offset > spread else None


def _check_no_overflow(x_sq):
    """Squared distances are formed from squared norms: refuse data whose norms overflow the dtype."""
    largest = float(x_sq.max()) if x_sq.numel() else 0.0
    limit = torch.finfo(x_sq.dtype).max / 8
    if not largest < limit:
        raise ValueError(
            f"The squared norms of the samples overflow {str(x_sq.dtype).replace('torch.', '')} "
            f"(largest {largest:.3g}, limit {limit:.3g}): scale the data (e.g. divide it by its largest "
            "absolute value, or use sklearn.preprocessing.StandardScaler)"
            + (" or pass float64." if x_sq.dtype != torch.float64 else ".")
        )


@no_autocast
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
    X_t, kind = as_tensor(X, device=_plusplus_device(X, device), accept_sparse=True)
    n = X_t.shape[0]
    k = check_positive_int(n_clusters, "n_clusters")
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    if n_local_trials is not None:
        n_local_trials = check_positive_int(n_local_trials, "n_local_trials")
    w = as_sample_weight(sample_weight, n, device=X_t.device, dtype=X_t.dtype)
    x_sq = core.squared_norms(X_t) if x_squared_norms is None else _checked_norms(x_squared_norms, X_t)
    X_seed, shift = X_t, None if is_sparse(X_t) else _centring_shift(X_t, x_sq, LOCAL)
    if shift is not None:  # the same draws, on distances that keep their digits
        X_seed = X_t - shift.to(X_t.dtype)
        x_sq = core.squared_norms(X_seed)
    _, indices = core.kmeans_plusplus(X_seed, k, w, x_sq, check_random_state(random_state), n_local_trials)
    return to_output(core.dense_rows(X_t, torch.as_tensor(indices, device=X_t.device)), kind), indices


def _plusplus_device(X, device):
    """Where :func:`kmeans_plusplus` computes: ``device``, else where X lives (the CPU for NumPy, lists, scipy)."""
    if device is not None:
        return resolve_device(device)
    if isinstance(X, torch.Tensor) or (hasattr(X, "__dlpack__") and not is_sparse(X)):
        return as_torch(X).device
    return torch.device("cpu")


def _checked_norms(x_squared_norms, X_t):
    """The caller's ``x_squared_norms`` as a tensor like X's, with scikit-learn's message (checked first, as there)."""
    n = X_t.shape[0]
    x_sq, _ = as_tensor(x_squared_norms, device=X_t.device, dtype=X_t.dtype, name="x_squared_norms", ndim=None)
    if x_sq.ndim == 0 or x_sq.shape[0] != n:
        length = x_sq.shape[0] if x_sq.ndim else 0
        raise ValueError(f"The length of x_squared_norms {length} should be equal to the length of n_samples {n}.")
    if x_sq.ndim != 1:
        raise ValueError(f"x_squared_norms must be 1-d of shape (n_samples,); got shape {tuple(x_sq.shape)}.")
    return x_sq
