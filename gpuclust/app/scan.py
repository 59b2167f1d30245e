"""Neighbour-consistency clustering heads (SCAN-style) on autoencoder codes, and a label-free score.

A small head (an MLP on the standardized codes, ``n_clusters`` outputs) is trained so that a
point and one of its nearest neighbours get the same cluster distribution, with an entropy
term on the mean distribution against collapse (Van Gansbeke et al., SCAN, ECCV 2020). The
neighbours come from an embedding in which classes hold together (task 4's UMAP-style
embedding); the head sees the codes, so it labels unseen test codes directly (inductive: no
test code takes part in any fit). Several heads start from different weights; the ones with
the lowest consistency loss over the whole neighbour graph (SCAN's own label-free rule) are
aligned to the best one by a matching of their labels and their probabilities averaged.

:func:`graph_modularity` scores any clustering of the same points against a neighbour graph
without labels (Newman's modularity): the pipeline's label-free rule for the variant it calls best.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..device import synchronize

__all__ = ["ScanConfig", "align_labels", "graph_modularity", "scan_cluster"]


@dataclass(frozen=True)
class ScanConfig:
    """Settings of the neighbour-consistency heads."""

    n_neighbors: int = 20
    entropy_weight: float = 5.0
    n_heads: int = 10
    ensemble: int = 5  # the heads of lowest consistency loss whose aligned probabilities are averaged
    epochs: int = 30
    batch_size: int = 512
    hidden: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4


def _check(config: ScanConfig, n: int, n_clusters: int):
    for name in ("n_neighbors", "n_heads", "ensemble", "epochs", "batch_size", "hidden"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if config.ensemble > config.n_heads:
        raise ValueError(f"ensemble={config.ensemble} must be at most n_heads={config.n_heads}.")
    if not (config.lr > 0 and config.entropy_weight >= 0 and config.weight_decay >= 0):
        raise ValueError("lr must be positive, entropy_weight and weight_decay non-negative.")
    if n <= config.n_neighbors or n < n_clusters:
        raise ValueError(f"n_samples={n} must exceed n_neighbors={config.n_neighbors} and n_clusters={n_clusters}.")


def _head(d: int, hidden: int, k: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, k),
    )  # fmt: skip


def _probabilities(heads, F: torch.Tensor) -> torch.Tensor:
    # (n_heads, n, k) cluster probabilities, in evaluation mode.
    with torch.inference_mode():
        return torch.stack([h(F).softmax(1) for h in heads])


def _consistency(P: torch.Tensor, neighbours: torch.Tensor, tile: int = 4096) -> torch.Tensor:
    # Mean over all (point, neighbour) pairs of -log <p_i, p_j>, per head.
    total = torch.zeros(P.shape[0], dtype=torch.float64, device=P.device)
    for start in range(0, P.shape[1], tile):
        nb = neighbours[start : start + tile]
        dot = (P[:, start : start + tile, None, :] * P[:, nb]).sum(3)
        total += -torch.log(dot.clamp_min(1e-8)).double().sum((1, 2))
    return total / neighbours.numel()


def _train_heads(F, neighbours, n_clusters, config, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = nn.ModuleList([_head(F.shape[1], config.hidden, n_clusters) for _ in range(config.n_heads)]).to(F.device)
    opt = torch.optim.Adam(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n, k = neighbours.shape
    heads.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=g).to(F.device)
        pick = torch.randint(0, k, (n,), generator=g).to(F.device)
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            mates = neighbours[rows, pick[rows]]
            loss = 0.0
            for h in heads:
                pa, pb = h(F[rows]).softmax(1), h(F[mates]).softmax(1)
                mean = pa.mean(0)
                loss = loss - torch.log((pa * pb).sum(1).clamp_min(1e-8)).mean()
                loss = loss + config.entropy_weight * (mean * torch.log(mean.clamp_min(1e-8))).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    heads.eval()
    return heads


def align_labels(reference, labels, n_clusters: int) -> np.ndarray:
    """The permutation ``perm`` (cluster ``c`` of ``labels`` -> ``perm[c]``) that best matches ``reference``.

    Maximizes the number of points whose relabelled cluster equals ``reference`` (a linear
    assignment on the contingency table).
    """
    reference, labels = np.asarray(reference), np.asarray(labels)
    table = np.zeros((n_clusters, n_clusters))
    np.add.at(table, (labels, reference), 1)
    rows, cols = linear_sum_assignment(-table)
    perm = np.empty(n_clusters, dtype=np.int64)
    perm[rows] = cols
    return perm


def _ensemble(Q: torch.Tensor, perms: dict) -> torch.Tensor:
    # Average the chosen heads' probabilities, head h's cluster c moved to perms[h][c].
    total = torch.zeros_like(Q[0])
    for h, perm in perms.items():
        total[:, torch.as_tensor(perm, device=Q.device)] += Q[h]
    return total / len(perms)


def scan_cluster(Z_train, Z_test, neighbours, *, n_clusters=10, config: ScanConfig = ScanConfig(), seed=0):
    """Train neighbour-consistency heads on ``Z_train``; label ``Z_test`` with the best heads' ensemble.

    Parameters
    ----------
    Z_train : tensor of shape (n_train, n_features)
        Training codes (the head's input).
    Z_test : tensor of shape (n_test, n_features)
        Codes of unseen images; they take part in no fit.
    neighbours : int64 tensor of shape (n_train, n_neighbors)
        Each training code's nearest neighbours (rows of ``Z_train``), e.g. in an embedding.
    n_clusters : int
    config : ScanConfig
    seed : int

    Returns
    -------
    labels : int64 tensor of shape (n_test,)
    info : dict
        ``train_labels``, ``train_confidence`` (ensemble probability of each training code's
        cluster), ``consistency`` (every head's loss, float list), ``heads`` (those averaged,
        lowest loss first), ``seconds``.
    """
    device = Z_train.device
    _check(config, Z_train.shape[0], n_clusters)
    if neighbours.shape[0] != Z_train.shape[0]:
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {Z_train.shape[0]} training codes.")
    synchronize(device)
    t0 = time.perf_counter()
    X = Z_train.float()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-12)
    nb = neighbours[:, : config.n_neighbors].to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        heads = _train_heads((X - mu) / sd, nb, n_clusters, config, seed)
    P = _probabilities(heads, (X - mu) / sd)
    loss = _consistency(P, nb)
    order = torch.argsort(loss, stable=True)[: config.ensemble].tolist()
    reference = P[order[0]].argmax(1).cpu().numpy()
    perms = {h: align_labels(reference, P[h].argmax(1).cpu().numpy(), n_clusters) for h in order}
    train_p = _ensemble(P, perms)
    test_p = _ensemble(_probabilities(heads, (Z_test.to(device).float() - mu) / sd), perms)
    confidence, train_labels = train_p.max(1)
    labels = test_p.argmax(1)
    synchronize(device)
    info = {"train_labels": train_labels, "train_confidence": confidence, "consistency": loss.tolist(),
            "heads": order, "seconds": time.perf_counter() - t0}  # fmt: skip
    return labels, info


def graph_modularity(labels, neighbours, n_clusters: int) -> float:
    """Newman's modularity of a clustering on a k-nearest-neighbour graph (no class labels used).

    The share of (point, neighbour) pairs inside a cluster, less the share expected from the
    cluster sizes alone: ``mean_ij [l_i == l_j] - sum_c (n_c / n)^2``. Higher is better; one
    cluster, or labels unrelated to the graph, score about 0.

    Parameters
    ----------
    labels : int tensor of shape (n_samples,)
    neighbours : int64 tensor of shape (n_samples, n_neighbors)
    n_clusters : int
    """
    labels = torch.as_tensor(labels).long().cpu()
    neighbours = torch.as_tensor(neighbours).cpu()
    if neighbours.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {labels.shape[0]} labels.")
    inside = (labels[:, None] == labels[neighbours]).double().mean()
    share = torch.bincount(labels, minlength=n_clusters).double() / labels.shape[0]
    return float(inside - (share * share).sum())
