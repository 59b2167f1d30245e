"""The KMeans numerics in torch: one tiled distance primitive, Lloyd passes, k-means++.

Every function takes tensors already on the compute device; nothing here
converts or validates user input (that is :mod:`gpuclust.kmeans`'s job).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from ._argmin import first_min
from ._arrays import is_sparse
from ._chunks import TileBuffers, row_blocks, tile_slices
from ._comm import LOCAL
from ._linear import linear
from .sources import column_sums, rows_of, squared_norms_total

# ----------------------------------------------------------------- sparse X
# A sparse X is a torch sparse CSR tensor; it is never densified. Distances come from
# sparse-dense products (CSR @ centres^T), row norms and centre sums from its stored values.


def _row_ids(X):
    """Row index of every stored value of a CSR tensor."""
    crow = X.crow_indices()
    return torch.repeat_interleave(torch.arange(X.shape[0], device=X.device), crow.diff())


def dense_rows(X, index: torch.Tensor):
    """A few rows of X, selected by an index tensor, as a dense (m, d) tensor."""
    if not is_sparse(X):
        return X[index]
    crow, col, values = X.crow_indices(), X.col_indices(), X.values()
    out = torch.zeros(index.numel(), X.shape[1], dtype=values.dtype, device=X.device)
    for j, i in enumerate(index.tolist()):
        lo, hi = int(crow[i]), int(crow[i + 1])
        out[j, col[lo:hi]] = values[lo:hi]
    return out


def squared_norms(X: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean norms, shape (n_samples,).

    ``vector_norm`` is a single fused reduction (several times faster on the CPU
    than ``einsum`` or ``(X * X).sum(1)``, which materialise or re-read X). For sparse X
    the norms are summed from the stored values.
    """
    if is_sparse(X):
        values = X.values()
        return torch.zeros(X.shape[0], dtype=values.dtype, device=X.device).index_add_(0, _row_ids(X), values * values)
    return torch.linalg.vector_norm(X, dim=1).square_()


def center_norms(centers: torch.Tensor) -> torch.Tensor:
    """Squared norms of the centres, ``(C * C).sum(1)``: the products exact, as scikit-learn's.

    The labels are ``argmin(-2 x.c + ||c||^2)``: these norms, not the rows', decide exact ties
    (integer-valued data has many). :func:`squared_norms`'s ``vector_norm(...).square_()`` takes
    a square root and squares it, which is off by an ulp (7 came out 6.9999995 for
    [1.5, 1.5, 1.5, -0.5]) and sent a tie to the later centre. k x d values: the cost is nothing.
    """
    return (centers * centers).sum(1)


def distances_to_own_center(X, x_sq, centers, labels):
    """Exact ``||x_i - c_{labels_i}||^2`` for every sample (used rarely: empty clusters, verbose)."""
    if not is_sparse(X):
        return ((X - centers[labels]) ** 2).sum(1)
    rows = _row_ids(X)
    values = X.values().to(torch.float64)
    c = centers.to(torch.float64)
    dots = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    dots.index_add_(0, rows, values * c[labels[rows], X.col_indices()])
    d2 = x_sq.to(torch.float64) - 2 * dots + (c * c).sum(1)[labels]
    return d2.clamp_min_(0).to(X.dtype)


def mean_feature_variance(X: torch.Tensor, x_sq: torch.Tensor, comm=LOCAL) -> float:
    """Mean over features of the (biased) per-feature variance, from the row norms already computed.

    ``sum_j var_j = (sum_i ||x_i||^2 - n ||mean||^2) / n``; computed in float64 from the sums
    an out-of-core scan takes (:func:`gpuclust.sources.column_sums`, in its tiles and order).
    """
    return variance_from_sums(column_sums(X), squared_norms_total(x_sq), X.shape[0], comm)


def variance_from_sums(col_sums, total_sq, n_local, comm=LOCAL) -> float:
    """:func:`mean_feature_variance` from this rank's column sums (float64), sum of squared norms and row count."""
    d = col_sums.shape[0]
    totals = torch.cat(
        [
            col_sums,
            torch.as_tensor(total_sq, dtype=torch.float64, device=col_sums.device).reshape(1),
            torch.tensor([float(n_local)], dtype=torch.float64, device=col_sums.device),
        ]
    )
    comm.sum_(totals, "data variance")
    n = float(totals[-1])
    mean = totals[:d] / n
    total = float(totals[d]) - n * float((mean * mean).sum())
    return max(total, 0.0) / (n * d)


def nearest_center(Xc, centers, c_sq, x_sq, out=None, distances=True, buffers=None):
    """Label and squared distance to the nearest centre for one tile of rows.

    ``||x||^2 - 2 x.c + ||c||^2``: one GEMM per tile (:func:`gpuclust._linear.linear`), never
    an (n, k, d) tensor. ``out``: the (labels, distances) tensors to write into. Without
    ``distances`` the second tensor holds the minimum of ``-2 x.c + ||c||^2`` only (two
    kernels fewer, for callers that use the labels alone).

    Float32 on the CPU, whose product (oneDNN's) returns a new tensor, runs in blocks of rows
    (:func:`gpuclust._chunks.row_blocks`): a block's scores, not a whole tile's, are allocated at
    a time, and every row gets the same bits as in one product. Elsewhere the tile is one
    product, written into the (rows, k) buffer ``"scores"`` of ``buffers`` (a
    :class:`gpuclust._chunks.TileBuffers`) if given.
    """
    m, k = Xc.shape[0], centers.shape[0]
    if out is None:
        out = (torch.empty(m, dtype=torch.int64, device=Xc.device), torch.empty(m, dtype=Xc.dtype, device=Xc.device))
    labels, min_scores = out
    if is_sparse(Xc):
        whole = torch.addmm(c_sq.unsqueeze(0), Xc, centers.T, alpha=-2.0)
        torch.min(whole, dim=1, out=(min_scores, labels))
    elif Xc.device.type == "cpu" and Xc.dtype == torch.float32:
        W = centers * -2.0  # exact: ``addmm(c_sq, Xc, C.T, alpha=-2)`` on the faster path
        mask = None
        for b in row_blocks(m, k * Xc.element_size()):
            scores = linear(Xc[b], W, c_sq)
            if mask is None or mask.shape[0] < scores.shape[0]:  # one scratch for the tile's blocks
                mask = torch.empty_like(scores)
            first_min(scores, (min_scores[b], labels[b]), mask[: scores.shape[0]])
    else:
        if buffers is None:
            whole = linear(Xc, centers * -2.0, c_sq)
        else:  # ``linear``'s own product off oneDNN's path, into the buffer
            scores = buffers.get("scores", (m, k), Xc.dtype, Xc.device)
            whole = torch.addmm(c_sq, Xc, (centers * -2.0).T, out=scores)
        torch.min(whole, dim=1, out=(min_scores, labels))
    if not distances:
        return labels, min_scores
    return labels, min_scores.add_(x_sq).clamp_min_(0)


def assign(X, x_sq, centers, tile_rows, out=None, distances=True):
    """Nearest centre and squared distance to it for every sample, tile by tile.

    ``out``: (labels, distances) tensors to write into (reused across Lloyd iterations).
    ``distances=False``: the labels alone are wanted (see :func:`nearest_center`).

    Returns
    -------
    labels : (n,) int64
    distances : (n,) in X's dtype
    """
    n = X.shape[0]
    c_sq = center_norms(centers)
    if out is None:
        out = (torch.empty(n, dtype=torch.int64, device=X.device), torch.empty(n, dtype=X.dtype, device=X.device))
    labels, dist = out
    for rows in tile_slices(n, tile_rows):
        nearest_center(rows_of(X, rows), centers, c_sq, x_sq[rows], (labels[rows], dist[rows]), distances)
    return labels, dist


def accumulates_onehot(device: torch.device) -> bool:
    """The accumulation a fit on ``device`` uses, chosen once per fit: one-hot GEMMs on CUDA.

    A one-hot GEMM is deterministic on a GPU, unlike ``index_add_``'s atomics; on the CPU
    ``index_add_`` adds rows serially (deterministic) and touches only the rows it adds.
    Every function taking ``onehot`` runs either way on any device (the tests run both).
    """
    return torch.device(device).type == "cuda"


def _add_rows(sums, weights, X, w, labels, unit_weight, sign=1.0, buffers=None, *, onehot=False):
    """sums[labels[i]] += sign * w[i] * X[i] (float64 accumulators).

    ``buffers``: a :class:`gpuclust._chunks.TileBuffers` that the (rows, k) one-hot, the weighted
    rows and the float64 weights are written into, instead of new tensors per call.
    ``onehot``: sum by a one-hot GEMM, else by ``index_add_`` (see :func:`accumulates_onehot`).
    """
    k, m = sums.shape[0], X.shape[0]

    def scratch(name, shape, dtype):
        if buffers is None:
            return torch.empty(shape, dtype=dtype, device=X.device)
        return buffers.get(name, shape, dtype, X.device)

    if onehot:
        hot = scratch("onehot", (m, k), X.dtype).zero_()
        hot.scatter_(1, labels.unsqueeze(1), 1.0 if unit_weight else w.unsqueeze(1))
        sums.add_((hot.T @ X).to(torch.float64), alpha=sign)
        weights.add_(hot.sum(0, dtype=torch.float64), alpha=sign)
        return
    part = torch.zeros(k, X.shape[1], dtype=X.dtype, device=X.device)
    values = X if unit_weight else torch.mul(X, w.unsqueeze(1), out=scratch("weighted", X.shape, X.dtype))
    part.index_add_(0, labels, values)
    sums.add_(part.to(torch.float64), alpha=sign)
    weights.index_add_(0, labels, scratch("weights64", (m,), torch.float64).copy_(w), alpha=sign)


def cluster_sums(X, w, labels, k, tile_rows, unit_weight=False, *, onehot=False):
    """Weighted sum of the members of each cluster, and the weight in each: (k, d) and (k,), float64."""
    sums = torch.zeros(k, X.shape[1], dtype=torch.float64, device=X.device)
    weights = torch.zeros(k, dtype=torch.float64, device=X.device)
    if is_sparse(X):
        # One pass over the stored values: sums[label of row, column] += w[row] * value.
        rows, d = _row_ids(X), X.shape[1]
        contrib = X.values().to(torch.float64) * w.to(torch.float64)[rows]
        sums.view(-1).index_add_(0, labels[rows] * d + X.col_indices(), contrib)
        weights.index_add_(0, labels, w.to(torch.float64))
        return sums, weights
    for rows in tile_slices(X.shape[0], tile_rows):
        _add_rows(sums, weights, X[rows], w[rows], labels[rows], unit_weight, onehot=onehot)
    return sums, weights


def update_cluster_sums(
    sums, weights, X, w, labels, labels_old, unit_weight=False, buffer=None, *, tile_rows=None, onehot=False
):
    """Move the samples whose label changed from their old cluster's sums to their new one's.

    After the first iterations few labels change, so on the CPU this touches a small part of X
    instead of re-reading all of it: one pass over X per Lloyd iteration, not two.
    ``buffer`` (a (rows, d) tensor, CPU) is where the moved rows are gathered, block by block,
    instead of into a fresh tensor per iteration, whose page faults cost as much as the adds.
    ``onehot`` (on CUDA, see :func:`accumulates_onehot`): :func:`_move_rows_onehot`, no gather,
    no host synchronization, ``tile_rows`` rows per one-hot tile.

    Returns the number of samples that moved, a 0-d int64 tensor on X's device (on the one-hot
    path reading it would wait for the GPU; the caller reads it with the iteration's other values).
    """
    if onehot:
        return _move_rows_onehot(sums, weights, X, w, labels, labels_old, unit_weight, tile_rows or X.shape[0])
    moved = torch.nonzero(labels != labels_old).flatten()
    count = torch.tensor(moved.numel(), dtype=torch.int64, device=X.device)
    if moved.numel() == 0:
        return count
    if buffer is None:
        Xm, wm = X[moved], w[moved]
        _add_rows(sums, weights, Xm, wm, labels[moved], unit_weight, 1.0)
        _add_rows(sums, weights, Xm, wm, labels_old[moved], unit_weight, -1.0)
        return count
    # The same float32 adds, in the same order, as one call over all moved rows (index_add_ is
    # serial on the CPU), so the result does not depend on the buffer's size.
    update = _MovedSums(sums, weights, unit_weight)
    for block in tile_slices(moved.numel(), buffer.shape[0]):
        rows = moved[block]
        Xm = torch.index_select(X, 0, rows, out=buffer[: rows.numel()])
        update.add_moved(Xm, w[rows], labels[rows], labels_old[rows])
    update.finish()
    return count


def _move_rows_onehot(sums, weights, X, w, labels, labels_old, unit_weight, tile_rows):
    """:func:`update_cluster_sums` in fixed shapes: no nonzero, no gather, no host synchronization.

    Gathering the moved rows (``X[nonzero(moved)]``) needs their count on the host, a
    synchronization per iteration, and a copy of up to all of X. Instead, per tile of ``tile_rows``
    rows, one (rows, 2k) one-hot holds each moved row's weight in its new cluster's column
    (first k) and its old cluster's (last k), zeros for rows that stayed, and one GEMM sums
    both: ``[plus; minus] = onehot.T @ X``, as the gathered version's two GEMMs did, then
    ``sums += plus; sums -= minus`` in float64, in that order. The rows that stayed add exact
    zeros; the float32 sums over the moved rows can round differently from the gathered
    GEMMs' (another reduction order), by float32's last bit.
    Returns the number of moved samples as a 0-d int64 tensor, on X's device.
    """
    k = sums.shape[0]
    moved = labels != labels_old
    both = both_w = None
    for rows in tile_slices(X.shape[0], tile_rows):
        value = (moved[rows].to(X.dtype) if unit_weight else w[rows] * moved[rows]).unsqueeze(1)
        onehot = torch.zeros(value.shape[0], 2 * k, dtype=X.dtype, device=X.device)
        onehot.scatter_(1, labels[rows].unsqueeze(1), value)
        onehot.scatter_(1, labels_old[rows].unsqueeze(1) + k, value)
        part, part_w = (onehot.T @ X[rows]).to(torch.float64), onehot.sum(0, dtype=torch.float64)
        both, both_w = (part, part_w) if both is None else (both.add_(part), both_w.add_(part_w))
    sums.add_(both[:k])
    weights.add_(both_w[:k])
    sums.add_(both[k:], alpha=-1.0)
    weights.add_(both_w[k:], alpha=-1.0)
    return moved.sum()


def farthest_first(distances, count):
    """Indices of the ``count`` largest ``distances``, an equal distance going to the lower index.

    ``topk`` leaves the order of equal values to the implementation, so a tile, a rank or the
    whole array could each pick another of several equally far samples. ``topk`` finds the
    ``count``-th largest value; every sample at least that far (in row order) is then sorted
    stably: little more than ``topk`` unless very many samples share that distance.
    """
    count = min(count, distances.numel())
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=distances.device)
    cutoff = torch.topk(distances, count).values[-1]
    candidates = torch.nonzero(distances >= cutoff).flatten()
    order = torch.sort(distances[candidates], descending=True, stable=True).indices[:count]
    return candidates[order]


def farthest_offers(X, sample_weight, labels, distances, n_empty):
    """The ``n_empty`` samples farthest from their centre as rows ``(distance, weight, old label, x...)``, float64.

    Ordered farthest first, an equal distance going to the lower row: offers of consecutive row
    blocks (tiles, ranks) put one after the other keep the order of the whole array's.
    """
    top = farthest_first(distances, n_empty)
    return torch.cat(
        [
            distances[top].to(torch.float64).unsqueeze(1),
            sample_weight[top].to(torch.float64).unsqueeze(1),
            labels[top].to(torch.float64).unsqueeze(1),
            dense_rows(X, top).to(torch.float64),
        ],
        dim=1,
    )


def apply_relocations(offers, sums, weights, comm=LOCAL):
    """Give each empty cluster the farthest of every rank's offered samples (see :func:`farthest_offers`)."""
    empty = torch.nonzero(weights == 0).flatten()
    n_empty = int(empty.numel())
    offers = comm.gather_rows(offers, "empty-cluster relocation")  # in rank order: rows in order
    if not bool((offers[:, 0] > 0).any()):
        # Every sample sits on its centre: more clusters than distinct samples. As in scikit-learn,
        # nothing is relocated (moving a sample would only empty another cluster).
        return
    chosen = offers[farthest_first(offers[:, 0], n_empty)]
    for new_id, offer in zip(empty.tolist(), chosen):
        w, old_id, x = offer[1], int(offer[2]), offer[3:]
        sums[old_id] -= x * w
        sums[new_id] = x * w
        weights[new_id] = w
        weights[old_id] -= w


def average_centers(sums, weights, old_centers):
    """Divide sums by weights; a cluster with no weight keeps its old centre."""
    positive = weights > 0
    new = (sums / torch.where(positive, weights, 1.0).unsqueeze(1)).to(old_centers.dtype)
    return torch.where(positive.unsqueeze(1), new, old_centers)


def center_step(sums, weights, centers):
    """New centres from the sums, how far each moved (float64), and the total squared movement (0-d, on the device)."""
    new_centers = average_centers(sums, weights, centers)
    delta = torch.linalg.vector_norm((new_centers - centers).to(torch.float64), dim=1)
    return new_centers, delta, (delta * delta).sum()


def has_converged(n_iter, changed, moved, tol, log=None):
    """scikit-learn's rule: labels unchanged since the last iteration (strict convergence), or a
    total squared centre movement ``moved`` (a python float) within ``tol``; ``log`` prints its verbose lines."""
    if n_iter > 1 and changed == 0:
        if log is not None:
            log(f"Converged at iteration {n_iter - 1}: strict convergence.")
        return True
    if moved <= tol:
        if log is not None:
            log(f"Converged at iteration {n_iter - 1}: center shift {moved} within tolerance {tol}.")
        return True
    return False


class FusedKernels(NamedTuple):
    """The fused Triton kernels a Lloyd fit runs instead of the GEMM tiles, with the product's precision.

    :func:`gpuclust._fused.assign` and :func:`gpuclust._fused.cluster_sums`, handed in by the
    caller: that module imports this one (its torch fallback), so this one does not import it.
    """

    assign: object  # (X, x_sq, centers, out, precision) -> (labels, distances)
    cluster_sums: object  # (X, w, labels, k) -> (sums, weights), float64
    precision: str  # one of gpuclust._fused.PRECISIONS


class LloydSettings(NamedTuple):
    """What every Lloyd run of a fit shares (in memory, with Hamerly's bounds, or streamed).

    ``tol`` is already scaled to the data; ``onehot`` is the accumulation chosen for the fit
    (:func:`accumulates_onehot`); ``log`` prints scikit-learn's verbose lines (None: silent).
    ``fused``: the :class:`FusedKernels` that :func:`lloyd` assigns by and takes its first sums
    from, or None for the GEMM tiles; chosen for dense, in-memory float32 fits on CUDA
    (``KMeans._assigns_fused``).
    """

    max_iter: int
    tol: float
    tile_rows: int
    unit_weight: bool = False
    onehot: bool = False
    comm: object = LOCAL
    log: object = None
    fused: FusedKernels | None = None


class Step(NamedTuple):
    """The end of one iteration: the next centres, how far each moved (float64), whether Lloyd stops."""

    centers: torch.Tensor
    delta: torch.Tensor
    converged: bool


def end_iteration(sums, weights, changed, centers, n_iter, settings, offers):
    """The step every Lloyd loop ends an iteration with: all-reduce, relocate, move, test.

    ``sums``, ``weights`` and ``changed`` (a 0-d tensor, this rank's moved samples) are packed
    into one all-reduce; the host then reads what decides the next step (moved samples, empty
    clusters, centre movement) in one transfer: one synchronization per iteration. An empty
    cluster (rare) takes the farthest of the samples ``offers(n_empty)`` returns
    (:func:`farthest_offers`), as scikit-learn re-seeds it.
    """
    comm = settings.comm
    changed_col = changed.to(weights.dtype).expand_as(weights)
    packed = comm.sum_(torch.cat([sums, weights.unsqueeze(1), changed_col.unsqueeze(1)], 1), "centre sums")
    step_sums, step_weights = packed[:, :-2], packed[:, -2].clone()
    new_centers, delta, moved = center_step(step_sums, step_weights, centers)
    n_empty = (step_weights == 0).sum(dtype=torch.float64)
    n_changed, n_empty, moved = torch.stack([packed[0, -1], n_empty, moved]).tolist()
    if n_empty:
        apply_relocations(offers(int(n_empty)), step_sums, step_weights, comm)
        new_centers, delta, moved = center_step(step_sums, step_weights, centers)
        moved = float(moved)
    return Step(new_centers, delta, has_converged(n_iter, int(n_changed), moved, settings.tol, settings.log))


def assign_top2(X, x_sq, centers, tile_rows, rows_subset=None, buffer=None):
    """Nearest centre, and squared distances to the nearest and second-nearest, tile by tile.

    With ``rows_subset`` (an index tensor), only those samples are assigned: each
    tile of them is gathered into one reused buffer (a fresh (m, d) gather would
    spend more time on page faults than on the GEMM); ``buffer``, when given, is that
    buffer (the caller keeps it from one iteration to the next), and its rows set the tile.
    """
    k = centers.shape[0]
    m = X.shape[0] if rows_subset is None else rows_subset.numel()
    c_sq = center_norms(centers).unsqueeze(0)
    labels = torch.zeros(m, dtype=torch.int64, device=X.device)
    first = torch.empty(m, dtype=X.dtype, device=X.device)
    second = torch.full((m,), float("inf"), dtype=X.dtype, device=X.device)
    if rows_subset is not None and buffer is None:
        buffer = torch.empty(min(tile_rows, m), X.shape[1], dtype=X.dtype, device=X.device)
    if buffer is not None:
        tile_rows = buffer.shape[0]
    W, mask = centers * -2.0, None  # mask: first_min's scratch, kept from block to block
    for rows in tile_slices(m, tile_rows):
        if rows_subset is None:
            tile = X[rows]
        else:
            tile = buffer[: rows.stop - rows.start]
            torch.index_select(X, 0, rows_subset[rows], out=tile)
        # Blocks of rows (as nearest_center's): a block's scores stay in cache for the passes over them.
        for b in row_blocks(tile.shape[0], k * tile.element_size()):
            scores = linear(tile[b], W, c_sq[0])
            out = slice(rows.start + b.start, rows.start + b.stop)
            if k == 1:
                first[out] = scores[:, 0]
                continue
            if mask is None or mask.shape[0] < scores.shape[0]:
                mask = torch.empty_like(scores)
            # Two minima instead of topk(2): a third of the time, and ties broken as in Lloyd's min.
            lab = labels[out]
            first_min(scores, (first[out], lab), mask[: scores.shape[0]])
            # The second value needs no index: amin, which vectorizes (see gpuclust._argmin).
            second[out] = scores.scatter_(1, lab.unsqueeze(1), float("inf")).amin(dim=1)
    xs = x_sq if rows_subset is None else x_sq[rows_subset]
    return labels, (first + xs).clamp_min_(0), (second + xs).clamp_min_(0)


class _HamerlyBounds:
    """Hamerly's bounds: skip samples that provably keep their centre.

    ``upper[i]`` bounds the distance of sample i to its centre from above and
    ``lower[i]`` the distance to any other centre from below. After the centres
    move by ``delta``, the bounds loosen by ``delta``; a sample whose upper bound
    stays below both its lower bound and half the distance from its centre to the
    nearest other centre cannot change cluster, so only the rest is re-assigned.
    The labels are the same as plain Lloyd's; a margin of the size of the
    rounding error of the distance expansion keeps near-ties exact.
    """

    def __init__(self, X, x_sq, labels, first, second):
        eps = torch.finfo(X.dtype).eps
        self.rounding = 8.0 * math.sqrt(X.shape[1]) * eps
        self.x_sq = x_sq.to(torch.float64)
        self.upper = first.to(torch.float64).sqrt()
        self.lower = second.to(torch.float64).sqrt()
        self.labels = labels

    def candidates(self, centers):
        c = centers.to(torch.float64)
        c_sq = (c * c).sum(1)
        between = torch.cdist(c, c)
        between.fill_diagonal_(float("inf"))
        half_gap = 0.5 * between.min(1).values
        margin = (self.rounding * (self.x_sq + float(c_sq.max()))).sqrt_()
        bound = torch.maximum(half_gap[self.labels], self.lower)
        return torch.nonzero(self.upper + margin > bound - margin).flatten()

    def refresh(self, idx, labels, first, second):
        self.labels[idx] = labels
        self.upper[idx] = first.to(torch.float64).sqrt()
        self.lower[idx] = second.to(torch.float64).sqrt()

    def centers_moved(self, delta):
        self.upper += delta[self.labels]
        if delta.numel() > 1:
            top = torch.topk(delta, 2)
            # The largest move of any *other* centre bounds how much closer it came.
            other = torch.where(self.labels == top.indices[0], top.values[1], top.values[0])
            self.lower -= other


# Hamerly's candidates are gathered and assigned this many rows at a time. On 60000x784 pixels,
# K=10, per iteration: 2048 rows 13.3 ms, 4096 12.4, 8192 13.2 (within the noise of one another),
# 16384 24 ms when the buffer was allocated per call.
CANDIDATE_TILE_ROWS = 8192


class LloydRun(NamedTuple):
    """What a Lloyd run ends with; the labels and inertia of these centres are the estimator's final pass."""

    centers: torch.Tensor
    n_iter: int


def lloyd(X, sample_weight, x_sq, centers, settings: LloydSettings) -> LloydRun:
    """Lloyd's algorithm from ``centers``, with scikit-learn's stopping rule.

    Every iteration assigns all samples (one GEMM per tile), moves the samples whose label
    changed from their old cluster's sums to their new one's, then ends with
    :func:`end_iteration`: it stops when the labels stop changing (strict convergence) or the
    total squared centre shift falls to ``settings.tol``. The labels and inertia of the final
    centres are the caller's final pass (``KMeans._assign_tiles``, the routine inference uses).
    Under torch.distributed (``settings.comm``) each rank holds a block of rows and the centre
    sums, counts and inertia are all-reduced, so every rank gets the same centres.
    With ``settings.fused`` the assignment is the fused kernel (no (rows, k) scores, :class:`FusedKernels`).
    """
    labels = _lloyd_labels(X, x_sq, centers, settings)
    # Two label buffers used in turn and one for the distances: no allocation per iteration.
    spare = [torch.empty_like(labels), torch.empty(X.shape[0], dtype=X.dtype, device=X.device)]

    def relabel(centers, labels_old):
        labels = _lloyd_labels(X, x_sq, centers, settings, out=tuple(spare))
        spare[0] = labels_old
        return labels

    return _iterate(_InMemoryRun(X, sample_weight, x_sq, labels, centers.shape[0], settings), labels, centers, relabel)


def _lloyd_labels(X, x_sq, centers, settings, out=None):
    """One Lloyd assignment's labels: the fused kernel where the fit chose it, else :func:`assign`'s tiles."""
    fused = settings.fused
    if fused is None:
        return assign(X, x_sq, centers, settings.tile_rows, out, distances=False)[0]
    return fused.assign(X, x_sq, centers, out, fused.precision)[0]


def hamerly(X, sample_weight, x_sq, centers, settings: LloydSettings) -> LloydRun:
    """:func:`lloyd` with Hamerly's bounds: each iteration re-assigns only the samples that
    might change cluster (:class:`_HamerlyBounds`); the labels and centres are Lloyd's. Dense X."""
    labels, first, second = assign_top2(X, x_sq, centers, settings.tile_rows)
    bounds = _HamerlyBounds(X, x_sq, labels.clone(), first, second)
    run = _InMemoryRun(X, sample_weight, x_sq, labels, centers.shape[0], settings)

    def relabel(centers, labels_old):
        idx = bounds.candidates(centers)
        if 2 * idx.numel() > X.shape[0]:
            # Most samples may move: one pass over X beats gathering them.
            labels, first, second = assign_top2(X, x_sq, centers, settings.tile_rows)
            bounds.refresh(slice(None), labels, first, second)
            return labels
        labels = labels_old.clone()
        if idx.numel():
            tile = run.gather_buffer()[:CANDIDATE_TILE_ROWS]
            lab_s, first_s, second_s = assign_top2(X, x_sq, centers, settings.tile_rows, idx, tile)
            labels[idx] = lab_s
            bounds.refresh(idx, lab_s, first_s, second_s)
        return labels

    return _iterate(run, labels, centers, relabel, bounds.centers_moved)


def _iterate(run, labels, centers, relabel, centers_moved=None) -> LloydRun:
    """The in-memory loop: ``relabel(centers, labels_old)`` gives each iteration's labels (from the
    second on); ``centers_moved(delta)`` hears how far the centres moved when the loop goes on."""
    n_iter = 0
    for n_iter in range(1, run.settings.max_iter + 1):
        changed = run.no_change
        if n_iter > 1:
            labels_old, labels = labels, relabel(centers, labels)
            changed = run.move(labels, labels_old)
        step = run.end(labels, centers, n_iter, changed)
        centers = step.centers
        if step.converged:
            break
        if centers_moved is not None:
            centers_moved(step.delta)
    return LloydRun(centers, n_iter)


# From this many clusters a fused fit re-sums all rows each iteration with the segment sums rather
# than updating the moved rows by a one-hot GEMM. An estimate, not yet measured (no GPU so far): at
# 1M x 128 the one-hot GEMM's 4 n k d FLOPs take k / 64 ms or so in float32 on an H100, the
# segment sums about half a millisecond (a sort of the labels and a gathered read of X); below 64
# clusters the one-hot GEMM is cheaper and runs n x 2k in parallel where the segment kernel has
# only k x ceil(d / 32) programs.
FUSED_RESUM_FROM_K = 64


class _InMemoryRun:
    """One in-memory run's centre sums (this rank's, float64), kept up to date as labels change."""

    def __init__(self, X, sample_weight, x_sq, labels, n_clusters, settings):
        self.X, self.w, self.x_sq, self.settings = X, sample_weight, x_sq, settings
        if settings.fused is not None:
            # The first full sums by the fused segment sums: no (rows, k) one-hot. Later
            # iterations: see :meth:`move`.
            self.sums, self.weights = settings.fused.cluster_sums(X, sample_weight, labels, n_clusters)
        else:
            self.sums, self.weights = cluster_sums(X, sample_weight, labels, n_clusters, settings.tile_rows,
                                                   settings.unit_weight, onehot=settings.onehot)  # fmt: skip
        self.no_change = torch.zeros((), dtype=torch.int64, device=X.device)
        self._gather = None

    def gather_buffer(self):
        """Where moved and candidate rows are gathered: made on first use, then kept."""
        if self._gather is None:
            X = self.X
            self._gather = torch.empty(min(self.settings.tile_rows, X.shape[0]), X.shape[1], dtype=X.dtype,
                                       device=X.device)  # fmt: skip
        return self._gather

    def move(self, labels, labels_old):
        """Update the sums for the samples whose label changed; their count (0-d tensor)."""
        X, w, s = self.X, self.w, self.settings
        if is_sparse(X):
            changed = (labels != labels_old).sum()
            self.sums, self.weights = cluster_sums(X, w, labels, self.sums.shape[0], s.tile_rows, s.unit_weight)
            return changed
        if s.fused is not None and self.sums.shape[0] >= FUSED_RESUM_FROM_K:
            # Every row re-summed by the segment sums (one sort, one read of X) instead of the one-hot
            # update, whose GEMM costs 4 n k d FLOPs however few rows moved.
            changed = (labels != labels_old).sum()
            self.sums, self.weights = s.fused.cluster_sums(X, w, labels, self.sums.shape[0])
            return changed
        # On a GPU the moved rows go through one-hot GEMMs: no gather buffer (it would be X's size),
        # and the count of moved rows stays on the device.
        buffer = None if s.onehot else self.gather_buffer()
        return update_cluster_sums(self.sums, self.weights, X, w, labels, labels_old, s.unit_weight, buffer,
                                   tile_rows=s.tile_rows, onehot=s.onehot)  # fmt: skip

    def end(self, labels, centers, n_iter, changed):
        """Print the verbose inertia, then :func:`end_iteration`."""
        X, w, x_sq, s = self.X, self.w, self.x_sq, self.settings
        if s.log is not None:
            own = distances_to_own_center(X, x_sq, centers, labels).to(torch.float64)
            inertia = s.comm.sum_float(float((own * w.to(torch.float64)).sum()), "inertia")
            s.log(f"Iteration {n_iter - 1}, inertia {inertia}.")

        def offers(n_empty):
            # Rare: scikit-learn's re-seeding needs every sample's exact distance to its centre.
            return farthest_offers(X, w, labels, distances_to_own_center(X, x_sq, centers, labels), n_empty)

        return end_iteration(self.sums, self.weights, changed, centers, n_iter, s, offers)


def same_clustering(labels_a, labels_b, k, comm=LOCAL) -> bool:
    """True when one renaming of the clusters maps ``labels_a`` onto ``labels_b``.

    scikit-learn's ``_is_same_clustering``: ``n_init`` keeps a later run only if its inertia is
    lower *and* this test fails, so runs whose inertia ties to rounding keep the first. As there,
    the renaming need not be one to one. Under torch.distributed every rank's renaming must agree.
    """
    labels_a, labels_b = torch.as_tensor(labels_a), torch.as_tensor(labels_b, device=torch.as_tensor(labels_a).device)
    mapping = torch.full((k,), -1, dtype=torch.int64, device=labels_a.device)
    mapping[labels_a] = labels_b  # any write wins; a consistent renaming writes one value per cluster
    consistent = float(bool((mapping[labels_a] == labels_b).all()))
    present = (mapping >= 0).to(torch.float64)
    value = (mapping + 1).to(torch.float64) * present
    # Across ranks, cluster c's targets agree iff count * sum(v^2) == sum(v)^2.
    totals = comm.sum_(torch.cat([present, value, value * value, torch.tensor([consistent], dtype=torch.float64,
                                  device=present.device)]), "same clustering")  # fmt: skip
    count, total, total_sq = totals[:k], totals[k : 2 * k], totals[2 * k : 3 * k]
    return bool(totals[-1] == comm.world_size) and bool((count * total_sq == total * total).all())


def _sq_dist_to_rows(X, x_sq, rows_X, rows_sq):
    """Squared distances from each of a few points (m, d) to every sample: (m, n)."""
    if is_sparse(X):
        d = torch.addmm(x_sq.unsqueeze(1) + rows_sq.unsqueeze(0), X, rows_X.T, alpha=-2.0).T
    else:
        d = torch.addmm(rows_sq.unsqueeze(1) + x_sq.unsqueeze(0), rows_X, X.T, alpha=-2.0)
    return d.clamp_min_(0)


def kmeans_plusplus(
    X, n_clusters, sample_weight, x_sq, random_state: np.random.RandomState, n_local_trials: int | None = None
):
    """Greedy k-means++ seeding: ``2 + log(k)`` candidates per step, keep the one lowering the potential most.

    The random draws come from ``random_state`` (numpy, on the host), so the same
    seed picks the same candidates on the CPU and on a GPU.

    Returns
    -------
    centers : (k, d) tensor
    indices : (k,) numpy int array of the chosen samples
    """
    n, d = X.shape
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    w64 = sample_weight.to(torch.float64)
    p = (w64 / w64.sum()).cpu().numpy()
    first = int(random_state.choice(n, p=p))
    indices = np.full(n_clusters, -1, dtype=np.int64)
    indices[0] = first
    first_row = dense_rows(X, torch.tensor([first], device=X.device))
    closest = _sq_dist_to_rows(X, x_sq, first_row, x_sq[first : first + 1])[0].to(torch.float64)
    potential = float(closest @ w64)
    for c in range(1, n_clusters):
        rand_vals = random_state.uniform(size=n_local_trials) * potential
        cumulative = torch.cumsum(w64 * closest, 0)
        candidates = torch.searchsorted(cumulative, torch.as_tensor(rand_vals, device=X.device))
        candidates.clamp_(max=n - 1)
        dist = _sq_dist_to_rows(X, x_sq, dense_rows(X, candidates), x_sq[candidates]).to(torch.float64)
        torch.minimum(closest.unsqueeze(0), dist, out=dist)
        potentials = dist @ w64
        best = int(torch.argmin(potentials))
        potential = float(potentials[best])
        closest = dist[best]
        indices[c] = int(candidates[best])
    centers = dense_rows(X, torch.as_tensor(indices, device=X.device)).clone()
    return centers, indices


# ------------------------------------------------------------ streamed (out-of-core) Lloyd
# X is not in memory: each pass reads it tile by tile from ``tiles()``. Labels live in a host
# array; per pass the centre sums are updated with the samples that changed cluster, in the
# same order and the same float32/float64 steps as :func:`lloyd`'s dense path, so a streamed
# fit and an in-memory ``algorithm="lloyd"`` fit of the same data give the same centres.


class _MovedSums:
    """Accumulates, tile by tile, what :func:`update_cluster_sums` adds for the moved samples.

    ``buffers``: the :class:`gpuclust._chunks.TileBuffers` of a fit, where moved rows are gathered
    (and, for weighted samples, the old labels and weights kept until :meth:`finish`).
    """

    def __init__(self, sums, weights, unit_weight, buffers=None, onehot=False):
        self.sums, self.weights, self.unit, self.onehot = sums, weights, unit_weight, onehot
        self.buffers = TileBuffers() if buffers is None else buffers
        self.plus = self.minus = self.minus_weights = None
        self.moved = 0

    def add(self, tile, w, labels, labels_old):
        m, d = tile.shape
        changed = torch.ne(labels, labels_old, out=self.buffers.get("changed", (m,), torch.bool, tile.device))
        moved = torch.nonzero(changed).flatten()
        if moved.numel() == 0:
            return
        gathered = self.buffers.get("moved rows", (m, d), tile.dtype, tile.device)[: moved.numel()]
        Xm = torch.index_select(tile, 0, moved, out=gathered)
        self.add_moved(Xm, w[moved], labels[moved], labels_old[moved])

    def add_moved(self, Xm, wm, new, old):
        """Rows ``Xm`` (weights ``wm``) leave clusters ``old`` for clusters ``new``.

        ``Xm`` is the caller's scratch copy: weighted rows are scaled in it, in place.
        """
        n_before, c = self.moved, int(Xm.shape[0])
        self.moved += c
        if self.onehot:  # one-hot GEMMs, summed per tile in float64
            _add_rows(self.sums, self.weights, Xm, wm, new, self.unit, 1.0, self.buffers, onehot=True)
            _add_rows(self.sums, self.weights, Xm, wm, old, self.unit, -1.0, self.buffers, onehot=True)
            return
        if self.plus is None:
            self.plus = torch.zeros(self.sums.shape, dtype=Xm.dtype, device=Xm.device)
            self.minus = torch.zeros_like(self.plus)
            self.minus_weights = torch.zeros_like(self.weights)
        values = Xm if self.unit else Xm.mul_(wm.unsqueeze(1))
        # index_add_ adds rows serially on the CPU: tile after tile equals one call over all moved rows.
        self.plus.index_add_(0, new, values)
        self.minus.index_add_(0, old, values)
        wm64 = wm.to(torch.float64)
        self.weights.index_add_(0, new, wm64)
        if self.unit:
            # Counts are exact in float64: subtracting them per cluster at the end is subtracting
            # the ones in any order, so nothing per moved sample is kept.
            self.minus_weights.index_add_(0, old, wm64)
            return
        # Weighted: finish subtracts the weights one by one in row order, as they were added;
        # they are kept in buffers that grow by doubling (a few allocations a fit, not one per tile).
        at = n_before
        self.buffers.grown("old labels", at + c, torch.int64, Xm.device, at)[at : at + c].copy_(old)
        self.buffers.grown("old weights", at + c, torch.float64, Xm.device, at)[at : at + c].copy_(wm64)

    def finish(self):
        """Apply the pass's additions, then its subtractions; returns the number of moved samples."""
        if self.plus is not None:
            self.sums.add_(self.plus.to(torch.float64))
            self.sums.add_(self.minus.to(torch.float64), alpha=-1.0)
            if self.unit:
                self.weights.sub_(self.minus_weights)
            else:
                n, device = self.moved, self.weights.device
                old = self.buffers.grown("old labels", n, torch.int64, device, n)[:n]
                self.weights.index_add_(0, old, self.buffers.grown("old weights", n, torch.float64, device, n)[:n],
                                        alpha=-1.0)  # fmt: skip
        return self.moved


def lloyd_streamed(tiles, n, sample_weight, centers, settings: LloydSettings, labels=None) -> LloydRun:
    """Lloyd's algorithm over data read tile by tile, with :func:`lloyd`'s stopping rule and results.

    Every pass writes its per-tile results (scores, labels, distances, gathered rows) into one set
    of buffers made on the first tile (:class:`gpuclust._chunks.TileBuffers`): what a pass
    allocates does not grow with the number of tiles. Each iteration ends with
    :func:`end_iteration`, as in memory.

    Parameters
    ----------
    tiles : callable
        ``tiles()`` returns a new iterator of ``(rows, tile)`` over this rank's rows, tile on the
        compute device; the same tiles on every call.
    n : int
        This rank's number of rows.
    sample_weight : host tensor of shape (n,) or None
        None: every sample has weight one (``settings.unit_weight`` is then ignored).
    centers : tensor of shape (k, d), on the compute device
    settings : LloydSettings
    labels : ndarray of shape (n,), optional
        Host array (int64) holding the labels between passes; a new one by default.
    """
    k, d = centers.shape
    unit = sample_weight is None
    labels = np.empty(n, dtype=np.int64) if labels is None else labels
    passes = _StreamedPasses(tiles, sample_weight, torch.from_numpy(labels))
    sums = torch.zeros(k, d, dtype=torch.float64, device=centers.device)
    weights = torch.zeros(k, dtype=torch.float64, device=centers.device)

    def first_sums(tile, w, new, old):
        _add_rows(sums, weights, tile, w, new, unit, 1.0, passes.buffers, onehot=settings.onehot)

    inertia = passes.assign(centers, first_sums)
    n_iter = 0
    for n_iter in range(1, settings.max_iter + 1):
        changed = 0
        if n_iter > 1:
            moved = _MovedSums(sums, weights, unit, passes.buffers, settings.onehot)
            inertia = passes.assign(centers, moved.add)
            changed = moved.finish()
        if settings.log is not None:
            settings.log(f"Iteration {n_iter - 1}, inertia {settings.comm.sum_float(inertia, 'inertia')}.")
        changed = torch.tensor(changed, dtype=torch.int64, device=centers.device)
        offers = functools.partial(_farthest_offers_streamed, passes, centers)
        step = end_iteration(sums, weights, changed, centers, n_iter, settings, offers)
        centers = step.centers
        if step.converged:
            break
    return LloydRun(centers, n_iter)


class _StreamedPasses:
    """The passes of a streamed run over ``tiles()``, with the labels kept in a host tensor."""

    def __init__(self, tiles, sample_weight, host_labels):
        self.tiles, self.sample_weight, self.host_labels = tiles, sample_weight, host_labels
        self.buffers = TileBuffers()

    def weights_of(self, rows, tile):
        """The tile's sample weights on its device (ones, from one buffer, for unit weights)."""
        if self.sample_weight is None:
            return self.buffers.get("ones", (tile.shape[0],), tile.dtype, tile.device, fill=1.0)
        return self.sample_weight[rows].to(device=tile.device, dtype=tile.dtype)

    def assign(self, centers, update=None):
        """Assign every tile; ``update(tile, w, new, old)`` sees each; returns the weighted inertia."""
        buffers, c_sq = self.buffers, center_norms(centers)
        inertia = torch.zeros((), dtype=torch.float64, device=centers.device)
        for rows, tile in self.tiles():
            m, device = tile.shape[0], tile.device
            # squared_norms(tile), into a buffer
            x_sq = torch.linalg.vector_norm(tile, dim=1, out=buffers.get("x_sq", (m,), tile.dtype, device)).square_()
            out = (buffers.get("labels", (m,), torch.int64, device), buffers.get("distances", (m,), tile.dtype, device))
            lab, dist = nearest_center(tile, centers, c_sq, x_sq, out, buffers=buffers)
            w = self.weights_of(rows, tile)
            if update is not None:
                update(tile, w, lab, self.host_labels[rows].to(device))
            self.host_labels[rows].copy_(lab)
            dist64 = buffers.get("distances64", (m,), torch.float64, device).copy_(dist)
            inertia += (dist64 if self.sample_weight is None else dist64.mul_(w)).sum()
        return float(inertia)


def _farthest_offers_streamed(passes, centers, n_empty):
    """:func:`farthest_offers` over data read tile by tile (one extra pass; empty clusters are rare)."""
    best = None
    for rows, tile in passes.tiles():
        lab = passes.host_labels[rows].to(tile.device)
        dist = distances_to_own_center(tile, squared_norms(tile), centers, lab)
        offers = farthest_offers(tile, passes.weights_of(rows, tile), lab, dist, n_empty)
        best = offers if best is None else torch.cat([best, offers])  # earlier rows first
        best = best[farthest_first(best[:, 0], n_empty)]
    return best
