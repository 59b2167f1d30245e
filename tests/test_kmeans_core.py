"""gpuclust._kmeans_core: Lloyd's loop and its helpers (one-hot centre sums, gather buffer, host reads, ties).

The branches a fit on CUDA takes are forced on CPU tensors (OneHotKMeans, LloydSettings(onehot=True)),
so what would break on a GPU is proven on the CPU.
"""

import collections

import numpy as np
import pytest
import torch
from _strategies import OneHotKMeans
from conftest import RTOL
from sklearn.datasets import make_blobs
from torch.utils._python_dispatch import TorchDispatchMode


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


def test_same_clustering_is_a_renaming_test():
    from gpuclust._kmeans_core import same_clustering

    a = torch.tensor([0, 0, 1, 2, 2])
    assert same_clustering(a, torch.tensor([2, 2, 0, 1, 1]), 3)
    assert not same_clustering(a, torch.tensor([2, 2, 0, 1, 0]), 3)
    # scikit-learn's test maps the first labelling onto the second: a coarser second one passes it.
    assert same_clustering(a, torch.tensor([1, 1, 1, 0, 0]), 3)
    assert not same_clustering(torch.tensor([1, 1, 1, 0, 0]), a, 3)


def test_farthest_first_is_a_stable_sort_of_the_distances():
    # topk's cut-off then a stable sort of the samples at least that far: the order of a full
    # stable sort (ties to the lower row) without its cost.
    from gpuclust._kmeans_core import farthest_first

    rng = np.random.default_rng(0)
    for _ in range(200):
        d = torch.from_numpy(rng.integers(0, 4, size=int(rng.integers(1, 40))).astype(np.float64))
        count = int(rng.integers(0, 6))
        expected = torch.sort(d, descending=True, stable=True).indices[: min(count, d.numel())]
        assert torch.equal(farthest_first(d, count), expected)


@pytest.mark.parametrize("k", [16, 32])  # torch.min below gpuclust._argmin.MASKED_ARGMIN_FROM, first_min from it
def test_exact_ties_on_integer_data_go_to_the_first_centre_as_in_scikit_learn(k):
    # Integer data and centres: every score -2 x.c + ||c||^2 is an exact float32 integer, so ties are
    # exact and the first centre must win. ||c||^2 by vector_norm(...).square_() was 6.9999995 for 7
    # and gave 5% of the rows to a later centre.
    from sklearn.cluster import KMeans as SkKMeans

    from gpuclust import KMeans

    rng = np.random.default_rng(32)
    A = rng.integers(0, 4, (1024, 4)).astype(np.float32)
    X = np.concatenate([A, 3 - A])
    init = np.unique(X, axis=0)[rng.choice(len(np.unique(X, axis=0)), k, replace=False)]
    from gpuclust import _kmeans_core as core

    X_t, C = torch.from_numpy(X), torch.from_numpy(init)
    labels, _ = core.assign(X_t, core.squared_norms(X_t), C, tile_rows=500)
    exact = ((X_t.double()[:, None, :] - C.double()[None]) ** 2).sum(2)
    first = (exact == exact.min(1, keepdim=True).values).double().argmax(1)  # the first index attaining it
    assert int((exact == exact.min(1, keepdim=True).values).sum(1).max()) > 1  # ties are there
    assert torch.equal(labels, first)
    ours = KMeans(k, init=init, n_init=1, max_iter=1, device="cpu").fit(X)
    ref = SkKMeans(k, init=init, n_init=1, max_iter=1).fit(X)
    ours.cluster_centers_, ref.cluster_centers_ = init.copy(), init.copy()
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_array_equal(ours.predict(X), first.numpy())
