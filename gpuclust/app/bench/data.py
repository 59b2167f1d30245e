"""A case's data (synthetic blobs, Fashion-MNIST pixels, PCA or autoencoder features) and its shared start."""

from __future__ import annotations

import os

import numpy as np

from ...device import resolve_device
from .cases import Case

_DATA_CACHE: dict = {}


def make_data(case: Case, seed: int = 0):
    """(X, labels) for a case, as a float64 numpy array (converted per backend later) and int labels."""
    key = (case.data, case.n, case.d, case.k, seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    if case.data == "synthetic":
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=4.0, size=(case.k, case.d)).astype(np.float32)
        labels = rng.integers(0, case.k, size=case.n)
        X = centers[labels] + rng.normal(size=(case.n, case.d)).astype(np.float32)
    else:
        from ..datasets import flatten_pixels, load_fashion_mnist

        images, labels = load_fashion_mnist("train", os.environ.get("GPUCLUST_DATA"))
        images, labels = images[: case.n], labels[: case.n]
        if case.data == "pixels":
            X = flatten_pixels(images)
        elif case.data.startswith("pca-"):
            from sklearn.decomposition import PCA

            X = PCA(int(case.data[4:]), random_state=seed).fit_transform(flatten_pixels(images)).astype(np.float32)
        elif case.data.startswith("ae-"):
            _, preset, epochs = case.data.split("-")
            from ..training import encode, train_autoencoder

            device = resolve_device("auto")
            split = int(0.8 * len(images))
            model, _ = train_autoencoder(
                images[:split],
                images[split:],
                preset=preset,
                epochs=int(epochs),
                seed=seed,
                device=device,
                progress=False,
            )
            X = encode(model, images).cpu().numpy()
        else:
            raise ValueError(f"unknown data {case.data!r}")
    if X.shape != (case.n, case.d):
        raise ValueError(f"{case.data} gave shape {X.shape}, the case says ({case.n}, {case.d})")
    _DATA_CACHE[key] = (X, np.asarray(labels))
    return _DATA_CACHE[key]


def initial_params(case, X, seed):
    """Shared starting point (GMM: weights, means, precisions; KMeans: centres) for all backends."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), case.k, replace=False)].astype(np.float64)
    if case.algorithm == "kmeans":
        return {"init": means}
    var = X.var(0).astype(np.float64) + 1e-3
    prec = {
        "full": lambda: np.repeat(np.diag(1 / var)[None], case.k, 0),
        "tied": lambda: np.diag(1 / var),
        "diag": lambda: np.repeat((1 / var)[None], case.k, 0),
        "spherical": lambda: np.full(case.k, 1 / var.mean()),
    }[case.covariance_type]()
    return {"weights_init": np.full(case.k, 1.0 / case.k), "means_init": means, "precisions_init": prec}
