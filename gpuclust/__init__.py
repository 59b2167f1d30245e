"""gpuclust: KMeans and Gaussian mixtures with a PyTorch core, on CUDA or CPU.

Estimators follow scikit-learn's API; input may be numpy, torch or any DLPack
array (CuPy), and results come back in the caller's array type.
"""

from ._device import resolve_device
from .datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, train_validation_split
from .kmeans import KMeans

__version__ = "0.1.0"

__all__ = [
    "FASHION_MNIST_CLASSES",
    "GaussianMixture",
    "KMeans",
    "load_fashion_mnist",
    "resolve_device",
    "train_validation_split",
    "__version__",
]


def __getattr__(name):
    # GaussianMixture imports lazily so `import gpuclust` stays light for the CLI.
    if name == "GaussianMixture":
        from .gaussian_mixture import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'gpuclust' has no attribute {name!r}")
