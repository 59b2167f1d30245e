"""gpuclust._fused: the Triton kernels (KMeans assignment, centre sums, diag/spherical E-step) against the torch path.

Without a GPU, triton's interpreter runs the kernels on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before gpuclust._fused is imported); sizes are toy sizes, chosen to cross the
kernels' block edges (rows per program, centres per tile, features per step).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs

pytest.importorskip("triton")

from gpuclust import GaussianMixture, KMeans, _fused
from gpuclust import _gmm_numerics as gm
from gpuclust import _kmeans_core as kc
from gpuclust.kmeans import FUSED_PRECISIONS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 distances of the kernel against the torch path: different summation orders, so a few
# float32 roundings of the largest term (||x||^2 + ||c||^2) apart.
DIST_RTOL = 1e-5


def _data(n, k, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    C = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.5
    return X.to(dtype).to(DEVICE), C.to(dtype).to(DEVICE)


def _reference(X, C):
    return kc.assign(X, kc.squared_norms(X), C, X.shape[0])


def _scale(X, C):
    return float(kc.squared_norms(X).max() + kc.squared_norms(C).max())


# ------------------------------------------------------------------ assign
@pytest.mark.parametrize(
    "n, k, d",
    [(1, 1, 1), (63, 5, 3), (65, 33, 7), (130, 70, 33), (200, 32, 64)],
    ids=["single", "under-one-block", "odd-edges", "k-over-two-tiles", "exact-tiles"],
)
def test_assign_equals_the_torch_path(n, k, d):
    X, C = _data(n, k, d)
    labels, dist = _fused.assign(X, kc.squared_norms(X), C)
    ref_labels, ref_dist = _reference(X, C)
    assert labels.dtype == torch.int64 and dist.dtype == X.dtype and labels.shape == dist.shape == (n,)
    torch.testing.assert_close(labels, ref_labels, rtol=0, atol=0)
    torch.testing.assert_close(dist, ref_dist, rtol=0, atol=DIST_RTOL * _scale(X, C))
    assert bool((dist >= 0).all())


def test_ties_go_to_the_lowest_centre_index():
    # Small integers: every product and sum is exact in float32 in any order, so duplicated centres
    # tie exactly. Each centre appears three times: at j, j + 11 (the same tile of centres) and
    # j + 42 (the next tile); points equidistant from two different centres tie as well.
    g = torch.Generator().manual_seed(1)
    X = torch.randint(-3, 4, (97, 5), generator=g).float().to(DEVICE)
    C = torch.randint(-3, 4, (11, 5), generator=g).float().to(DEVICE)
    dup = torch.cat([C, C, torch.full((20, 5), 50.0, device=DEVICE), C])
    labels, dist = _fused.assign(X, kc.squared_norms(X), dup)
    ref_labels, ref_dist = _reference(X, dup)
    torch.testing.assert_close(labels, ref_labels, rtol=0, atol=0)
    torch.testing.assert_close(dist, ref_dist, rtol=0, atol=0)
    assert int(labels.max()) < 11  # the first copy wins


def _near_ties(n=150, d=6, seed=2, nudge=1e-3):
    """Centre pairs mirrored in a random hyperplane, and points nudged off it by far less than bf16 resolves."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(d, generator=g, dtype=torch.float64)
    normal /= normal.norm()
    Y = torch.randn(n, d, generator=g, dtype=torch.float64) * 3.0
    nudge = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2 * nudge
    X = Y - torch.outer(Y @ normal, normal) + torch.outer(nudge, normal)
    base = torch.randn(4, d, generator=g, dtype=torch.float64) + normal
    mirror = base - 2.0 * torch.outer(base @ normal, normal)
    far = torch.randn(30, d, generator=g, dtype=torch.float64) * 3 + 40.0
    C = torch.cat([base, far, mirror])  # each pair's halves in different tiles of centres
    return X.float().to(DEVICE), C.float().to(DEVICE)


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
def test_low_precision_labels_equal_the_float32_path_on_near_ties(precision):
    X, C = _near_ties()
    x_sq = kc.squared_norms(X)
    labels, dist = _fused.assign(X, x_sq, C, precision=precision)
    ref_labels, ref_dist = _reference(X, C)
    torch.testing.assert_close(labels, ref_labels, rtol=0, atol=0)
    bound = _fused.rounding_bound(x_sq.sqrt(), kc.squared_norms(C).max().sqrt(), X.shape[1], precision)
    assert bool(((dist - ref_dist).abs() <= bound).all())


def test_the_ieee_kernel_alone_disagrees_with_the_gemm_path_on_exact_ties():
    # Points on the mirror plane of each centre pair: float32 products summed in the kernel's order
    # and in the GEMM's round the two scores differently, so without the re-check some labels differ.
    X, C = _near_ties(n=400, nudge=0.0)
    raw = torch.empty(X.shape[0], dtype=torch.int64, device=DEVICE)
    _fused.kernel_scores(X, C, kc.center_norms(C), raw, "ieee")
    ref_labels, _ = _reference(X, C)
    if DEVICE == "cpu":  # measured in triton's interpreter: 55 of 400 rows
        assert int((raw != ref_labels).sum()) > 0
    labels, _ = _fused.assign(X, kc.squared_norms(X), C, precision="ieee")
    torch.testing.assert_close(labels, ref_labels, rtol=0, atol=0)


def test_the_bf16_kernel_alone_gets_near_ties_wrong():
    # What the re-check repairs: without it, bf16 products pick the other centre of a near tie.
    X, C = _near_ties()
    raw = torch.empty(X.shape[0], dtype=torch.int64, device=DEVICE)
    best, second = _fused.kernel_scores(X, C, kc.squared_norms(C), raw, "bf16")
    ref_labels, _ = _reference(X, C)
    assert int((raw != ref_labels).sum()) > 0
    assert bool((second >= best).all())


@pytest.mark.parametrize("precision, most", [("tf32", 0.1), ("bf16", 0.5)])
def test_the_re_check_takes_only_rows_near_a_tie(precision, most):
    # The bound is not vacuous: on spread-out data most rows keep their low-precision label.
    X, C = _data(200, 20, 8)
    c_sq, labels = kc.squared_norms(C), torch.empty(200, dtype=torch.int64, device=DEVICE)
    best, second = _fused.kernel_scores(X, C, c_sq, labels, precision)
    close = _fused._recheck(X, kc.squared_norms(X), C, c_sq, labels, best, second, precision)
    assert close.numel() < most * 200
    gap = (second - best)[close]
    assert bool(
        (gap <= _fused.rounding_bound(kc.squared_norms(X)[close].sqrt(), c_sq.max().sqrt(), 8, precision)).all()
    )


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 80),
    k=st.integers(1, 40),
    d=st.integers(1, 9),
    precision=st.sampled_from(_fused.PRECISIONS),
    seed=st.integers(0, 2**16),
)
def test_low_precision_labels_equal_float32_ones(n, k, d, precision, seed):
    X, C = _data(n, k, d, seed)
    labels, _ = _fused.assign(X, kc.squared_norms(X), C, precision=precision)
    torch.testing.assert_close(labels, _reference(X, C)[0], rtol=0, atol=0)


def test_float64_runs_the_torch_path():
    X, C = _data(70, 9, 5, dtype=torch.float64)
    labels, dist = _fused.assign(X, kc.squared_norms(X), C)
    ref_labels, ref_dist = _reference(X, C)
    assert torch.equal(labels, ref_labels) and torch.equal(dist, ref_dist)


def test_assign_writes_into_out_and_rejects_an_unknown_precision():
    X, C = _data(40, 6, 3)
    out = (torch.empty(40, dtype=torch.int64, device=DEVICE), torch.empty(40, device=DEVICE))
    labels, dist = _fused.assign(X, kc.squared_norms(X), C, out=out)
    assert labels is out[0] and dist is out[1]
    with pytest.raises(ValueError, match="precision='fp8'"):
        _fused.assign(X, kc.squared_norms(X), C, precision="fp8")


def test_rounding_bound_grows_with_the_format_and_the_norms():
    b = {p: _fused.rounding_bound(torch.tensor([1.0, 2.0]), 3.0, 16, p) for p in _fused.PRECISIONS}
    assert bool((b["ieee"] < b["tf32"]).all() and (b["tf32"] < b["bf16"]).all())
    assert float(b["bf16"][1]) > float(b["bf16"][0]) > 4 * 2 * 3.0 * 2.0**-7


# ------------------------------------------------------------------ cluster_sums
@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n, k, d", [(1, 1, 1), (300, 7, 37), (129, 12, 4)])
def test_cluster_sums_equal_the_torch_path(n, k, d, dtype, weighted):
    X, _ = _data(n, 1, d, dtype=dtype)
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, max(1, k - 3), (n,), generator=g).to(DEVICE)  # the last clusters stay empty
    w = (torch.rand(n, generator=g, dtype=dtype) + 0.5 if weighted else torch.ones(n, dtype=dtype)).to(DEVICE)
    sums, weights = _fused.cluster_sums(X, w, labels, k, block_rows=64)
    ref_sums, ref_weights = kc.cluster_sums(X, w, labels, k, n, unit_weight=not weighted)
    assert sums.dtype == weights.dtype == torch.float64 and sums.shape == (k, d) and weights.shape == (k,)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sums, ref_sums, rtol=tol, atol=tol * n)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-12, atol=1e-12)
    if k > 3:
        assert bool((sums[-3:] == 0).all() and (weights[-3:] == 0).all())


@settings(max_examples=10, deadline=None)
@given(perm_seed=st.integers(0, 2**16))
def test_cluster_sums_do_not_depend_on_the_row_order_beyond_rounding(perm_seed):
    X, _ = _data(90, 1, 5, dtype=torch.float64)
    labels = torch.arange(90, device=DEVICE) % 4
    w = torch.linspace(0.5, 2.0, 90, dtype=torch.float64, device=DEVICE)
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(perm_seed)).to(DEVICE)
    a = _fused.cluster_sums(X, w, labels, 4)
    b = _fused.cluster_sums(X[perm], w[perm], labels[perm], 4)
    Xn, wn, ln = X.cpu().numpy(), w.cpu().numpy(), labels.cpu().numpy()
    exact = np.stack([(wn[:, None] * Xn)[ln == j].sum(0) for j in range(4)])
    for sums, weights in (a, b):
        np.testing.assert_allclose(sums.cpu().numpy(), exact, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(weights.cpu().numpy(), [wn[ln == j].sum() for j in range(4)], rtol=1e-12)


def test_available_only_on_cuda():
    assert _fused.available("cpu") is False
    assert _fused.available(torch.device("cuda")) is True  # triton imports here (importorskip above)


# ------------------------------------------------------------------ Gaussian mixture E-step
# The fused E-step against the torch path, float32 working dtype: log-likelihoods within a few
# float32 roundings (the torch path rounds the same terms in another order); the sums, which the
# torch path multiplies in float64, within a relative GMM_BLOCK_M * 2^-24 of sum r |z|, i.e. 1e-5
# of the row count times the largest stacked value.
LOG_NORM_ATOL = 1e-5
SUMS_RTOL = 1e-5


def _mixture(ct, n, D, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    X = torch.randn(n, D, **f64)
    means = torch.randn(K, D, **f64)
    cov = torch.rand(K, D, **f64) + 0.5 if ct == "diag" else torch.rand(K, **f64) + 0.5
    weights = torch.softmax(torch.randn(K, **f64), 0)
    params = gm.MixtureParameters(weights, means, cov, gm.precision_cholesky(cov, ct))
    return gm.stack_squares(X.float(), ct).to(DEVICE), params.working(torch.float32, ct)


@pytest.mark.parametrize("ct", ["diag", "spherical"])
@pytest.mark.parametrize("n, D, K, programs", [(1, 1, 1, 4), (100, 5, 19, 3), (70, 17, 33, 256)])
def test_mixture_e_step_equals_the_torch_path(ct, n, D, K, programs):
    Z, working = _mixture(ct, n, D, K)
    log_norm, nk, sums = _fused.mixture_e_step(Z, working.stacked, working.offset, working.const, programs)
    ref_norm, resp = gm.normalize_log_prob(working.weighted_log_prob_stacked(Z))
    ref = gm.new_stats(K, D, ct, DEVICE)
    gm.accumulate_stats_stacked(ref, Z.double(), resp)
    assert log_norm.shape == (n,) and nk.shape == (K,) and sums.shape == (K, Z.shape[1])
    torch.testing.assert_close(log_norm, ref_norm, rtol=0, atol=LOG_NORM_ATOL * max(1.0, float(ref_norm.abs().max())))
    torch.testing.assert_close(nk, ref.nk, rtol=0, atol=SUMS_RTOL * n)
    scale = SUMS_RTOL * n * float(Z.abs().max())
    torch.testing.assert_close(sums, torch.cat([ref.sx, ref.sxx], 1), rtol=0, atol=scale)


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 70), K=st.integers(1, 20), seed=st.integers(0, 2**16), ct=st.sampled_from(["diag", "spherical"])
)
def test_mixture_responsibilities_sum_to_one_per_row(n, K, seed, ct):
    # sum_k nk = n whatever the parameters, and the log-likelihood is finite.
    Z, working = _mixture(ct, n, 3, K, seed)
    log_norm, nk, _ = _fused.mixture_e_step(Z, working.stacked, working.offset, working.const, programs=2)
    assert abs(float(nk.sum()) - n) <= 1e-5 * n
    assert bool(torch.isfinite(log_norm).all())


def test_mixture_e_step_rejects_float64_tiles():
    Z, working = _mixture("diag", 10, 2, 2)
    with pytest.raises(ValueError, match="float32"):
        _fused.mixture_e_step(Z.double(), working.stacked, working.offset, working.const)


class FusedGaussianMixture(GaussianMixture):
    """GaussianMixture whose diag/spherical float32 E-step is the fused kernel, on any device."""

    def _uses_fused_e_step(self, device, dtype):
        return self.covariance_type in gm.STACKED_TYPES and dtype == torch.float32


class TorchPathGaussianMixture(GaussianMixture):
    """GaussianMixture whose E-step is the torch one on any device: the reference on a GPU too."""

    def _uses_fused_e_step(self, device, dtype):
        return False


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_a_fit_with_the_fused_e_step_equals_the_torch_one(ct, monkeypatch):
    calls = []
    original = _fused.mixture_e_step
    monkeypatch.setattr(_fused, "mixture_e_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    X, _ = make_blobs(240, 3, centers=3, random_state=0)
    kw = dict(n_components=3, covariance_type=ct, random_state=0, device=DEVICE, dtype="float32", tol=1e-4)
    plain = TorchPathGaussianMixture(**kw).fit(X)
    assert calls == []
    if DEVICE == "cpu":
        GaussianMixture(**kw).fit(X)
        assert calls == []  # never chosen on a CPU without being forced
    fused = FusedGaussianMixture(**kw).fit(X)
    assert len(calls) >= fused.n_iter_
    assert fused.n_iter_ == plain.n_iter_ and fused.converged_ == plain.converged_
    np.testing.assert_allclose(fused.lower_bound_, plain.lower_bound_, rtol=1e-5)
    np.testing.assert_allclose(fused.weights_, plain.weights_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fused.means_, plain.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.covariances_, plain.covariances_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fused.predict(X), plain.predict(X))


class UnkeptFusedGaussianMixture(FusedGaussianMixture):
    """The fused E-step with its stacked rows formed on every pass (as past the memory budget)."""

    def _keeps_stacked(self, X, fused_e_step=False):
        return False


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_a_fused_fit_keeps_float32_rows_only_and_equals_itself_unkept(ct, monkeypatch):
    # The fused E-step reads only the float32 tiles: no float64 stacked rows are formed for it to keep.
    made = []
    original = gm.StackedTiles.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(gm.StackedTiles, "__init__", spy)
    X, _ = make_blobs(240, 3, centers=3, random_state=1)
    kw = dict(n_components=3, covariance_type=ct, random_state=0, device=DEVICE, dtype="float32", tol=1e-4)
    kept = FusedGaussianMixture(**kw).fit(X)
    assert made[-1].keep and not made[-1].float64_tiles and made[-1].kept.dtype == torch.float32
    unkept = UnkeptFusedGaussianMixture(**kw).fit(X)
    assert not made[-1].keep
    assert kept.n_iter_ == unkept.n_iter_ and kept.lower_bound_ == unkept.lower_bound_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(unkept, name))


# ------------------------------------------------------------------ KMeans with the fused assignment
# Labels and n_iter are compared exactly. Centres and inertia within 1e-5 relative to the data's
# scale: the first centre sums are the fused segment sums (float64 over float32 rows), the CPU
# path's index_add_ sums float32 rows in float32, so the two start an ulp or so of float32 apart.
KMEANS_RTOL = 1e-5


class FusedKMeans(KMeans):
    """KMeans whose Lloyd assignment and first sums are the fused kernels (a float32 fit on CUDA), on any device."""

    def _assigns_fused(self, device, dtype):
        return dtype == torch.float32


class GemmKMeans(KMeans):
    """KMeans on the GEMM tiles on any device: the reference, also where a CUDA fit would choose the kernels."""

    def _assigns_fused(self, device, dtype):
        return False


@pytest.fixture
def fused_calls(monkeypatch):
    """The positional arguments of every call a fit makes to ``_fused.assign`` and ``_fused.cluster_sums``."""
    calls = {"assign": [], "cluster_sums": []}
    for name in calls:
        original = getattr(_fused, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name].append(args)
            return _original(*args, **kwargs)

        monkeypatch.setattr(_fused, name, spy)
    return calls


def _assert_same_fit(fused, plain, X):
    assert fused.n_iter_ == plain.n_iter_
    np.testing.assert_array_equal(fused.labels_, plain.labels_)
    scale = float(np.abs(X).max())
    np.testing.assert_allclose(fused.cluster_centers_, plain.cluster_centers_, rtol=0, atol=KMEANS_RTOL * scale)
    np.testing.assert_allclose(fused.inertia_, plain.inertia_, rtol=KMEANS_RTOL)
    np.testing.assert_array_equal(fused.predict(X), fused.labels_)


@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
@pytest.mark.parametrize("precision", ["highest", "tf32", "bf16"])
def test_a_kmeans_fit_with_the_fused_assignment_equals_the_torch_one(precision, weighted, fused_calls):
    X, _ = make_blobs(300, 5, centers=4, cluster_std=2.0, random_state=0)
    X = X.astype(np.float32)
    w = np.random.RandomState(1).uniform(0.5, 2.0, len(X)) if weighted else None
    kw = dict(n_clusters=4, random_state=0, device=DEVICE, algorithm="lloyd", matmul_precision=precision)
    plain = GemmKMeans(**kw).fit(X, sample_weight=w)
    assert fused_calls == {"assign": [], "cluster_sums": []}
    fused = FusedKMeans(**kw).fit(X, sample_weight=w)
    assert fused.n_iter_ > 1  # the loop's re-assignment ran, not only the first one
    # One assignment per iteration (the first before the loop), in the asked precision; one first sum per run.
    assert [args[4] for args in fused_calls["assign"]] == [FUSED_PRECISIONS[precision]] * fused.n_iter_
    assert len(fused_calls["cluster_sums"]) == 1
    _assert_same_fit(fused, plain, X)


def test_many_clusters_re_sum_every_iteration_by_segment_sums(fused_calls):
    # From kc.FUSED_RESUM_FROM_K clusters the moved-row one-hot update gives way to full segment sums.
    k = kc.FUSED_RESUM_FROM_K
    X, _ = make_blobs(600, 3, centers=k, cluster_std=0.5, random_state=3)
    X = X.astype(np.float32)
    w = np.random.RandomState(4).uniform(0.5, 2.0, len(X))
    init = X[np.random.RandomState(5).choice(len(X), k, replace=False)]
    kw = dict(n_clusters=k, init=init, n_init=1, max_iter=6, tol=0, device=DEVICE, algorithm="lloyd")
    plain = GemmKMeans(**kw).fit(X, sample_weight=w)
    fused = FusedKMeans(**kw).fit(X, sample_weight=w)
    assert fused.n_iter_ > 1
    assert len(fused_calls["cluster_sums"]) == fused.n_iter_  # the first sums, then one per later iteration
    _assert_same_fit(fused, plain, X)


def test_the_fused_assignment_relocates_an_empty_cluster_as_the_torch_one(fused_calls):
    # The last initial centre is far from every sample: its cluster is empty after the first assignment.
    X, _ = make_blobs(200, 3, centers=3, random_state=2)
    X = X.astype(np.float32)
    init = np.vstack([X[:3], np.full((1, 3), 1e3, dtype=np.float32)])
    kw = dict(n_clusters=4, init=init, n_init=1, device=DEVICE, algorithm="lloyd")
    plain = GemmKMeans(**kw).fit(X)
    fused = FusedKMeans(**kw).fit(X)
    assert len(fused_calls["assign"]) == fused.n_iter_
    assert np.abs(fused.cluster_centers_).max() < 100  # the far centre was re-seeded
    _assert_same_fit(fused, plain, X)


def test_kmeans_chooses_the_fused_assignment_only_for_float32_on_cuda(fused_calls):
    km = KMeans()
    assert km._assigns_fused(torch.device("cuda"), torch.float32) is True  # triton imports (importorskip)
    assert km._assigns_fused(torch.device("cuda"), torch.float64) is False
    assert km._assigns_fused(torch.device("cpu"), torch.float32) is False
    X, _ = make_blobs(100, 3, centers=3, random_state=0)
    KMeans(3, random_state=0, device="cpu", algorithm="lloyd").fit(X.astype(np.float32))
    assert fused_calls == {"assign": [], "cluster_sums": []}  # never on a CPU without being forced


@pytest.mark.parametrize("case", ["float64", "sparse", "out-of-core", "hamerly"])
def test_sparse_out_of_core_hamerly_and_float64_fits_keep_the_torch_path(case, fused_calls):
    X, _ = make_blobs(120, 4, centers=3, random_state=0)
    X = X.astype(np.float64 if case == "float64" else np.float32)
    kw = dict(n_clusters=3, random_state=0, device="cpu", max_iter=5)
    data = {"sparse": sp.csr_matrix(X), "out-of-core": [X[:60], X[60:]]}.get(case, X)
    FusedKMeans(algorithm="hamerly" if case == "hamerly" else "lloyd", **kw).fit(data)
    assert fused_calls == {"assign": [], "cluster_sums": []}
