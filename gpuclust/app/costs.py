"""The work of one iteration, the numerator of its compute floor (and the CPU-run skip rule)."""

from __future__ import annotations


def gmm_flops_per_iteration(covariance_type, n, d, k):
    """Rough multiply-adds x2 of one E+M step of a Gaussian mixture."""
    return {
        "full": 4 * n * k * d * d,
        "tied": 2 * n * d * d + 4 * n * d * k,
        "diag": 6 * n * d * k,
        "spherical": 4 * n * d * k,
    }[covariance_type]


def kmeans_flops_per_iteration(n, d, k):
    """The assignment GEMM's multiply-adds x2 of one Lloyd iteration."""
    return 2 * n * d * k
