import numpy as np
import pytest
import torch
from conftest import DEVICES, RTOL, overlapping_blobs
from sklearn.base import clone
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from gpuclust import KMeans


def assert_same_as_sklearn(X, init, dtype, device, algorithm, **kw):
    X = X.astype(dtype)
    ref = SkKMeans(init.shape[0], init=init.astype(dtype), n_init=1, algorithm="lloyd", **kw).fit(X)
    ours = KMeans(init.shape[0], init=init, device=device, dtype=dtype, algorithm=algorithm, **kw).fit(X)
    rtol = RTOL[dtype]
    if dtype == "float64":
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        assert ours.n_iter_ == ref.n_iter_
    else:
        assert np.mean(ours.labels_ == ref.labels_) > 0.995
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=rtol, atol=rtol * np.abs(X).max())
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=rtol)
    return ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_sklearn_on_blobs(device, dtype, algorithm, seed):
    X, _ = overlapping_blobs(n=2000, d=8, k=6, seed=seed)
    init = X[np.random.RandomState(seed).choice(len(X), 6, replace=False)]
    ours = assert_same_as_sklearn(X, init, dtype, device, algorithm, tol=1e-4, max_iter=300)
    assert ours.n_iter_ > 3  # the data made Lloyd work, not converge at once


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_parity_with_sklearn_on_fashion_pixels(fashion_pixels, device, algorithm):
    X, _ = fashion_pixels
    init = X[np.random.RandomState(0).choice(len(X), 10, replace=False)]
    assert_same_as_sklearn(X, init, "float64", device, algorithm, tol=1e-4, max_iter=300)


def test_hamerly_equals_lloyd_with_fixed_iterations():
    X, _ = overlapping_blobs(n=3000, d=5, k=8, seed=3)
    a = KMeans(8, algorithm="lloyd", tol=0, max_iter=25, random_state=1, device="cpu").fit(X)
    b = KMeans(8, algorithm="hamerly", tol=0, max_iter=25, random_state=1, device="cpu").fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-12)
    assert a.n_iter_ == b.n_iter_


def test_sample_weight_parity():
    X, _ = overlapping_blobs(n=800, d=4, k=3, seed=5)
    w = np.random.RandomState(0).uniform(0.1, 3.0, len(X))
    init = X[:3]
    ref = SkKMeans(3, init=init, n_init=1).fit(X, sample_weight=w)
    ours = KMeans(3, init=init, device="cpu").fit(X, sample_weight=w)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plus_plus_quality_close_to_sklearn(seed):
    X, _ = overlapping_blobs(n=3000, d=10, k=12, seed=seed)
    ref = SkKMeans(12, n_init=1, random_state=seed).fit(X).inertia_
    ours = KMeans(12, random_state=seed, device="cpu").fit(X).inertia_
    assert ours <= ref * 1.05


def test_same_seed_gives_same_init_as_sklearn():
    # Same RandomState draws in the same order: identical k-means++ seeding.
    X, _ = overlapping_blobs(n=1000, d=4, k=5, seed=2)
    ref = SkKMeans(5, n_init=1, random_state=7).fit(X)
    ours = KMeans(5, random_state=7, device="cpu").fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)


def test_determinism_and_n_init_keeps_best():
    X, _ = overlapping_blobs(n=1500, d=4, k=6, seed=4)
    a = KMeans(6, init="random", n_init=5, random_state=3, device="cpu").fit(X)
    b = KMeans(6, init="random", n_init=5, random_state=3, device="cpu").fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    singles = [
        KMeans(6, init="random", n_init=1, random_state=np.random.RandomState(s), device="cpu").fit(X).inertia_
        for s in range(3)
    ]
    assert a.inertia_ <= max(singles)


def test_empty_cluster_is_reseeded():
    # Two far-apart groups and a third centre placed where no sample is nearest.
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2)) * 10]) + np.random.RandomState(0).rand(100, 2) * 0.1
    init = np.array([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]])
    ours = KMeans(3, init=init, device="cpu").fit(X)
    assert len(np.unique(ours.labels_)) == 3
    assert np.abs(ours.cluster_centers_).max() < 11


def test_labels_match_final_centers_and_predict():
    X, _ = overlapping_blobs(n=1200, d=6, k=5, seed=8)
    km = KMeans(5, random_state=0, device="cpu", max_iter=3).fit(X)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)
    d = km.transform(X)
    assert d.shape == (1200, 5)
    np.testing.assert_array_equal(d.argmin(1), km.labels_)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-9)


def test_chunked_equals_unchunked():
    X, _ = overlapping_blobs(n=2000, d=6, k=7, seed=9)
    a = KMeans(7, random_state=0, device="cpu").fit(X)
    b = KMeans(7, random_state=0, device="cpu", chunk_size=97).fit(X)
    c = KMeans(7, random_state=0, device="cpu", memory_budget=4096).fit(X)
    for other in (b, c):
        np.testing.assert_array_equal(a.labels_, other.labels_)
        np.testing.assert_allclose(a.cluster_centers_, other.cluster_centers_, rtol=1e-12)


def test_output_type_follows_input():
    X, _ = overlapping_blobs(n=300, d=3, k=3)
    km = KMeans(3, random_state=0, device="cpu").fit(torch.as_tensor(X))
    assert isinstance(km.cluster_centers_, torch.Tensor) and isinstance(km.labels_, torch.Tensor)
    assert isinstance(km.predict(X), np.ndarray)
    assert isinstance(km.predict(torch.as_tensor(X)), torch.Tensor)


def test_sklearn_api_clone_and_params():
    km = KMeans(4, tol=1e-3, device="cpu")
    assert km.get_params()["n_clusters"] == 4
    c = clone(km).set_params(n_clusters=6)
    assert c.n_clusters == 6 and km.n_clusters == 4
    with pytest.raises(TypeError):
        KMeans(3, not_a_param=1)


def test_sklearn_backend_matches():
    X, _ = overlapping_blobs(n=600, d=4, k=4, seed=1)
    init = X[:4]
    a = KMeans(4, init=init, backend="sklearn", device="cpu").fit(X)
    b = KMeans(4, init=init, backend="torch", device="cpu").fit(X)
    assert a.backend_ == "sklearn" and b.backend_ == "torch"
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_auto_backend_on_cpu_is_logged(caplog):
    import logging

    X, _ = overlapping_blobs(n=100, d=2, k=2)
    with caplog.at_level(logging.INFO, logger="gpuclust"):
        km = KMeans(2, device="cpu", random_state=0).fit(X)
    assert km.backend_ == "torch" and "backend='auto'" in caplog.text


@pytest.mark.skipif(
    __import__("gpuclust._backends", fromlist=["x"]).optional_import("cuml") is not None,
    reason="cuML is installed here",
)
def test_cuml_backend_missing_gives_install_hint():
    with pytest.raises((ImportError, ValueError), match="cuML|cuml"):
        KMeans(2, backend="cuml", device="cpu").fit(np.random.rand(10, 2))


@pytest.mark.cuml
def test_cuml_backend_close_to_ours():
    pytest.importorskip("cuml")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    X, _ = overlapping_blobs(n=2000, d=8, k=6, seed=0)
    init = X[:6]
    Xt = torch.as_tensor(X, device="cuda")
    a = KMeans(6, init=init, backend="cuml", device="cuda").fit(Xt)
    b = KMeans(6, init=init, backend="torch", device="cuda").fit(Xt)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-4)


@pytest.mark.parametrize(
    "X,kw,match",
    [
        (np.array([[0.0, np.nan], [1, 1], [2, 2]]), {}, "NaN"),
        (np.zeros(10), {}, "Reshape your data"),
        (np.zeros((4, 2, 2)), {}, "dim 3"),
        (np.random.rand(3, 2), {"n_clusters": 5}, r"n_samples=3 should be >= n_clusters=5"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
        (np.random.rand(20, 2), {"n_clusters": 0}, "n_clusters"),
        (np.random.rand(20, 2), {"init": "bogus"}, "'init' parameter of KMeans"),
        (np.random.rand(20, 2), {"init": np.zeros((3, 5))}, "shape of the initial centers"),
        (np.random.rand(20, 2), {"tol": -1}, "tol"),
        (np.random.rand(20, 2), {"max_iter": 0}, "max_iter"),
        (np.random.rand(20, 2), {"backend": "faiss"}, "backend"),
        (np.random.rand(20, 2), {"algorithm": "full"}, "algorithm"),
        (np.random.rand(20, 2), {"dtype": "int32"}, "dtype"),
        (np.random.rand(20, 2), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_is_value_error(X, kw, match):
    params = {"n_clusters": 3, "device": "cpu"} | kw
    with pytest.raises(ValueError, match=match):
        KMeans(**params).fit(X)


def test_bad_sample_weight():
    X = np.random.rand(10, 2)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\), expected \(10,\)"):
        KMeans(2, device="cpu").fit(X, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        KMeans(2, device="cpu").fit(X, sample_weight=-np.ones(10))


def test_predict_checks():
    with pytest.raises(NotFittedError):
        KMeans(2).predict(np.random.rand(5, 2))
    km = KMeans(2, device="cpu", random_state=0).fit(np.random.rand(20, 3))
    with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3 features as input"):
        km.predict(np.random.rand(5, 2))


def test_duplicate_points_warn():
    X = np.repeat(np.random.rand(2, 3), 10, axis=0)
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        KMeans(4, device="cpu", random_state=0).fit(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cupy_in_cupy_out_without_copy():
    cupy = pytest.importorskip("cupy")
    X = cupy.asarray(overlapping_blobs(n=500, d=4, k=3)[0])
    km = KMeans(3, random_state=0, device="cuda").fit(X)
    assert isinstance(km.cluster_centers_, cupy.ndarray) and isinstance(km.labels_, cupy.ndarray)


class _TwoIdenticalRanks:
    """A stand-in for a 2-rank process group in which both ranks hold the same rows."""

    rank, world_size = 0, 2

    def sum_float(self, value, what=""):
        return 2 * value

    def gather_rows(self, tensor, what=""):
        return torch.cat([tensor, tensor])


def test_init_sample_gathers_all_rows_or_a_bounded_sample():
    from gpuclust._comm import gather_init_sample

    X = torch.arange(200.0).reshape(100, 2)
    w = torch.linspace(0.5, 1.5, 100)
    rs = np.random.RandomState(0)
    X_all, w_all = gather_init_sample(X, w, _TwoIdenticalRanks(), rs)
    assert torch.equal(X_all, torch.cat([X, X])) and torch.equal(w_all, torch.cat([w, w]))
    X_s, w_s = gather_init_sample(X, w, _TwoIdenticalRanks(), rs, max_elements=60)  # 30 rows in all
    assert X_s.shape == (30, 2) and w_s.shape == (30,)
    rows = (X_s[:, 0] / 2).long()  # each sampled row is a real row with its own weight
    assert torch.equal(X_s, X[rows]) and torch.allclose(w_s, w[rows])
