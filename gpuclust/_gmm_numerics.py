"""Gaussian-mixture numerics in torch, one small function per covariance type.

Conventions (as scikit-learn's): parameters are stored as Cholesky factors of
the precision matrices (``precision = P @ P.T``, P upper triangular for full and
tied); log-determinants come from the factor's diagonal. Everything here works
on *shifted* data (X minus a fixed shift, the data mean), which leaves
covariances and likelihoods unchanged but keeps the second-moment sums away
from catastrophic cancellation.

The M-step works from sufficient statistics accumulated tile by tile:
``nk`` (K,), ``sx`` = sum r x (K, D) and the second moments per type:
full (K, D, D), tied: the data's X^T X (D, D), diag and spherical (K, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@dataclass
class SufficientStats:
    """Per-component sums over samples, in float64."""

    nk: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor | None  # full: (K, D, D); diag/spherical: (K, D); tied: None (uses the data's X^T X)
    log_likelihood: float = 0.0  # sum over samples of log p(x)


def new_stats(n_components, n_features, covariance_type, device) -> SufficientStats:
    f64 = dict(dtype=torch.float64, device=device)
    K, D = n_components, n_features
    sxx = {
        "full": lambda: torch.zeros(K, D, D, **f64),
        "tied": lambda: None,
        "diag": lambda: torch.zeros(K, D, **f64),
        "spherical": lambda: torch.zeros(K, D, **f64),
    }[covariance_type]()
    return SufficientStats(torch.zeros(K, **f64), torch.zeros(K, D, **f64), sxx)


def accumulate_stats(stats: SufficientStats, Xs: torch.Tensor, resp: torch.Tensor, covariance_type: str) -> None:
    """Add one tile's contribution (``Xs`` shifted samples, ``resp`` responsibilities) to ``stats``.

    The second moments are multiplied in float64 whatever the working dtype: the M-step
    subtracts ``mean**2`` from them, and float32 products carry rounding errors of the
    order of ``reg_covar`` on data such as pixels (a negative variance follows).
    """
    f64 = torch.float64
    stats.nk += resp.sum(0, dtype=f64)
    stats.sx += (resp.T @ Xs).to(f64)
    if covariance_type == "tied":
        return
    resp64, Xs64 = resp.to(f64), Xs.to(f64)
    if covariance_type == "full":
        weighted = resp64.T.unsqueeze(2) * Xs64.unsqueeze(0)  # (K, c, D)
        stats.sxx += torch.matmul(weighted.transpose(1, 2), Xs64)
    else:
        stats.sxx += resp64.T @ (Xs64 * Xs64)


# --- M-step: covariances from sufficient statistics (float64) -------------------------------------


def _covariances_full(stats, means, reg_covar, xtx):
    nk = stats.nk
    cov = stats.sxx / nk[:, None, None] - means.unsqueeze(2) * means.unsqueeze(1)
    cov.diagonal(dim1=1, dim2=2).add_(reg_covar)
    return cov


def _covariances_tied(stats, means, reg_covar, xtx):
    cov = (xtx - (stats.nk[:, None] * means).T @ means) / stats.nk.sum()
    cov.diagonal().add_(reg_covar)
    return cov


def _covariances_diag(stats, means, reg_covar, xtx):
    return stats.sxx / stats.nk[:, None] - means * means + reg_covar


def _covariances_spherical(stats, means, reg_covar, xtx):
    return _covariances_diag(stats, means, reg_covar, xtx).mean(1)


_COVARIANCE_ESTIMATORS = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def estimate_parameters(stats: SufficientStats, reg_covar: float, covariance_type: str, xtx=None):
    """Weights (unnormalised, as nk), means and covariances from the sufficient statistics.

    As scikit-learn, ``nk`` gets ``10 * eps`` so an empty component does not divide by zero.
    """
    nk = stats.nk + 10 * torch.finfo(torch.float64).eps
    stats = SufficientStats(nk, stats.sx, stats.sxx, stats.log_likelihood)
    means = stats.sx / nk[:, None]
    covariances = _COVARIANCE_ESTIMATORS[covariance_type](stats, means, reg_covar, xtx)
    return nk, means, covariances


@dataclass
class MixtureParameters:
    """A mixture's parameters, float64, means in the shifted frame (the data mean subtracted).

    ``covariances`` has shape (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical;
    ``precisions_cholesky`` the same shape: upper-triangular P with P P^T = inverse(covariance)
    (full, tied), or the inverse square roots of the variances (diag, spherical).
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    precisions_cholesky: torch.Tensor

    @classmethod
    def from_stats(cls, stats, reg_covar, covariance_type, xtx=None, float32_hint=False):
        """The M-step: parameters from the sufficient statistics."""
        nk, means, cov = estimate_parameters(stats, reg_covar, covariance_type, xtx)
        return cls(nk / nk.sum(), means, cov, precision_cholesky(cov, covariance_type, float32_hint))

    def working(self, dtype) -> WorkingParameters:
        """What the E-step needs, cast once per pass to the working dtype."""
        return WorkingParameters(
            self.means.to(dtype), self.precisions_cholesky.to(dtype), torch.log(self.weights).to(dtype)
        )


@dataclass
class WorkingParameters:
    """Means, precision factors and log-weights in the dtype the E-step computes in."""

    means: torch.Tensor
    precisions_cholesky: torch.Tensor
    log_weights: torch.Tensor

    def weighted_log_prob(self, Xs, covariance_type):
        """log(weight_k) + log N(x | mean_k, cov_k) for each row of the tile and each component: (c, K)."""
        return log_gaussian_prob(Xs, self.means, self.precisions_cholesky, covariance_type) + self.log_weights


# --- Cholesky factors ---------------------------------------------------------------------------


def _ill_defined(component, dtype_hint):
    where = f" (component {component})" if component is not None else ""
    hint = " or fit in float64 (dtype='float64')" if dtype_hint else ""
    return ValueError(
        f"Fitting the mixture model failed because some components have ill-defined empirical "
        f"covariance{where}, for instance caused by singleton or collapsed samples. Try to "
        f"decrease the number of components, increase reg_covar, scale the input data{hint}."
    )


def precision_cholesky(covariances: torch.Tensor, covariance_type: str, float32_hint: bool = False):
    """Upper-triangular P with P P^T = inverse(covariance), per component.

    Raises ValueError naming the first component whose covariance is not positive definite.
    """
    if covariance_type in ("full", "tied"):
        batch = covariances if covariance_type == "full" else covariances.unsqueeze(0)
        chol, info = torch.linalg.cholesky_ex(batch)
        bad = torch.nonzero(info).flatten()
        if bad.numel():
            raise _ill_defined(int(bad[0]) if covariance_type == "full" else None, float32_hint)
        eye = torch.eye(batch.shape[-1], dtype=batch.dtype, device=batch.device).expand_as(batch)
        prec = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
        return prec if covariance_type == "full" else prec[0]
    bad = torch.nonzero(covariances <= 0).flatten()
    if bad.numel():
        raise _ill_defined(
            int(bad[0]) if covariance_type == "spherical" else int(bad[0]) // covariances.shape[-1], float32_hint
        )
    return covariances.rsqrt()


def precision_cholesky_from_precisions(precisions: torch.Tensor, covariance_type: str):
    """The same upper-triangular factor, from precision matrices (``precisions_init``)."""
    if covariance_type in ("full", "tied"):
        # Cholesky of the row- and column-reversed matrix, reversed back, is upper triangular.
        flipped = precisions.flip(-1, -2)
        chol, info = torch.linalg.cholesky_ex(flipped)
        if bool((info != 0).any()):
            raise ValueError("precisions_init must be symmetric positive-definite.")
        return chol.flip(-1, -2)
    return precisions.sqrt()


def precisions_from_cholesky(prec_chol: torch.Tensor, covariance_type: str):
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol * prec_chol


def covariances_from_precision_cholesky(prec_chol: torch.Tensor, covariance_type: str):
    """Inverse of :func:`precision_cholesky` (for ``precisions_init`` without covariances)."""
    if covariance_type in ("full", "tied"):
        eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device).expand_as(prec_chol)
        inv = torch.linalg.solve_triangular(prec_chol, eye, upper=True)  # P^-1
        return inv.transpose(-1, -2) @ inv
    return 1.0 / (prec_chol * prec_chol)


# --- E-step ------------------------------------------------------------------------------------


def log_det_cholesky(prec_chol, covariance_type, n_features):
    if covariance_type == "full":
        return torch.log(prec_chol.diagonal(dim1=1, dim2=2)).sum(1)
    if covariance_type == "tied":
        return torch.log(prec_chol.diagonal()).sum()
    if covariance_type == "diag":
        return torch.log(prec_chol).sum(1)
    return n_features * torch.log(prec_chol)


def log_gaussian_prob(Xs, means, prec_chol, covariance_type):
    """log N(x | mean_k, cov_k) for each tile row and component: (c, K).

    Peak temporary memory: (K, c, D) for full, (c, D) + (c, K) otherwise.
    """
    n, d = Xs.shape
    log_det = log_det_cholesky(prec_chol, covariance_type, d)
    if covariance_type == "full":
        y = torch.matmul(Xs.unsqueeze(0), prec_chol)  # (K, c, D)
        y -= torch.matmul(means.unsqueeze(1), prec_chol)  # (K, 1, D)
        log_prob = y.square_().sum(2).T
    elif covariance_type == "tied":
        y = Xs @ prec_chol
        b = means @ prec_chol
        log_prob = torch.addmm((b * b).sum(1).unsqueeze(0), y, b.T, alpha=-2.0)
        log_prob += (y * y).sum(1, keepdim=True)
    elif covariance_type == "diag":
        precisions = prec_chol * prec_chol
        log_prob = torch.addmm(
            ((means * means) * precisions).sum(1).unsqueeze(0), Xs, (means * precisions).T, alpha=-2.0
        )
        log_prob += (Xs * Xs) @ precisions.T
    else:
        precisions = prec_chol * prec_chol
        x_sq = (Xs * Xs).sum(1, keepdim=True)
        log_prob = torch.addmm((means * means).sum(1).unsqueeze(0), Xs, means.T, alpha=-2.0)
        log_prob = (log_prob + x_sq) * precisions.unsqueeze(0)
    return -0.5 * (d * math.log(2 * math.pi) + log_prob) + log_det


def normalize_log_prob(weighted_log_prob: torch.Tensor):
    """Per-sample log-likelihood and responsibilities from weighted log-probabilities (c, K).

    One exponential per entry, in place (``torch.logsumexp`` followed by ``exp``
    would take two). Arguments are clamped at the log of the smallest normal
    number first: a responsibility below ~1e-38 (float32) or ~1e-308 (float64)
    changes no sum, and on the CPU ``exp`` of an underflowing argument takes a
    slow path, about 13 times slower in float32.

    Returns
    -------
    log_norm : (c,)
    resp : (c, K), the input's storage reused
    """
    floor = math.log(torch.finfo(weighted_log_prob.dtype).tiny) + 1.0
    top = weighted_log_prob.amax(dim=1, keepdim=True)
    resp = weighted_log_prob.sub_(top).clamp_min_(floor).exp_()
    total = resp.sum(dim=1, keepdim=True)
    resp.div_(total)
    return (top + total.log()).squeeze(1), resp


def n_parameters(n_components, n_features, covariance_type):
    K, D = n_components, n_features
    cov = {"full": K * D * (D + 1) / 2.0, "tied": D * (D + 1) / 2.0, "diag": K * D, "spherical": K}[covariance_type]
    return int(cov + K * D + K - 1)
