"""gpuclust: KMeans and Gaussian mixtures with a PyTorch core, on CUDA or CPU.

Estimators follow scikit-learn's API; input may be numpy, torch or any DLPack
array (CuPy), and results come back in the caller's array type. The library
needs numpy, scipy, scikit-learn and torch only; the Fashion-MNIST application
(``gpuclust run`` and friends, the dataset loader :mod:`gpuclust.app.datasets`)
lives in :mod:`gpuclust.app`.
"""

from ._version import __version__
from .device import resolve_device
from .gaussian_mixture import COVARIANCE_TYPES, GaussianMixture
from .kmeans import KMeans, kmeans_plusplus

__all__ = [
    "COVARIANCE_TYPES",
    "GaussianMixture",
    "KMeans",
    "__version__",
    "kmeans_plusplus",
    "resolve_device",
]

# Deprecated since 0.3, removed in 0.5: the dataset loader moved to the application. Each name is
# imported from there when asked for (never by ``import gpuclust``), with a FutureWarning each time.
# They are left out of ``__all__`` and ``dir(gpuclust)``: ``from gpuclust import *``, completion and
# introspection (pydoc, inspect.getmembers) neither warn nor load the application.
_MOVED_TO_APP = {
    "FASHION_MNIST_CLASSES": "gpuclust.app.datasets",
    "load_fashion_mnist": "gpuclust.app.datasets",
    "train_validation_split": "gpuclust.app.datasets",
}


def __getattr__(name):
    import importlib
    import warnings

    if name not in _MOVED_TO_APP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _MOVED_TO_APP[name]
    warnings.warn(
        f"gpuclust.{name} is deprecated since 0.3 and will be removed in 0.5; use {home}.{name}",
        FutureWarning,
        stacklevel=2,
    )
    # The only way the library reaches the application, and only for these deprecated names.
    return getattr(importlib.import_module(home), name)
