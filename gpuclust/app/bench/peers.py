"""Adapters for the libraries a user could pick instead (the ``peers`` extra), on scikit-learn's surface.

Each adapter gives the harness fit, predict, n_iter_, and inertia_ or score (mean
log-likelihood). A peer that is not installed, or lacks what a case asks for, is a skipped row.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

import numpy as np
import torch

from .cases import CaseSkipped

PEER_MODULES = {
    "faiss": "faiss",
    "faiss-all-rows": "faiss",
    "fast-pytorch-kmeans": "fast_pytorch_kmeans",
    "torchgmm": "torchgmm",
    "pycave": "pycave",
}
INIT_NOTES = {"torchgmm": "shared means; torchgmm's own weights and covariances"}
PEER_ALGORITHMS = {
    "faiss": ("kmeans",),
    "faiss-all-rows": ("kmeans",),
    "fast-pytorch-kmeans": ("kmeans",),
    "torchgmm": ("gmm",),
    "pycave": ("kmeans", "gmm"),
}
# Checked with pip on torch 2.13 (benchmarks/README.md): what stops pycave, for every case.
PYCAVE_REASON = (
    "pycave does not install with torch 2: every release (1.0.5 to 3.0.1, the latest) requires torch<2.0, "
    "and 3.0.1 also pytorch-lightning<1.5, torchmetrics<0.6 and numpy<2, so pip cannot resolve it; installed "
    "with --no-deps, its import fails on pytorch-lightning 2 (no DataParallelPlugin). torchgmm is its fork"
)


def check_peer(case):
    import importlib

    if case.algorithm not in PEER_ALGORITHMS[case.backend]:
        raise CaseSkipped(f"{case.backend} has no {case.algorithm}")
    if case.backend == "pycave":
        raise CaseSkipped(PYCAVE_REASON)
    if case.backend == "torchgmm" and case.covariance_type == "tied":
        raise CaseSkipped("torchgmm has no 'tied' covariance (full, diag and spherical only)")
    try:
        importlib.import_module(PEER_MODULES[case.backend])
    except ImportError as exc:
        raise CaseSkipped(f"{case.backend} is not installed ({exc}); pip install 'gpuclust[peers]'") from exc


class FaissKMeans:
    """``faiss.Kmeans`` on the CPU from the shared centres, for ``niter`` iterations at most.

    faiss stops earlier once the objective is unchanged (its default ``early_stop_threshold=0``),
    and ignores ``tol``; ``n_iter_`` counts its per-iteration objectives (``obj``).

    By default faiss trains on at most 256 rows per centroid (a sample); ``all_rows`` lifts the
    cap so that it sees every row like the others ("faiss-all-rows").
    """

    def __init__(self, case, max_iter, init, tol, all_rows=False):
        self.k, self.max_iter, self.init, self.all_rows = case.k, max_iter, init["init"], all_rows

    def fit(self, X):
        import faiss

        X = np.ascontiguousarray(X, dtype=np.float32)
        kw = {"niter": self.max_iter, "seed": 0, "verbose": False}
        if self.all_rows:
            kw["max_points_per_centroid"] = len(X)
        self._km = faiss.Kmeans(X.shape[1], self.k, **kw)
        self._km.train(X, init_centroids=np.ascontiguousarray(self.init, dtype=np.float32))
        self.n_iter_ = len(self._km.obj)
        self.cluster_centers_ = self._km.centroids
        self._X = X
        return self

    def predict(self, X):
        return self._km.index.search(np.ascontiguousarray(X, dtype=np.float32), 1)[1][:, 0]

    @property
    def inertia_(self):
        return float(self._km.index.search(self._X, 1)[0].sum())


class FastPytorchKMeans:
    """fast-pytorch-kmeans (torch, CPU or CUDA) from the shared centres.

    It keeps no iteration count; with ``verbose=1`` it prints one line at the end of a fit,
    "used N iterations (...)", which is read for ``n_iter_`` (None if the line is not there).
    """

    def __init__(self, case, max_iter, init, tol):
        self.k, self.max_iter, self.tol, self.init = case.k, max_iter, tol, init["init"]

    def fit(self, X):
        import io

        from fast_pytorch_kmeans import KMeans as FastKMeans

        self._km = FastKMeans(self.k, max_iter=self.max_iter, tol=self.tol, verbose=1, mode="euclidean")
        start = torch.as_tensor(self.init, dtype=X.dtype, device=X.device)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self._labels = self._km.fit_predict(X, centroids=start)
        self.n_iter_ = _fast_kmeans_iterations(printed.getvalue())
        self.cluster_centers_ = self._km.centroids
        self._X = X
        return self

    def predict(self, X):
        return self._km.predict(X)

    @property
    def inertia_(self):
        c = self._km.centroids
        return float(((self._X - c[self._labels]) ** 2).sum())


def _fast_kmeans_iterations(printed):
    """N from fast-pytorch-kmeans' closing line "used N iterations (...)", or None."""
    found = re.search(r"used (\d+) iterations", printed)
    return int(found.group(1)) if found else None


class TorchGMM:
    """torchgmm's GaussianMixture (torch and Lightning, CPU or CUDA) from the shared means.

    It takes initial means only (not weights or precisions): its own start otherwise, marked
    in the row's ``init`` field. ``score`` is its mean negative log-likelihood, negated.
    """

    def __init__(self, case, max_iter, init, tol):
        self.case, self.max_iter, self.tol, self.means = case, max_iter, tol, init["means_init"]

    def fit(self, X):
        from torchgmm.bayes import GaussianMixture as TorchGMM

        for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):  # one banner per fit otherwise
            logging.getLogger(name).setLevel(logging.ERROR)
        device = X.device
        self._gmm = TorchGMM(
            self.case.k,
            covariance_type=self.case.covariance_type,
            init_means=torch.as_tensor(self.means, dtype=X.dtype, device=device),
            convergence_tolerance=self.tol,
            covariance_regularization=1e-4,
            trainer_params={
                "max_epochs": self.max_iter,
                "accelerator": "gpu" if device.type == "cuda" else "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "enable_checkpointing": False,
                "logger": False,
                "precision": 64 if X.dtype == torch.float64 else 32,  # it refuses float64 data otherwise
            },
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's deprecation notes, once per fit
            self._gmm.fit(X)
        self.n_iter_ = int(self._gmm.num_iter_)
        return self

    def predict(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._gmm.predict(X)

    def score(self, X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return -float(self._gmm.score(X))


PEERS = {
    "faiss": FaissKMeans,
    "faiss-all-rows": lambda case, max_iter, init, tol: FaissKMeans(case, max_iter, init, tol, all_rows=True),
    "fast-pytorch-kmeans": FastPytorchKMeans,
    "torchgmm": TorchGMM,
}
