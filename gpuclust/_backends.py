"""Optional libraries behind one availability check each (install hint in the error), and the
KMeans backends that wrap scikit-learn's and cuML's estimators."""

from __future__ import annotations

import importlib
import logging
import numbers

import numpy as np
import torch

logger = logging.getLogger("gpuclust")

INSTALL_HINTS = {
    "cuml": "cuML is not installed: pip install 'gpuclust[cuml]' (or cuml-cu12 from pypi.nvidia.com; "
    "see https://docs.rapids.ai/install), on a machine with an NVIDIA GPU.",
    "cupy": "CuPy is not installed: pip install 'gpuclust[gpu]' (cupy-cuda12x).",
}


def optional_import(name: str):
    """Import ``name`` or return None (any import-time failure counts as not installed)."""
    try:
        return importlib.import_module(name)
    except Exception:  # cuML raises more than ImportError on machines without a driver
        return None


def require(name: str):
    """Import ``name`` or raise ImportError with the install hint."""
    module = optional_import(name)
    if module is None:
        raise ImportError(INSTALL_HINTS.get(name, f"{name} is not installed."))
    return module


def cuml_available() -> bool:
    return torch.cuda.is_available() and optional_import("cuml") is not None


def fit_sklearn(est, X, w, k, n_init, init, sample_weight):
    """``est`` (a gpuclust KMeans) fitted by :class:`sklearn.cluster.KMeans` on X (CPU tensor).

    Returns ``(centers, labels, inertia, n_iter)`` as tensors on X's device and python numbers.
    """
    from sklearn.cluster import KMeans as SkKMeans

    sk = SkKMeans(
        n_clusters=k,
        init=init.cpu().numpy() if init is not None else est.init,
        n_init=n_init,
        max_iter=est.max_iter,
        tol=est.tol,
        random_state=est.random_state,
        algorithm="lloyd",
        verbose=est.verbose,
    )
    sk.fit(X.cpu().numpy(), sample_weight=None if sample_weight is None else w.cpu().numpy())
    as_t = lambda a: torch.as_tensor(np.asarray(a), device=X.device)
    return as_t(sk.cluster_centers_).to(X.dtype), as_t(sk.labels_).to(torch.int64), sk.inertia_, sk.n_iter_


def fit_cuml(est, X, w, k, n_init, init, sample_weight):
    """``est`` (a gpuclust KMeans) fitted by :class:`cuml.cluster.KMeans` on X (CUDA tensor), as :func:`fit_sklearn`."""
    cuml = require("cuml")
    cupy = require("cupy")
    # DLPack hands the device buffer to CuPy/cuML without a host round trip.
    X_cp = cupy.from_dlpack(X.contiguous())
    if init is not None:
        init = cupy.from_dlpack(init.contiguous())
    else:
        init = "scalable-k-means++" if est.init == "k-means++" else "random"
    seed = est.random_state if isinstance(est.random_state, numbers.Integral) else None
    cu = cuml.cluster.KMeans(
        n_clusters=k,
        init=init,
        n_init=n_init,
        max_iter=est.max_iter,
        tol=est.tol,
        random_state=seed,
        output_type="cupy",
        verbose=est.verbose,
    )
    cu.fit(X_cp, sample_weight=None if sample_weight is None else cupy.from_dlpack(w.contiguous()))
    centers = torch.from_dlpack(cupy.asarray(cu.cluster_centers_)).to(X.dtype)
    labels = torch.from_dlpack(cupy.asarray(cu.labels_)).to(torch.int64)
    return centers, labels, float(cu.inertia_), int(getattr(cu, "n_iter_", est.max_iter))
