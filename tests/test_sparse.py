"""Sparse input: KMeans on a real TF-IDF matrix against scikit-learn's sparse results; GaussianMixture refuses it.

Tests gpuclust._arrays' sparse path through both estimators (a cross-cutting suite).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _text import tfidf_matrix
from conftest import DEVICES
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

from gpuclust import GaussianMixture, KMeans

DTYPES = {"float64": np.float64, "float32": np.float32}
# Centres agree to a few ulps of the dtype times the sums' length.
ATOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module")
def tfidf():
    return tfidf_matrix()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 20])
def test_sparse_matches_sklearn_sparse(tfidf, device, dtype, k):
    X = tfidf.astype(DTYPES[dtype])
    init, _ = sk_kmeans_plusplus(X, k, random_state=0)
    ref = SkKMeans(k, init=init, n_init=1).fit(X)
    ours = KMeans(k, init=init, n_init=1, device=device).fit(X)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-6 if dtype == "float64" else 1e-5)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=ATOL[dtype])
    assert ours.cluster_centers_.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.transform(X[:50]), ref.transform(X[:50]), rtol=1e-5, atol=1e-6)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-5)


def test_sparse_kmeans_plusplus_and_random_init_match_sklearn(tfidf):
    for init in ("k-means++", "random"):
        ref = SkKMeans(8, init=init, n_init=1, random_state=3).fit(tfidf)
        ours = KMeans(8, init=init, n_init=1, random_state=3, device="cpu").fit(tfidf)
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        assert ours.n_iter_ == ref.n_iter_


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csc_matrix,
        sp.csr_array,
        sp.csc_array,
        lambda X: torch.sparse_csr_tensor(
            torch.from_numpy(X.indptr), torch.from_numpy(X.indices), torch.from_numpy(X.data), size=X.shape
        ),
        lambda X: torch.from_numpy(X.toarray()).to_sparse_coo(),
    ],
    ids=["csr_matrix", "csc_matrix", "csr_array", "csc_array", "torch_csr", "torch_coo"],
)
def test_every_sparse_container_gives_the_same_fit(tfidf, convert):
    X = tfidf[:400]
    init = np.asarray(X[:6].toarray())
    ref = KMeans(6, init=init, device="cpu").fit(X)
    ours = KMeans(6, init=init, device="cpu").fit(convert(X))
    np.testing.assert_array_equal(np.asarray(ours.labels_), ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)


def test_sparse_input_is_never_densified(tfidf, monkeypatch):
    for name in ("to_dense", "toarray", "todense"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail(f"{name} called"), raising=False)
    X = sp.csr_matrix(tfidf[:300])
    monkeypatch.setattr(sp.csr_matrix, "toarray", lambda *a, **k: pytest.fail("toarray called"))
    km = KMeans(4, random_state=0, device="cpu").fit(X)
    km.predict(X), km.transform(X), km.score(X)


def test_integer_sparse_input_is_float64_on_cpu():
    X = sp.random(60, 30, density=0.2, random_state=0, format="csr", dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    km = KMeans(3, random_state=0, device="cpu").fit(X.astype(np.int64))
    assert km.cluster_centers_.dtype == np.float64


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_gaussian_mixture_rejects_sparse_with_sklearn_message(fmt):
    X = sp.random(30, 4, density=0.5, random_state=0, format=fmt)
    with pytest.raises(TypeError, match="Sparse data was passed for X, but dense data is required"):
        GaussianMixture(2, device="cpu").fit(X)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        GaussianMixture(2, device="cpu").fit(torch.from_numpy(X.toarray()).to_sparse_coo())


def test_sparse_with_nan_is_refused():
    X = sp.random(20, 5, density=0.5, random_state=0, format="csr")
    X.data[0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        KMeans(2, device="cpu").fit(X)


def _with_duplicates(seed=0, n=60, d=6, nnz=500):
    """A CSR matrix storing several values at the same positions (legal: they mean their sum)."""
    rng = np.random.RandomState(seed)
    rows, cols, vals = np.sort(rng.randint(0, n, nnz)), rng.randint(0, d, nnz), rng.rand(nnz)
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
    X = sp.csr_matrix((vals, cols, indptr), shape=(n, d))
    assert not X.has_canonical_format
    return X, rows, cols, vals


def test_duplicate_entries_mean_their_sum():
    """scipy sums duplicates; so must every KMeans result, without touching the caller's matrix."""
    X, *_ = _with_duplicates()
    dense = X.toarray()  # duplicates summed
    data_before, nnz_before = X.data.copy(), X.nnz
    init = dense[:4]
    ours = KMeans(4, init=init, device="cpu").fit(X)
    ref = SkKMeans(4, init=init, n_init=1).fit(dense)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
    assert ours.score(X) == pytest.approx(ref.score(dense), rel=1e-10)
    np.testing.assert_allclose(ours.transform(X), ref.transform(dense), rtol=1e-10)
    assert X.nnz == nnz_before and np.array_equal(X.data, data_before) and not X.has_canonical_format


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_torch_sparse_with_duplicates_is_summed_and_quiet(layout, recwarn):
    X, rows, cols, vals = _with_duplicates(seed=1)
    dense = X.toarray()
    index = torch.as_tensor(np.vstack([rows, cols]))
    with torch.sparse.check_sparse_tensor_invariants(False):
        if layout == "coo":
            T = torch.sparse_coo_tensor(index, torch.as_tensor(vals), X.shape)  # not coalesced
        else:
            T = torch.sparse_csr_tensor(torch.as_tensor(X.indptr), torch.as_tensor(X.indices),
                                        torch.as_tensor(X.data), X.shape)  # fmt: skip
    recwarn.clear()
    ours = KMeans(4, init=dense[:4], device="cpu").fit(T)
    ref = SkKMeans(4, init=dense[:4], n_init=1).fit(dense)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)
    assert ours.score(T) == pytest.approx(ref.score(dense), rel=1e-10)
    assert not [w for w in recwarn if "beta" in str(w.message)], [str(w.message) for w in recwarn]
