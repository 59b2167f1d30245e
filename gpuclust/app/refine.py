"""Clustering beyond a Gaussian mixture on autoencoder codes: a UMAP-style neighbour-graph embedding in torch.

The N2D recipe (autoencoder, UMAP, Gaussian mixture) clusters Fashion-MNIST better than a
mixture on the codes, but only for the points the embedding was fitted on: UMAP's
``transform`` of new points loses the gain (issue 17). Two variants are offered, reported
separately and never mixed:

* **inductive** (the seed's protocol): embed and cluster the *training* codes only; each unseen
  test image takes the majority cluster of its nearest training codes. No test image takes
  part in any fit.
* **transductive** (as N2D reports): embed and cluster training and test codes together;
  labels are used only to score.

Everything runs in torch on the codes' device (a tiled exact k-nearest-neighbour search,
UMAP's fuzzy simplicial set, and UMAP's attractive/negative-sampling updates); umap-learn is
not needed.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..device import synchronize
from ..gaussian_mixture import GaussianMixture

logger = logging.getLogger("gpuclust")

__all__ = [
    "RefineConfig",
    "cluster_embedding",
    "fuzzy_graph",
    "knn_graph",
    "merge_by_graph",
    "nearest_neighbors",
    "refine_inductive",
    "refine_transductive",
    "umap_ab",
    "umap_embed",
    "vote_labels",
]


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the graph embedding (defaults: N2D's UMAP settings) and of the label transfer."""

    n_neighbors: int = 20
    n_components: int = 10
    min_dist: float = 0.0
    embed_epochs: int = 100
    negative_rate: int = 5
    covariance_type: str = "full"
    vote_neighbors: int = 15
    max_train_points: int | None = None  # embed a seeded subset of the training codes (quick profile)
    over_clustering: int = 1  # mixture components per cluster; above 1, merged along the graph (merge_by_graph)


def nearest_neighbors(X: torch.Tensor, Q: torch.Tensor | None, n_neighbors: int, *, tile: int = 2048):
    """Exact k nearest rows of ``X`` (Euclidean) for each row of ``Q``, computed in tiles.

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features)
    Q : tensor of shape (n_queries, n_features), or None
        None: the queries are the rows of ``X``, each excluded from its own neighbours.
    n_neighbors : int
    tile : int
        Queries per distance block: memory is ``tile * n_samples`` floats.

    Returns
    -------
    distances : tensor of shape (n_queries, n_neighbors), ascending
    indices : int64 tensor of shape (n_queries, n_neighbors), into ``X``
    """
    n = X.shape[0]
    limit = n - 1 if Q is None else n
    if not 0 < n_neighbors <= limit:
        raise ValueError(f"n_neighbors={n_neighbors} must be in [1, {limit}] for n_samples={n}.")
    X = X.float()
    queries = X if Q is None else Q.to(X.device, torch.float32)
    sq = (X * X).sum(1)
    m = queries.shape[0]
    dists = torch.empty(m, n_neighbors, device=X.device)
    idx = torch.empty(m, n_neighbors, dtype=torch.long, device=X.device)
    for start in range(0, m, tile):
        stop = min(start + tile, m)
        q = queries[start:stop]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * (q @ X.T) + sq[None, :]
        if Q is None:
            rows = torch.arange(stop - start, device=X.device)
            d2[rows, rows + start] = math.inf
        d, j = torch.topk(d2, n_neighbors, dim=1, largest=False, sorted=True)
        dists[start:stop] = d.clamp_min_(0.0).sqrt_()
        idx[start:stop] = j
    return dists, idx


def knn_graph(X: torch.Tensor, n_neighbors: int, *, tile: int = 2048):
    """Exact k nearest neighbours of every row of ``X`` among the other rows; see :func:`nearest_neighbors`."""
    return nearest_neighbors(X, None, n_neighbors, tile=tile)


def _smooth_knn(dists: torch.Tensor, n_iter: int = 64):
    # UMAP's per-point scale: rho is the distance to the nearest neighbour, sigma solves
    # sum_j exp(-(d_j - rho) / sigma) = log2(k) by bisection (all points at once).
    k = dists.shape[1]
    target = math.log2(k)
    rho = dists[:, 0]
    excess = (dists - rho[:, None]).clamp_min(0.0)
    lo = torch.zeros_like(rho)
    hi = torch.full_like(rho, math.inf)
    sigma = torch.ones_like(rho)
    for _ in range(n_iter):
        total = torch.exp(-excess / sigma[:, None]).sum(1)
        big = total > target
        hi = torch.where(big, sigma, hi)
        lo = torch.where(big, lo, sigma)
        sigma = torch.where(torch.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    mean_d = dists.mean()
    sigma = torch.maximum(sigma, 1e-3 * torch.where(rho > 0, dists.mean(1), mean_d))
    return rho, sigma


def fuzzy_graph(dists: torch.Tensor, idx: torch.Tensor):
    """UMAP's fuzzy simplicial set of a k-nearest-neighbour graph, as a symmetric edge list.

    Memberships ``exp(-(d - rho_i) / sigma_i)`` are combined by the fuzzy union
    ``w_ij + w_ji - w_ij * w_ji``.

    Returns
    -------
    rows, cols : int64 tensors of shape (n_edges,)
    weights : tensor of shape (n_edges,), in (0, 1]
    """
    n, k = idx.shape
    rho, sigma = _smooth_knn(dists)
    w = torch.exp(-(dists - rho[:, None]).clamp_min(0.0) / sigma[:, None]).reshape(-1)
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    cols = idx.reshape(-1)
    # Each directed edge and its reverse, merged by key: a pair seen twice gets a + b - a * b.
    keys = torch.cat([rows * n + cols, cols * n + rows])
    vals = torch.cat([w, w])
    keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    total = torch.zeros(keys.shape, dtype=w.dtype, device=w.device).index_add_(0, inverse, vals)
    prod = torch.ones(keys.shape, dtype=w.dtype, device=w.device).scatter_reduce_(0, inverse, vals, "prod")
    count = torch.zeros(keys.shape, dtype=torch.long, device=w.device).index_add_(0, inverse, torch.ones_like(inverse))
    weights = torch.where(count == 2, total - prod, total)
    return keys // n, keys % n, weights


def umap_ab(min_dist: float = 0.0, spread: float = 1.0):
    """UMAP's curve ``1 / (1 + a d^(2b))`` fitted to the target membership for ``min_dist``."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), x, y)
    return float(a), float(b)


def _pca_init(X: torch.Tensor, n_components: int) -> torch.Tensor:
    # Deterministic start: leading principal components, scaled to UMAP's [0, 10] box. Sign
    # fixed by the largest coordinate so the result does not depend on the SVD's choice.
    Xc = X.double() - X.double().mean(0)
    _, _, V = torch.linalg.svd(Xc, full_matrices=False)
    V = V[:n_components]
    V = V * torch.sign(V.gather(1, V.abs().argmax(1, keepdim=True)))
    Y = Xc @ V.T
    if Y.shape[1] < n_components:  # fewer features than components: pad with small noise-free ramps
        pad = torch.linspace(0, 1e-3, Y.shape[0], dtype=Y.dtype, device=Y.device)[:, None]
        Y = torch.cat([Y, pad.expand(-1, n_components - Y.shape[1])], 1)
    Y = (Y - Y.min(0).values) / (Y.max(0).values - Y.min(0).values).clamp_min(1e-12) * 10.0
    return Y.float()


def umap_embed(
    X: torch.Tensor, config: RefineConfig = RefineConfig(), *, seed: int = 0, return_graph: bool = False
) -> torch.Tensor:
    """A UMAP-style embedding of ``X`` computed in torch (exact kNN, fuzzy graph, negative sampling).

    Each epoch samples every edge with probability proportional to its weight, pulls its ends
    together, and pushes the edge's head away from ``negative_rate`` random points, with UMAP's
    clipped gradients and a learning rate falling linearly from 1 to 0. Updates of an epoch
    are applied at once (as GPU UMAP implementations do), in a fixed order: the result is
    deterministic for a given seed and device. The start is the codes' leading principal
    components (not UMAP's spectral start).

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features)
    config : RefineConfig
    seed : int

    Returns
    -------
    tensor of shape (n_samples, config.n_components), on ``X``'s device
        With ``return_graph``, also the whole fuzzy graph ``(rows, cols, weights)`` (see
        :func:`fuzzy_graph`), which :func:`merge_by_graph` uses.
    """
    device = X.device
    dists, idx = knn_graph(X, config.n_neighbors)
    graph = fuzzy_graph(dists, idx)
    rows, cols, w = graph
    keep = w > w.max() / config.embed_epochs  # UMAP drops edges too weak to be sampled
    rows, cols, w = rows[keep], cols[keep], w[keep]
    a, b = umap_ab(config.min_dist)
    Y = _pca_init(X, config.n_components)
    p = w / w.max()
    g = torch.Generator(device=device).manual_seed(seed)
    with _deterministic():
        _optimize(Y, rows, cols, p, a, b, config, g)
    return (Y, graph) if return_graph else Y


@contextmanager
def _deterministic():
    # CUDA's index_add_ accumulates with atomics (order varies run to run) unless deterministic
    # algorithms are on; the CPU path is deterministic already. Restores the caller's setting.
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def _optimize(Y, rows, cols, p, a, b, config, g):
    # UMAP's epochs, updating Y in place.
    device, n = Y.device, Y.shape[0]
    for epoch in range(config.embed_epochs):
        lr = 1.0 - epoch / config.embed_epochs
        active = torch.rand(p.shape, generator=g, device=device) < p
        i, j = rows[active], cols[active]
        diff = Y[i] - Y[j]
        d2 = (diff * diff).sum(1, keepdim=True)
        coef = (-2.0 * a * b * d2.clamp_min(1e-12).pow(b - 1.0)) / (1.0 + a * d2.pow(b))
        grad = (coef * diff).clamp(-4.0, 4.0) * lr
        step = torch.zeros_like(Y).index_add_(0, i, grad).index_add_(0, j, -grad)
        neg = torch.randint(0, n, (i.shape[0] * config.negative_rate,), generator=g, device=device)
        ii = i.repeat_interleave(config.negative_rate)
        diff = Y[ii] - Y[neg]
        d2 = (diff * diff).sum(1, keepdim=True)
        coef = 2.0 * b / ((1e-3 + d2) * (1.0 + a * d2.pow(b)))
        grad = torch.where(d2 > 0, coef * diff, torch.zeros_like(diff)).clamp(-4.0, 4.0) * lr
        step.index_add_(0, ii, grad)
        Y += step


def merge_by_graph(labels: torch.Tensor, graph, n_clusters: int, n_groups: int | None = None) -> torch.Tensor:
    """Merge the groups of ``labels`` into ``n_clusters`` along a weighted graph; returns the group -> cluster map.

    Agglomerative: while more than ``n_clusters`` groups remain, the two joined by the largest
    normalized edge weight ``W_ab / sqrt(d_a d_b)`` are merged (``W_ab``: total weight of the
    edges between groups a and b; ``d_a``: total weight of the edges leaving a's members, its
    own included). Groups that the graph holds together become one cluster, however the mixture
    split them: a class spread over two mixture components (say bags with and without handles)
    ends up whole. Ties go to the pair with the lowest indices; deterministic.

    Parameters
    ----------
    labels : int tensor of shape (n_samples,)
        Group of every node, in ``[0, n_groups)``.
    graph : tuple (rows, cols, weights)
        Symmetric edge list, as :func:`fuzzy_graph` returns.
    n_clusters : int
    n_groups : int, optional
        Number of groups (mixture components), when the last ones may have no node; default
        ``labels.max() + 1``.

    Returns
    -------
    int64 tensor of shape (n_groups,): the cluster, in ``[0, n_clusters)``, of every group
    (numbered by their smallest group). Fewer non-empty groups than ``n_clusters``: each its own
    cluster. An empty group (no node has it) is mapped to cluster 0.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be at least 1.")
    rows, cols, weights = graph
    labels = labels.cpu().long()
    if n_groups is None:
        n_groups = int(labels.max()) + 1 if labels.numel() else 0
    W = torch.zeros(n_groups, n_groups, dtype=torch.float64)
    W.index_put_((labels[rows.cpu()], labels[cols.cpu()]), weights.cpu().double(), accumulate=True)
    members = [[g] for g in range(n_groups)]
    # A group no node has (a mixture component left empty) takes no part; it goes to cluster 0.
    alive = torch.nonzero(torch.bincount(labels, minlength=n_groups)).flatten().tolist()
    while len(alive) > n_clusters:
        sub = W[alive][:, alive]
        degree = sub.sum(1).clamp_min(1e-300)
        score = sub / torch.sqrt(degree[:, None] * degree[None, :])
        score.fill_diagonal_(-math.inf)
        a, b = divmod(int(torch.argmax(score)), len(alive))
        a, b = alive[min(a, b)], alive[max(a, b)]
        W[a] += W[b]
        W[:, a] += W[:, b]
        members[a] += members[b]
        alive.remove(b)
    cluster_of = torch.zeros(n_groups, dtype=torch.long)
    for cluster, group in enumerate(alive):
        cluster_of[members[group]] = cluster
    return cluster_of


def cluster_embedding(
    Y: torch.Tensor,
    n_clusters: int,
    config: RefineConfig,
    seed: int,
    *,
    graph=None,
    return_confidence: bool = False,
):
    """Labels of a Gaussian mixture (``config.covariance_type``) fitted to an embedding.

    With ``config.over_clustering`` above 1, the mixture has that many components per cluster
    (at most one per row), merged into ``n_clusters`` along ``graph`` by :func:`merge_by_graph`.
    With ``return_confidence``, also each row's posterior probability of its own cluster (the
    sum over the cluster's components), in [0, 1], as a second tensor.
    """
    n_components = min(n_clusters * config.over_clustering, Y.shape[0])
    if n_components > n_clusters and graph is None:
        raise ValueError("over_clustering above 1 needs the neighbour graph to merge along (graph=).")
    gmm = GaussianMixture(
        n_components, covariance_type=config.covariance_type, random_state=seed, device=Y.device, reg_covar=1e-4
    )
    labels = torch.as_tensor(gmm.fit_predict(Y), device=Y.device)
    posterior = torch.as_tensor(gmm.predict_proba(Y), device=Y.device) if return_confidence else None
    if n_components > n_clusters:
        cluster_of = merge_by_graph(labels, graph, n_clusters, n_groups=n_components).to(Y.device)
        labels = cluster_of[labels]
        if posterior is not None:
            merged = torch.zeros(Y.shape[0], n_clusters, dtype=torch.float64, device=Y.device)
            posterior = merged.index_add_(1, cluster_of, posterior.to(torch.float64))
    if not return_confidence:
        return labels
    return labels, posterior.gather(1, labels[:, None]).squeeze(1).clamp_(0.0, 1.0)


def vote_labels(X: torch.Tensor, labels: torch.Tensor, Q: torch.Tensor, n_neighbors: int, n_clusters: int):
    """Each row of ``Q`` takes the most common label among its ``n_neighbors`` nearest rows of ``X``.

    Ties go to the smallest label. Returns an int64 tensor of shape (n_queries,).
    """
    _, idx = nearest_neighbors(X, Q, min(n_neighbors, X.shape[0]))
    votes = torch.nn.functional.one_hot(labels.to(idx.device)[idx], n_clusters).sum(1)
    return votes.argmax(1)


def _subset(n: int, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or max_points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_points])


def _timed(fn, device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def _embedding(X, config, seed, embedding):
    # A previous call's embedding of the same codes with the same graph and embedding settings
    # (only the mixture differs) is reused rather than computed again.
    if embedding is None:
        return umap_embed(X, config, seed=seed, return_graph=True)
    if embedding[0].shape[0] != X.shape[0]:
        raise ValueError(
            f"embedding has {embedding[0].shape[0]} rows for {X.shape[0]} codes: pass the info['embedding'] "
            "of a call of the same variant (inductive or transductive) on the same codes."
        )
    return embedding


def refine_inductive(Z_train, Z_test, *, n_clusters=10, config: RefineConfig = RefineConfig(), seed=0, embedding=None):
    """Inductive variant: embed and cluster training codes only, then label test codes by a neighbour vote.

    Parameters
    ----------
    Z_train : tensor of shape (n_train, n_features)
        Training-split codes; a seeded subset of ``config.max_train_points`` is used when set.
    Z_test : tensor of shape (n_test, n_features)
        Codes of unseen images; they take part in no fit.
    n_clusters : int
    config : RefineConfig
    seed : int
    embedding : tuple, optional
        ``info["embedding"]`` of an earlier call with the same codes, seed and embedding settings
        (another ``over_clustering`` or ``covariance_type``): skips the graph and the embedding.

    Returns
    -------
    labels : int64 tensor of shape (n_test,)
    info : dict
        ``n_embedded`` (training codes embedded), ``seconds`` (embedding unless reused, mixture
        and vote), ``embedding`` (the embedding and its graph, for reuse), and the training
        clustering: ``train_index`` (rows of ``Z_train`` embedded, a numpy array), ``train_labels``
        and ``train_confidence`` (the posterior probability of each row's cluster).
    """
    device = Z_train.device
    index = _subset(Z_train.shape[0], config.max_train_points, seed)
    X = Z_train[torch.as_tensor(index, device=device)].float()

    def work():
        Y, graph = _embedding(X, config, seed, embedding)
        train_labels, confidence = cluster_embedding(Y, n_clusters, config, seed, graph=graph, return_confidence=True)
        votes = vote_labels(X, train_labels, Z_test, config.vote_neighbors, n_clusters)
        return votes, train_labels, confidence, (Y, graph)

    (labels, train_labels, confidence, embedded), seconds = _timed(work, device)
    info = {"n_embedded": int(X.shape[0]), "seconds": seconds, "train_index": index, "embedding": embedded}
    return labels, {**info, "train_labels": train_labels, "train_confidence": confidence}


def refine_transductive(
    Z_train, Z_test, *, n_clusters=10, config: RefineConfig = RefineConfig(), seed=0, embedding=None
):
    """Transductive variant: embed and cluster the training and test codes together (labels unused).

    Same training codes as :func:`refine_inductive`, plus every test code; the test codes' own
    cluster labels are returned. Not the seed's protocol: report it apart. ``embedding``: as in
    :func:`refine_inductive` (from an earlier transductive call).

    Returns
    -------
    labels : int64 tensor of shape (n_test,)
    info : dict
        ``n_embedded`` (all codes embedded), ``seconds``, ``embedding``.
    """
    device = Z_train.device
    keep = torch.as_tensor(_subset(Z_train.shape[0], config.max_train_points, seed), device=device)
    X = torch.cat([Z_train[keep].float(), Z_test.to(device, torch.float32)])

    def work():
        Y, graph = _embedding(X, config, seed, embedding)
        return cluster_embedding(Y, n_clusters, config, seed, graph=graph)[-Z_test.shape[0] :], (Y, graph)

    (labels, embedded), seconds = _timed(work, device)
    return labels, {"n_embedded": int(X.shape[0]), "seconds": seconds, "embedding": embedded}
