"""The libraries of the scale grid, each behind one call: ``fit(X, start, max_iter, tol) -> Fitted``.

Every adapter runs on the tensor's device with the shared start where the library takes one, and
returns the fitted answer in one shape (:class:`Fitted`), so the harness times and scores them alike.
A library that is not installed raises ImportError (a skipped row naming it); one that cannot run
here raises :class:`~.cases.CaseSkipped` with the reason. faiss-gpu and cuML are rows that say why
they are not measured (:data:`NOT_MEASURED`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass

import torch

from .cases import CaseSkipped

NOT_MEASURED = {
    "faiss-gpu": "not measured: faiss-gpu's wheels (about 135 MB with CUDA) are too big to carry to the GPU machine, "
    "which has no package index",
    "cuml": "not measured: cuML cannot be installed here (conda or NVIDIA's index only, none reachable from the GPU "
    "machine)",
}


@dataclass
class Fitted:
    """What a fit left: its labels of X's first rows, centres or mixture parameters, iterations run."""

    n_iter: int | None
    labels: torch.Tensor | None = None  # of every row of X (the last assignment the library made)
    centers: torch.Tensor | None = None  # KMeans
    weights: torch.Tensor | None = None  # mixtures, scikit-learn's names and shapes
    means: torch.Tensor | None = None
    covariances: torch.Tensor | None = None
    score: object = None  # mixtures: callable X -> mean log-likelihood (the library's own)
    predict: object = None  # callable X -> labels (the library's own path), where it has one


def fit_gpuclust_kmeans(X, start, max_iter, tol, case):
    from ...kmeans import KMeans

    # backend="torch": gpuclust's own Lloyd (the fused assignment on CUDA), never cuML where installed.
    km = KMeans(case.k, init=start["centers"], n_init=1, max_iter=max_iter, tol=tol, device=X.device,
                backend="torch", matmul_precision=case.precision).fit(X)  # fmt: skip
    return Fitted(int(km.n_iter_), labels=km.labels_, centers=km.cluster_centers_)


def fit_gpuclust_gmm(X, start, max_iter, tol, case):
    from ...gaussian_mixture import GaussianMixture

    gm = GaussianMixture(case.k, covariance_type=case.covariance_type, means_init=start["centers"],
                         max_iter=max_iter, tol=tol, reg_covar=1e-4, matmul_precision=case.precision,
                         device=X.device)  # fmt: skip
    gm.fit(X)
    return Fitted(int(gm.n_iter_), weights=gm.weights_, means=gm.means_, covariances=gm.covariances_,
                  score=gm.score, predict=gm.predict)  # fmt: skip


def _flash_kmeans(dtype):
    def fit(X, start, max_iter, tol, case):
        from flash_kmeans import batch_kmeans_Euclid

        if X.device.type != "cuda":
            raise CaseSkipped("flash-kmeans' Triton kernels run on CUDA only")
        x = X.to(dtype)[None]
        c0 = start["centers"].to(dtype)[None]
        ids, centers, n_iter = batch_kmeans_Euclid(x, case.k, max_iters=max_iter, tol=tol, init_centroids=c0)
        return Fitted(int(n_iter), labels=ids[0], centers=centers[0].float())

    return fit


def fit_fastkmeans(X, start, max_iter, tol, case):
    """fastkmeans takes host numpy data and streams it to the GPU in chunks every iteration (its design);
    it draws its own start (no init argument) and computes in float16 on CUDA by default."""
    from fastkmeans import FastKMeans

    Xh = start["host"]()  # numpy, made once per case outside the timed fits
    km = FastKMeans(case.d, case.k, niter=max_iter, tol=tol, gpu=X.device.type == "cuda", seed=0,
                    device=X.device, verbose=False)  # fmt: skip
    km.train(Xh)
    centers = torch.as_tensor(km.centroids, device=X.device)
    return Fitted(None, centers=centers)


def fit_fast_pytorch_kmeans(X, start, max_iter, tol, case):
    from fast_pytorch_kmeans import KMeans as FastKMeans

    km = FastKMeans(case.k, max_iter=max_iter, tol=tol, verbose=1, mode="euclidean")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        labels = km.fit_predict(X, centroids=start["centers"].clone())
    found = re.search(r"used (\d+) iterations", printed.getvalue())
    return Fitted(int(found.group(1)) if found else None, labels=labels, centers=km.centroids)


def fit_torchgmm(X, start, max_iter, tol, case):
    from torchgmm.bayes import GaussianMixture as TorchGMM

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    gm = TorchGMM(case.k, covariance_type=case.covariance_type, init_means=start["centers"],
                  convergence_tolerance=tol, covariance_regularization=1e-4,
                  trainer_params={"max_epochs": max_iter, "accelerator": "gpu" if X.device.type == "cuda" else "cpu",
                                  "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                                  "enable_checkpointing": False, "logger": False})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)

    def score(Z):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return -float(gm.score(Z))

    return Fitted(int(gm.num_iter_), score=score)


def _sklearn_array_api(device):
    """scikit-learn's GaussianMixture on torch tensors (array-API dispatch, scikit-learn >= 1.8)."""

    def fit(X, start, max_iter, tol, case):
        import os

        import sklearn
        from sklearn.mixture import GaussianMixture as SkGMM

        if os.environ.get("SCIPY_ARRAY_API") != "1":
            raise CaseSkipped("scikit-learn's array-API dispatch needs SCIPY_ARRAY_API=1 set before scipy is imported")

        major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
        if (major, minor) < (1, 8):
            raise CaseSkipped(f"scikit-learn {sklearn.__version__} has no array-API GaussianMixture (>= 1.8)")
        Z = X if device == "cuda" else start["cpu"]()
        gm = SkGMM(case.k, covariance_type=case.covariance_type, init_params="random_from_data", max_iter=max_iter,
                   tol=tol, reg_covar=1e-4, random_state=0)  # fmt: skip
        with sklearn.config_context(array_api_dispatch=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(Z)

        def score(Y):
            with sklearn.config_context(array_api_dispatch=True):
                return float(gm.score(Y.to(Z.device)))

        return Fitted(int(gm.n_iter_), weights=gm.weights_, means=gm.means_, covariances=gm.covariances_, score=score)

    return fit


# library -> (algorithm, fit, device it runs on: "same" as the case or "cpu", note for the row)
SCALE_PEERS = {
    "flash-kmeans": ("kmeans", _flash_kmeans(torch.float32), "same", "float32 input, shared start"),
    "flash-kmeans-fp16": ("kmeans", _flash_kmeans(torch.float16), "same", "X cast to float16 (its published setting)"),
    "fastkmeans": ("kmeans", fit_fastkmeans, "same", "own start; host data streamed per iteration; float16 on CUDA"),
    "fast-pytorch-kmeans": ("kmeans", fit_fast_pytorch_kmeans, "same", "shared start"),
    "torchgmm": ("gmm", fit_torchgmm, "same", "shared means; its own weights and covariances"),
    "sklearn-array-api": ("gmm", _sklearn_array_api("cuda"), "same", "init_params='random_from_data'"),
    "sklearn-array-api-cpu": ("gmm", _sklearn_array_api("cpu"), "cpu", "init_params='random_from_data', on the host"),
}
PEER_IMPORTS = {
    "flash-kmeans": "flash_kmeans",
    "flash-kmeans-fp16": "flash_kmeans",
    "fastkmeans": "fastkmeans",
    "fast-pytorch-kmeans": "fast_pytorch_kmeans",
    "torchgmm": "torchgmm",
    "sklearn-array-api": "sklearn",
    "sklearn-array-api-cpu": "sklearn",
}
