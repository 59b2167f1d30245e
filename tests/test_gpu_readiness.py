"""What would break on a GPU, proven on the CPU: CUDA's missing kernels, float32 numerics, CUDA-only branches."""

import collections
import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from _strategies import OneHotKMeans
from conftest import COVARIANCE_TYPES, RTOL
from sklearn.datasets import make_blobs
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import gpuclust._gmm_numerics as gm
from gpuclust import GaussianMixture, metrics

_PRODUCTS = {torch.matmul, torch.mm, torch.mv, torch.bmm, torch.addmm, torch.addmv, torch.dot, torch.Tensor.__matmul__,
             torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.mv, torch.Tensor.addmm, torch.Tensor.addmv}  # fmt: skip


class NoIntegerProducts(TorchFunctionMode):
    """Refuses integer matrix products, as CUDA does ("addmv_impl_cuda" not implemented for 'Long')."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(not (t.is_floating_point() or t.is_complex()) for t in tensors):
                raise RuntimeError(f"{func.__name__} of integer tensors is not implemented on CUDA")
        return func(*args, **kwargs)


def test_the_cuda_rule_checker_catches_integer_products():
    with NoIntegerProducts(), pytest.raises(RuntimeError, match="not implemented on CUDA"):
        torch.ones(3, 3, dtype=torch.int64) @ torch.ones(3, dtype=torch.int64)


@pytest.mark.parametrize("n", [50, 70_000])
def test_every_metric_avoids_integer_matrix_products(n):
    rng = np.random.RandomState(0)
    y, p = rng.randint(0, 10, n), rng.randint(0, 12, n)
    p[: n // 2] = y[: n // 2]
    yt, pt = torch.as_tensor(y), torch.as_tensor(p)
    with NoIntegerProducts():
        ours = metrics.all_scores(yt, pt)
    assert ours["ari"] == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-12)
    assert ours["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, p), abs=1e-12)
    assert ours["completeness"] == pytest.approx(skm.completeness_score(y, p), abs=1e-12)


@pytest.mark.parametrize("init_params", ["k-means++", "random_from_data"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_float32_single_sample_starts_are_well_defined(init_params, covariance_type, offset):
    # Each component starts at one sample: its covariance is reg_covar alone, which float32
    # rounding of E[xx] - mu mu^T (values around 30) used to swamp.
    for seed in range(4):
        X, _ = make_blobs(1500, 8, centers=5, random_state=seed)
        X = (X + offset).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gmm = GaussianMixture(5, covariance_type=covariance_type, init_params=init_params, random_state=seed,
                                  device="cpu", max_iter=30).fit(X)  # fmt: skip
        assert np.isfinite(gmm.lower_bound_)


@pytest.mark.realdata
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_on_real_pixels(fashion_pixels, covariance_type):
    # 784 features in [0, 1], many of them constant: float32 second moments went negative here.
    X64 = fashion_pixels[0][:1200]
    kw = dict(covariance_type=covariance_type, random_state=0, device="cpu", max_iter=3, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours32 = GaussianMixture(6, **kw).fit(X64.astype(np.float32))
        ours64 = GaussianMixture(6, **kw).fit(X64)
    assert ours32.means_.dtype == np.float32
    # Same start (float64 init statistics), three iterations: float32 stays within the
    # float32 tolerance of float64 (precisions of 1/reg_covar on constant pixels make the
    # float32 E-step the main source of difference).
    assert ours32.lower_bound_ == pytest.approx(ours64.lower_bound_, rel=RTOL["float32"])
    np.testing.assert_allclose(ours32.means_, ours64.means_, atol=RTOL["float32"])
    np.testing.assert_allclose(ours32.weights_, ours64.weights_, atol=RTOL["float32"])


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_bf16_matmuls_stay_close_to_exact(covariance_type):
    # The opt-in low-precision E-step: measured here, statistics still summed in float64.
    X, _ = make_blobs(3000, 16, centers=4, random_state=0, cluster_std=2.0)
    X = X.astype(np.float32)
    kw = dict(covariance_type=covariance_type, random_state=0, device="cpu", max_iter=20, tol=0.0)
    exact = GaussianMixture(4, **kw).fit(X)
    low = GaussianMixture(4, matmul_precision="bf16", **kw).fit(X)
    assert low.lower_bound_ == pytest.approx(exact.lower_bound_, rel=2e-3)
    np.testing.assert_allclose(low.means_, exact.means_, atol=0.05 * np.abs(exact.means_).max())
    assert (low.predict(X) == exact.predict(X)).mean() > 0.99
    # TF32 is a CUDA setting: on the CPU it changes nothing.
    tf32 = GaussianMixture(4, matmul_precision="tf32", **kw).fit(X)
    assert tf32.lower_bound_ == exact.lower_bound_


def test_unknown_matmul_precision_is_refused():
    with pytest.raises(ValueError, match="matmul_precision"):
        GaussianMixture(2, matmul_precision="fp8", device="cpu").fit(np.random.rand(20, 2))


def test_per_component_factorization_equals_the_batched_one(monkeypatch):
    # The loop a GPU takes at large D, asked for explicitly on CPU tensors at a small D.
    rng = np.random.RandomState(0)
    A = torch.as_tensor(rng.randn(3, 40, 60))
    cov = A @ A.transpose(1, 2) / 60 + 0.1 * torch.eye(40)
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m: calls.append(m.shape) or real(m))
    batched, _ = gm._per_matrix(torch.linalg.cholesky_ex, cov, one_at_a_time=False)
    assert calls == [(3, 40, 40)]
    calls.clear()
    looped, _ = gm._per_matrix(torch.linalg.cholesky_ex, cov, one_at_a_time=True)
    assert calls == [(1, 40, 40)] * 3
    torch.testing.assert_close(looped, batched, rtol=0, atol=0)
    calls.clear()
    gm._per_matrix(torch.linalg.cholesky_ex, cov)  # decided by size and device: batched on the CPU
    assert calls == [(3, 40, 40)]


def test_tiles_are_sized_by_their_total_memory():
    # Full covariance: a row costs K*D in the working dtype and K*D in float64 for the statistics.
    assert gm.tile_bytes_per_row("full", 10, 6272, 4) == 10 * 6272 * 12 + 8 * 6272 + 160
    est = GaussianMixture(10, covariance_type="full", device="cpu", memory_budget=512 << 20)
    rows = est._tile_rows(48000, 6272, 10, torch.device("cpu"), torch.float32)
    per_row = gm.tile_bytes_per_row("full", 10, 6272, 4)
    most = (512 << 20) // per_row  # the most rows the budget allows; tiles are then made equal
    assert rows * per_row <= 512 << 20 < (most + 1) * per_row
    assert math.ceil(48000 / rows) == math.ceil(48000 / most) and rows == math.ceil(48000 / math.ceil(48000 / most))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forced_cuda_centre_sums_equal_the_cpu_ones(dtype):
    # The one-hot GEMM that sums centres on a GPU, run with CPU kernels.
    from gpuclust import KMeans

    X, _ = make_blobs(3000, 12, centers=6, random_state=3)
    X = X.astype(dtype)
    w = np.random.RandomState(0).uniform(0.5, 2.0, len(X))
    for weights in (None, w):
        plain = KMeans(6, random_state=0, device="cpu", algorithm="lloyd").fit(X, sample_weight=weights)
        forced = OneHotKMeans(6, random_state=0, device="cpu", algorithm="lloyd").fit(X, sample_weight=weights)
        assert forced.n_iter_ == plain.n_iter_
        np.testing.assert_array_equal(forced.labels_, plain.labels_)
        np.testing.assert_allclose(forced.cluster_centers_, plain.cluster_centers_, rtol=RTOL[dtype])


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


def test_forced_cuda_lloyd_keeps_no_gather_buffer(monkeypatch):
    # On a GPU the moved rows are summed by one-hot GEMMs: a gather buffer would be a second X.
    import gpuclust._kmeans_core as core

    buffers = []
    real = core.update_cluster_sums

    def spy(*args, **kwargs):
        buffers.append(args[7])
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "update_cluster_sums", spy)
    X, _ = make_blobs(600, 5, centers=4, random_state=0)
    X = torch.as_tensor(X, dtype=torch.float32)
    w = torch.ones(600)
    for onehot in (True, False):
        buffers.clear()
        settings = core.LloydSettings(max_iter=5, tol=0.0, tile_rows=256, onehot=onehot)
        core.lloyd(X, w, core.squared_norms(X), X[:4].clone(), settings)
        if onehot:
            assert buffers and all(b is None for b in buffers)
        else:
            assert buffers and all(b is not None and b.shape == (256, 5) for b in buffers)
    assert buffers and all(b is not None and b.shape == (256, 5) for b in buffers)


class _HostReads(TorchDispatchMode):
    """Counts, on CPU tensors, the ops that make the host wait for a GPU, and the kernels.

    On CUDA each of these synchronizes: a scalar read (``.item()``, ``bool``, ``int``, ``float``
    of a tensor: ``_local_scalar_dense``), an op whose output shape depends on the data
    (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``), and a copy to the host
    (``.tolist()``, ``.cpu()``, ``.numpy()``, counted by patching those methods).
    """

    DATA_DEPENDENT = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.syncs, self.kernels = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        bool_index = name == "index" and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in self.DATA_DEPENDENT or bool_index:
            self.syncs.append(name)
        elif not func.is_view:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def _lloyd_host_reads(monkeypatch, max_iter, chunk, weighted):
    import gpuclust._kmeans_core as core
    from gpuclust._linear import onednn_available

    onednn_available()  # its one-off probe runs ops: not in the counts
    X, _ = make_blobs(600, 6, centers=5, cluster_std=3.0, random_state=0)
    X = torch.as_tensor(X, dtype=torch.float32)
    w = torch.as_tensor(np.random.RandomState(0).uniform(0.5, 2.0, 600), dtype=torch.float32)
    counter = _HostReads()
    for name in ("tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda t, *a, _r=real, _n=name, **k: counter.syncs.append(_n) or _r(t, *a, **k)
        )
    settings = core.LloydSettings(max_iter=max_iter, tol=0.0, tile_rows=chunk, unit_weight=not weighted, onehot=True)
    with counter:
        out = core.lloyd(X, w if weighted else torch.ones(600), core.squared_norms(X), X[:5].clone(), settings)
    monkeypatch.undo()
    assert out.n_iter == max_iter  # tol=0 and labels still moving: no early stop
    return counter


@pytest.mark.parametrize("chunk, weighted", [(600, False), (256, True)])
def test_forced_cuda_lloyd_reads_the_host_once_per_iteration(monkeypatch, chunk, weighted):
    # The CUDA branches of Lloyd's loop, counted on CPU tensors: one transfer to the host per
    # iteration (moved count, empty clusters and centre shift together), nothing shaped by the data.
    short = _lloyd_host_reads(monkeypatch, 2, chunk, weighted)
    long = _lloyd_host_reads(monkeypatch, 3, chunk, weighted)
    extra = collections.Counter(long.syncs)
    extra.subtract(short.syncs)
    assert +extra == {"tolist": 1}, (short.syncs, long.syncs)
    per_iteration = long.kernels - short.kernels
    tiles = -(-600 // chunk)
    # With torch 2.13: 36 ops (about a kernel each) per iteration in one tile, 13 more per extra tile
    # (the oneDNN GEMM not counted). A margin for other torch versions, not for a loop per cluster or sample.
    assert 0 < per_iteration <= 44 + 16 * (tiles - 1), per_iteration
