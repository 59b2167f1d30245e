"""Clustering scores computed with torch on the labels' device.

Names and argument order follow :mod:`sklearn.metrics` (``labels_true`` first).
Every score matches scikit-learn to 1e-9 in float64 (see tests/test_metrics.py). Labels
may be integers or any comparable values (strings, floats); only the partition matters.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "adjusted_rand_score",
    "cluster_accuracy",
    "completeness_score",
    "contingency_matrix",
    "homogeneity_completeness_v_measure",
    "homogeneity_score",
    "match_clusters",
    "mutual_info_score",
    "normalized_mutual_info_score",
    "v_measure_score",
]


def _as_label_tensor(labels, name, device=None) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        t = labels
    else:
        if hasattr(labels, "__dlpack__") and not isinstance(labels, np.ndarray):
            t = torch.from_dlpack(labels)
        else:
            arr = np.asarray(labels)
            if arr.size == 0:
                raise ValueError(f"{name} is empty.")
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-d, got shape {arr.shape}.")
            if arr.dtype.kind not in "biu":
                # Labels of any other kind (strings, floats, objects), as scikit-learn takes them:
                # only the partition matters, so each distinct value becomes its rank.
                try:
                    arr = np.unique(arr, return_inverse=True)[1].reshape(-1)
                except TypeError as exc:
                    raise ValueError(f"{name} holds values that cannot be compared: {exc}") from None
            t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.is_complex():
        t = torch.unique(t, return_inverse=True)[1]
    if t.numel() == 0:
        raise ValueError(f"{name} is empty.")
    if device is not None:
        t = t.to(device)
    return t.to(torch.int64)


def _check_labels(labels_true, labels_pred):
    """Validate both labelings and put them on one device (the CUDA one if either is)."""
    device = None
    for labels in (labels_true, labels_pred):
        if isinstance(labels, torch.Tensor) and labels.device.type == "cuda":
            device = labels.device
    t = _as_label_tensor(labels_true, "labels_true", device)
    p = _as_label_tensor(labels_pred, "labels_pred", t.device)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"labels_true has {t.shape[0]} entries but labels_pred has {p.shape[0]}.")
    return t, p


def _contingency(t: torch.Tensor, p: torch.Tensor):
    classes, t_idx = torch.unique(t, return_inverse=True)
    clusters, p_idx = torch.unique(p, return_inverse=True)
    n_c, n_k = classes.numel(), clusters.numel()
    counts = torch.bincount(t_idx * n_k + p_idx, minlength=n_c * n_k).reshape(n_c, n_k)
    return counts, classes, clusters


def contingency_matrix(labels_true, labels_pred, *, return_labels: bool = False):
    """Counts of samples per (class, cluster), as a tensor on the labels' device.

    Parameters
    ----------
    labels_true, labels_pred : array-like of shape (n_samples,)
        Integer labels, or labels of any comparable kind (strings, floats), as scikit-learn takes them.
    return_labels : bool, default=False
        Also return the sorted class and cluster values that index the rows and columns.

    Returns
    -------
    contingency : torch.Tensor of shape (n_classes, n_clusters), int64
    classes, clusters : torch.Tensor, only when ``return_labels``
    """
    counts, classes, clusters = _contingency(*_check_labels(labels_true, labels_pred))
    return (counts, classes, clusters) if return_labels else counts


def _entropy_from_counts(counts: torch.Tensor) -> float:
    pi = counts[counts > 0].to(torch.float64)
    if pi.numel() <= 1:
        return 0.0
    total = pi.sum()
    return float(-((pi / total) * (torch.log(pi) - torch.log(total))).sum())


def _mutual_info_from_contingency(counts: torch.Tensor) -> float:
    if counts.shape[0] == 1 or counts.shape[1] == 1:
        return 0.0
    c = counts.to(torch.float64)
    total = c.sum()
    pi, pj = c.sum(1), c.sum(0)
    nz = counts > 0
    rows, cols = nz.nonzero(as_tuple=True)
    n_ij = c[rows, cols]
    p_ij = n_ij / total
    log_outer = -torch.log(pi[rows] * pj[cols]) + torch.log(pi.sum()) + torch.log(pj.sum())
    mi = p_ij * (torch.log(n_ij) - torch.log(total)) + p_ij * log_outer
    mi = torch.where(mi.abs() < torch.finfo(torch.float64).eps, torch.zeros_like(mi), mi)
    return max(float(mi.sum()), 0.0)


def mutual_info_score(labels_true, labels_pred) -> float:
    """Mutual information between two labelings, in nats."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    return _mutual_info_from_contingency(counts)


def homogeneity_completeness_v_measure(labels_true, labels_pred, *, beta: float = 1.0):
    """Homogeneity, completeness and V-measure in one pass over the contingency matrix."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    return _hcv_from_counts(counts, beta)


def _hcv_from_counts(counts, beta=1.0):
    h_true = _entropy_from_counts(counts.sum(1))
    h_pred = _entropy_from_counts(counts.sum(0))
    mi = _mutual_info_from_contingency(counts)
    homogeneity = mi / h_true if h_true else 1.0
    completeness = mi / h_pred if h_pred else 1.0
    if homogeneity + completeness == 0.0:
        v_measure = 0.0
    else:
        v_measure = ((1 + beta) * homogeneity * completeness) / (beta * homogeneity + completeness)
    return homogeneity, completeness, v_measure


def homogeneity_score(labels_true, labels_pred) -> float:
    """1.0 when every cluster holds members of a single class."""
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[0]


def completeness_score(labels_true, labels_pred) -> float:
    """1.0 when all members of a class fall in one cluster."""
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[1]


def v_measure_score(labels_true, labels_pred, *, beta: float = 1.0) -> float:
    """Weighted harmonic mean of homogeneity and completeness."""
    return homogeneity_completeness_v_measure(labels_true, labels_pred, beta=beta)[2]


def normalized_mutual_info_score(labels_true, labels_pred, *, average_method: str = "arithmetic") -> float:
    """Mutual information normalized by a mean of the two entropies (arithmetic by default)."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    return _nmi_from_counts(counts, average_method)


def _nmi_from_counts(counts, average_method="arithmetic"):
    n_c, n_k = counts.shape
    if n_c == n_k == 1:
        return 1.0
    mi = _mutual_info_from_contingency(counts)
    if abs(mi) < np.finfo(np.float64).eps:
        return 0.0
    h_true, h_pred = _entropy_from_counts(counts.sum(1)), _entropy_from_counts(counts.sum(0))
    if average_method == "arithmetic":
        normalizer = (h_true + h_pred) / 2
    elif average_method == "geometric":
        normalizer = math.sqrt(h_true * h_pred)
    elif average_method == "min":
        normalizer = min(h_true, h_pred)
    elif average_method == "max":
        normalizer = max(h_true, h_pred)
    else:
        raise ValueError(f"average_method={average_method!r}; use 'min', 'geometric', 'arithmetic' or 'max'.")
    return mi / max(normalizer, np.finfo(np.float64).eps)


def adjusted_rand_score(labels_true, labels_pred) -> float:
    """Rand index adjusted for chance: 1.0 for identical partitions, about 0 for random ones."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    return _ari_from_counts(counts)


def _ari_from_counts(counts):
    # Pair counts from sums of squares: sum_ij n_ij * b_j = sum_j b_j**2, so no integer
    # matrix-vector product is needed (CUDA implements none for int64). Python ints:
    # n**2 * n**2 overflows int64 beyond ~55k samples.
    n = int(counts.sum())
    sum_squares = int((counts * counts).sum())
    n_c, n_k = counts.sum(1), counts.sum(0)
    fp = int((n_k * n_k).sum()) - sum_squares
    fn = int((n_c * n_c).sum()) - sum_squares
    tp = sum_squares - n
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def match_clusters(labels_true, labels_pred):
    """Best one-to-one matching of clusters to classes (Hungarian method on the contingency matrix).

    Returns
    -------
    mapping : dict
        cluster value -> class value, for the matched clusters. With more clusters
        than classes, the surplus clusters are left out (their samples count as errors).
    counts : torch.Tensor of shape (n_classes, n_clusters)
    classes, clusters : torch.Tensor
        The values indexing ``counts``'s rows and columns.
    """
    from scipy.optimize import linear_sum_assignment

    counts, classes, clusters = _contingency(*_check_labels(labels_true, labels_pred))
    rows, cols = linear_sum_assignment(counts.cpu().numpy(), maximize=True)
    cls, clu = classes.cpu().tolist(), clusters.cpu().tolist()
    mapping = {clu[c]: cls[r] for r, c in zip(rows, cols)}
    return mapping, counts, classes, clusters


def cluster_accuracy(labels_true, labels_pred) -> float:
    """Fraction of samples whose cluster, matched one-to-one to a class, is their class."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    return _accuracy_from_counts(counts)


def _accuracy_from_counts(counts):
    from scipy.optimize import linear_sum_assignment

    host = counts.cpu().numpy()
    rows, cols = linear_sum_assignment(host, maximize=True)
    return float(host[rows, cols].sum() / host.sum())


def all_scores(labels_true, labels_pred) -> dict:
    """Every score this module has, as a dict of floats (what reports and benchmarks record)."""
    counts, _, _ = _contingency(*_check_labels(labels_true, labels_pred))
    h, c, v = _hcv_from_counts(counts)
    return {
        "completeness": c,
        "homogeneity": h,
        "v_measure": v,
        "nmi": _nmi_from_counts(counts),
        "ari": _ari_from_counts(counts),
        "cluster_accuracy": _accuracy_from_counts(counts),
    }
