"""GaussianMixture: a scikit-learn-compatible EM estimator with a PyTorch core, on CUDA or CPU."""

from __future__ import annotations

import logging
import math
import warnings

import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from . import _gmm_numerics as gm
from ._arrays import as_tensor
from ._base import TorchEstimatorMixin, check_nonnegative_float, check_positive_int
from ._chunks import chunk_slices, rows_per_chunk
from ._comm import make_comm
from ._kmeans_core import gather_init_sample, kmeans_plusplus, squared_norms

logger = logging.getLogger("gpuclust")

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


class GaussianMixture(TorchEstimatorMixin, DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM, with a PyTorch core.

    Parameters, attributes and methods follow :class:`sklearn.mixture.GaussianMixture`.
    The E- and M-steps run in row tiles: the sufficient statistics (counts, sums
    and second moments) are accumulated tile by tile in float64, so peak memory is
    O(tile x K x D) for full covariance and O(tile x (K + D)) otherwise, never
    O(n_samples x K).

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Convergence threshold on the change of the per-sample average log-likelihood.
    reg_covar : float, default=1e-6
        Added to the covariances' diagonal.
    max_iter : int, default=100
    n_init : int, default=1
        Initializations to run; the best (highest lower bound) is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        ``"kmeans"`` uses gpuclust's own :class:`~gpuclust.KMeans` on the same device.
    weights_init : array-like of shape (n_components,), optional
    means_init : array-like of shape (n_components, n_features), optional
    precisions_init : array-like, optional
        Shape (n_components,) spherical, (n_features, n_features) tied,
        (n_components, n_features) diag, (n_components, n_features, n_features) full.
    random_state : int, RandomState or None
    warm_start : bool, default=False
        Start ``fit`` from the previous solution (one initialization).
    verbose : int, default=0
        Log each iteration's lower bound at INFO level.
    verbose_interval : int, default=10
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
    dtype : {None, "float32", "float64"}, default=None
        Dtype of the E-step arithmetic. Statistics are always summed in float64.
    chunk_size : int, optional
        Rows per tile; by default derived from ``memory_budget``.
    memory_budget : int, optional
        Bytes of temporary memory per tile (default 64 MiB on CPU, 512 MiB on CUDA).
    distributed : bool, default=False
        Fit data-parallel under an initialized torch.distributed process group: each
        rank passes its own block of rows; the sufficient statistics and the
        log-likelihood are all-reduced and every rank ends with the same parameters.
        See :mod:`gpuclust.distributed`.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : arrays
        In the array type of the ``fit`` input.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
    n_features_in_ : int
    """

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
        self.distributed = distributed

    # ------------------------------------------------------------------ checks
    def _check_params(self, X):
        n, d = self._n_global, X.shape[1]
        K = check_positive_int(self.n_components, "n_components")
        check_positive_int(self.n_init, "n_init")
        check_positive_int(self.max_iter, "max_iter", minimum=0)
        check_nonnegative_float(self.tol, "tol")
        check_nonnegative_float(self.reg_covar, "reg_covar")
        if self.covariance_type not in gm.COVARIANCE_TYPES:
            raise ValueError(f"covariance_type={self.covariance_type!r} is not one of {gm.COVARIANCE_TYPES}.")
        if self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params={self.init_params!r} is not one of {INIT_PARAMS}.")
        if n < K:
            raise ValueError(f"n_samples={n} should be >= n_components={K}.")
        if self.weights_init is not None:
            w = self._as_param(self.weights_init, "weights_init", (K,))
            if bool((w < 0).any()) or bool((w > 1).any()):
                raise ValueError("weights_init must be in [0, 1].")
            if abs(float(w.sum()) - 1.0) > 1e-6:
                raise ValueError(f"weights_init must sum to 1, got sum {float(w.sum()):.5f}.")
        if self.means_init is not None:
            self._as_param(self.means_init, "means_init", (K, d))
        if self.precisions_init is not None:
            shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}[self.covariance_type]
            p = self._as_param(self.precisions_init, "precisions_init", shape)
            if self.covariance_type in ("full", "tied"):
                if not torch.allclose(p, p.transpose(-1, -2), rtol=1e-8, atol=1e-10):
                    raise ValueError("precisions_init must be symmetric.")
            elif bool((p <= 0).any()):
                raise ValueError("precisions_init must be strictly positive.")
        return K

    def _as_param(self, value, name, shape):
        t, _ = as_tensor(value, device=self._device, dtype=torch.float64, name=name, ndim=len(shape))
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}.")
        return t

    def _chunk(self, n, d, K):
        itemsize = torch.finfo(self._dtype).bits // 8
        per_row = (2 * K * d + 4 * K + 2 * d) if self.covariance_type == "full" else (4 * K + 3 * d)
        return rows_per_chunk(n, per_row * itemsize, self._device, self.chunk_size, self.memory_budget)

    # ----------------------------------------------------------------- E and M
    def _working(self, t):
        return t.to(self._dtype)

    def _estimate_weighted_log_prob(self, Xs, means_w, prec_w, log_weights_w):
        return gm.log_gaussian_prob(Xs, means_w, prec_w, self.covariance_type) + log_weights_w

    def _tiles(self, X):
        """Yield (rows, shifted tile) pairs; the shift is subtracted one tile at a time."""
        shift = self._shift.to(X.dtype)
        for rows in chunk_slices(X.shape[0], self._chunk_rows):
            yield rows, X[rows] - shift

    def _e_step_stats(self, X):
        """One pass over X: E-step per tile, accumulating the M-step's sufficient statistics."""
        K, d = self._p["means"].shape
        stats = gm.new_stats(K, d, self.covariance_type, X.device)
        means_w, prec_w = self._working(self._p["means"]), self._working(self._p["prec_chol"])
        log_w = self._working(torch.log(self._p["weights"]))
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        for _, Xs in self._tiles(X):
            log_norm, resp = gm.normalize_log_prob(self._estimate_weighted_log_prob(Xs, means_w, prec_w, log_w))
            total += log_norm.sum(dtype=torch.float64)
            gm.accumulate_stats(stats, Xs, resp, self.covariance_type)
        stats.log_likelihood = float(total)
        return self._reduce_stats(stats)

    def _reduce_stats(self, stats):
        """Sum the statistics over ranks in one all-reduce (a no-op in one process)."""
        if self._comm.world_size == 1:
            return stats
        parts = [
            stats.nk,
            stats.sx.flatten(),
            torch.tensor([stats.log_likelihood], dtype=torch.float64, device=stats.nk.device),
        ]
        if stats.sxx is not None:
            parts.append(stats.sxx.flatten())
        packed = self._comm.sum_(torch.cat(parts), "EM statistics")
        K, D = stats.sx.shape
        stats.nk, stats.sx = packed[:K], packed[K : K + K * D].view(K, D)
        stats.log_likelihood = float(packed[K + K * D])
        if stats.sxx is not None:
            stats.sxx = packed[K + K * D + 1 :].view_as(stats.sxx)
        return stats

    def _m_step(self, stats):
        nk, means, cov = gm.estimate_parameters(stats, self.reg_covar, self.covariance_type, self._xtx)
        self._p = {
            "weights": nk / nk.sum(),
            "means": means,
            "covariances": cov,
            "prec_chol": gm.precision_cholesky(cov, self.covariance_type, self._dtype == torch.float32),
        }

    # ------------------------------------------------------------------ init
    def _init_resp_tiles(self, X, random_state):
        """Yield (shifted tile, responsibilities) for the chosen init_params, one tile at a time."""
        K = self.n_components
        dt = X.dtype
        if self.init_params == "random":
            for rows, Xs in self._tiles(X):
                # Same draws as one (n, K) call: RandomState fills row by row.
                r = torch.as_tensor(random_state.uniform(size=(rows.stop - rows.start, K)), device=X.device)
                yield Xs, (r / r.sum(1, keepdim=True)).to(dt)
            return
        if self.init_params == "kmeans":
            from .kmeans import KMeans

            km = KMeans(
                n_clusters=K,
                n_init=1,
                random_state=random_state,
                device=X.device,
                dtype=dt,
                backend="torch",
                distributed=self.distributed,
            ).fit(X)
            labels = km.labels_  # a tensor on X's device, since X is one
            for rows, Xs in self._tiles(X):
                resp = torch.zeros(rows.stop - rows.start, K, dtype=dt, device=X.device)
                resp.scatter_(1, labels[rows].unsqueeze(1), 1.0)
                yield Xs, resp
            return
        comm = self._comm
        X_all, ones = gather_init_sample(X, torch.ones(X.shape[0], dtype=dt, device=X.device), comm, random_state)
        if self.init_params == "random_from_data":
            indices = random_state.choice(X_all.shape[0], size=K, replace=False)
        else:
            _, indices = kmeans_plusplus(X_all, K, ones, squared_norms(X_all), random_state)
        idx = comm.broadcast_(torch.as_tensor(indices, device=X.device), 0, "initial samples")
        # Only K samples carry responsibility: each component starts at one sample. Rank 0
        # alone contributes them, so the all-reduce of the statistics counts them once.
        if comm.rank == 0:
            resp = torch.eye(K, dtype=dt, device=X.device)
            yield X_all[idx] - self._shift.to(dt), resp

    def _initialize(self, X, random_state):
        d = X.shape[1]
        K = self.n_components
        inits_all = all(v is not None for v in (self.weights_init, self.means_init, self.precisions_init))
        p = {}
        if not inits_all:
            stats = gm.new_stats(K, d, self.covariance_type, X.device)
            for Xs, resp in self._init_resp_tiles(X, random_state):
                gm.accumulate_stats(stats, Xs, resp, self.covariance_type)
            stats = self._reduce_stats(stats)
            nk, means, cov = gm.estimate_parameters(stats, self.reg_covar, self.covariance_type, self._xtx)
            if self.covariance_type == "tied" and self.init_params in ("random_from_data", "k-means++"):
                # Components start at single samples, whose pooled scatter is zero; start the
                # shared covariance at the data's instead. (scikit-learn's formula mixes X^T X
                # over all samples with counts over K samples here.)
                cov = self._xtx / self._n_global
                cov.diagonal().add_(self.reg_covar)
            p = {"weights": nk / self._n_global, "means": means, "covariances": cov}
        if self.weights_init is not None:
            p["weights"] = self._as_param(self.weights_init, "weights_init", (K,))
        if self.means_init is not None:
            p["means"] = self._as_param(self.means_init, "means_init", (K, d)) - self._shift
        if self.precisions_init is None:
            p["prec_chol"] = gm.precision_cholesky(p["covariances"], self.covariance_type, self._dtype == torch.float32)
        else:
            prec, _ = as_tensor(
                self.precisions_init, device=self._device, dtype=torch.float64, name="precisions_init", ndim=None
            )
            p["prec_chol"] = gm.precision_cholesky_from_precisions(prec, self.covariance_type)
            p["covariances"] = gm.covariances_from_precision_cholesky(p["prec_chol"], self.covariance_type)
        self._p = p

    # ------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Estimate the parameters with EM, ``n_init`` times, keeping the best lower bound.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy array, torch tensor (CPU or CUDA) or DLPack-capable array (CuPy).
        y : ignored

        Returns
        -------
        self : GaussianMixture
        """
        self._fit(X)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then label X with the fitted model (equal to ``fit(X).predict(X)``)."""
        X_t, kind = self._fit(X)
        return self._output(self._labels(X_t), kind)

    def _fit(self, X):
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if do_init:
            X_t, kind = self._prepare_fit_input(X)
        else:
            X_t, kind = self._prepare_input(X, "_p")
            self._input_kind = kind
        self._comm = make_comm(self.distributed)
        n_local, d = X_t.shape
        col_sums = (torch.ones(1, n_local, dtype=X_t.dtype, device=X_t.device) @ X_t).to(torch.float64)[0]
        totals = self._comm.sum_(torch.cat([col_sums, col_sums.new_tensor([n_local])]), "data mean")
        n = self._n_global = int(totals[-1])
        K = self._check_params(X_t)
        self._chunk_rows = self._chunk(n_local, d, K)
        if do_init:
            self._shift = totals[:-1] / n
        self._xtx = self._scatter(X_t) if self.covariance_type == "tied" else None
        random_state = check_random_state(self.random_state)
        n_init = self.n_init if do_init else 1
        best = None
        for init in range(n_init):
            if do_init:
                self._initialize(X_t, random_state)
            lower_bound = -math.inf if do_init else self.lower_bound_
            bounds, converged, n_iter = [], False, 0
            for n_iter in range(1, self.max_iter + 1):
                previous = lower_bound
                stats = self._e_step_stats(X_t)
                self._m_step(stats)
                lower_bound = stats.log_likelihood / n
                bounds.append(lower_bound)
                if self.verbose and n_iter % self.verbose_interval == 0:
                    logger.info(
                        "GMM init %d iteration %d: lower bound %.6f (change %.3g)",
                        init,
                        n_iter,
                        lower_bound,
                        lower_bound - previous,
                    )
                if abs(lower_bound - previous) < self.tol:
                    converged = True
                    break
            if best is None or lower_bound > best["lower_bound"]:
                best = {
                    "lower_bound": lower_bound,
                    "params": self._p,
                    "n_iter": n_iter if self.max_iter else 0,
                    "bounds": bounds,
                    "converged": converged,
                }
        if not best["converged"] and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init parameters, "
                "or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._p = best["params"]
        self.converged_ = best["converged"]
        self.n_iter_ = best["n_iter"]
        self.lower_bound_ = best["lower_bound"]
        self.lower_bounds_ = best["bounds"]
        self._publish(kind)
        return X_t, kind

    def _scatter(self, X):
        """sum_i (x_i - shift)(x_i - shift)^T in float64, tile by tile (for tied covariance)."""
        xtx = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
        for _, Xs in self._tiles(X):
            xtx += (Xs.T @ Xs).to(torch.float64)
        return self._comm.sum_(xtx, "scatter matrix")

    def _publish(self, kind):
        """Fitted attributes in the caller's array type and the working dtype."""
        p, ct = self._p, self.covariance_type
        cov = p.get("covariances")
        if cov is None:
            cov = gm.covariances_from_precision_cholesky(p["prec_chol"], ct)
        out = lambda t: self._output(t.to(self._dtype), kind)
        self.weights_ = out(p["weights"])
        self.means_ = out(p["means"] + self._shift)
        self.covariances_ = out(cov)
        self.precisions_cholesky_ = out(p["prec_chol"])
        self.precisions_ = out(gm.precisions_from_cholesky(p["prec_chol"], ct))

    # ------------------------------------------------------------- inference
    def _weighted_log_prob_tiles(self, X):
        means_w, prec_w = self._working(self._p["means"]), self._working(self._p["prec_chol"])
        log_w = self._working(torch.log(self._p["weights"]))
        for rows, Xs in self._tiles(X):
            yield rows, self._estimate_weighted_log_prob(Xs, means_w, prec_w, log_w)

    def _log_resp(self, X):
        out = torch.empty(X.shape[0], self._p["means"].shape[0], dtype=X.dtype, device=X.device)
        for rows, wlp in self._weighted_log_prob_tiles(X):
            out[rows] = wlp - torch.logsumexp(wlp, dim=1, keepdim=True)
        return out

    def _score_samples(self, X):
        out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
        for rows, wlp in self._weighted_log_prob_tiles(X):
            out[rows] = torch.logsumexp(wlp, dim=1)
        return out

    def _prepare(self, X):
        X_t, kind = self._prepare_input(X, "_p")
        self._chunk_rows = self._chunk(X_t.shape[0], X_t.shape[1], self._p["means"].shape[0])
        return X_t, kind

    def _labels(self, X):
        """Most probable component per sample, tile by tile (never an (n, K) array)."""
        labels = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
        for rows, wlp in self._weighted_log_prob_tiles(X):
            labels[rows] = wlp.argmax(1)
        return labels

    def predict(self, X):
        """Most probable component of each sample."""
        X_t, kind = self._prepare(X)
        return self._output(self._labels(X_t), kind)

    def predict_proba(self, X):
        """Posterior probability of each component, shape (n_samples, n_components); rows sum to one."""
        X_t, kind = self._prepare(X)
        return self._output(torch.exp(self._log_resp(X_t)), kind)

    def score_samples(self, X):
        """Log-likelihood of each sample under the model, shape (n_samples,)."""
        X_t, kind = self._prepare(X)
        return self._output(self._score_samples(X_t), kind)

    def score(self, X, y=None):
        """Average log-likelihood per sample."""
        X_t, _ = self._prepare(X)
        return float(self._score_samples(X_t).to(torch.float64).mean())

    def _n_parameters(self):
        K, d = self._p["means"].shape
        return gm.n_parameters(K, d, self.covariance_type)

    def _total_log_likelihood(self, X):
        X_t, _ = self._prepare(X)
        return float(self._score_samples(X_t).to(torch.float64).sum()), X_t.shape[0]

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        total, n = self._total_log_likelihood(X)
        return -2 * total + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        total, _ = self._total_log_likelihood(X)
        return -2 * total + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture.

        Returns
        -------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,)
            Component of each sample.
        """
        self._check_is_fitted("_p")
        n_samples = check_positive_int(n_samples, "n_samples")
        rs = check_random_state(self.random_state)
        p = self._p
        K, d = p["means"].shape
        counts = rs.multinomial(n_samples, p["weights"].cpu().numpy() / float(p["weights"].sum()))
        means = p["means"] + self._shift
        cov = gm.covariances_from_precision_cholesky(p["prec_chol"], self.covariance_type)
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
