import numpy as np
import pytest
import torch

from gpuclust import COVARIANCE_TYPES, load_fashion_mnist  # noqa: F401 (re-exported to the tests)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
# Relative tolerance against scikit-learn per dtype: float64 is held to 1e-6 (the
# issue's bar; observed ~1e-12); float32 to 1e-3 (different summation order and
# precision over a few hundred iterations).
RTOL = {"float64": 1e-6, "float32": 1e-3}


@pytest.fixture(scope="session")
def fashion_train():
    try:
        return load_fashion_mnist("train")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set GPUCLUST_DATA)")


@pytest.fixture(scope="session")
def fashion_pixels(fashion_train):
    """A 3000-image slice of the real training pixels, in [0, 1], float64."""
    images, labels = fashion_train
    return images[:3000].reshape(3000, -1).astype(np.float64) / 255.0, labels[:3000]


def overlapping_blobs(n=1500, d=6, k=4, seed=0, dtype=np.float64):
    """Anisotropic, overlapping clusters: EM and Lloyd need many iterations on these."""
    rng = np.random.RandomState(seed)
    centers = rng.randn(k, d) * 2.5
    labels = rng.randint(k, size=n)
    X = np.empty((n, d))
    for j in range(k):
        A = rng.randn(d, d) * 0.3 + np.eye(d) * rng.uniform(0.5, 1.5)
        m = labels == j
        X[m] = rng.randn(m.sum(), d) @ A + centers[j]
    return X.astype(dtype), labels
