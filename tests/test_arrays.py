"""gpuclust._arrays: array conversion (zero-copy where it can, DLPack producers), dtypes, input checks."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from gpuclust import GaussianMixture
from gpuclust._arrays import as_tensor, resolve_dtype, to_output

CPU = torch.device("cpu")


def test_numpy_to_torch_is_zero_copy_on_cpu():
    X = np.random.rand(50, 4).astype(np.float32)
    t, kind = as_tensor(X, device=CPU)
    assert t.data_ptr() == X.__array_interface__["data"][0]
    assert kind.namespace == "numpy"
    assert isinstance(to_output(t, kind), np.ndarray)


def test_torch_input_is_not_copied_and_comes_back_as_torch():
    X = torch.rand(20, 3, dtype=torch.float64)
    t, kind = as_tensor(X, device=CPU)
    assert t.data_ptr() == X.data_ptr()
    assert isinstance(to_output(t, kind), torch.Tensor)


def test_dtype_conversion_and_defaults():
    X = np.arange(12, dtype=np.uint8).reshape(6, 2)
    assert as_tensor(X, device=CPU)[0].dtype == torch.float64  # scikit-learn's rule on the CPU
    assert as_tensor(X, device=CPU, dtype=resolve_dtype("float64"))[0].dtype == torch.float64
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8")


@pytest.mark.parametrize(
    "X,match",
    [
        (np.array([[1.0, np.nan]]), "NaN or infinity"),
        (np.array([[1.0, np.inf]]), "NaN or infinity"),
        (np.zeros(5), "Reshape your data"),
        (np.zeros((2, 2, 2)), "dim 3"),
        (np.zeros((0, 3)), r"0 sample\(s\)"),
        (np.array([["a", "b"]]), "numeric"),
        (np.array([[1 + 2j]]), "Complex data not supported"),
        ("text", "string"),
        (None, "None"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        as_tensor(X, device=CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_to_cupy_is_zero_copy_on_gpu():
    cupy = pytest.importorskip("cupy")
    X = cupy.random.rand(100, 8, dtype=cupy.float32)
    t, kind = as_tensor(X, device=torch.device("cuda"))
    assert t.data_ptr() == X.data.ptr
    back = to_output(t, kind)
    assert isinstance(back, cupy.ndarray) and back.data.ptr == X.data.ptr


def test_reversed_and_read_only_arrays_are_accepted(recwarn):
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    t, _ = as_tensor(X[::-1], device=CPU)
    assert torch.equal(t, torch.as_tensor(X[::-1].copy()))
    ro = np.frombuffer(X.tobytes(), dtype=np.float64).reshape(6, 2)
    t, _ = as_tensor(ro, device=CPU)
    assert torch.equal(t, torch.as_tensor(X)) and not recwarn.list


def test_error_names_the_argument():
    with pytest.raises(ValueError, match="Complex data not supported: init"):
        as_tensor(np.array([[1j]]), device=CPU, name="init")


# --- DLPack producers (CuPy, JAX): outputs come back as the producer's arrays ---------------------


class _Producer:
    """A CPU stand-in for a DLPack producer such as CuPy or JAX (numpy underneath)."""

    def __init__(self, array, namespace):
        self._a, self._ns = np.ascontiguousarray(array), namespace

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    def __array_namespace__(self, api_version=None):
        if self._ns is None:
            raise AttributeError("no namespace")
        return self._ns


class _Namespace:
    """What CuPy or jax.numpy offer: from_dlpack building the producer's own array type."""

    @staticmethod
    def from_dlpack(x):
        return _Producer(np.from_dlpack(x), _Namespace)


@pytest.mark.parametrize("estimator", ["kmeans", "gmm"])
def test_any_dlpack_producer_round_trips(estimator):
    from gpuclust import KMeans

    X, _ = make_blobs(400, 4, centers=3, random_state=0)
    est = KMeans(3, random_state=0, device="cpu") if estimator == "kmeans" else GaussianMixture(3, device="cpu")
    # With an array namespace (CuPy, jax.numpy): outputs come back as the producer's arrays.
    labels = est.fit(_Producer(X, _Namespace)).predict(_Producer(X, _Namespace))
    assert isinstance(labels, _Producer)
    np.testing.assert_array_equal(np.from_dlpack(labels), est.predict(X))
    # Without one (and no from_dlpack in its module): a torch tensor, decided before the fit.
    labels = est.fit(_Producer(X, None)).predict(_Producer(X, None))
    assert isinstance(labels, torch.Tensor)
    np.testing.assert_array_equal(labels.numpy(), est.predict(X))
