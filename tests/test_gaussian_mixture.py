"""gpuclust.gaussian_mixture: the GaussianMixture estimator against scikit-learn's, its API and numerics."""

import copy
import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import COVARIANCE_TYPES, DEVICES, RTOL, overlapping_blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGMM

from gpuclust import GaussianMixture
from gpuclust.sources import TensorRows

PARAM_SHAPES = {  # K=4, D=6
    "full": {"covariances_": (4, 6, 6), "precisions_": (4, 6, 6), "precisions_cholesky_": (4, 6, 6)},
    "tied": {"covariances_": (6, 6), "precisions_": (6, 6), "precisions_cholesky_": (6, 6)},
    "diag": {"covariances_": (4, 6), "precisions_": (4, 6), "precisions_cholesky_": (4, 6)},
    "spherical": {"covariances_": (4,), "precisions_": (4,), "precisions_cholesky_": (4,)},
}


def shared_init(X, covariance_type, k=4, seed=0):
    """Initial weights, means and precisions both implementations start from.

    Means at random samples, equal weights, and the data's own covariance for every
    component: far enough from the optimum that EM runs for many iterations.
    """
    rng = np.random.RandomState(seed)
    means = X[rng.choice(len(X), k, replace=False)]
    cov = np.cov(X.T, bias=True)
    precision = np.linalg.inv(cov)
    precisions = {
        "full": np.repeat(precision[None], k, axis=0),
        "tied": precision,
        "diag": np.repeat(1.0 / np.diag(cov)[None], k, axis=0),
        "spherical": np.full(k, 1.0 / np.diag(cov).mean()),
    }[covariance_type]
    return {"weights_init": np.full(k, 1.0 / k), "means_init": means, "precisions_init": precisions}


def rel_err(a, b):
    return np.abs(np.asarray(a, dtype=np.float64) - b).max() / np.abs(b).max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_sklearn_from_same_init(covariance_type, dtype, device):
    X, _ = overlapping_blobs(n=1500, d=6, k=4, seed=1)
    init = shared_init(X, covariance_type)
    kw = dict(covariance_type=covariance_type, tol=1e-5, max_iter=500, **init)
    ref = SkGMM(4, **kw).fit(X)
    ours = GaussianMixture(4, device=device, dtype=dtype, **kw).fit(X.astype(dtype))
    rtol = RTOL[dtype]
    assert ref.n_iter_ > 5, "the data should make EM work for a while"
    if dtype == "float64":
        assert ours.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        assert rel_err(getattr(ours, name), getattr(ref, name)) < rtol, name
    # Precisions invert the covariances: their error grows with the condition number
    # (about 1e3 here), which only float32 notices.
    assert rel_err(ours.precisions_, ref.precisions_) < (rtol if dtype == "float64" else 1e-2)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=rtol)
    if dtype == "float64":
        assert ours.converged_ == ref.converged_


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_on_fashion_pca(fashion_pixels, covariance_type):
    from sklearn.decomposition import PCA

    X = PCA(12, random_state=0).fit_transform(fashion_pixels[0][:1500])
    init = shared_init(X, covariance_type, k=5)
    kw = dict(covariance_type=covariance_type, tol=1e-4, max_iter=200, **init)
    ref = SkGMM(5, **kw).fit(X)
    ours = GaussianMixture(5, device="cpu", **kw).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        assert rel_err(getattr(ours, name), getattr(ref, name)) < 1e-6, name
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_same_random_state_gives_sklearns_init_and_fit(covariance_type, init_params, dtype):
    # The same RandomState draws in the same order (our KMeans and k-means++ included), and the
    # initial parameters are scikit-learn's, tied from single-sample starts included (issue 24:
    # it started from the data's covariance and ended at another lower bound).
    X = overlapping_blobs(n=600, d=4, k=3, seed=2)[0].astype(dtype)
    kw = dict(covariance_type=covariance_type, init_params=init_params, random_state=5)
    initial = {est: est(3, max_iter=0, **kw).fit(X) for est in (SkGMM, GaussianMixture)}
    single_sample = init_params in ("k-means++", "random_from_data")
    # float64: a single-sample start's covariance is reg_covar plus cancellation near 1e-13 on both
    # sides. float32: scikit-learn adds 10 float32 epsilons to the counts (1.2e-6 of the weights) and
    # forms a single sample's covariance in float32, where rounding moves reg_covar by 1e-4 (full)
    # to 100% (diag, spherical); gpuclust forms the initial statistics in float64
    # (tests/test_gpu_readiness.py), so there only the tied covariance (of all samples) is compared.
    rtol = 1e-6 if dtype == "float64" else 1e-5
    names = ["weights_", "means_"]
    if dtype == "float64" or not single_sample or covariance_type == "tied":
        names += ["covariances_", "precisions_cholesky_"]
    for name in names:
        assert rel_err(getattr(initial[GaussianMixture], name), getattr(initial[SkGMM], name)) < rtol, name
    ref, ours = SkGMM(3, **kw).fit(X), GaussianMixture(3, device="cpu", **kw).fit(X)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12 if dtype == "float64" else 1e-5)
    if dtype == "float64":
        assert ours.n_iter_ == ref.n_iter_


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_aic_score_and_proba_equal_sklearns(covariance_type):
    X, _ = overlapping_blobs(n=800, d=5, k=3, seed=3)
    init = shared_init(X, covariance_type, k=3)
    ref = SkGMM(3, covariance_type=covariance_type, max_iter=300, **init).fit(X)
    ours = GaussianMixture(3, covariance_type=covariance_type, max_iter=300, device="cpu", **init).fit(X)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-6)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-6)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-6)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-6)
    proba = ours.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba, ref.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parameter_shapes_match_sklearn(covariance_type):
    X, _ = overlapping_blobs(n=400, d=6, k=4, seed=4)
    ours = GaussianMixture(4, covariance_type=covariance_type, random_state=0, device="cpu").fit(X)
    assert ours.weights_.shape == (4,) and ours.means_.shape == (4, 6)
    for name, shape in PARAM_SHAPES[covariance_type].items():
        assert getattr(ours, name).shape == shape, name


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_predict_equals_fit_then_predict(covariance_type):
    X, _ = overlapping_blobs(n=700, d=4, k=3, seed=5)
    gmm = GaussianMixture(3, covariance_type=covariance_type, random_state=1, device="cpu")
    labels = gmm.fit_predict(X)
    np.testing.assert_array_equal(labels, gmm.predict(X))
    np.testing.assert_array_equal(labels, clone(gmm).fit(X).predict(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_tiled_equals_untiled(covariance_type):
    X, _ = overlapping_blobs(n=1000, d=5, k=4, seed=6)
    kw = dict(covariance_type=covariance_type, random_state=0, device="cpu", max_iter=50)
    a = GaussianMixture(4, **kw).fit(X)
    b = GaussianMixture(4, chunk_size=37, **kw).fit(X)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(translation=st.floats(-1e3, 1e3), seed=st.integers(0, 50))
def test_translation_moves_means_and_keeps_everything_else(translation, seed):
    X, _ = overlapping_blobs(n=300, d=3, k=2, seed=seed)
    kw = dict(covariance_type="full", random_state=0, device="cpu", max_iter=30, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(2, **kw).fit(X)
        b = GaussianMixture(2, **kw).fit(X + translation)
    np.testing.assert_allclose(b.means_ - translation, a.means_, atol=1e-6 * (1 + abs(translation)))
    np.testing.assert_allclose(b.covariances_, a.covariances_, rtol=1e-5, atol=1e-8)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(1, 5))
def test_responsibilities_sum_to_one(seed, k):
    X, _ = overlapping_blobs(n=200, d=3, k=3, seed=seed % 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(k, covariance_type="diag", random_state=seed, device="cpu", max_iter=5).fit(X)
    np.testing.assert_allclose(gmm.predict_proba(X).sum(1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_samples_recover_the_parameters(covariance_type):
    X, _ = overlapping_blobs(n=600, d=3, k=2, seed=7)
    gmm = GaussianMixture(2, covariance_type=covariance_type, random_state=0, device="cpu").fit(X)
    S, y = gmm.sample(60000)
    assert S.shape == (60000, 3) and y.shape == (60000,)
    np.testing.assert_allclose(np.bincount(y) / 60000, gmm.weights_, atol=0.01)
    for k in range(2):
        np.testing.assert_allclose(S[y == k].mean(0), gmm.means_[k], atol=0.06)
        cov = np.cov(S[y == k].T, bias=True)
        expected = {
            "full": lambda: gmm.covariances_[k],
            "tied": lambda: gmm.covariances_,
            "diag": lambda: np.diag(gmm.covariances_[k]),
            "spherical": lambda: np.eye(3) * gmm.covariances_[k],
        }[covariance_type]()
        np.testing.assert_allclose(cov, expected, atol=0.08 * np.abs(expected).max())


def test_warm_start_continues_from_last_fit():
    X, _ = overlapping_blobs(n=800, d=4, k=3, seed=8)
    kw = dict(covariance_type="full", random_state=0, device="cpu", tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ws = GaussianMixture(3, max_iter=5, warm_start=True, **kw).fit(X)
        first = ws.lower_bound_
        ws.fit(X)
        straight = GaussianMixture(3, max_iter=10, **kw).fit(X)
    assert ws.lower_bound_ >= first - 1e-12 * abs(first)  # EM never goes down, up to rounding
    np.testing.assert_allclose(ws.means_, straight.means_, rtol=1e-9)


def test_n_init_keeps_best_and_is_deterministic():
    X, _ = overlapping_blobs(n=600, d=3, k=4, seed=9)
    a = GaussianMixture(4, n_init=3, init_params="random", random_state=2, device="cpu").fit(X)
    b = GaussianMixture(4, n_init=3, init_params="random", random_state=2, device="cpu").fit(X)
    assert a.lower_bound_ == b.lower_bound_
    c = GaussianMixture(4, n_init=1, init_params="random", random_state=2, device="cpu").fit(X)
    assert a.lower_bound_ >= c.lower_bound_


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_fits(init_params):
    X, y = overlapping_blobs(n=600, d=3, k=3, seed=10)
    gmm = GaussianMixture(3, init_params=init_params, random_state=0, device="cpu").fit(X)
    assert np.isfinite(gmm.lower_bound_) and gmm.converged_


def test_not_converged_warns():
    X, _ = overlapping_blobs(n=500, d=3, k=3, seed=11)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        GaussianMixture(3, max_iter=1, random_state=0, device="cpu").fit(X)


def test_failed_cholesky_names_component_and_remedies():
    X = np.vstack([np.random.RandomState(0).randn(50, 3), np.ones((50, 3))])
    with pytest.raises(ValueError, match=r"ill-defined empirical covariance.*reg_covar"):
        GaussianMixture(2, covariance_type="full", reg_covar=0, init_params="kmeans", random_state=0, device="cpu").fit(
            X
        )


def test_float32_hint_in_failure_message():
    X = np.vstack([np.random.RandomState(0).randn(50, 3), np.ones((50, 3))]).astype(np.float32)
    with pytest.raises(ValueError, match="float64"):
        GaussianMixture(2, covariance_type="diag", reg_covar=0, random_state=0, device="cpu").fit(X)


def test_output_type_follows_input():
    X, _ = overlapping_blobs(n=300, d=3, k=2)
    gmm = GaussianMixture(2, random_state=0, device="cpu").fit(torch.as_tensor(X))
    assert isinstance(gmm.means_, torch.Tensor)
    assert isinstance(gmm.predict(X), np.ndarray)
    assert isinstance(gmm.predict_proba(torch.as_tensor(X)), torch.Tensor)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"covariance_type": "banded"}, "covariance_type"),
        ({"init_params": "magic"}, "init_params"),
        ({"n_components": 0}, "n_components"),
        ({"n_components": 500}, "Expected n_samples >= n_components but got n_components = 500, n_samples = 50"),
        ({"reg_covar": -1.0}, "reg_covar"),
        ({"weights_init": [0.5, 0.6]}, "should be normalized"),
        ({"weights_init": [1.0]}, "The parameter .weights. should have the shape"),
        ({"means_init": np.zeros((2, 5))}, "The parameter .means. should have the shape"),
        ({"precisions_init": -np.ones((2, 3)), "covariance_type": "diag"}, "should be positive"),
        ({"precisions_init": np.array([[[1, 2, 0], [0, 1, 0], [0, 0, 1]]] * 2)}, "symmetric"),
    ],
)
def test_bad_parameters(kw, match):
    X = np.random.RandomState(0).rand(50, 3)
    params = {"n_components": 2, "device": "cpu"} | kw
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**params).fit(X)


@pytest.mark.parametrize(
    "X,match",
    [
        (np.array([[0.0, np.inf], [1, 1], [2, 2]]), "NaN or infinity"),
        (np.zeros(10), "Reshape your data"),
        (np.array([["x", "y"]] * 3), "numeric"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(1, device="cpu").fit(X)


def test_unfitted_and_feature_mismatch():
    with pytest.raises(NotFittedError):
        GaussianMixture(2).predict(np.random.rand(4, 2))
    gmm = GaussianMixture(2, device="cpu", random_state=0).fit(np.random.RandomState(0).rand(40, 3))
    with pytest.raises(ValueError, match="X has 2 features"):
        gmm.predict(np.random.rand(4, 2))


# ------------------------------------------------------------------ drop-in parity with scikit-learn (issue 14)
def test_invalid_hyper_parameters_raise_sklearns_error():
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.random.RandomState(0).rand(30, 2)
    bad = [{"n_components": 0}, {"covariance_type": "banded"}, {"verbose_interval": 0}, {"tol": -1.0},
           {"init_params": "magic"}, {"warm_start": "yes"}, {"memory_budget": 0},
           {"reg_covar": float("inf")}]  # fmt: skip
    for kw in bad:
        with pytest.raises(InvalidParameterError, match=r"The '\w+' parameter of GaussianMixture must be"):
            GaussianMixture(device="cpu", **kw).fit(X)


def test_feature_names_and_pandas_missing_values():
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).rand(40, 2)
    gmm = GaussianMixture(2, random_state=0, device="cpu").fit(pd.DataFrame(X, columns=["u", "v"]))
    np.testing.assert_array_equal(gmm.feature_names_in_, ["u", "v"])
    with pytest.raises(ValueError, match="missing values"):
        GaussianMixture(2, device="cpu").fit(pd.DataFrame({"u": pd.array([1.0, None, 2.0, 3.0], dtype="Float64")}))


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.float32])
def test_input_dtype_rule_on_cpu_as_sklearn(dtype):
    X = np.round(np.random.RandomState(0).rand(60, 2) * 10).astype(dtype)
    gmm = GaussianMixture(2, random_state=0, device="cpu").fit(X)
    assert gmm.means_.dtype == (np.float32 if dtype == np.float32 else np.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_requires_grad_and_meta_tensors(device):
    X = torch.randn(60, 2, dtype=torch.float64, device=device, requires_grad=True)
    gmm = GaussianMixture(2, random_state=0, device=device).fit(X)
    outputs = [gmm.means_, gmm.predict_proba(X), gmm.score_samples(X), gmm.fit_predict(X)]
    assert all(not t.requires_grad and t.grad_fn is None for t in outputs)
    with pytest.raises(ValueError, match="'meta' device"):
        GaussianMixture(2, device=device).fit(torch.empty(10, 2, device="meta"))


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stacked_tiles_give_the_unstacked_log_probabilities(covariance_type, dtype):
    # The E-step of diag and spherical fits works on [x, x*x]; predictions of one sample at a
    # time and the per-type formulas must agree with it.
    from sklearn.datasets import make_blobs

    import gpuclust._gmm_numerics as gmn

    X, _ = make_blobs(500, 7, centers=4, random_state=1)
    X = X.astype(dtype)
    est = GaussianMixture(4, covariance_type=covariance_type, device="cpu", random_state=0, chunk_size=64).fit(X)
    params = est._current_params()
    working = params.working(est._dtype, covariance_type)
    Xs = torch.from_numpy(X) - est._shift.to(est._dtype)
    stacked = working.weighted_log_prob(Xs)
    prec = params.precisions_cholesky**2  # (K, D) or (K,)
    prec = prec if covariance_type == "diag" else prec.unsqueeze(1).expand(4, 7)
    diff = Xs.double().unsqueeze(1) - params.means.unsqueeze(0)  # (n, K, D)
    plain = (-0.5 * (diff * diff * prec).sum(2) + working.const.double()).to(stacked.dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    torch.testing.assert_close(stacked, plain, rtol=tol, atol=tol)
    for keep in (False, True):
        buffers = gmn.StackedTiles(500, 64, 7, covariance_type, est._dtype, torch.device("cpu"), keep=keep)
        assert buffers.z64 is None  # allocated on the first pass, not before
        rows = TensorRows(torch.from_numpy(X))
        for _ in range(2):  # kept: formed on the first pass, read as they are on the second
            tiles = buffers.tiles(rows, 64, est._shift.to(est._dtype))
            for start, (Z, Z64) in zip(range(0, 500, 64), tiles, strict=True):
                Xs_tile = Xs[start : start + 64]
                torch.testing.assert_close(Z[:, :7], Xs_tile, rtol=0, atol=0)
                squares = Xs_tile.double() ** 2
                # diag: every square; spherical: only their sum (D + 1 columns, not 2D)
                squares = squares if covariance_type == "diag" else squares.sum(1, keepdim=True)
                torch.testing.assert_close(Z64[:, 7:], squares)
                assert Z64.dtype == torch.float64 and Z.shape[1] == 7 + squares.shape[1]
                torch.testing.assert_close(Z, Z64.to(Z.dtype), rtol=0, atol=0)
                if covariance_type == "diag":  # rounded from float64: the bits of squares in the dtype
                    torch.testing.assert_close(Z[:, 7:], Xs_tile * Xs_tile, rtol=0, atol=0)
        assert buffers.filled == keep


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk_size", [7, 700, None])
def test_kept_stacked_rows_give_the_same_fit_bit_for_bit(covariance_type, dtype, chunk_size, monkeypatch):
    # Whether the stacked rows are kept for the fit (a budget they fit in) or formed on every
    # pass (a budget they do not fit in), the tiles and so every sum are the same.
    # MKL's float64 GEMM rounds differently for differently aligned operands: kept tiles packed
    # back to back (7 rows of 7 float64 start 392 bytes apart) gave other bits than the per-pass
    # buffer now and then (lower_bound_ 1 ulp apart). Every tile the products read starts on a
    # 64-byte boundary, kept or not.
    from sklearn.datasets import make_blobs

    import gpuclust._gmm_numerics as gmn

    X, _ = make_blobs(3000, 6, centers=5, random_state=2)
    X = (X + 40.0).astype(dtype)
    width = 6 + (6 if covariance_type == "diag" else 1)
    kw = dict(covariance_type=covariance_type, device="cpu", random_state=0, n_init=2, max_iter=15)
    fits = {}
    for keep, budget in ((True, 3000 * width * 8), (False, 3000 * width * 8 - 1)):
        est = GaussianMixture(5, memory_budget=budget, chunk_size=chunk_size or 3000, **kw)
        used, make = [], GaussianMixture._stacked_tiles

        def spy(self, rows, plan, make=make, used=used):
            used.append(make(self, rows, plan))
            return used[-1]

        monkeypatch.setattr(GaussianMixture, "_stacked_tiles", spy)  # what the fit itself uses
        offsets, accumulate = set(), gmn.accumulate_stats_stacked

        def aligned(stats, Z64, resp, *args, offsets=offsets, accumulate=accumulate):
            offsets.add(Z64.data_ptr() % 64)
            return accumulate(stats, Z64, resp, *args)

        monkeypatch.setattr(gmn, "accumulate_stats_stacked", aligned)
        fits[keep] = est.fit(X)
        assert [(u.keep, u.filled) for u in used] == [(keep, keep)]
        assert offsets == {0}, f"tiles at {sorted(offsets)} bytes past a 64-byte boundary (keep={keep})"
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_", "n_iter_"):
        a, b = getattr(fits[True], name), getattr(fits[False], name)
        assert np.array_equal(np.asarray(a), np.asarray(b)), name


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_and_predict_see_the_same_log_probabilities_bit_for_bit(covariance_type, dtype, monkeypatch):
    # The fit's E-step reads the stacked tiles; predict stacks each tile itself. Both must give
    # the same bits, or a near-tie could be labelled one way by the fit and another by predict
    # (float32 spherical: the norm is summed in float64 and rounded on both paths).
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(900, 50)) * rng.uniform(0.5, 3.0, size=50) + 7.0).astype(dtype)
    est = GaussianMixture(4, covariance_type=covariance_type, device="cpu", random_state=0, max_iter=5, chunk_size=250)
    plan = _fit_plan(est, X, monkeypatch)
    assert plan.tile_rows == 250 and plan.keep_stacked
    working = est._current_params().working(est._dtype, covariance_type)
    rows = TensorRows(torch.from_numpy(X))
    shift = est._shift.to(est._dtype)
    for keep in (False, True):
        stacked = est._stacked_tiles(rows, dataclasses.replace(plan, keep_stacked=keep))
        for start, (Z, _) in zip(range(0, 900, 250), stacked.tiles(rows, 250, shift), strict=True):
            Xs = torch.from_numpy(X[start : start + Z.shape[0]]) - shift
            fit_side = working.weighted_log_prob_stacked(Z)
            torch.testing.assert_close(fit_side, working.weighted_log_prob(Xs), rtol=0, atol=0)


# ------------------------------------------------------------------ scikit-learn's error texts (issue 24)
# The regexes are scikit-learn 1.9's own, from sklearn/mixture/tests/test_gaussian_mixture.py: the
# text of an error is part of the API a drop-in replacement keeps.
def test_weights_init_errors_are_sklearns():
    rng = np.random.RandomState(0)
    X = rng.rand(50, 3)
    g = GaussianMixture(2, device="cpu")
    g.weights_init = bad_shape = rng.rand(2, 1)
    msg = re.escape(f"The parameter 'weights' should have the shape of (2,), but got {bad_shape.shape}")
    with pytest.raises(ValueError, match=msg):
        g.fit(X)
    g.weights_init = bad_range = rng.rand(2) + 1
    # scikit-learn prints the minimum as "max value" and the maximum as "min value"; its test pins that.
    msg = re.escape(
        "The parameter 'weights' should be in the range [0, 1], but got"
        f" max value {np.min(bad_range):.5f}, min value {np.max(bad_range):.5f}"
    )
    with pytest.raises(ValueError, match=msg):
        g.fit(X)
    bad_norm = rng.rand(2)
    g.weights_init = bad_norm = bad_norm / (bad_norm.sum() + 1)
    msg = re.escape(f"The parameter 'weights' should be normalized, but got sum(weights) = {np.sum(bad_norm):.5f}")
    with pytest.raises(ValueError, match=msg):
        g.fit(X)
    g.weights_init = np.array([0.5, 0.5 + 1e-7])  # float64: scikit-learn's tolerance is 1e-8
    with pytest.raises(ValueError, match="should be normalized"):
        g.fit(X)
    g.weights_init = np.array([0.5, 0.5 + 1e-7], dtype=np.float32)  # float32: 1e-6
    g.fit(X)


def test_means_init_shape_error_is_sklearns():
    X = np.random.RandomState(0).rand(50, 3)
    for bad in (np.zeros((3, 3)), np.zeros(6)):
        msg = re.escape(f"The parameter 'means' should have the shape of (2, 3), but got {bad.shape}")
        with pytest.raises(ValueError, match=msg):
            GaussianMixture(2, means_init=bad, device="cpu").fit(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precisions_init_errors_are_sklearns(covariance_type):
    K, D = 2, 3
    X = np.random.RandomState(0).rand(50, D)
    bad_shape = {"full": np.ones((K + 1, D, D)), "tied": np.ones((D + 1, D + 1)),
                 "diag": np.ones((K + 1, D)), "spherical": np.ones(K + 1)}[covariance_type]  # fmt: skip
    not_pos = np.ones((K, D, D))
    not_pos[0] = np.eye(D)
    not_pos[0, 0, 0] = -1.0
    not_positive = {"full": not_pos, "tied": not_pos[0], "diag": np.full((K, D), -1.0),
                    "spherical": np.full(K, -1.0)}[covariance_type]  # fmt: skip
    asymmetric = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = "symmetric, positive-definite" if covariance_type in ("full", "tied") else "positive"
    g = GaussianMixture(K, covariance_type=covariance_type, device="cpu")
    g.precisions_init = bad_shape
    msg = re.escape(f"The parameter '{covariance_type} precision' should have the shape of")
    with pytest.raises(ValueError, match=msg + re.escape(f" {np.shape(not_positive)}, but got {bad_shape.shape}")):
        g.fit(X)
    g.precisions_init = not_positive
    with pytest.raises(ValueError, match=re.escape(f"'{covariance_type} precision' should be {expected}")):
        g.fit(X)
    if covariance_type in ("full", "tied"):
        g.precisions_init = asymmetric if covariance_type == "tied" else np.stack([np.eye(D), asymmetric])
        with pytest.raises(ValueError, match=re.escape(f"'{covariance_type} precision' should be {expected}")):
            g.fit(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ill_defined_covariance_error_is_sklearns(covariance_type, dtype):
    # scikit-learn's test_regularisation: two collapsed clusters, ten components, no regularization.
    X = np.vstack((np.ones((5, 5)), np.zeros((5, 5)))).astype(dtype)
    msg = re.escape(
        "Fitting the mixture model failed because some components have"
        " ill-defined empirical covariance (for instance caused by "
        "singleton or collapsed samples). Try to decrease the number "
        "of components, increase reg_covar, or scale the input data."
    )
    if dtype == np.float32:
        msg += re.escape(" The numerical accuracy can also be improved by passing float64 data instead of float32.")
    gmm = GaussianMixture(10, reg_covar=0, covariance_type=covariance_type, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=msg):
            gmm.fit(X)
        gmm.set_params(reg_covar=1e-6).fit(X)


def test_sample_of_no_samples_is_sklearns_error():
    gmm = GaussianMixture(2, random_state=0, device="cpu")
    with pytest.raises(NotFittedError, match="This GaussianMixture instance is not fitted"):
        gmm.sample(0)
    gmm.fit(np.random.RandomState(0).rand(40, 3))
    for bad in (0, -3):
        msg = re.escape(f"Invalid value for 'n_samples': {bad} . The sampling requires at least one sample.")
        with pytest.raises(ValueError, match=msg):
            gmm.sample(bad)
    with pytest.raises(ValueError, match="n_samples=2.5 must be an integer"):
        gmm.sample(2.5)


# ------------------------------------------------------------------ no autocast (issue 24)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_autocast_changes_nothing(covariance_type):
    # Only matmul_precision may choose a lower precision: inside torch.autocast every method
    # computes as outside it, bit for bit.
    X, _ = overlapping_blobs(n=600, d=5, k=3, seed=12, dtype=np.float32)
    kw = dict(covariance_type=covariance_type, random_state=0, device="cpu", tol=1e-6)
    plain = GaussianMixture(3, **kw).fit(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = GaussianMixture(3, **kw).fit(X)
        labels = GaussianMixture(3, **kw).fit_predict(X)
        calls = {name: getattr(plain, name)(X) for name in ("predict", "predict_proba", "score_samples", "score",
                                                               "bic", "aic")}  # fmt: skip
        sample = plain.sample(50)
    assert (inside.lower_bound_, inside.n_iter_) == (plain.lower_bound_, plain.n_iter_)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        np.testing.assert_array_equal(getattr(inside, name), getattr(plain, name), err_msg=name)
    np.testing.assert_array_equal(labels, plain.predict(X))
    for name, value in calls.items():
        np.testing.assert_array_equal(value, getattr(plain, name)(X), err_msg=name)
    for a, b in zip(sample, plain.sample(50)):
        np.testing.assert_array_equal(a, b)


def test_public_methods_keep_their_signature_and_docs():
    import inspect

    for name in ("fit", "fit_predict", "predict", "predict_proba", "score_samples", "score", "bic", "aic", "sample"):
        method = getattr(GaussianMixture, name)
        assert method.__name__ == name and method.__doc__ and method.__doc__.strip(), name
        assert "self" in inspect.signature(method).parameters, name
    assert list(inspect.signature(GaussianMixture.fit).parameters) == ["self", "X", "y"]


# ------------------------------------------------------------------ the public attributes are the model (issue 24)
def _numpy(a):
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _sklearn_from_attributes(gmm):
    """scikit-learn's GaussianMixture holding gpuclust's public attributes (in float64)."""
    ref = SkGMM(gmm.n_components, covariance_type=gmm.covariance_type, random_state=gmm.random_state)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        setattr(ref, name, _numpy(getattr(gmm, name)).astype(np.float64))
    ref.n_features_in_, ref.converged_ = gmm.n_features_in_, True
    return ref


def _edit_in_place(gmm, name):
    a = getattr(gmm, name)
    if name == "means_":
        a[0] += 100
    elif name == "weights_":
        a[0] *= 1e-3
    elif gmm.covariance_type == "tied":
        a[0, 0] *= 3  # stays upper triangular
    else:
        a[0] *= 3


@pytest.mark.parametrize("output", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", ["means_", "weights_", "precisions_cholesky_"])
def test_in_place_edits_of_the_attributes_change_inference(name, covariance_type, dtype, output):
    # scikit-learn's predict, predict_proba and score_samples read weights_, means_ and
    # precisions_cholesky_: an edit of them, in place or by assignment, changes what they return.
    X, _ = overlapping_blobs(n=500, d=4, k=3, seed=13, dtype=dtype)
    X = torch.from_numpy(X) if output == "torch" else X
    gmm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, device="cpu")
    labels = gmm.fit_predict(X)
    assert isinstance(getattr(gmm, name), torch.Tensor if output == "torch" else np.ndarray)
    original = {n: getattr(gmm, n) + 0 for n in ("weights_", "means_", "precisions_cholesky_")}
    before = _numpy(gmm.score_samples(X))
    _edit_in_place(gmm, name)
    ref = _sklearn_from_attributes(gmm)
    X64 = _numpy(X).astype(np.float64)
    after = _numpy(gmm.score_samples(X))
    assert np.abs(after - before).max() > 1e-3, "the edit was ignored"
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(after, ref.score_samples(X64), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(_numpy(gmm.predict_proba(X)), ref.predict_proba(X64), atol=rtol)
    assert gmm.score(X) == pytest.approx(ref.score(X64), rel=rtol)
    # Labels as scikit-learn's, wherever its two best components are not within rounding of each other.
    log_proba = np.sort(np.log(np.maximum(ref.predict_proba(X64), 1e-300)), axis=1)
    clear = log_proba[:, -1] - log_proba[:, -2] > (1e-9 if dtype == np.float64 else 1e-3)
    np.testing.assert_array_equal(_numpy(gmm.predict(X))[clear], ref.predict(X64)[clear])
    # Assigning the fitted values back restores the fit itself: predict equals fit_predict bit for bit.
    for n, value in original.items():
        setattr(gmm, n, value)
    np.testing.assert_array_equal(_numpy(gmm.predict(X)), _numpy(labels))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_edits_survive_a_pickle_round_trip_and_unedited_copies_predict_as_the_fit(dtype):
    import pickle

    X, _ = overlapping_blobs(n=500, d=4, k=3, seed=14, dtype=dtype)
    gmm = GaussianMixture(3, covariance_type="full", random_state=0, device="cpu")
    labels = gmm.fit_predict(X)
    copy = pickle.loads(pickle.dumps(gmm))
    np.testing.assert_array_equal(copy.predict(X), labels)  # bit for bit: the fit's own parameters
    copy.means_[0] += 100
    np.testing.assert_array_equal(gmm.predict(X), labels)  # the original is untouched
    edited = pickle.loads(pickle.dumps(copy))
    ref = _sklearn_from_attributes(copy)
    for est in (copy, edited):
        np.testing.assert_allclose(est.score_samples(X), ref.score_samples(X.astype(np.float64)),
                                   rtol=1e-10 if dtype == np.float64 else 1e-4)  # fmt: skip
    assert not np.array_equal(copy.predict(X), labels)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_sample_reads_weights_means_and_covariances_as_sklearn(covariance_type):
    # scikit-learn's sample reads weights_, means_ and covariances_; for diag and spherical it draws
    # the same numbers from the same random_state as gpuclust, so the samples are equal.
    X, _ = overlapping_blobs(n=500, d=4, k=3, seed=15)
    gmm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, device="cpu").fit(X)
    gmm.means_[1] -= 50
    gmm.covariances_[2] *= 4
    gmm.weights_[:] = [0.2, 0.5, 0.3]
    ref = _sklearn_from_attributes(gmm)
    for ours, theirs in zip(gmm.sample(2000), ref.sample(2000)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_warm_start_starts_from_edited_attributes():
    X, _ = overlapping_blobs(n=500, d=4, k=3, seed=16)
    kw = dict(covariance_type="diag", random_state=0, device="cpu", max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(3, warm_start=True, **kw).fit(X)
        ref = SkGMM(3, warm_start=True, **{k: v for k, v in kw.items() if k != "device"}).fit(X)
        for est in (ours, ref):
            est.means_[0] += 3
            est.fit(X)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-9)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9)


# ------------------------------------------------------------------ every method sees the geometry fit saw (issue 24)
@pytest.mark.parametrize("offset", [1e4, 1e8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_methods_after_a_fit_far_from_the_origin_see_the_fits_geometry(covariance_type, dtype, offset):
    # The fit subtracts the data mean; predict, score_samples and score must subtract the same.
    # (float32 at 1e8 rounds the data to multiples of 8: only the consistency is checked there.)
    X0, _ = overlapping_blobs(n=800, d=4, k=3, seed=21)
    X = (X0 + offset).astype(dtype)
    tol = 1e-8 if dtype == np.float64 else 1e-6  # float32's lower bound is noisy below that
    kw = dict(covariance_type=covariance_type, random_state=0, device="cpu", tol=tol, max_iter=500)
    gmm = GaussianMixture(3, **kw)
    labels = gmm.fit_predict(X)
    np.testing.assert_array_equal(gmm.predict(X), labels)
    np.testing.assert_array_equal(gmm.predict_proba(X).argmax(1), labels)
    score = gmm.score(X)
    assert score == pytest.approx(np.mean(gmm.score_samples(X), dtype=np.float64), rel=1e-12)
    # score is the lower bound one more E-step would give: within the tolerance of lower_bound_.
    assert gmm.converged_ and abs(score - gmm.lower_bound_) < (1e-7 if dtype == np.float64 else 1e-5)
    if dtype == np.float64:  # the same fit as at the origin
        at_origin = GaussianMixture(3, **kw).fit(X0)
        assert gmm.lower_bound_ == pytest.approx(at_origin.lower_bound_, rel=1e-9)
        np.testing.assert_array_equal(labels, at_origin.predict(X0))
        np.testing.assert_allclose(gmm.means_ - offset, at_origin.means_, atol=1e-6)


# -------------------------------------------------------------- one plan per fit; inference writes nothing (issue 25)
def _fit_plan(est, X, monkeypatch):
    """Fit ``est`` on X and return the :class:`_FitPlan` the fit passed to its helpers."""
    plans, make = [], GaussianMixture._stacked_tiles

    def spy(self, rows, plan):
        plans.append(plan)
        return make(self, rows, plan)

    with monkeypatch.context() as patch:
        patch.setattr(GaussianMixture, "_stacked_tiles", spy)
        est.fit(X)
    (plan,) = plans
    return plan


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        fields = [f.name for f in dataclasses.fields(a)]
        return type(a) is type(b) and all(_equal(getattr(a, f), getattr(b, f)) for f in fields)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if type(a).__eq__ is object.__eq__:  # compared by identity: compare what it holds
        return type(a) is type(b) and _equal(getattr(a, "__dict__", {}), getattr(b, "__dict__", {}))
    return a == b


def _assert_state_unchanged(est, before, what):
    """Every attribute is still the same object, holding the same value (an in-place change shows too)."""
    assert est.__dict__.keys() == before.keys(), f"{what}: {set(est.__dict__) ^ set(before)}"
    for name, (obj, value) in before.items():
        assert est.__dict__[name] is obj and _equal(obj, value), f"{what} changed {name}"


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_inference_writes_no_attribute(covariance_type, tmp_path):
    # Tile rows for inference are worked out per call: predict(X[:10]) used to store its own
    # (10) as the estimator's, over the fit's.
    X, _ = overlapping_blobs(n=600, d=4, k=3, seed=12)
    path = tmp_path / "X.npy"
    np.save(path, X)
    est = GaussianMixture(3, covariance_type=covariance_type, random_state=0, device="cpu", max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    before = {name: (value, copy.deepcopy(value)) for name, value in est.__dict__.items()}
    calls = {
        "predict(X[:10])": lambda: est.predict(X[:10]),
        "predict_proba": lambda: est.predict_proba(X[:7]),
        "score_samples": lambda: est.score_samples(X),
        "score": lambda: est.score(X[:13]),
        "bic": lambda: est.bic(X),
        "aic": lambda: est.aic(X[:50]),
        "sample": lambda: est.sample(5),
        "predict(path)": lambda: est.predict(str(path), out=np.empty(600, np.int64)),
        "score(path)": lambda: est.score(str(path)),
    }
    for what, call in calls.items():
        call()
        _assert_state_unchanged(est, before, what)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_fit_stores_its_plan_nowhere(covariance_type, monkeypatch):
    # The settings a fit works out (communicator, rows over all ranks, tile rows, the tied scatter
    # matrix) are passed to its helpers in one frozen plan; only the data offset, device and dtype
    # stay after it, as fitted state.
    X, _ = overlapping_blobs(n=500, d=3, k=3, seed=13)
    est = GaussianMixture(3, covariance_type=covariance_type, random_state=0, device="cpu", chunk_size=120)
    plan = _fit_plan(est, X, monkeypatch)
    assert (plan.n_global, plan.tile_rows, plan.device, plan.dtype) == (500, 120, torch.device("cpu"), torch.float64)
    assert plan.shift is est._shift
    torch.testing.assert_close(plan.shift, torch.from_numpy(X.mean(0)), rtol=1e-14, atol=0)
    assert (plan.xtx is not None) == (covariance_type == "tied")
    assert plan.keep_stacked == (covariance_type in ("diag", "spherical"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.tile_rows = 1
    assert not {"_comm", "_chunk_rows", "_xtx", "_n_global"} & set(vars(est))
    # fit_predict leaves exactly the attributes fit leaves
    other = GaussianMixture(3, covariance_type=covariance_type, random_state=0, device="cpu", chunk_size=120)
    other.fit_predict(X)
    assert vars(other).keys() == vars(est).keys()


@pytest.mark.parametrize("out_of_core", [False, True])
def test_inner_kmeans_gets_the_tiling_settings(out_of_core, tmp_path, monkeypatch):
    # init_params="kmeans": gpuclust's KMeans runs under the mixture's chunk_size and memory_budget,
    # with the torch backend on the same device and dtype.
    import gpuclust.gaussian_mixture as module

    made, real = [], module.KMeans
    monkeypatch.setattr(module, "KMeans", lambda **kw: made.append(real(**kw)) or made[-1])
    X, _ = overlapping_blobs(n=400, d=3, k=3, seed=14, dtype=np.float32)
    if out_of_core:
        np.save(tmp_path / "X.npy", X)
    est = GaussianMixture(3, random_state=0, device="cpu", chunk_size=55, memory_budget=1 << 16, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(str(tmp_path / "X.npy") if out_of_core else X)
    (km,) = made
    assert (km.chunk_size, km.memory_budget, km.backend) == (55, 1 << 16, "torch")
    assert (km.device, km.dtype, km.distributed) == (torch.device("cpu"), torch.float32, False)


@pytest.mark.parametrize("method", ["fit", "fit_predict"])
def test_convergence_warning_points_at_the_callers_line(method):
    X, _ = overlapping_blobs(n=500, d=3, k=3, seed=11)
    est = GaussianMixture(3, max_iter=1, init_params="random", random_state=0, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(est, method)(X)
    (warning,) = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert warning.filename == __file__, warning.filename


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_matrix_batched_and_one_at_a_time_give_the_same_bits(dtype):
    # On a GPU large (K, D, D) batches are factorized one matrix at a time; either way on any device.
    import gpuclust._gmm_numerics as gmn

    A = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spd = (A @ A.transpose(1, 2) + 5 * torch.eye(5, dtype=torch.float64)).to(dtype)
    results = {}
    for one_at_a_time in (False, True):
        shapes = []

        def cholesky_ex(batch, shapes=shapes):
            shapes.append(tuple(batch.shape))
            return torch.linalg.cholesky_ex(batch)

        chol, info = gmn._per_matrix(cholesky_ex, spd, one_at_a_time=one_at_a_time)
        plain = gmn._per_matrix(torch.linalg.cholesky, spd, one_at_a_time=one_at_a_time)
        results[one_at_a_time] = (shapes, (chol, info, plain))
    assert results[False][0] == [(3, 5, 5)] and results[True][0] == [(1, 5, 5)] * 3
    for a, b in zip(results[False][1], results[True][1], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert not bool(results[False][1][1].any())  # every matrix factorized
    assert gmn._per_matrix(lambda b: [tuple(b.shape)], spd) == [(3, 5, 5)]  # None on the CPU: batched


# --- details a scikit-learn user relies on without thinking (hostile review) ----------------------


def test_float32_mixture_far_from_the_origin_with_kmeans_init():
    X, y = make_blobs(1500, centers=3, n_features=4, random_state=0)
    X = (X + 1e5).astype(np.float32)
    gmm = GaussianMixture(3, covariance_type="tied", random_state=0, device="cpu").fit(X)
    assert adjusted_rand_score(y, gmm.predict(X)) > 0.99


def _fitted_mixture():
    X = np.random.RandomState(0).rand(100, 3)
    return X, GaussianMixture(2, random_state=0, device="cpu").fit(X)


@pytest.mark.parametrize(
    "bad",
    [
        lambda rng: np.vstack([rng.rand(99, 3), [[1e200, 0, 0]]]),  # overflows in the KMeans init
        lambda rng: np.zeros((50, 5)),  # 5 features, degenerate: the Cholesky fails with reg_covar=0
    ],
)
def test_a_mixture_fit_that_fails_leaves_the_model_as_it_was(bad):
    X, gmm = _fitted_mixture()
    before = (gmm.score(X), gmm.n_features_in_, gmm.means_.copy())
    gmm.set_params(reg_covar=0.0)
    with warnings.catch_warnings(), pytest.raises(ValueError):
        warnings.simplefilter("ignore")
        gmm.fit(bad(np.random.RandomState(1)))
    gmm.set_params(reg_covar=1e-6)
    assert (gmm.score(X), gmm.n_features_in_) == before[:2]
    np.testing.assert_array_equal(gmm.means_, before[2])


def test_assigned_mixture_parameters_are_the_model():
    from sklearn.mixture import GaussianMixture as SkGMM

    X, _ = make_blobs(300, centers=2, random_state=0)
    ours = GaussianMixture(2, covariance_type="diag", random_state=0, device="cpu").fit(X)
    ref = SkGMM(2, covariance_type="diag", random_state=0).fit(X)
    for est in (ours, ref):
        est.means_ = np.array([[0.0, 0.0], [5.0, 5.0]])
        est.weights_ = np.array([0.3, 0.7])
        est.precisions_cholesky_ = np.ones((2, 2))
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-10)


# --- float32 and low-precision numerics, tile sizes (what a GPU would break) ----------------------


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


def test_tiles_are_sized_by_their_total_memory():
    # Full covariance: a row costs K*D in the working dtype and K*D in float64 for the statistics.
    import gpuclust._gmm_numerics as gm

    assert gm.tile_bytes_per_row("full", 10, 6272, 4) == 10 * 6272 * 12 + 8 * 6272 + 160
    est = GaussianMixture(10, covariance_type="full", device="cpu", memory_budget=512 << 20)
    rows = est._tile_rows(48000, 6272, 10, torch.device("cpu"), torch.float32)
    per_row = gm.tile_bytes_per_row("full", 10, 6272, 4)
    most = (512 << 20) // per_row  # the most rows the budget allows; tiles are then made equal
    assert rows * per_row <= 512 << 20 < (most + 1) * per_row
    assert math.ceil(48000 / rows) == math.ceil(48000 / most) and rows == math.ceil(48000 / math.ceil(48000 / most))


# ------------------------------------------------------------------ issue 26: the fused E-step is chosen once per fit
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_e_step_is_never_chosen_on_a_cpu(covariance_type, dtype, monkeypatch):
    gmm = GaussianMixture(2, covariance_type=covariance_type, random_state=0, device="cpu")
    assert gmm._uses_fused_e_step(torch.device("cpu"), dtype) is False
    seen = []
    original = GaussianMixture._e_step
    monkeypatch.setattr(
        GaussianMixture,
        "_e_step",
        lambda self, X, p, s, plan: seen.append(plan.fused_e_step) or original(self, X, p, s, plan),
    )
    gmm.fit(np.random.RandomState(0).rand(50, 3))
    assert seen and not any(seen)


@pytest.mark.parametrize(
    "covariance_type, dtype, precision, chosen",
    [("diag", torch.float32, "highest", True), ("spherical", torch.float32, "highest", True),
     ("full", torch.float32, "highest", False), ("tied", torch.float32, "highest", False),
     ("diag", torch.float64, "highest", False), ("diag", torch.float32, "tf32", False)],
)  # fmt: skip
def test_the_fused_e_step_is_for_float32_diag_and_spherical_on_cuda_with_triton(
    covariance_type, dtype, precision, chosen
):
    import importlib.util

    gmm = GaussianMixture(2, covariance_type=covariance_type, matmul_precision=precision)
    has_triton = importlib.util.find_spec("triton") is not None
    assert gmm._uses_fused_e_step(torch.device("cuda"), dtype) is (chosen and has_triton)


def test_the_library_works_without_triton():
    # A meta-path finder that refuses triton stands in for an install without the [triton] extra.
    code = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'triton':
            raise ImportError('triton is not installed (test)')
sys.meta_path.insert(0, Refuse())
import numpy as np, torch
from gpuclust import GaussianMixture, _fused
assert _fused.available('cuda') is False
gmm = GaussianMixture(2, covariance_type='diag', device='cpu', random_state=0)
assert gmm._uses_fused_e_step(torch.device('cuda'), torch.float32) is False
gmm.fit(np.random.RandomState(0).rand(40, 3))
try:
    _fused.mixture_e_step(torch.zeros(2, 2), torch.zeros(1, 2), torch.zeros(1), torch.zeros(1))
except ImportError as e:
    assert 'pip install gpuclust[triton]' in str(e)
else:
    raise AssertionError('no ImportError')
print('ok')
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
