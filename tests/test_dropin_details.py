"""Details a scikit-learn user relies on without thinking: found by a hostile review, kept fixed here."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import gpuclust
from gpuclust import GaussianMixture, KMeans


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


def test_float32_mixture_far_from_the_origin_with_kmeans_init():
    X, y = make_blobs(1500, centers=3, n_features=4, random_state=0)
    X = (X + 1e5).astype(np.float32)
    gmm = GaussianMixture(3, covariance_type="tied", random_state=0, device="cpu").fit(X)
    assert adjusted_rand_score(y, gmm.predict(X)) > 0.99


def test_kmeans_plusplus_takes_scipy_sparse():
    X, _ = make_blobs(60, centers=3, random_state=0)
    centers, indices = gpuclust.kmeans_plusplus(sp.csr_matrix(X), 3, random_state=0)
    np.testing.assert_array_equal(centers, X[indices])


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
