"""gpuclust.kmeans: the KMeans estimator and kmeans_plusplus against scikit-learn's, and their API."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import DEVICES, RTOL, overlapping_blobs
from sklearn.base import clone
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score

import gpuclust
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
    from gpuclust._comm import LOCAL
    from gpuclust.sources import TensorRows, init_sample

    X = torch.arange(200.0).reshape(100, 2)
    w = torch.linspace(0.5, 1.5, 100)
    rs = np.random.RandomState(0)
    X_one, w_one = init_sample(TensorRows(X), w, LOCAL, rs, max_elements=60)  # in memory, one process: all
    assert X_one is X and w_one is w
    X_all, w_all = init_sample(TensorRows(X), w, _TwoIdenticalRanks(), rs)
    assert torch.equal(X_all, torch.cat([X, X])) and torch.equal(w_all, torch.cat([w, w]))
    X_s, w_s = init_sample(TensorRows(X), w, _TwoIdenticalRanks(), rs, max_elements=60)  # 30 rows in all
    assert X_s.shape == (30, 2) and w_s.shape == (30,)
    rows = (X_s[:, 0] / 2).long()  # each sampled row is a real row with its own weight
    assert torch.equal(X_s, X[rows]) and torch.allclose(w_s, w[rows])


# ------------------------------------------------------------------ drop-in parity with scikit-learn (issue 14)
def _real_datasets():
    from sklearn.datasets import load_digits, load_iris, load_wine

    return {"iris": load_iris().data, "wine": load_wine().data, "digits": load_digits().data}


@pytest.mark.parametrize("name", ["iris", "wine", "digits", "fashion"])
@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
def test_n_iter_labels_and_inertia_equal_sklearn_on_real_data(name, algorithm, request):
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

    if name == "fashion":
        X = request.getfixturevalue("fashion_pixels")[0]
    else:
        X = _real_datasets()[name].astype(np.float64)
    for k, seed in [(3, 0), (8, 1), (10, 2)]:
        init, _ = sk_kmeans_plusplus(X, k, random_state=seed)
        ref = SkKMeans(k, init=init, n_init=1, algorithm=algorithm).fit(X)
        ours = KMeans(k, init=init, n_init=1, algorithm=algorithm, device="cpu").fit(X)
        assert ours.n_iter_ == ref.n_iter_, (k, seed)
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
        # the same seed draws the same k-means++ centres as scikit-learn
        by_seed = KMeans(k, n_init=1, random_state=seed, device="cpu").fit(X)
        assert by_seed.n_iter_ == SkKMeans(k, n_init=1, random_state=seed).fit(X).n_iter_


def test_verbose_prints_what_sklearn_prints(capsys):
    import re

    from sklearn.datasets import load_iris

    X = load_iris().data
    init = X[[0, 60, 120]]
    for tol in (0.0, 1e-2):
        SkKMeans(3, init=init, n_init=1, tol=tol, verbose=1).fit(X)
        ref = capsys.readouterr().out
        KMeans(3, init=init, n_init=1, tol=tol, verbose=1, device="cpu").fit(X)
        ours = capsys.readouterr().out
        shape = lambda text: re.sub(r"[-+0-9.e]+", "#", text)  # numbers may differ in the last digits
        assert shape(ours) == shape(ref) and ours.splitlines()[0] == "Initialization complete"
        assert ("strict convergence" in ours) == (tol == 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transform_is_accurate_in_float32(dtype, fashion_pixels):
    X = (fashion_pixels[0][:1000] * 255).astype(dtype)
    km = KMeans(10, random_state=0, n_init=1, device="cpu").fit(X)
    centers = km.cluster_centers_
    assert np.all(np.diag(km.transform(centers)) == 0)
    exact = np.sqrt(((X[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1))
    got = km.transform(X)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, exact, rtol={"float32": 4 * np.finfo(np.float32).eps, "float64": 1e-12}[dtype])


def test_random_init_draws_in_proportion_to_weight():
    X, _ = overlapping_blobs(n=400, d=3, k=4)
    w = np.zeros(400)
    w[::7] = 1.0 + np.arange(len(w[::7])) % 3
    for seed in range(5):
        ref = SkKMeans(4, init="random", n_init=1, random_state=seed, max_iter=1).fit(X, sample_weight=w)
        ours = KMeans(4, init="random", n_init=1, random_state=seed, max_iter=1, device="cpu").fit(X, sample_weight=w)
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        start = KMeans(4, init="random", n_init=1, random_state=seed, max_iter=1, device="cpu")
        rs = np.random.RandomState(seed)
        seeds = rs.choice(400, size=4, replace=False, p=w / w.sum())
        assert np.all(w[seeds] > 0)
        start.fit(X, sample_weight=w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_callable_init_and_copy_x_as_sklearn(dtype):
    from sklearn.datasets import load_iris

    X = load_iris().data.astype(dtype)
    calls = []

    def init(data, n_clusters, random_state):
        calls.append((type(data), n_clusters))
        return data[:n_clusters].copy()  # a view would let scikit-learn's Lloyd write into its X

    ref = SkKMeans(3, init=init, n_init=1, copy_x=False).fit(X.copy())
    ours = KMeans(3, init=init, n_init=1, copy_x=False, device="cpu").fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert calls[-1] == (np.ndarray, 3)
    np.testing.assert_array_equal(X, load_iris().data.astype(dtype))  # X untouched
    bad = KMeans(3, init=lambda data, k, random_state: data[:2], n_init=1, device="cpu")
    with pytest.raises(ValueError, match="shape of the initial centers"):
        bad.fit(X)


def test_feature_names_and_get_feature_names_out():
    pd = pytest.importorskip("pandas")
    X = overlapping_blobs(n=200, d=3, k=3)[0]
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    km = KMeans(3, random_state=0, device="cpu").fit(df)
    np.testing.assert_array_equal(km.feature_names_in_, ["a", "b", "c"])
    ref = SkKMeans(3, random_state=0).fit(df)
    np.testing.assert_array_equal(km.get_feature_names_out(), ref.get_feature_names_out())
    with pytest.warns(UserWarning, match="feature names"):
        km.predict(X)
    assert not hasattr(KMeans(3, random_state=0, device="cpu").fit(X), "feature_names_in_")


@pytest.mark.parametrize(
    "make,dtype",
    [
        (lambda X: X.astype(np.int64), np.float64),
        (lambda X: X.astype(np.float64), np.float64),
        (lambda X: X.astype(np.float32), np.float32),
        (lambda X: X.astype(object), np.float64),
        (lambda X: X.astype(np.float16), np.float64),
    ],
    ids=["int64", "float64", "float32", "object", "float16"],
)
def test_input_dtype_rule_on_cpu_as_sklearn(make, dtype):
    X = np.round(overlapping_blobs(n=120, d=3, k=3)[0] * 10)
    km = KMeans(3, random_state=0, device="cpu").fit(make(X))
    ref = SkKMeans(3, random_state=0).fit(make(X))
    assert km.cluster_centers_.dtype == dtype == ref.cluster_centers_.dtype
    assert km.transform(make(X)).dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_integer_input_on_cuda_is_float32(device):
    X = torch.randint(0, 10, (50, 3), device=device)
    km = KMeans(2, random_state=0, device=device).fit(X)
    assert km.cluster_centers_.dtype == (torch.float64 if device == "cpu" else torch.float32)


def test_invalid_hyper_parameters_raise_sklearns_error():
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.random.RandomState(0).rand(20, 2)
    for kw in [{"n_clusters": 0}, {"n_init": 0}, {"max_iter": 1.5}, {"tol": -1.0}, {"algorithm": "full"},
               {"copy_x": "yes"}, {"init": 3}, {"chunk_size": 0}, {"backend": "faiss"}]:  # fmt: skip
        with pytest.raises(InvalidParameterError, match=r"The '\w+' parameter of KMeans must be"):
            KMeans(device="cpu", **kw).fit(X)


def test_failed_fit_leaves_fitted_kmeans_unchanged():
    X = overlapping_blobs(n=200, d=3, k=3)[0]
    km = KMeans(3, random_state=0, device="cpu").fit(X)
    arrays = (np.ndarray, torch.Tensor)
    before = {k: (np.asarray(v).copy() if isinstance(v, arrays) else v) for k, v in vars(km).items()}
    with_nan = np.where(np.arange(3) == 1, np.nan, X).astype(np.float32)
    overflowing = (X * 1e30).astype(np.float32)
    bad_fits = [(with_nan, {}), (X, {"sample_weight": -np.ones(200)}), (overflowing, {}), (X, {"sample_weight": 0.0})]
    for bad, kw in bad_fits:
        with pytest.raises(ValueError):
            km.fit(bad, **kw)
    km.set_params(n_clusters=500)
    with pytest.raises(ValueError, match="should be >= n_clusters"):
        km.fit(X)
    after = vars(km)
    assert set(after) == set(before)
    for key, value in before.items():
        if isinstance(value, (np.ndarray, torch.Tensor)):
            np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value))
        elif key != "n_clusters":
            assert after[key] == value or after[key] is value, key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overflowing_norms_raise_with_advice(dtype):
    X = overlapping_blobs(n=100, d=3, k=2)[0].astype(np.float32) * np.float32(1e30)
    if dtype == np.float32:
        with pytest.raises(ValueError, match="scale the data"):
            KMeans(2, random_state=0, device="cpu").fit(X)
    else:  # float64 holds the squares: the fit is finite
        assert np.isfinite(KMeans(2, random_state=0, device="cpu").fit(X.astype(dtype)).inertia_)


@pytest.mark.parametrize("weight,match", [(-1.0, "non-negative"), (np.nan, "NaN"), (0.0, "at least one non-zero")])
def test_scalar_sample_weight_is_checked_like_an_array(weight, match):
    X = np.random.RandomState(0).rand(20, 2)
    with pytest.raises(ValueError, match=match):
        KMeans(2, device="cpu").fit(X, sample_weight=weight)
    with pytest.raises(ValueError, match=match):
        KMeans(2, device="cpu").fit(X, sample_weight=np.full(20, weight))
    km = KMeans(2, random_state=0, device="cpu")
    assert km.fit(X, sample_weight=2.0).inertia_ == pytest.approx(2 * km.fit(X).inertia_)


def test_hostile_inputs_name_the_problem():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": pd.array([1, None, 3, 4], dtype="Int64"), "b": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match="missing values.*pd.NA"):
        KMeans(2, device="cpu").fit(df)
    with pytest.raises(ValueError, match="'meta' device"):
        KMeans(2, device="cpu").fit(torch.empty(10, 3, device="meta"))
    with pytest.raises(ValueError, match="Complex data not supported"):
        KMeans(2, device="cpu").fit(np.ones((4, 2), dtype=complex))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        KMeans(2, device="cpu").fit(np.ones((4, 0)))
    with pytest.raises(ValueError, match="Sample weights must contain at least one non-zero number"):
        KMeans(2, device="cpu").fit(np.ones((4, 2)), sample_weight=np.zeros(4))


@pytest.mark.parametrize("device", DEVICES)
def test_requires_grad_input_is_accepted_and_outputs_carry_no_graph(device):
    X = torch.randn(100, 3, dtype=torch.float64, device=device, requires_grad=True)
    km = KMeans(3, random_state=0, device=device).fit(X)
    outputs = [km.cluster_centers_, km.labels_, km.predict(X), km.transform(X), km.fit_transform(X)]
    assert all(not t.requires_grad and t.grad_fn is None for t in outputs)


@pytest.mark.parametrize(("d", "k", "pruned"), [(8, 10, False), (50, 10, False), (32, 64, True), (784, 10, True)])
def test_auto_uses_hamerly_on_the_cpu_only_where_the_gemm_is_wide(d, k, pruned, monkeypatch):
    import gpuclust._kmeans_core as core

    seen = []
    for name, pruned_run in (("lloyd", False), ("hamerly", True)):
        real = getattr(core, name)
        monkeypatch.setattr(core, name, lambda *a, _r=real, _p=pruned_run, **k: seen.append(_p) or _r(*a, **k))
    X = np.random.default_rng(0).normal(size=(3 * k, d)).astype(np.float32)
    KMeans(k, n_init=1, max_iter=2, random_state=0, device="cpu").fit(X)
    assert seen == [pruned]
    seen.clear()
    KMeans(k, n_init=1, max_iter=2, random_state=0, device="cpu", algorithm="hamerly").fit(X)
    assert seen == [True]


def _far_data(offset, dtype):
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(300, 3) * 100 + c for c in ([0, 0, 0], [600, 0, 0], [0, 600, 0])])
    return (X + offset).astype(dtype)


def _as_kind(X, kind, tmp_path):
    if kind == "memory":
        return X
    path = tmp_path / "x.npy"
    np.save(path, X)
    if kind == "npy":
        return str(path)
    if kind == "memmap":
        return np.load(path, mmap_mode="r")
    return [X[:400], X[400:]]  # blocks


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["memory", "npy", "memmap", "blocks"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("offset", [0.0, 50.0, 1e4, 1e8])
def test_predict_and_score_see_the_geometry_fit_saw(offset, dtype, kind, tmp_path):
    """fit centres data far from the origin; predict, score and transform must use the same geometry."""
    X = _far_data(offset, dtype)
    data = _as_kind(X, kind, tmp_path)
    km = KMeans(3, random_state=0, device="cpu").fit(data)
    np.testing.assert_array_equal(km.predict(data), km.labels_)
    assert km.score(data) == pytest.approx(-km.inertia_, rel=1e-12)
    nearest = km.transform(data).min(axis=1).astype(np.float64) ** 2
    assert nearest.sum() == pytest.approx(km.inertia_, rel=1e-5 if dtype == "float32" else 1e-9)


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
def test_in_place_edits_of_cluster_centers_are_the_model(make):
    """As in scikit-learn: an edit of cluster_centers_ in place changes what inference uses, also after pickling."""
    import pickle

    X, _ = overlapping_blobs(n=600, d=3, k=3, seed=2)
    km = KMeans(3, random_state=0, device="cpu").fit(make(X))
    for model in (km, pickle.loads(pickle.dumps(km))):
        before = np.asarray(model.predict(make(X)))
        model.cluster_centers_[0] += 1e3  # nothing is nearest to it any more
        after = np.asarray(model.predict(make(X)))
        assert (before == 0).any() and not (after == 0).any()
        centers = np.asarray(model.cluster_centers_)
        expected = ((X[:, None, :] - centers[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(after, expected.argmin(1))
        assert model.score(make(X)) == pytest.approx(-expected.min(1).sum(), rel=1e-10)


@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_autocast_does_not_lower_the_precision(algorithm):
    """Inside torch.autocast the fit, its inference and kmeans_plusplus still compute in float32."""
    from gpuclust import kmeans_plusplus

    X = overlapping_blobs(n=2000, d=16, k=5, seed=4)[0].astype(np.float32)
    plain = KMeans(5, random_state=0, algorithm=algorithm, device="cpu").fit(X)
    seeds, distances = kmeans_plusplus(X, 5, random_state=0)[1], plain.transform(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        km = KMeans(5, random_state=0, algorithm=algorithm, device="cpu").fit(X)
        np.testing.assert_array_equal(kmeans_plusplus(X, 5, random_state=0)[1], seeds)
        np.testing.assert_array_equal(plain.predict(X), plain.labels_)
        assert plain.score(X) == -plain.inertia_
        np.testing.assert_array_equal(plain.transform(X), distances)
    np.testing.assert_array_equal(km.cluster_centers_, plain.cluster_centers_)
    np.testing.assert_array_equal(km.labels_, plain.labels_)
    assert km.inertia_ == plain.inertia_ and km.n_iter_ == plain.n_iter_


@pytest.mark.parametrize("init", ["random", "k-means++"])
@pytest.mark.parametrize("seed", [1, 2, 6, 25])
def test_n_init_keeps_the_run_sklearn_keeps_when_inertias_tie(seed, init):
    """Runs that find the same partition tie to rounding: keep the first, as scikit-learn does."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(600, centers=5, n_features=3, cluster_std=0.5, random_state=seed)
    ours = KMeans(5, init=init, n_init=10, random_state=seed, device="cpu").fit(X)
    ref = SkKMeans(5, init=init, n_init=10, random_state=seed).fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)


def test_verbose_reaches_the_sklearn_backend(capsys):
    X, _ = overlapping_blobs(n=300, d=3, k=3, seed=1)
    KMeans(3, backend="sklearn", verbose=1, device="cpu", random_state=0).fit(X)
    out = capsys.readouterr().out
    assert out.startswith("Initialization complete") and "Iteration 0" in out


@pytest.mark.parametrize("case", ["explicit init with n_init", "elkan with one cluster", "few distinct clusters"])
def test_warnings_point_at_the_callers_line(case):
    X = np.random.RandomState(0).rand(30, 2)
    if case == "explicit init with n_init":
        est, data = KMeans(2, init=X[:2], n_init=3, device="cpu"), X
    elif case == "elkan with one cluster":
        est, data = KMeans(1, algorithm="elkan", device="cpu"), X
    else:
        est, data = KMeans(3, random_state=0, device="cpu"), np.repeat(X[:2], 15, axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(data)
    assert caught and all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]


# --- details a scikit-learn user relies on without thinking (hostile review) ----------------------


@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
@pytest.mark.parametrize("offset", [[40.7, -74.0], [1e4, 1e4]])
def test_float32_data_far_from_the_origin(algorithm, offset):
    # Latitude/longitude-like data: tiny spread, large offset. Distances formed as
    # |x|^2 - 2 x.c + |c|^2 in float32 lose every digit unless the data are centred.
    X, y = make_blobs(2000, centers=5, n_features=2, cluster_std=0.004 * abs(offset[0]) / 40,
                      center_box=(-0.05 * abs(offset[0]) / 40, 0.05 * abs(offset[0]) / 40), random_state=3)  # fmt: skip
    X = (X + offset).astype(np.float32)
    ours = KMeans(5, random_state=0, algorithm=algorithm, device="cpu").fit(X)
    ref = SkKMeans(5, random_state=0, algorithm=algorithm).fit(X)
    assert adjusted_rand_score(ref.labels_, ours.labels_) > 0.99
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-3)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-5)


def test_kmeans_plusplus_takes_scipy_sparse():
    X, _ = make_blobs(60, centers=3, random_state=0)
    centers, indices = gpuclust.kmeans_plusplus(sp.csr_matrix(X), 3, random_state=0)
    np.testing.assert_array_equal(centers, X[indices])


def test_assigned_centres_are_the_model():
    X, _ = make_blobs(300, centers=3, random_state=0)
    ours, ref = KMeans(3, random_state=0, device="cpu").fit(X), SkKMeans(3, random_state=0).fit(X)
    centres = X[[0, 1, 2]] + 20.0
    ours.cluster_centers_, ref.cluster_centers_ = centres.copy(), centres.copy()
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.transform(X), ref.transform(X), rtol=1e-10)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-10)
    with pytest.raises(ValueError, match="shape"):
        ours.cluster_centers_ = centres[:2]
        ours.predict(X)


@pytest.mark.parametrize("container", ["dataframe", "list"])
def test_callable_init_gets_a_validated_array(container):
    X, _ = make_blobs(200, centers=3, random_state=0)
    data = pd.DataFrame(X, columns=["a", "b"]) if container == "dataframe" else X.tolist()

    def init(Z, k, random_state):
        return Z[random_state.choice(Z.shape[0], k, replace=False)]

    ours = KMeans(3, init=init, n_init=1, random_state=0, device="cpu").fit(data)
    ref = SkKMeans(3, init=init, n_init=1, random_state=0).fit(data)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10)


def test_overflow_message_suggests_only_what_helps():
    with pytest.raises(ValueError, match=r"overflow float64.*StandardScaler\)\.$"):
        KMeans(2, device="cpu").fit(np.array([[1e200, 0.0], [0.0, 1.0], [1.0, 1.0]]))


def test_a_kmeans_pickled_before_matmul_precision_existed_loads_with_its_default():
    import pickle

    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    km = KMeans(3, random_state=0, device="cpu").fit(X)
    state = km.__getstate__()
    del state["matmul_precision"]  # as an estimator pickled before the parameter was added holds it
    old = KMeans.__new__(KMeans)
    old.__setstate__(state)
    assert old.get_params()["matmul_precision"] == "highest"
    np.testing.assert_array_equal(old.predict(X), km.labels_)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(old)).fit(X).labels_, km.labels_)
