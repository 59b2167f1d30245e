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

import contextlib
import math
from dataclasses import dataclass

import torch

from ._linear import linear

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
        "spherical": lambda: torch.zeros(K, 1, **f64),  # sum over features of the second moments
    }[covariance_type]()
    return SufficientStats(torch.zeros(K, **f64), torch.zeros(K, D, **f64), sxx)


def accumulate_stats(
    stats: SufficientStats, Xs: torch.Tensor, resp: torch.Tensor, covariance_type: str, buffers=None
) -> None:
    """Add one tile's contribution (``Xs`` shifted samples, ``resp`` responsibilities) to ``stats``.

    Sums and second moments are multiplied in float64 whatever the working dtype: the M-step
    subtracts ``mean**2`` from the second moments, and float32 products (or float32 sums
    against float64 second moments) carry rounding errors of the order of ``reg_covar`` on
    data such as pixels, where a negative variance or an indefinite covariance follows. For full
    covariance the products are added straight into the (K, D, D) accumulator, so a tile
    never holds a K x D x D temporary. ``buffers`` (a :class:`gpuclust._chunks.TileBuffers`): where
    the float64 tiles and the products are written, instead of new tensors per tile.
    """
    f64 = torch.float64
    (c, D), K = Xs.shape, resp.shape[1]

    def in_f64(name, t):
        if t.dtype == f64 or buffers is None:
            return t.to(f64)
        return buffers.get(name, t.shape, f64, t.device).copy_(t)

    def scratch(name, shape):
        if buffers is None:
            return torch.empty(shape, dtype=f64, device=Xs.device)
        return buffers.get(name, shape, f64, Xs.device)

    resp64, Xs64 = in_f64("resp64", resp), in_f64("x64", Xs)
    stats.nk += resp64.sum(0)
    stats.sx.addmm_(resp64.T, Xs64)
    if covariance_type == "full":
        weighted = torch.mul(resp64.T.unsqueeze(2), Xs64.unsqueeze(0), out=scratch("weighted", (K, c, D)))
        stats.sxx.baddbmm_(weighted.transpose(1, 2), Xs64.expand(weighted.shape[0], -1, -1))
    elif covariance_type == "diag":
        stats.sxx.addmm_(resp64.T, torch.mul(Xs64, Xs64, out=scratch("squares", (c, D))))
    elif covariance_type == "spherical":
        stats.sxx.addmm_(resp64.T, torch.mul(Xs64, Xs64, out=scratch("squares", (c, D))).sum(1, keepdim=True))


def tile_bytes_per_row(covariance_type, n_components, n_features, itemsize):
    """Temporary memory one row of a tile needs in the E-step and the statistics, in bytes."""
    K, D = n_components, n_features
    if covariance_type == "full":
        # y = Xs @ P_k in the working dtype and r_k * x in float64, both (K, c, D)
        return K * D * (itemsize + 8) + 8 * D + 4 * K * itemsize
    return (4 * K + 3 * D) * itemsize + 16 * (K + D)


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
    # The mean over features of the diagonal covariance; sxx holds the second moments' sum over features.
    D = means.shape[1]
    return stats.sxx[:, 0] / (D * stats.nk) - (means * means).mean(1) + reg_covar


_COVARIANCE_ESTIMATORS = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def covariance_tied_uncentred(xtx, n_samples, shift, nk, means, reg_covar):
    """scikit-learn's tied estimate ``(X^T X - sum_k nk_k mu_k mu_k^T) / sum_k nk_k`` on the data as given.

    For responsibilities that sum to one over every sample it equals :func:`_covariances_tied`;
    for the ``"k-means++"`` and ``"random_from_data"`` starts (one sample per component) it does
    not: X^T X runs over all samples but the counts over the K chosen ones, so it is the
    uncentred second moment of the samples not chosen, divided by K, and depends on where the
    origin is. It is scikit-learn's initial covariance there, so it is formed here too, from the
    shifted frame: X^T X = ``xtx`` + n shift shift^T (the shift is the data mean).
    """
    raw_means = means + shift
    cov = (xtx + n_samples * torch.outer(shift, shift) - (nk[:, None] * raw_means).T @ raw_means) / nk.sum()
    cov.diagonal().add_(reg_covar)
    return cov


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

    def working(self, dtype, covariance_type, matmul_precision="highest") -> WorkingParameters:
        """What the E-step needs, computed once per pass in float64 and cast to the working dtype."""
        return WorkingParameters.build(self, dtype, covariance_type, matmul_precision)


MATMUL_PRECISIONS = ("highest", "tf32", "bf16")


@dataclass
class WorkingParameters:
    """The E-step's per-pass constants in the working dtype.

    ``log_prob = const - 0.5 * quad``, where ``quad`` is the squared Mahalanobis distance.
    Per covariance type, ``factor`` and ``proj`` hold: full, P (K, D, D) and means @ P
    (K, 1, D); tied, P (D, D) and means @ P (K, D); diag, precisions (K, D) and
    means * precisions (K, D); spherical, precisions (K,) and means (K, D). ``offset``
    is the per-component term of ``quad`` that does not depend on x (tied, diag, spherical).
    """

    covariance_type: str
    factor: torch.Tensor
    proj: torch.Tensor
    offset: torch.Tensor | None
    const: torch.Tensor  # (K,): log weight + log det - D/2 log(2 pi)
    means: torch.Tensor
    matmul_precision: str = "highest"
    stacked: torch.Tensor | None = None  # diag (K, 2D), spherical (K, D + 1): quad = stacked tile @ stacked.T + offset

    @classmethod
    def build(cls, params, dtype, covariance_type, matmul_precision="highest"):
        P, means = params.precisions_cholesky, params.means
        K, D = means.shape
        const = torch.log(params.weights) + log_det_cholesky(P, covariance_type, D) - 0.5 * D * math.log(2 * math.pi)
        offset = None
        if covariance_type == "full":
            factor, proj = P, torch.matmul(means.unsqueeze(1), P)  # (K, 1, D)
        elif covariance_type == "tied":
            factor, proj = P, means @ P
            offset = (proj * proj).sum(1)
        elif covariance_type == "diag":
            factor = P * P
            proj = means * factor
            offset = (means * proj).sum(1)
        else:
            factor, proj = P * P, means
            offset = (means * means).sum(1)
        stacked = None
        if covariance_type == "diag":
            # quad_k(x) = sum_d prec_kd (x_d - mean_kd)^2 = [x, x*x] . [-2 mean_k prec_k, prec_k] + offset_k
            stacked = torch.cat([-2.0 * proj, factor], dim=1)
        elif covariance_type == "spherical":
            # quad_k(x) = prec_k ||x - mean_k||^2 = [x, ||x||^2] . [-2 prec_k mean_k, prec_k] + prec_k ||mean_k||^2
            stacked = torch.cat([-2.0 * factor.unsqueeze(1) * means, factor.unsqueeze(1)], dim=1)
            offset = offset * factor
        cast = lambda t: None if t is None else t.to(dtype)
        return cls(
            covariance_type,
            *map(cast, (factor, proj, offset, const, means)),
            matmul_precision,
            cast(stacked),
        )

    def weighted_log_prob(self, Xs, buffers=None):
        """log(weight_k) + log N(x | mean_k, cov_k) for each row of the tile and each component: (c, K).

        ``buffers`` (diag and spherical; a :class:`gpuclust._chunks.TileBuffers`): where the stacked
        tile and the result are written, instead of new tensors.
        """
        if self.stacked is not None:
            if buffers is None:
                return self.weighted_log_prob_stacked(stack_squares(Xs, self.covariance_type))
            (c, D), K = Xs.shape, self.const.shape[0]
            width = D + _square_columns(self.covariance_type, D)
            Z = stack_squares(Xs, self.covariance_type, buffers.get("stacked", (c, width), Xs.dtype, Xs.device))
            return self.weighted_log_prob_stacked(Z, buffers.get("log-probabilities", (c, K), Xs.dtype, Xs.device))
        with _matmul_precision(self.matmul_precision, Xs.device):
            quad = _SQUARED_DISTANCE[self.covariance_type](self, Xs)
        return quad.mul_(-0.5).add_(self.const)

    def weighted_log_prob_stacked(self, Z, out=None):
        """:meth:`weighted_log_prob` of a diag or spherical tile given stacked (:func:`stack_squares`): one GEMM.

        ``out``: a (rows, K) tensor the result is written into (:func:`gpuclust._chunks.linear_into`,
        the same bits).
        """
        from ._chunks import linear_into

        with _matmul_precision(self.matmul_precision, Z.device):
            if out is None:
                quad = linear(Z, self.stacked, self.offset)
            else:
                quad = linear_into(Z, self.stacked, self.offset, out)
        return quad.mul_(-0.5).add_(self.const)


# --- diag and spherical: each tile as [x, x*x] (diag) or [x, ||x||^2] (spherical) -------------------
# Both the E-step's distances and the M-step's statistics of these types are products of the
# responsibilities or the parameters with x and with its squares. Side by side in one matrix they
# take one GEMM each instead of two, the squares are formed once per tile instead of twice, and the
# buffers are reused from tile to tile (a pass over 60000x50 float64 rows took half the time).
# Spherical needs only the squared norm: D + 1 columns, not 2D.

STACKED_TYPES = ("diag", "spherical")

# Float64 values per 64 bytes: where every kept tile starts (see :meth:`StackedTiles._allocate`).
_ALIGN_F64 = 8


def _square_columns(covariance_type, n_features):
    return n_features if covariance_type == "diag" else 1


def _fill_squares(Z, D):
    """Z[:, D:] = the squares of Z[:, :D] (diag: elementwise; spherical: the row's sum).

    A float32 spherical norm is summed in float64 and rounded, as :class:`StackedTiles` forms
    it, so that a fit's E-step and ``predict`` see the same bits for the same tile (diag squares
    need no such care: a float32 square is the rounded float64 one).
    """
    if Z.shape[1] == 2 * D:
        torch.mul(Z[:, :D], Z[:, :D], out=Z[:, D:])
    elif Z.dtype == torch.float64:
        torch.sum(Z[:, :D].square(), dim=1, keepdim=True, out=Z[:, D:])
    else:
        Z[:, D:].copy_(torch.sum(Z[:, :D].to(torch.float64).square(), dim=1, keepdim=True))
    return Z


def stack_squares(Xs, covariance_type, out=None):
    """``[Xs, Xs * Xs]`` (diag) or ``[Xs, ||Xs||^2]`` (spherical) as one tensor.

    ``out``: a buffer with at least as many rows as Xs.
    """
    c, D = Xs.shape
    width = D + _square_columns(covariance_type, D)
    Z = torch.empty(c, width, dtype=Xs.dtype, device=Xs.device) if out is None else out[:c]
    Z[:, :D].copy_(Xs)
    return _fill_squares(Z, D)


class StackedTiles:
    """The stacked tiles of a fit's passes, formed in reused buffers and, with ``keep``, kept.

    Each tile is given in float64 (the statistics' operand) and in the working dtype (the
    E-step's product): for float32 data the difference ``x - shift`` is taken in float32, its
    squares in float64, and the float32 tile is the float64 one rounded (the bits
    :func:`stack_squares` gives too). With ``keep``, the float64 rows of all of X are formed on
    a fit's first pass and read as they are by every later one (the shift does not change
    within a fit): no subtraction and no squares per iteration, a sixth to a half of an
    iteration's time at D=50 on the CPU. The tiles, and so every sum, are the same kept or not.
    Buffers are allocated on the first pass, not before.

    Parameters
    ----------
    n_rows : int
        X's rows (the kept buffer's size).
    tile_rows : int
        Rows of the largest tile.
    n_features : int
    covariance_type : {"diag", "spherical"}
    dtype : torch.dtype
        The working dtype.
    device : torch.device
    keep : bool
        Keep the float64 rows of all of X for the next passes.
    float64_tiles : bool
        False: the caller reads only the working-dtype tiles (the fused E-step,
        :func:`gpuclust._fused.mixture_e_step`), so ``z64`` is yielded as None and ``keep`` keeps the
        working-dtype rows, half the memory, read as they are by later passes (no float64 pass over
        them). The tiles have the same bits either way (formed through one float64 tile buffer).
    """

    def __init__(self, n_rows, tile_rows, n_features, covariance_type, dtype, device, keep=False, float64_tiles=True):
        if not float64_tiles and dtype == torch.float64:
            raise ValueError("float64_tiles=False is for a narrower working dtype")
        self.D, self.covariance_type, self.keep, self.filled = n_features, covariance_type, keep, False
        self.n_rows, self.tile_rows, self.float64_tiles = n_rows, tile_rows, float64_tiles
        self.width = n_features + _square_columns(covariance_type, n_features)
        self._dtype, self._device = dtype, device
        self.z64 = self.z = self.kept = None

    @staticmethod
    def kept_nbytes(n_rows, n_features, covariance_type, itemsize=8):
        """Memory the kept rows of ``n_rows`` samples take (``itemsize``: 8 for float64 rows, 4 for float32)."""
        return n_rows * (n_features + _square_columns(covariance_type, n_features)) * itemsize

    def _allocate(self):
        rows, width = self.tile_rows, self.width
        if not self.float64_tiles:
            self.z64 = torch.empty(rows, width, dtype=torch.float64, device=self._device)
            self.z = torch.empty(rows, width, dtype=self._dtype, device=self._device)
            if self.keep:
                self.kept = torch.empty(self.n_rows, width, dtype=self._dtype, device=self._device)
            return
        if self.keep:
            # One block per tile, each starting on a 64-byte boundary as a buffer of its own
            # does: MKL's float64 GEMM rounds differently for differently aligned operands, so
            # kept tiles packed back to back gave other bits than the per-pass buffer.
            self._pitch = -(-rows * width // _ALIGN_F64) * _ALIGN_F64
            n_tiles = -(-self.n_rows // rows)
            self.z64 = torch.empty(n_tiles * self._pitch, dtype=torch.float64, device=self._device)
        else:
            self.z64 = torch.empty(rows, width, dtype=torch.float64, device=self._device)
        if self._dtype != torch.float64:  # float64 tiles are used as they are
            self.z = torch.empty(rows, width, dtype=self._dtype, device=self._device)

    def _tile64(self, index, c):
        """The float64 buffer of tile ``index`` (``c`` rows): its kept block, or the one reused buffer."""
        if not self.keep:
            return self.z64[:c]
        start = index * self._pitch
        return self.z64[start : start + c * self.width].view(c, self.width)

    def tiles(self, X, tile_rows, shift):
        """Yield ``(z, z64)``, the stacked tile of ``x - shift`` in the working dtype and in float64.

        ``X`` is in-memory or out-of-core rows (anything with ``tiles(tile_rows)``); for
        float64 data ``z`` is ``z64``. Both are valid until the next tile is asked for.
        """
        if self.z64 is None:
            self._allocate()
        if not self.float64_tiles:
            yield from self._working_tiles(X, tile_rows, shift)
            return
        for index, (_, tile) in enumerate(X.tiles(tile_rows)):
            c = tile.shape[0]
            z64 = self._tile64(index, c)
            if not (self.keep and self.filled):
                self._form(tile, shift, z64)
            if self._dtype == torch.float64:
                yield z64, z64
            else:
                yield self.z[:c].copy_(z64), z64
        self.filled = self.keep

    def _working_tiles(self, X, tile_rows, shift):
        """:meth:`tiles` with ``float64_tiles=False``: ``(z, None)``, z kept (with ``keep``) after the first pass."""
        for rows, tile in X.tiles(tile_rows):
            c = tile.shape[0]
            if self.keep and self.filled:
                yield self.kept[rows], None
                continue
            self._form(tile, shift, self.z64[:c])
            z = self.kept[rows] if self.keep else self.z[:c]
            yield z.copy_(self.z64[:c]), None
        self.filled = self.keep

    def _form(self, tile, shift, z64):
        """Write the float64 stacked rows of ``tile - shift`` into ``z64``."""
        D = self.D
        if tile.dtype == torch.float64:
            torch.sub(tile, shift, out=z64[:, :D])
            _fill_squares(z64, D)
            return
        difference = self.z[: tile.shape[0], :D]  # scratch: the working-dtype tile is written after
        torch.sub(tile, shift, out=difference)
        stack_squares(difference, self.covariance_type, z64)


def accumulate_stats_stacked(stats: SufficientStats, Z64: torch.Tensor, resp: torch.Tensor, resp64=None) -> None:
    """:func:`accumulate_stats` for diag and spherical from the stacked tile in float64: one GEMM.

    ``resp64``: a float64 tensor of ``resp``'s shape that float32 responsibilities are copied into.
    """
    if resp.dtype == torch.float64 or resp64 is None:
        resp64 = resp.to(torch.float64)
    else:
        resp64 = resp64.copy_(resp)
    add_stacked_sums(stats, resp64.sum(0), resp64.T @ Z64)


def add_stacked_sums(stats: SufficientStats, nk: torch.Tensor, both: torch.Tensor) -> None:
    """Add a diag or spherical tile's ``sum r`` (K,) and ``r^T [x, squares]`` (K, W) to ``stats``."""
    stats.nk += nk
    D = stats.sx.shape[1]
    stats.sx += both[:, :D]
    stats.sxx += both[:, D:]


@contextlib.contextmanager
def _matmul_precision(precision, device):
    """TF32 for float32 GEMMs inside the block when asked (CUDA only; restored after)."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _quad_full(w, Xs):
    if w.matmul_precision == "bf16":
        # Centre before rounding: x @ P and mean @ P are large and nearly cancel.
        centred = (Xs.unsqueeze(0) - w.means.unsqueeze(1)).to(torch.bfloat16)
        y = torch.matmul(centred, w.factor.to(torch.bfloat16)).to(Xs.dtype)
    else:
        y = torch.matmul(Xs.unsqueeze(0), w.factor).sub_(w.proj)  # (K, c, D)
    return y.square_().sum(2).T


def _quad_tied(w, Xs):
    if w.matmul_precision == "bf16":
        y = (Xs.to(torch.bfloat16) @ w.factor.to(torch.bfloat16)).to(Xs.dtype)
    else:
        y = Xs @ w.factor
    quad = torch.addmm(w.offset.unsqueeze(0), y, w.proj.T, alpha=-2.0)
    return quad.add_((y * y).sum(1, keepdim=True))


_SQUARED_DISTANCE = {"full": _quad_full, "tied": _quad_tied}  # diag and spherical: WorkingParameters.stacked


# --- Cholesky factors ---------------------------------------------------------------------------


# From this size on, a GPU factorizes (K, D, D) batches one matrix at a time: batched
# cuSOLVER/cuBLAS kernels are built for many small matrices. benchmarks/gpu_smoke.py times
# both at D = 1024, 2048 and 6272; revisit the threshold with its figures.
LOOP_FROM_N_FEATURES = 1024


def _per_matrix(fn, batch, one_at_a_time=None):
    """``fn(batch)``, or ``fn`` on one (D, D) matrix at a time (same result).

    ``one_at_a_time``: None decides by size and device (large D on a GPU, see
    :data:`LOOP_FROM_N_FEATURES`); tests pass True or False to run either way on any device.
    """
    if one_at_a_time is None:
        large = batch.ndim == 3 and batch.shape[-1] >= LOOP_FROM_N_FEATURES
        one_at_a_time = large and batch.device.type == "cuda"
    if one_at_a_time and batch.ndim == 3 and batch.shape[0] > 1:
        parts = [fn(m.unsqueeze(0)) for m in batch]
        return tuple(torch.cat(p) for p in zip(*parts)) if isinstance(parts[0], tuple) else torch.cat(parts)
    return fn(batch)


def _ill_defined(component, dtype_hint):
    """scikit-learn's text (its tests match it whole), then what gpuclust knows besides."""
    message = (
        "Fitting the mixture model failed because some components have ill-defined empirical "
        "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
        "number of components, increase reg_covar, or scale the input data."
    )
    if dtype_hint:
        message += (
            " The numerical accuracy can also be improved by passing float64 data instead of float32."
            " (GaussianMixture(dtype='float64') computes in float64 from float32 data.)"
        )
    if component is not None:
        message += f" The first such component is component {component}."
    return ValueError(message)


def _triangular_inverse(tri, upper):
    # A (D, D) right-hand side broadcast over the batch: an expanded (stride-0) batch of it
    # sends the CPU down a path 30-1000 times slower.
    eye = torch.eye(tri.shape[-1], dtype=tri.dtype, device=tri.device)
    return torch.linalg.solve_triangular(tri, eye, upper=upper)


def precision_cholesky(covariances: torch.Tensor, covariance_type: str, float32_hint: bool = False):
    """Upper-triangular P with P P^T = inverse(covariance), per component.

    Raises ValueError naming the first component whose covariance is not positive definite.
    """
    if covariance_type in ("full", "tied"):
        batch = covariances if covariance_type == "full" else covariances.unsqueeze(0)
        chol, info = _per_matrix(torch.linalg.cholesky_ex, batch)
        bad = torch.nonzero(info).flatten()
        if bad.numel():
            raise _ill_defined(int(bad[0]) if covariance_type == "full" else None, float32_hint)
        prec = _per_matrix(lambda c: _triangular_inverse(c, upper=False), chol).transpose(-1, -2)
        return prec if covariance_type == "full" else prec[0]
    bad = torch.nonzero(covariances <= 0).flatten()
    if bad.numel():
        # nonzero gives (component, feature) pairs for diag, (component,) for spherical: the first
        # entry is the component either way.
        raise _ill_defined(int(bad[0]), float32_hint)
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
        inv = _per_matrix(lambda p: _triangular_inverse(p, upper=True), prec_chol)  # P^-1
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


def normalize_log_prob(weighted_log_prob: torch.Tensor):
    """Per-sample log-likelihood and responsibilities from weighted log-probabilities (c, K).

    One exponential per entry, in place (``torch.logsumexp`` followed by ``exp``
    would take two). Arguments are clamped at half the log of the smallest normal
    number first (responsibilities of at least ~1e-19 in float32, ~1e-154 in float64):
    so small a responsibility changes no sum, while anything smaller sends the CPU
    down slow paths: ``exp`` of an underflowing argument (about 13 times slower in
    float32), and products of the statistics that fall into subnormal numbers (a
    float64 full-covariance pass on pixels ran 100 times slower).

    Returns
    -------
    log_norm : (c,)
    resp : (c, K), the input's storage reused
    """
    floor = 0.5 * math.log(torch.finfo(weighted_log_prob.dtype).tiny)
    top = weighted_log_prob.amax(dim=1, keepdim=True)
    resp = weighted_log_prob.sub_(top).clamp_min_(floor).exp_()
    total = resp.sum(dim=1, keepdim=True)
    resp.div_(total)
    return (top + total.log()).squeeze(1), resp


def n_parameters(n_components, n_features, covariance_type):
    K, D = n_components, n_features
    cov = {"full": K * D * (D + 1) / 2.0, "tied": D * (D + 1) / 2.0, "diag": K * D, "spherical": K}[covariance_type]
    return int(cov + K * D + K - 1)
