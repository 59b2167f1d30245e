"""gpuclust: KMeans and Gaussian mixtures with a PyTorch core, on CUDA or CPU.

Estimators follow scikit-learn's API; input may be numpy, torch or any DLPack
array (CuPy), and results come back in the caller's array type. The library
needs numpy, scipy, scikit-learn and torch only; the Fashion-MNIST application
(``gpuclust run`` and friends) lives in :mod:`gpuclust.app`.
"""

from ._version import __version__
from .datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, train_validation_split
from .device import resolve_device
from .gaussian_mixture import COVARIANCE_TYPES, GaussianMixture
from .kmeans import KMeans, kmeans_plusplus

__all__ = [
    "COVARIANCE_TYPES",
    "FASHION_MNIST_CLASSES",
    "GaussianMixture",
    "KMeans",
    "__version__",
    "kmeans_plusplus",
    "load_fashion_mnist",
    "resolve_device",
    "train_validation_split",
]
