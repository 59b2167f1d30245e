"""GaussianMixture: a scikit-learn-compatible EM estimator with a PyTorch core, on CUDA or CPU."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names

from . import _gmm_numerics as gm
from ._arrays import ArrayKind, as_tensor, resolve_dtype
from ._base import (
    TORCH_PARAMETER_CONSTRAINTS,
    TorchEstimatorMixin,
    check_positive_int,
    no_autocast,
    unchanged_on_error,
    warn_user,
)
from ._chunks import budget_bytes, tile_rows_for
from ._comm import make_comm
from ._gmm_numerics import COVARIANCE_TYPES, MixtureParameters
from .device import resolve_device
from .kmeans import KMeans, kmeans_plusplus
from .sources import TensorRows, check_fit_out, column_sums, init_sample, is_out_of_core

__all__ = ["COVARIANCE_TYPES", "INIT_PARAMS", "GaussianMixture"]

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def _is_float32(value):
    """Whether an array-like holds float32 (scikit-learn's tolerance for ``weights_init`` depends on it)."""
    return str(getattr(value, "dtype", "")) in ("float32", "torch.float32")


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to one bool
class _FitPlan:
    """What one fit works out once and every helper of that fit reads, passed to it as an argument.

    ``shift`` is the data offset (the data mean, subtracted from every tile; the fitted one in a
    warm start), ``n_global`` the rows over all ranks, ``tile_rows`` the rows of this rank's
    tiles, ``keep_stacked`` whether diag and spherical keep their stacked rows for the whole fit
    (see :meth:`GaussianMixture._stacked_tiles`), ``xtx`` the tied scatter matrix
    sum_i (x_i - shift)(x_i - shift)^T over all ranks (None for the other types),
    ``fused_e_step`` whether the E-step runs :func:`gpuclust._fused.mixture_e_step` (see
    :meth:`GaussianMixture._uses_fused_e_step`) instead of the torch path. Nothing of it
    is stored on the estimator: inference reads only the fitted ``_shift``, ``_device`` and
    ``_dtype`` and works out its own tile rows.
    """

    device: torch.device
    dtype: torch.dtype
    comm: object  # gpuclust._comm.LocalComm or TorchDistComm
    n_global: int
    shift: torch.Tensor
    tile_rows: int
    keep_stacked: bool
    xtx: torch.Tensor | None = None
    fused_e_step: bool = False


@dataclass
class _Run:
    """The outcome of one initialization's EM loop."""

    params: MixtureParameters
    lower_bound: float
    n_iter: int
    lower_bounds: list
    converged: bool


class GaussianMixture(TorchEstimatorMixin, DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by expectation-maximization, with a PyTorch core.

    Parameters, attributes and methods follow :class:`sklearn.mixture.GaussianMixture`.
    The E- and M-steps run in row tiles: the sufficient statistics (counts, sums
    and second moments) are accumulated tile by tile in float64, so peak memory is
    O(tile x K x D) for full covariance and O(tile x (K + D)) otherwise, never
    O(n_samples x K).

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        ``"full"``: each component has its own general covariance matrix;
        ``"tied"``: all components share one; ``"diag"``: each has a diagonal one;
        ``"spherical"``: each has a single variance.
    tol : float, default=1e-3
        Convergence threshold on the change of the per-sample average log-likelihood.
    reg_covar : float, default=1e-6
        Non-negative regularization added to the covariances' diagonal, so that they
        stay positive definite.
    max_iter : int, default=100
        Number of EM iterations per initialization; 0 keeps the initial parameters.
    n_init : int, default=1
        Initializations to run; the best (highest lower bound) is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the responsibilities that start EM are chosen: ``"kmeans"`` from the labels
        of gpuclust's own :class:`~gpuclust.KMeans` on the same device; ``"k-means++"``
        and ``"random_from_data"``: each component starts at one sample (chosen by
        k-means++ seeding, or uniformly); ``"random"``: uniform random responsibilities.
        As in scikit-learn, a tied covariance that starts from single samples is the
        uncentred second moment of the other samples divided by ``n_components``.
    weights_init : array-like of shape (n_components,), default=None
        Initial weights; None derives them from ``init_params``.
    means_init : array-like of shape (n_components, n_features), default=None
        Initial means; None derives them from ``init_params``.
    precisions_init : array-like, default=None
        Initial precisions (inverse covariances), of shape (n_components,) for
        spherical, (n_features, n_features) for tied, (n_components, n_features) for
        diag and (n_components, n_features, n_features) for full.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization; the same seed gives the same initial parameters as
        scikit-learn's.
    warm_start : bool, default=False
        Start ``fit`` from the previous solution (one initialization).
    verbose : int, default=0
        1 prints each initialization and every ``verbose_interval``-th iteration;
        2 adds times, the change of the lower bound and the final lower bound (as
        scikit-learn prints them).
    verbose_interval : int, default=10
        Iterations between two verbose lines.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where the computation runs; ``"auto"`` picks CUDA when a GPU is available.
    dtype : {None, "float32", "float64"}, default=None
        Dtype of the E-step arithmetic; None keeps float32/float64 input as it is.
        Statistics are always summed in float64.
    chunk_size : int, default=None
        Rows per tile; by default derived from ``memory_budget``.
    memory_budget : int, default=None
        Bytes of temporary memory per tile (default 64 MiB on the CPU, 512 MiB on CUDA).
        For ``"diag"`` and ``"spherical"`` on in-memory data it also decides whether the rows
        stacked with their squares in float64 (``[x, x*x]``: 2 * n_samples * n_features * 8
        bytes; ``[x, ||x||^2]``: (n_features + 1) * n_samples * 8) are formed once and kept for
        the whole fit, which saves a sixth (float64 diag) to a half (spherical) of an
        iteration at D=50 on the CPU: they are kept when they fit in this budget, and are then
        held during EM in addition to the tiles' temporaries (up to twice the budget in all).
    matmul_precision : {"highest", "tf32", "bf16"}, default="highest"
        Precision of the E-step's matrix products for full and tied covariance (an
        opt-in speed-up for float32 on a GPU): ``"tf32"`` lets CUDA use TF32 tensor
        cores (no effect on the CPU); ``"bf16"`` rounds the centred data and the
        precision factors to bfloat16 for the product. Responsibilities and the
        statistics are still computed in the working dtype and summed in float64; the
        effect on the fitted parameters is measured in tests/test_gaussian_mixture.py.
    distributed : bool, default=False
        Fit data-parallel under an initialized torch.distributed process group: each
        rank passes its own block of rows; the sufficient statistics and the
        log-likelihood are all-reduced and every rank ends with the same parameters.
        See :mod:`gpuclust.distributed`.

    Attributes
    ----------
    weights_ : array of shape (n_components,)
        Mixing weights, in the array type of the ``fit`` input (numpy, torch or CuPy).
    means_ : array of shape (n_components, n_features)
        Component means.
    covariances_ : array
        Covariances; shape as ``precisions_init``'s for the covariance type.
    precisions_ : array
        Inverses of the covariances.
    precisions_cholesky_ : array
        Upper-triangular Cholesky factors of the precisions (full, tied), or their
        square roots (diag, spherical).
    converged_ : bool
        Whether the best initialization converged.
    n_iter_ : int
        EM iterations of the best initialization.
    lower_bound_ : float
        Average log-likelihood per sample of the best initialization.
    lower_bounds_ : list of float
        The lower bound after each iteration of the best initialization.
    n_features_in_ : int
        Number of features seen during ``fit``.

    See Also
    --------
    KMeans : the hard-assignment special case, also used to initialize.
    sklearn.mixture.GaussianMixture : the reference implementation.

    Notes
    -----
    As in scikit-learn, the fitted attributes are the model: a change to ``weights_``, ``means_``
    or ``precisions_cholesky_`` (in place or by assignment) changes what ``predict``, ``score``
    and a warm start use, and ``sample`` also reads ``covariances_``. Every public method runs
    with torch's autocast switched off: only ``matmul_precision`` lowers the precision.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuclust import GaussianMixture
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> gm = GaussianMixture(n_components=2, random_state=0, device="cpu").fit(X)
    >>> gm.means_[np.argsort(gm.means_[:, 0])]
    array([[ 1.,  2.],
           [10.,  2.]])
    >>> gm.predict([[0.0, 0.0], [12.0, 3.0]]).tolist() == gm.predict(X[[0, 3]]).tolist()
    True
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_PARAMS))],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "matmul_precision": [StrOptions(set(gm.MATMUL_PRECISIONS))],
        **TORCH_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        device="auto",
        dtype=None,
        chunk_size=None,
        memory_budget=None,
        matmul_precision="highest",
        distributed=False,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.matmul_precision = matmul_precision
        self.distributed = distributed

    # ------------------------------------------------------------------ checks
    def _check_params(self, n_samples, n_features, device):
        """Checks that need the data (types and ranges of the parameters are checked by ``_fit_context``)."""
        K = int(self.n_components)
        if not math.isfinite(self.reg_covar):
            raise ValueError(f"reg_covar={self.reg_covar!r} must be finite.")
        if n_samples < K:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {K}, n_samples = {n_samples}")
        if n_samples < 2:
            raise ValueError(f"n_samples={n_samples}: at least 2 samples are needed to fit a mixture.")
        # The checks and their texts are scikit-learn's (_check_weights, _check_means, _check_precisions).
        if self.weights_init is not None:
            w = self._as_param(self.weights_init, "weights", (K,), device)
            if bool((w < 0).any()) or bool((w > 1).any()):
                # scikit-learn prints the minimum as "max value" and the maximum as "min value"; its
                # own test pins that text.
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got max value "
                    f"{float(w.min()):.5f}, min value {float(w.max()):.5f}"
                )
            atol = 1e-6 if _is_float32(self.weights_init) else 1e-8
            if not abs(1.0 - float(w.sum())) <= atol:
                total = float(w.sum())
                raise ValueError(f"The parameter 'weights' should be normalized, but got sum(weights) = {total:.5f}")
        if self.means_init is not None:
            self._as_param(self.means_init, "means", (K, n_features), device)
        if self.precisions_init is not None:
            ct = self.covariance_type
            shape = {"full": (K, n_features, n_features), "tied": (n_features, n_features),
                     "diag": (K, n_features), "spherical": (K,)}[ct]  # fmt: skip
            p = self._as_param(self.precisions_init, f"{ct} precision", shape, device)
            if ct in ("full", "tied"):
                symmetric = torch.isclose(p, p.transpose(-1, -2), rtol=1e-5, atol=1e-8).all()
                if not (bool(symmetric) and bool((torch.linalg.eigvalsh(p) > 0).all())):
                    raise ValueError(f"'{ct} precision' should be symmetric, positive-definite")
            elif bool((p <= 0).any()):
                raise ValueError(f"'{ct} precision' should be positive")
        return K

    @staticmethod
    def _as_param(value, name, shape, device):
        t, _ = as_tensor(value, device=device, dtype=torch.float64, name=name, ndim=None)
        if tuple(t.shape) != tuple(shape):
            got = tuple(t.shape)
            raise ValueError(f"The parameter '{name}' should have the shape of {tuple(shape)}, but got {got}")
        return t

    def _tile_rows(self, n, d, K, device, dtype):
        """Rows per tile for ``n`` rows of ``d`` features, ``K`` components, ``dtype`` on ``device``."""
        per_row = gm.tile_bytes_per_row(self.covariance_type, K, d, torch.finfo(dtype).bits // 8)
        return tile_rows_for(n, per_row, device, self.chunk_size, self.memory_budget)

    # ------------------------------------------------------------------ tiles
    @staticmethod
    def _tiles(X, shift, tile_rows):
        """Yield ``(rows, shifted tile)``: the data offset ``shift`` is subtracted one tile at a time.

        The shifted tile is written into one buffer of X's (``X.buffers``): it is valid until the
        next tile is asked for.
        """
        shift = shift.to(X.dtype)
        for rows, tile in X.tiles(tile_rows):
            yield rows, torch.sub(tile, shift, out=X.buffers.get("shifted", tile.shape, X.dtype, X.device))

    def _map_tiles(self, X, params, reduce, out):
        """Fill ``out[rows] = reduce(weighted log-probabilities of the tile)`` tile by tile; return ``out``.

        Inference: the fitted offset, device and dtype, and tile rows worked out here for X (the
        fit's own for the fit's X); nothing is stored. ``out`` may live on the host while the
        tiles are on the device (out-of-core X).
        """
        tile_rows = self._tile_rows(X.shape[0], X.shape[1], params.means.shape[0], self._device, self._dtype)
        working = params.working(self._dtype, self.covariance_type, self.matmul_precision)
        for rows, Xs in self._tiles(X, self._shift, tile_rows):
            out[rows].copy_(reduce(working.weighted_log_prob(Xs, X.buffers)))
        return out

    # ------------------------------------------------------------------- E and M
    def _keeps_stacked(self, X, fused_e_step=False):
        """Whether a fit on X keeps its stacked rows (diag and spherical, in memory, within the budget).

        The fused E-step keeps them in the working dtype (see ``StackedTiles(float64_tiles=False)``).
        """
        if self.covariance_type not in gm.STACKED_TYPES or X.out_of_core:
            return False
        itemsize = self._dtype.itemsize if fused_e_step else 8
        kept_bytes = gm.StackedTiles.kept_nbytes(X.shape[0], X.shape[1], self.covariance_type, itemsize)
        return kept_bytes <= budget_bytes(X.device, self.memory_budget)

    def _stacked_tiles(self, X, plan):
        """Diag and spherical: the stacked tiles one fit's passes share (None for full and tied).

        In-memory X whose stacked rows in float64 (``[x, x*x]`` or ``[x, ||x||^2]``) fit in the
        memory budget keeps them for the whole fit (``plan.keep_stacked``); otherwise each pass
        forms its tiles in buffers of one tile.
        """
        if self.covariance_type not in gm.STACKED_TYPES:
            return None
        n, d = X.shape
        tile_rows = min(plan.tile_rows, n)
        return gm.StackedTiles(n, tile_rows, d, self.covariance_type, plan.dtype, X.device, keep=plan.keep_stacked,
                               float64_tiles=not plan.fused_e_step)  # fmt: skip

    def _e_step(self, X, params, stacked, plan):
        """One pass over X: responsibilities per tile, summed into the M-step's statistics.

        ``stacked``: diag and spherical, the fit's :class:`~gpuclust._gmm_numerics.StackedTiles`
        (see :meth:`_stacked_tiles`); None for full and tied.
        """
        K, d = params.means.shape
        stats = gm.new_stats(K, d, self.covariance_type, X.device)
        working = params.working(plan.dtype, self.covariance_type, self.matmul_precision)
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        # Every tile's (rows, K) log-probabilities and float64 responsibilities go to buffers kept
        # with X for the whole fit (X.buffers), not to new tensors: nothing a pass allocates grows
        # with its number of tiles.
        buffers = X.buffers
        if plan.fused_e_step:
            return self._fused_e_step(X, working, stacked, plan, stats)
        if self.covariance_type in gm.STACKED_TYPES:
            for Z, Z64 in stacked.tiles(X, plan.tile_rows, plan.shift.to(X.dtype)):
                shape = (Z.shape[0], K)
                wlp = working.weighted_log_prob_stacked(Z, buffers.get("log-probabilities", shape, Z.dtype, X.device))
                log_norm, resp = gm.normalize_log_prob(wlp)
                total += log_norm.sum(dtype=torch.float64)
                resp64 = None if resp.dtype == torch.float64 else buffers.get("resp64", shape, torch.float64, X.device)
                gm.accumulate_stats_stacked(stats, Z64, resp, resp64)
            stats.log_likelihood = float(total)
            return self._reduce_stats(stats, plan)
        for _, Xs in self._tiles(X, plan.shift, plan.tile_rows):
            log_norm, resp = gm.normalize_log_prob(working.weighted_log_prob(Xs))
            total += log_norm.sum(dtype=torch.float64)
            gm.accumulate_stats(stats, Xs, resp, self.covariance_type, buffers)
        stats.log_likelihood = float(total)
        return self._reduce_stats(stats, plan)

    def _uses_fused_e_step(self, device, dtype):
        """Whether a fit's E-step is the fused Triton one, chosen once per fit (``_FitPlan.fused_e_step``).

        Diag and spherical, float32, ``matmul_precision="highest"``, on CUDA with triton installed
        (:func:`gpuclust._fused.available`); the torch path otherwise, and always on a CPU. Tests
        force it on CPU tensors (triton's interpreter) by overriding this method.
        """
        fits = (
            self.covariance_type in gm.STACKED_TYPES and dtype == torch.float32 and self.matmul_precision == "highest"
        )
        if not fits or torch.device(device).type != "cuda":
            return False
        from . import _fused  # imports triton: only for a fit that could use it

        return _fused.available(device)

    def _fused_e_step(self, X, working, stacked, plan, stats):
        """:meth:`_e_step` by :func:`gpuclust._fused.mixture_e_step`: no (rows, K) tensor per tile."""
        from . import _fused

        total = torch.zeros((), dtype=torch.float64, device=X.device)
        for Z, _ in stacked.tiles(X, plan.tile_rows, plan.shift.to(X.dtype)):
            log_norm, nk, sums = _fused.mixture_e_step(Z, working.stacked, working.offset, working.const)
            total += log_norm.sum(dtype=torch.float64)
            gm.add_stacked_sums(stats, nk, sums)
        stats.log_likelihood = float(total)
        return self._reduce_stats(stats, plan)

    def _m_step(self, stats, plan):
        return MixtureParameters.from_stats(
            stats, self.reg_covar, self.covariance_type, plan.xtx, plan.dtype == torch.float32
        )

    @staticmethod
    def _reduce_stats(stats, plan):
        """Sum the statistics over ranks in one all-reduce (a no-op in one process)."""
        if plan.comm.world_size == 1:
            return stats
        ll = torch.tensor([stats.log_likelihood], dtype=torch.float64, device=stats.nk.device)
        parts = [stats.nk, stats.sx.flatten(), ll] + ([] if stats.sxx is None else [stats.sxx.flatten()])
        packed = plan.comm.sum_(torch.cat(parts), "EM statistics")
        K, D = stats.sx.shape
        stats.nk, stats.sx = packed[:K], packed[K : K + K * D].view(K, D)
        stats.log_likelihood = float(packed[K + K * D])
        if stats.sxx is not None:
            stats.sxx = packed[K + K * D + 1 :].view_as(stats.sxx)
        return stats

    # ------------------------------------------------------------------ init
    def _init_resp_tiles(self, X, random_state, plan):
        """Yield (shifted tile, responsibilities), both float64, for the chosen ``init_params``."""
        K, f64 = self.n_components, torch.float64
        if self.init_params == "random":
            for rows, Xs in self._tiles(X, plan.shift, plan.tile_rows):
                # Same draws as one (n, K) call: RandomState fills row by row.
                r = torch.as_tensor(random_state.uniform(size=(rows.stop - rows.start, K)), device=X.device)
                yield Xs.to(f64), r / r.sum(1, keepdim=True)
            return
        if self.init_params == "kmeans":
            yield from self._kmeans_resp_tiles(X, random_state, plan)
            return
        comm = plan.comm
        X_all, _ = init_sample(X, None, comm, random_state)
        if self.init_params == "random_from_data":
            indices = random_state.choice(X_all.shape[0], size=K, replace=False)
        else:
            _, indices = kmeans_plusplus(X_all, K, random_state=random_state)
        idx = comm.broadcast_(torch.as_tensor(indices, device=X.device), 0, "initial samples")
        # Only K samples carry responsibility: each component starts at one sample. Rank 0
        # alone contributes them, so the all-reduce of the statistics counts them once.
        if comm.rank == 0:
            yield (X_all[idx] - plan.shift.to(X.dtype)).to(f64), torch.eye(K, dtype=f64, device=X.device)

    def _kmeans_resp_tiles(self, X, random_state, plan):
        """Hard responsibilities from gpuclust's KMeans: on X in memory, or for out-of-core X fitted on
        :func:`gpuclust.sources.init_sample`'s uniform sample (at most 2**25 values, all rows when X is no
        larger), then every row labelled by the nearest of its centres.

        The KMeans runs with the torch backend on X's device and dtype, under this estimator's
        ``chunk_size`` and ``memory_budget`` (and ``distributed`` for X in memory).
        """
        K, f64 = self.n_components, torch.float64
        km_args = dict(n_clusters=K, n_init=1, random_state=random_state, device=X.device, dtype=X.dtype)
        km_args.update(backend="torch", chunk_size=self.chunk_size, memory_budget=self.memory_budget)
        if not X.out_of_core:
            km = KMeans(**km_args, distributed=self.distributed)
            labels = km.fit(X.tensor).labels_  # a tensor on X's device, since X is one
        else:
            X_all, _ = init_sample(X, None, plan.comm, random_state)
            # The sample is the same on every rank: each fits the same KMeans on it, then labels its own rows.
            km = KMeans(**km_args).fit(X_all)
            whole = plan.comm.world_size == 1 and X_all.shape[0] == X.shape[0]
            labels = km.labels_ if whole else None
        shift = plan.shift.to(X.dtype)
        for rows, tile in X.tiles(plan.tile_rows):
            lab = labels[rows] if labels is not None else km.predict(tile)
            resp = torch.zeros(rows.stop - rows.start, K, dtype=f64, device=X.device)
            yield (tile - shift).to(f64), resp.scatter_(1, lab.unsqueeze(1), 1.0)

    def _initialize(self, X, random_state, plan):
        """Initial parameters from ``init_params``, overridden by the explicit ``*_init`` arrays.

        The initial statistics are formed in float64 whatever the working dtype: a component
        that starts at one sample has a covariance of ``reg_covar`` alone, which float32
        rounding of E[xx] - mu mu^T would swamp.
        """
        d, K, ct = X.shape[1], self.n_components, self.covariance_type
        device, f32 = plan.device, plan.dtype == torch.float32
        weights = means = cov = None
        if not all(v is not None for v in (self.weights_init, self.means_init, self.precisions_init)):
            stats = gm.new_stats(K, d, ct, X.device)
            for Xs, resp in self._init_resp_tiles(X, random_state, plan):
                gm.accumulate_stats(stats, Xs, resp, ct)
            nk, means, cov = gm.estimate_parameters(self._reduce_stats(stats, plan), self.reg_covar, ct, plan.xtx)
            if ct == "tied" and self.init_params in ("random_from_data", "k-means++"):
                # Components start at single samples: scikit-learn's formula then mixes X^T X over
                # all samples with counts over the K chosen ones; its initial covariance is kept.
                cov = gm.covariance_tied_uncentred(plan.xtx, plan.n_global, plan.shift, nk, means, self.reg_covar)
            weights = nk / plan.n_global
        if self.weights_init is not None:
            weights = self._as_param(self.weights_init, "weights_init", (K,), device)
        if self.means_init is not None:
            means = self._as_param(self.means_init, "means_init", (K, d), device) - plan.shift
        if self.precisions_init is None:
            return MixtureParameters(weights, means, cov, gm.precision_cholesky(cov, ct, f32))
        prec, _ = as_tensor(self.precisions_init, device=device, dtype=torch.float64, name="precisions_init", ndim=None)
        prec_chol = gm.precision_cholesky_from_precisions(prec, ct)
        return MixtureParameters(weights, means, gm.covariances_from_precision_cholesky(prec_chol, ct), prec_chol)

    # ------------------------------------------------------------------- fit
    @no_autocast
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Estimate the parameters with EM, ``n_init`` times, keeping the best lower bound.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or out-of-core data
            numpy array, torch tensor (CPU or CUDA) or DLPack-capable array (CuPy). Out of
            core: a NumPy memmap, a path to a 2-d ``.npy`` file, a list of 2-d row blocks, or a
            callable returning a new iterator of row blocks on every call; every E-step reads it
            tile by tile (the same tiles and sums as in memory, so the same result). The
            ``"kmeans"``, ``"k-means++"`` and ``"random_from_data"`` initializations then draw
            from a uniform sample of at most 2**25 values (``2**25 // n_features`` rows, all rows
            when X is no larger), drawn from ``random_state``; ``"kmeans"`` fits KMeans on that
            sample and labels every row by its nearest centre.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : GaussianMixture
            The fitted estimator.
        """
        with unchanged_on_error(self):  # a failed fit leaves a fitted estimator as it was
            self._fit_all_inits(X)
        return self

    @no_autocast
    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X, y=None, out=None):
        """Fit, then label X with the fitted model (equal to ``fit(X).predict(X)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or out-of-core data (see ``fit``)
            Training data.
        y : None
            Ignored.
        out : ndarray of shape (n_samples,), optional
            For out-of-core X: a writable integer array (e.g. a memmap) the labels are written into.
            It must not lie on X's memory or file (ValueError: checked for a memmap, a .npy path
            and a sequence of blocks, not for the blocks a callable makes).

        Returns
        -------
        labels : array of shape (n_samples,)
            Component of each sample, in the input's array type (NumPy for out-of-core X).
        """
        check_fit_out(X, out)  # before any pass over X, not after the fit
        with unchanged_on_error(self):  # the labelling pass can fail too (a bad out, an unreadable file)
            rows, kind = self._fit_all_inits(X)
            labels = self._labels(rows, out)
        return out if out is not None else self._output(labels, kind)

    def _fit_all_inits(self, X):
        """The fit itself: plan it, run every initialization's EM, keep and publish the best.

        Returns the rows as the passes read them and the input's array kind.
        """
        rows, kind, warm, plan = self._start_fit(X)
        random_state = check_random_state(self.random_state)
        stacked = self._stacked_tiles(rows, plan)  # shared by every initialization's passes
        best = None
        for init in range(1 if warm else self.n_init):
            self._verbose_init_begins(init)
            params = self._current_params(covariances=True) if warm else self._initialize(rows, random_state, plan)
            run = self._em(rows, params, self.lower_bound_ if warm else -math.inf, stacked, plan)
            self._verbose_init_ends(run)
            if best is None or run.lower_bound > best.lower_bound:
                best = run
        if not best.converged and self.max_iter > 0:
            warn_user(
                "Best performing initialization did not converge. Try different init parameters, "
                "or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        self._params = best.params
        self.converged_, self.n_iter_ = best.converged, best.n_iter
        self.lower_bound_, self.lower_bounds_ = best.lower_bound, best.lower_bounds
        self._publish(kind, plan)
        return rows, kind

    def _em(self, X, params, lower_bound, stacked, plan):
        """EM from ``params`` until the lower bound changes by less than ``tol``, or ``max_iter``."""
        bounds, converged, n_iter = [], False, 0
        for n_iter in range(1, self.max_iter + 1):
            previous = lower_bound
            stats = self._e_step(X, params, stacked, plan)
            params = self._m_step(stats, plan)
            lower_bound = stats.log_likelihood / plan.n_global
            bounds.append(lower_bound)
            self._verbose_iteration(n_iter, lower_bound - previous)
            if abs(lower_bound - previous) < self.tol:
                converged = True
                break
        return _Run(params, lower_bound, n_iter, bounds, converged)

    def _fit_input(self, X, warm):
        """X as a fit reads it, its array kind and its column sums (float64); no fitted state changes.

        Returns ``(rows, kind, col_sums)``: ``rows`` in memory (:class:`TensorRows`) or out of core,
        checked by one pass that also gives the column sums. A warm start reads X on the fitted
        device and dtype and checks it against the fitted model.
        """
        out_of_core = is_out_of_core(X)
        if warm:
            self._check_is_fitted("_params")
            if out_of_core:
                X_t, (col_sums, _, _) = self._source_rows(X, self._device, self._dtype)
            else:
                _check_feature_names(self, X, reset=False)
                X_t, kind = as_tensor(X, device=self._device, dtype=self._dtype)
            self._check_n_features(X_t)
            if self.covariance_type != self._fitted_covariance_type:
                raise ValueError(
                    f"warm_start=True cannot continue a fit with covariance_type={self._fitted_covariance_type!r} "
                    f"as covariance_type={self.covariance_type!r}; set warm_start=False to start afresh."
                )
        elif out_of_core:
            X_t, (col_sums, _, _) = self._source_rows(X, resolve_device(self.device), resolve_dtype(self.dtype))
        else:
            X_t, kind = self._convert_fit_input(X)
        if out_of_core:
            return X_t, ArrayKind("numpy", torch.device("cpu")), col_sums
        return TensorRows(X_t), kind, column_sums(X_t)  # in float64, in the tiles an out-of-core scan uses

    def _start_fit(self, X):
        """Validate everything, then record the fitted input and plan the fit; a failure changes nothing.

        Returns ``(rows, kind, warm, plan)``: ``plan`` (a :class:`_FitPlan`) is what the fit's
        helpers read. A fresh fit records the device, dtype and data offset, which inference reads
        after it; a warm start keeps them.
        """
        warm = self.warm_start and hasattr(self, "converged_")
        rows, kind, col_sums = self._fit_input(X, warm)
        comm = make_comm(self.distributed)
        n_local, d = rows.shape
        if not bool(torch.isfinite(col_sums).all()):
            raise ValueError("The column sums of X overflow its dtype: scale the data or pass float64.")
        totals = comm.sum_(torch.cat([col_sums, col_sums.new_tensor([n_local])]), "data mean")
        n_global = int(totals[-1])
        self._check_params(n_global, d, rows.device)
        # Every check has passed: from here on the estimator's state changes.
        if not warm:
            if rows.out_of_core:
                self._set_fit_source(rows)
            else:
                self._set_fit_input(rows.tensor, kind)
            self._shift = totals[:-1] / n_global
            self._fitted_covariance_type = self.covariance_type
        self._input_kind = kind
        tile_rows = self._tile_rows(n_local, d, int(self.n_components), self._device, self._dtype)
        fused = self._uses_fused_e_step(self._device, self._dtype)
        plan = _FitPlan(
            self._device, self._dtype, comm, n_global, self._shift, tile_rows, self._keeps_stacked(rows, fused),
            fused_e_step=fused,
        )  # fmt: skip
        if self.covariance_type == "tied":
            plan = dataclasses.replace(plan, xtx=self._scatter(rows, plan))
        return rows, kind, warm, plan

    def _scatter(self, X, plan):
        """sum_i (x_i - shift)(x_i - shift)^T in float64 over all ranks, tile by tile (for tied covariance)."""
        xtx = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
        for _, Xs in self._tiles(X, plan.shift, plan.tile_rows):
            xtx += Xs.T.to(torch.float64) @ Xs.to(torch.float64)
        return plan.comm.sum_(xtx, "scatter matrix")

    def _publish(self, kind, plan):
        """Fitted attributes in the caller's array type and the working dtype, and a snapshot of them.

        Each attribute is its own copy (an edit never reaches ``_params``); the snapshot, on the
        attribute's device, lets :meth:`_current_params` see any later change to it.
        """
        p, ct = self._params, self.covariance_type
        attribute_device = torch.device("cpu") if kind.namespace == "numpy" else kind.device
        values = {
            "weights_": p.weights,
            "means_": p.means + plan.shift,
            "covariances_": p.covariances,
            "precisions_cholesky_": p.precisions_cholesky,
            "precisions_": gm.precisions_from_cholesky(p.precisions_cholesky, ct),
        }
        self._published = {}
        for name, value in values.items():
            t = value.to(plan.dtype, copy=True)
            setattr(self, name, self._output(t, kind))
            if name != "precisions_":  # nothing reads it, here as in scikit-learn
                self._published[name] = t.to(attribute_device, copy=True)

    def _edited(self, name, shape):
        """The public attribute ``name`` in float64 if it no longer holds what fit published, else None."""
        value = getattr(self, name)
        published = getattr(self, "_published", None)
        snapshot = published.get(name) if isinstance(published, dict) else None
        if snapshot is not None:
            try:
                t, _ = as_tensor(value, device=snapshot.device, name=name, ndim=None, check_finite=False)
            except (TypeError, ValueError):
                t = None  # _as_param says what is wrong with it
            if t is not None and t.dtype == snapshot.dtype and t.shape == snapshot.shape and torch.equal(t, snapshot):
                return None
        return self._as_param(value, name, shape, self._device)

    def _current_params(self, covariances=False):
        """The parameters the public attributes hold: the fit's own (float64) while they hold what fit
        published, the attributes' values where they were changed (in place or by assignment).

        As in scikit-learn, the attributes are the model: predict, score and warm starts read
        ``weights_``, ``means_`` and ``precisions_cholesky_``; ``sample`` and warm starts also read
        ``covariances_`` (``covariances=True``). Each read compares an attribute with its snapshot,
        O(size of the attribute).
        """
        p = self._params
        w = self._edited("weights_", tuple(p.weights.shape))
        m = self._edited("means_", tuple(p.means.shape))
        c = self._edited("covariances_", tuple(p.covariances.shape)) if covariances else None
        P = self._edited("precisions_cholesky_", tuple(p.precisions_cholesky.shape))
        if w is None and m is None and c is None and P is None:
            return p
        return MixtureParameters(
            p.weights if w is None else w,
            p.means if m is None else m - self._shift,
            p.covariances if c is None else c,
            p.precisions_cholesky if P is None else P,
        )

    # ----------------------------------------------------------- verbose (as scikit-learn prints it)
    def _verbose_init_begins(self, init):
        if self.verbose >= 1:
            print(f"Initialization {init}")
            self._init_prev_time = self._iter_prev_time = time.time()

    def _verbose_iteration(self, n_iter, change):
        if self.verbose < 1 or n_iter % self.verbose_interval:
            return
        if self.verbose == 1:
            print(f"  Iteration {n_iter}")
            return
        now = time.time()
        print(f"  Iteration {n_iter}\t time lapse {now - self._iter_prev_time:.5f}s\t ll change {change:.5f}")
        self._iter_prev_time = now

    def _verbose_init_ends(self, run):
        message = "converged" if run.converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {message}.")
        elif self.verbose >= 2:
            lapse = time.time() - self._init_prev_time
            print(f"Initialization {message}. time lapse {lapse:.5f}s\t lower bound {run.lower_bound:.5f}.")

    # ------------------------------------------------------------- inference
    def _prepare(self, X):
        """X after a fit, as the tiles read it (nothing is stored: see :meth:`_map_tiles`)."""
        return self._prepare_rows(X, "_params")

    def _labels(self, X, out=None):
        """Most probable component per sample, tile by tile (never an (n, K) array)."""
        labels = X.empty((X.shape[0],), torch.int64, out)
        return self._map_tiles(X, self._current_params(), lambda wlp: wlp.argmax(1), labels)

    def _score_samples(self, X):
        out = X.empty((X.shape[0],), X.dtype)
        return self._map_tiles(X, self._current_params(), lambda wlp: torch.logsumexp(wlp, dim=1), out)

    @no_autocast
    def predict(self, X, out=None):
        """Most probable component of each sample.

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
            In the input's array type; ``out`` if given, a NumPy array for out-of-core X.
        """
        X_t, kind = self._prepare(X)
        if out is not None and not X_t.out_of_core:
            raise ValueError("out= is for out-of-core X (a memmap, a .npy path or row blocks).")
        labels = self._labels(X_t, out)
        return out if out is not None else self._output(labels, kind)

    @no_autocast
    def predict_proba(self, X):
        """Posterior probability of each component; rows sum to one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : array of shape (n_samples, n_components)
        """
        X_t, kind = self._prepare(X)
        out = X_t.empty((X_t.shape[0], self._params.means.shape[0]), X_t.dtype)
        self._map_tiles(X_t, self._current_params(), lambda wlp: torch.softmax(wlp, dim=1), out)
        return self._output(out, kind)

    @no_autocast
    def score_samples(self, X):
        """Log-likelihood of each sample under the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_prob : array of shape (n_samples,)
        """
        X_t, kind = self._prepare(X)
        return self._output(self._score_samples(X_t), kind)

    @no_autocast
    def score(self, X, y=None):
        """Average log-likelihood per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        log_likelihood : float
        """
        X_t, _ = self._prepare(X)
        return float(self._score_samples(X_t).to(torch.float64).mean())

    def _n_parameters(self):
        K, d = self._params.means.shape
        return gm.n_parameters(K, d, self.covariance_type)

    def _total_log_likelihood(self, X):
        X_t, _ = self._prepare(X)
        return float(self._score_samples(X_t).to(torch.float64).sum()), X_t.shape[0]

    @no_autocast
    def bic(self, X):
        """Bayesian information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        bic : float
        """
        total, n = self._total_log_likelihood(X)
        return -2 * total + self._n_parameters() * math.log(n)

    @no_autocast
    def aic(self, X):
        """Akaike information criterion on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        aic : float
        """
        total, _ = self._total_log_likelihood(X)
        return -2 * total + 2 * self._n_parameters()

    @no_autocast
    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,)
            Component of each sample.
        """
        self._check_is_fitted("_params")
        if isinstance(n_samples, Integral) and not isinstance(n_samples, bool) and n_samples < 1:
            # scikit-learn's text, with the number asked (scikit-learn prints n_components there)
            raise ValueError(f"Invalid value for 'n_samples': {n_samples} . The sampling requires at least one sample.")
        n_samples = check_positive_int(n_samples, "n_samples")
        rs = check_random_state(self.random_state)
        p = self._current_params(covariances=True)
        d = p.means.shape[1]
        counts = rs.multinomial(n_samples, p.weights.cpu().numpy() / float(p.weights.sum()))
        means, cov = p.means + self._shift, p.covariances  # as in scikit-learn, not the precisions
        device = means.device
        parts, labels = [], []
        for k, count in enumerate(counts):
            if count == 0:
                continue
            z = torch.as_tensor(rs.standard_normal(size=(count, d)), device=device)
            if self.covariance_type == "full":
                z = z @ torch.linalg.cholesky(cov[k]).T
            elif self.covariance_type == "tied":
                z = z @ torch.linalg.cholesky(cov).T
            else:  # diag: per-feature scale; spherical: one scale
                z = z * cov[k].sqrt()
            parts.append(means[k] + z)
            labels.append(torch.full((count,), k, dtype=torch.int64, device=device))
        kind = self._input_kind
        return self._output(torch.cat(parts).to(self._dtype), kind), self._output(torch.cat(labels), kind)
