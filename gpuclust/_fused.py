"""Fused Triton kernels: KMeans assignment, centre sums and the diag/spherical GMM E-step.

None of them writes an (n, k) matrix (samples by centres or components).

Triton is an optional extra (``pip install gpuclust[triton]``): this module imports without it,
and :func:`available` says whether the kernels can run. The kernels are defined when triton
imports; on a machine without CUDA, triton's interpreter (``TRITON_INTERPRET=1`` set before this
module is imported) runs them on CPU tensors, which is what the tests do. The library calls them
on CUDA only.

Every host wrapper takes tensors already on the compute device, as :mod:`gpuclust._kmeans_core`'s
functions do.
"""

from __future__ import annotations

import torch

from ._chunks import tile_rows_for
from ._kmeans_core import assign as _torch_assign
from ._kmeans_core import center_norms, nearest_center

try:  # the optional extra
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

__all__ = ["PRECISIONS", "assign", "available", "cluster_sums", "kernel_scores", "mixture_e_step", "rounding_bound"]

PRECISIONS = ("ieee", "tf32", "bf16")
# Relative error of one input of a low-precision product. bf16 keeps 8 significant bits, tf32
# 11; rounded to nearest that is 2^-8 and 2^-11, truncated (triton's interpreter truncates to
# bf16; tensor cores may drop tf32's low bits) 2^-7 and 2^-10. The truncation bounds cover both.
INPUT_ROUNDOFF = {"ieee": 0.0, "tf32": 2.0**-10, "bf16": 2.0**-7}
_FLOAT32_ROUNDOFF = 2.0**-24
BLOCK_M, BLOCK_K, BLOCK_D = 64, 32, 32


def available(device) -> bool:
    """Whether the fused kernels run on ``device``: triton imports and the device is CUDA."""
    return triton is not None and torch.device(device).type == "cuda"


def _require_triton():
    if triton is None:
        raise ImportError("gpuclust's fused kernels need triton: pip install gpuclust[triton]")


if triton is not None:

    @triton.jit
    def _scores_tile(
        X, C, c_sq, rows, cols, n, k, d,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """``||c||^2 - 2 x.c`` for a (rows, cols) tile, +inf in the columns past k.

        ``UPCAST`` (CPU tensors, i.e. triton's interpreter, whose bf16 ``tl.dot`` multiplies the
        bit patterns): bf16 inputs are multiplied as float32, the same products. Offsets are
        int64: ``n * d`` may pass 2^31.
        """
        acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        x_rows, c_rows = X + rows.to(tl.int64)[:, None] * d, C + cols.to(tl.int64)[None, :] * d
        for d0 in range(0, d, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(x_rows + dd[None, :], mask=(rows[:, None] < n) & (dd[None, :] < d), other=0.0)
            c = tl.load(c_rows + dd[:, None], mask=(cols[None, :] < k) & (dd[:, None] < d), other=0.0)
            if PRECISION == "bf16":
                if UPCAST:  # exact: a product of two bf16 fits in float32
                    x, c = x.to(tl.bfloat16).to(tl.float32), c.to(tl.bfloat16).to(tl.float32)
                    acc = tl.dot(x, c, acc, input_precision="ieee")
                else:
                    acc = tl.dot(x.to(tl.bfloat16), c.to(tl.bfloat16), acc)
            else:
                acc = tl.dot(x, c, acc, input_precision=PRECISION)
        norms = tl.load(c_sq + cols, mask=cols < k, other=float("inf"))
        return tl.where(cols[None, :] < k, norms[None, :] - 2.0 * acc, float("inf"))

    @triton.jit
    def _assign_kernel(
        X, C, c_sq, labels, best_out, second_out, n, k, d,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, KEEP_SECOND: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """One row tile against every centre, BLOCK_K at a time: running best (and second) score."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        best = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)
        second = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)
        best_idx = tl.zeros([BLOCK_M], dtype=tl.int32)
        for k0 in range(0, k, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            score = _scores_tile(X, C, c_sq, rows, cols, n, k, d, BLOCK_M, BLOCK_K, BLOCK_D, PRECISION, UPCAST)
            tile_min = tl.min(score, axis=1)
            tile_arg = tl.argmin(score, axis=1, tie_break_left=True) + k0
            if KEEP_SECOND:
                others = tl.min(tl.where(cols[None, :] == tile_arg[:, None], float("inf"), score), axis=1)
                second = tl.minimum(tl.minimum(second, others), tl.maximum(best, tile_min))
            better = tile_min < best  # strict: an earlier tile (a lower index) keeps a tie
            best_idx = tl.where(better, tile_arg, best_idx)
            best = tl.where(better, tile_min, best)
        mask = rows < n
        tl.store(labels + rows, best_idx.to(tl.int64), mask=mask)
        tl.store(best_out + rows, best, mask=mask)
        if KEEP_SECOND:
            tl.store(second_out + rows, second, mask=mask)

    @triton.jit
    def _segment_sums_kernel(X, w, order, starts, sums, weights, d, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """Cluster ``program_id(0)``'s rows (a segment of the sorted order) summed into one row of ``sums``."""
        j = tl.program_id(0)
        dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        lo = tl.load(starts + j)
        hi = tl.load(starts + j + 1)
        acc = tl.zeros([BLOCK_D], dtype=tl.float64)
        wsum = tl.zeros([BLOCK_N], dtype=tl.float64)
        for r0 in range(lo, hi, BLOCK_N):
            r = r0 + tl.arange(0, BLOCK_N)
            inside = r < hi
            i = tl.load(order + r, mask=inside, other=0)
            wi = tl.load(w + i, mask=inside, other=0.0).to(tl.float64)
            x = tl.load(X + i[:, None] * d + dd[None, :], mask=inside[:, None] & (dd[None, :] < d), other=0.0)
            acc += tl.sum(x.to(tl.float64) * wi[:, None], axis=0)
            wsum += wi
        tl.store(sums + j.to(tl.int64) * d + dd, acc, mask=dd < d)
        if tl.program_id(1) == 0:
            tl.store(weights + j, tl.sum(wsum, axis=0))


def rounding_bound(x_norm, c_norm_max, d, precision):
    """Half the score gap below which a row's low-precision label may differ from float32's.

    A score is ``s_j = ||c_j||^2 - 2 x.c_j``. Rounding each input of the product to a format
    with relative error at most ``u`` (2^-7 bf16, 2^-10 tf32: truncation's bounds, see
    ``INPUT_ROUNDOFF``) gives ``x_i (1 + a_i) c_i (1 + b_i)``, an error of at most ``(2u + u^2) |x_i c_i|`` per term, so
    ``(2u + u^2) sum_i |x_i c_i| <= (2u + u^2) ||x|| ||c_j||`` (Cauchy-Schwarz) on the dot
    product. Float32 accumulation of d terms adds at most ``g = d u32 / (1 - d u32)`` times
    ``sum_i |x_i c_i|`` (u32 = 2^-24) in the kernel, and as much again in the float32 GEMM of the
    path it must agree with; forming ``||c||^2 - 2 (x.c)`` rounds once more in each,
    ``u32 (||c||^2 + 2 |x.c|)``. With ``cmax = max_j ||c_j||``, every score of both paths is
    within ``E = 2 ||x|| cmax (2u + u^2 + 2g) + 2 u32 (cmax^2 + 2 ||x|| cmax)`` of the exact one.
    If the kernel's two best scores differ by more than ``2 E``, every other centre's float32
    score exceeds the best one's, so float32 picks the same label; rows within ``2 E`` are
    re-checked. (Overflow and bf16 subnormals are outside the bound: data near float32's range
    limits belongs on the "ieee" path.)

    Returns ``2 E`` per row, shape of ``x_norm``.
    """
    u, u32 = INPUT_ROUNDOFF[precision], _FLOAT32_ROUNDOFF
    g = d * u32 / (1.0 - d * u32)
    xc = x_norm * c_norm_max
    return 2.0 * (2.0 * xc * (2.0 * u + u * u + 2.0 * g) + 2.0 * u32 * (c_norm_max * c_norm_max + 2.0 * xc))


def _recheck(X, x_sq, centers, c_sq, labels, best, second, precision):
    """Rows whose two best low-precision scores are within :func:`rounding_bound`: float32 labels."""
    x_norm = x_sq.clamp_min(0).sqrt()
    c_max = c_sq.max().clamp_min(0).sqrt()
    close = torch.nonzero(second - best <= rounding_bound(x_norm, c_max, X.shape[1], precision)).flatten()
    if close.numel():
        rows_labels, rows_scores = nearest_center(X[close], centers, c_sq, x_sq[close], distances=False)
        labels[close] = rows_labels
        best[close] = rows_scores
    return close


def kernel_scores(X, centers, c_sq, labels, precision="ieee"):
    """Run the assignment kernel alone: labels written into ``labels``; returns (best, second) scores.

    Scores are ``||c||^2 - 2 x.c`` in float32, and the second-best score; no re-check (that is
    :func:`assign`'s), so labels may differ from the float32 GEMM path's on near ties, in low
    precision and also in "ieee" (float32 products summed in another order).
    """
    _require_triton()
    n, d = X.shape
    X, centers = X.contiguous(), centers.contiguous()
    best = torch.empty(n, dtype=torch.float32, device=X.device)
    keep_second = True  # every precision is re-checked (see assign)
    second = torch.empty(n, dtype=torch.float32, device=X.device)
    if n:
        grid = (triton.cdiv(n, BLOCK_M),)
        _assign_kernel[grid](
            X, centers, c_sq, labels, best, second, n, centers.shape[0], d,
            BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_D=BLOCK_D,
            PRECISION=precision, KEEP_SECOND=keep_second, UPCAST=X.device.type != "cuda",
        )  # fmt: skip
    return best, second


def assign(X, x_sq, centers, out=None, precision="ieee"):
    """Nearest centre and squared distance to it for every sample, in one fused kernel.

    The contract of :func:`gpuclust._kmeans_core.assign` (distances clamped at 0; a tie goes to
    the lowest centre index, as ``torch.min``'s) for dense X on CUDA: each program takes
    ``BLOCK_M`` rows and runs over the centres ``BLOCK_K`` at a time, ``-2 x.c + ||c||^2`` by
    ``tl.dot``, keeping the running minimum and its index in registers; the (n, k) scores are
    never written.

    ``precision``: "ieee" multiplies exact float32 products, "tf32" and "bf16" multiply in the
    lower precision. The kernel also keeps the second-best score, and every row whose two best
    scores are closer than :func:`rounding_bound` is re-checked by the float32 GEMM path
    (:func:`gpuclust._kmeans_core.nearest_center`), so the labels are that path's in every
    precision: "ieee" too, whose products are summed in another order than the GEMM's (on
    near ties the kernel alone disagreed with it on 55 of 400 rows). Distances of rows not
    re-checked carry the kernel's error (at most half that bound).

    float64 X runs the torch path (:func:`gpuclust._kmeans_core.assign`): no float64 kernel.
    ``out``: contiguous (labels, distances) tensors to write into (reused across iterations).

    Returns
    -------
    labels : (n,) int64
    distances : (n,) in X's dtype
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")
    n, d = X.shape
    if out is None:
        out = (torch.empty(n, dtype=torch.int64, device=X.device), torch.empty(n, dtype=X.dtype, device=X.device))
    if X.dtype != torch.float32:
        tile_rows = tile_rows_for(max(n, 1), (centers.shape[0] + d) * X.element_size(), X.device)
        return _torch_assign(X, x_sq, centers, tile_rows, out)
    labels, dist = out
    c_sq = center_norms(centers)
    best, second = kernel_scores(X, centers, c_sq, labels, precision)
    _recheck(X, x_sq, centers, c_sq, labels, best, second, precision)
    torch.add(best, x_sq, out=dist).clamp_min_(0)
    return labels, dist


def cluster_sums(X, w, labels, k, block_rows=128):
    """Weighted sum of the members of each cluster and the weight in each, without atomics.

    The contract of :func:`gpuclust._kmeans_core.cluster_sums` for dense X: (k, d) and (k,),
    float64. The labels are sorted (stably), so each cluster's rows form one segment of the
    order; one program per (cluster, block of columns) walks its segment ``block_rows`` rows at
    a time, gathering the rows through the permutation and adding them in float64 registers,
    and writes its output once. No two programs write the same element, so no atomic add is
    needed, and the additions follow a fixed order (the stable sort's, then the fixed tree of
    ``tl.sum`` within a block): the same input gives the same bits on every run, unlike
    ``index_add_``'s atomics on a GPU. An empty cluster's segment is empty: its sums are 0.
    """
    _require_triton()
    n, d = X.shape
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)  # integer counts: exact in any order
    starts = torch.zeros(k + 1, dtype=torch.int64, device=X.device)
    torch.cumsum(counts, 0, out=starts[1:])
    sums = torch.zeros(k, d, dtype=torch.float64, device=X.device)
    weights = torch.zeros(k, dtype=torch.float64, device=X.device)
    if n and k:
        grid = (k, triton.cdiv(d, BLOCK_D))
        _segment_sums_kernel[grid](
            X.contiguous(), w.contiguous(), order, starts, sums, weights, d, BLOCK_N=block_rows, BLOCK_D=BLOCK_D
        )
    return sums, weights


# ------------------------------------------------------------------ Gaussian mixture, diag and spherical
# ``log p_k(x) = const_k - (z . s_k + offset_k) / 2`` with the stacked row ``z`` = [x, x*x] (diag) or
# [x, ||x||^2] (spherical) and the stacked parameters ``s_k`` of
# :class:`gpuclust._gmm_numerics.WorkingParameters`: one product per (row tile, component tile).
GMM_BLOCK_M, GMM_BLOCK_K, GMM_BLOCK_W = 32, 16, 32
# Programs of the statistics pass along the rows: each sums its rows' statistics in registers
# and writes one (K, W) partial, so the partials' memory does not grow with n.
GMM_PROGRAMS = 256

if triton is not None:

    @triton.jit
    def _log_prob_tile(
        Z, S, offset, const, rows, cols, n, K, W,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
    ):  # fmt: skip
        """Weighted log-probabilities of a (rows, cols) tile, -inf in the columns past K."""
        acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        z_rows, s_rows = Z + rows.to(tl.int64)[:, None] * W, S + cols.to(tl.int64)[None, :] * W
        for w0 in range(0, W, BLOCK_W):
            ww = w0 + tl.arange(0, BLOCK_W)
            z = tl.load(z_rows + ww[None, :], mask=(rows[:, None] < n) & (ww[None, :] < W), other=0.0)
            s = tl.load(s_rows + ww[:, None], mask=(cols[None, :] < K) & (ww[:, None] < W), other=0.0)
            acc = tl.dot(z, s, acc, input_precision="ieee")
        off = tl.load(offset + cols, mask=cols < K, other=0.0)
        cst = tl.load(const + cols, mask=cols < K, other=0.0)
        return tl.where(cols[None, :] < K, cst[None, :] - 0.5 * (acc + off[None, :]), float("-inf"))

    @triton.jit
    def _log_norm_kernel(
        Z, S, offset, const, log_norm, n, K, W,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
    ):  # fmt: skip
        """Pass 1: log-sum-exp over the components, online (running max and rescaled sum) across K tiles."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        top = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            lp = _log_prob_tile(Z, S, offset, const, rows, cols, n, K, W, BLOCK_M, BLOCK_K, BLOCK_W)
            new_top = tl.maximum(top, tl.max(lp, axis=1))  # finite: column k0 exists
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(lp - new_top[:, None]), axis=1)
            top = new_top
        tl.store(log_norm + rows, top + tl.log(total), mask=rows < n)

    @triton.jit
    def _mixture_stats_kernel(
        Z, S, offset, const, log_norm, nk_part, sums_part, n, K, W, rows_per_program,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
    ):  # fmt: skip
        """Pass 2: responsibilities of a (rows, K tile) recomputed, their sums r and r^T z into one partial.

        Program (p, kt, wb) owns rows [p * rows_per_program, ...) x components of tile kt x stacked
        columns of block wb, and writes its own slice of the partials: no atomics.
        """
        p, kt, wb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        ww = wb * BLOCK_W + tl.arange(0, BLOCK_W)
        acc = tl.zeros([BLOCK_K, BLOCK_W], dtype=tl.float64)
        nk = tl.zeros([BLOCK_K], dtype=tl.float64)
        lo = p * rows_per_program
        for r0 in range(lo, lo + rows_per_program, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            inside = rows < n
            lp = _log_prob_tile(Z, S, offset, const, rows, cols, n, K, W, BLOCK_M, BLOCK_K, BLOCK_W)
            norm = tl.load(log_norm + rows, mask=inside, other=0.0)
            resp = tl.where(inside[:, None] & (cols[None, :] < K), tl.exp(lp - norm[:, None]), 0.0)
            z_rows = Z + rows.to(tl.int64)[:, None] * W
            z = tl.load(z_rows + ww[None, :], mask=inside[:, None] & (ww[None, :] < W), other=0.0)
            acc += tl.dot(tl.trans(resp), z, input_precision="ieee").to(tl.float64)
            nk += tl.sum(resp, axis=0).to(tl.float64)
        out = sums_part + p.to(tl.int64) * K * W + cols[:, None] * W + ww[None, :]
        tl.store(out, acc, mask=(cols[:, None] < K) & (ww[None, :] < W))
        if wb == 0:
            tl.store(nk_part + p * K + cols, nk, mask=cols < K)


def mixture_e_step(Z, stacked, offset, const, programs=GMM_PROGRAMS):
    """Fused diag/spherical E-step of one float32 tile: log-likelihoods and the M-step's sums.

    ``Z`` (n, W): the stacked tile (:func:`gpuclust._gmm_numerics.stack_squares`); ``stacked``
    (K, W), ``offset`` and ``const`` (K,): a :class:`gpuclust._gmm_numerics.WorkingParameters`'s.
    Pass 1 computes each row's log-sum-exp over the components, K tiles at a time with a running
    maximum; pass 2 recomputes each (row tile, K tile) of log-probabilities, the responsibilities
    ``exp(lp - lse)``, and adds ``sum r`` and ``r^T Z`` for its rows. No (n, K) tensor is written.
    Pass 2's programs each own a range of rows and write one (K, W) float64 partial; torch sums
    the ``programs`` partials. A product ``r^T z`` is float32 over one tile of ``GMM_BLOCK_M``
    rows, then added in float64: the sums carry a relative error of about ``GMM_BLOCK_M * 2^-24``
    of ``sum r |z|`` (the torch path multiplies in float64), and log-likelihoods float32 rounding.
    A stacked column block is a separate program of pass 2, which recomputes the tile's
    log-probabilities: ``ceil(W / GMM_BLOCK_W)`` times the product of pass 1.

    Returns
    -------
    log_norm : (n,) float32, log sum_k exp(weighted log-probability)
    nk : (K,) float64, sum of the responsibilities
    sums : (K, W) float64, r^T Z (diag: [sum r x, sum r x*x]; spherical: [sum r x, sum r ||x||^2])
    """
    _require_triton()
    if Z.dtype != torch.float32:
        raise ValueError(f"the fused E-step runs float32 tiles, not {Z.dtype}.")
    (n, W), K = Z.shape, stacked.shape[0]
    Z, args = Z.contiguous(), [t.to(torch.float32).contiguous() for t in (stacked, offset, const)]
    log_norm = torch.empty(n, dtype=torch.float32, device=Z.device)
    blocks = dict(BLOCK_M=GMM_BLOCK_M, BLOCK_K=GMM_BLOCK_K, BLOCK_W=GMM_BLOCK_W)
    rows_per_program = triton.cdiv(triton.cdiv(max(n, 1), programs), GMM_BLOCK_M) * GMM_BLOCK_M
    n_programs = triton.cdiv(n, rows_per_program)
    nk = torch.zeros(n_programs, K, dtype=torch.float64, device=Z.device)
    sums = torch.zeros(n_programs, K, W, dtype=torch.float64, device=Z.device)
    if n:
        _log_norm_kernel[(triton.cdiv(n, GMM_BLOCK_M),)](Z, *args, log_norm, n, K, W, **blocks)
        grid = (n_programs, triton.cdiv(K, GMM_BLOCK_K), triton.cdiv(W, GMM_BLOCK_W))
        _mixture_stats_kernel[grid](Z, *args, log_norm, nk, sums, n, K, W, rows_per_program, **blocks)
    return log_norm, nk.sum(0), sums.sum(0)
