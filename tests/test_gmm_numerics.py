"""gpuclust's per-covariance Gaussian-mixture numerics against scikit-learn's private functions.

Each step of EM in :mod:`gpuclust._gmm_numerics` (the sufficient statistics and the M-step, the
precision Cholesky factors and their round trips, the log-determinants, the weighted
log-probabilities and their normalisation) is compared with what
``sklearn.mixture._gaussian_mixture`` computes from the same inputs, for every covariance type
and for float64 and float32 data.

Tolerances (``_close`` compares ``|got - want| <= tol * (|want| + max|want|)``, i.e. relative to
each array's scale, since shifted means and off-diagonal covariances are near zero):

* ``STATS_TOL = 1e-12``, both dtypes. gpuclust accumulates the statistics in float64 whatever the
  working dtype, so against scikit-learn in float64 *on the same values* (float32 inputs upcast)
  only the order of float64 sums differs: observed <= 1e-15; 1e-12 leaves room for other BLAS
  blockings and thread counts.
* ``NATIVE_F32_TOL = 1e-4``: scikit-learn run in float32 itself sums a few hundred float32
  products (worst case ~ n * eps32 = 4e-5, observed ~ 5e-7).
* ``WORK_TOL``: what is computed in the working dtype (the E-step's log-probabilities and
  responsibilities): float64 1e-12, float32 1e-5. The expanded quadratic forms cancel terms of
  ~ |x|^2 * precision (a few times the result, on data minus its mean) and the result is rounded
  to the dtype: observed 2e-16 (float64) and 6e-8 (float32) of the largest |log-probability|.

Discrepancies with scikit-learn that these tests pin down (see each test):

* far from the origin, scikit-learn's tied, diag and spherical covariances (and diag/spherical
  log-probabilities) lose ~ eps * offset^2 / variance to cancellation (asserted in float64, where it
  is ~2e-8 at offset 1e4; in float32 it is 100 %, measured, not asserted); gpuclust works on data
  minus its mean and does not;
* ``normalize_log_prob`` floors responsibilities at sqrt(smallest normal) (~1e-19 in float32): a
  component no sample supports then gets the data's mean and covariance in float32 instead of
  scikit-learn's ``reg_covar`` (strict xfail below);
* ``nk`` gets 10 * eps of float64 in every dtype (scikit-learn: eps of the responsibilities'
  dtype, 1.2e-6 in float32): within the tolerances here (not asserted on its own).

Tests gpuclust._gmm_numerics.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGMM
from sklearn.mixture import _gaussian_mixture as skgm
from sklearn.utils._array_api import get_namespace

import gpuclust._gmm_numerics as gm
from gpuclust._chunks import TileBuffers
from gpuclust.sources import TensorRows

CPU = torch.device("cpu")
TYPES = ("full", "tied", "diag", "spherical")
DTYPES = [np.float64, np.float32]
REG = 1e-6
FAR = 1e4  # the data offset of the far-from-origin case
STATS_TOL = 1e-12
NATIVE_F32_TOL = 1e-4
WORK_TOL = {np.float64: 1e-12, np.float32: 1e-5}
SKLEARN_MESSAGE = "Fitting the mixture model failed because some components have ill-defined empirical covariance"


def _close(got, want, tol):
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max() if want.size else 0.0
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _problem(dtype, offset=0.0, n=300, d=4, K=3, seed=0):
    """Data, normalized random responsibilities, the shift and the shifted data, as a fit makes them.

    The shift is the float64 data mean rounded to the working dtype and subtracted in that dtype
    (GaussianMixture._tiles); the statistics are formed on the shifted rows.
    """
    rng = np.random.RandomState(seed)
    A = rng.randn(d, d) / 2 + np.eye(d)
    centers = 3 * rng.randn(K, d)
    X = rng.randn(n, d) @ A + centers[rng.randint(K, size=n)] + offset
    resp = rng.rand(n, K) ** 3 + 1e-3  # uneven, some near-hard rows
    resp /= resp.sum(1, keepdims=True)
    X, resp = X.astype(dtype), resp.astype(dtype)
    shift = _t(X).double().mean(0).to(_t(X).dtype)
    Xs = _t(X) - shift
    return X, resp, shift.double(), Xs


def _stats(Xs, resp, ct, bounds=None, buffers=None):
    """The statistics of ``Xs`` accumulated over the tiles [bounds[i], bounds[i+1])."""
    n, d = Xs.shape
    bounds = [0, n] if bounds is None else bounds
    stats = gm.new_stats(resp.shape[1], d, ct, CPU)
    resp_t = resp if isinstance(resp, torch.Tensor) else _t(resp)
    for a, b in zip(bounds[:-1], bounds[1:]):
        gm.accumulate_stats(stats, Xs[a:b], resp_t[a:b], ct, buffers)
    return stats


def _xtx(Xs, ct):
    return Xs.double().T @ Xs.double() if ct == "tied" else None


def _sk_m_step(X64, resp64, ct):
    """scikit-learn's whole M-step (weights normalized, precision Cholesky factors)."""
    sk = SkGMM(n_components=resp64.shape[1], covariance_type=ct, reg_covar=REG)
    with np.errstate(divide="ignore"):
        sk._m_step(X64, np.log(resp64))
    return sk


# --- statistics and the M-step ---------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, FAR])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_statistics_give_sklearns_parameters(ct, dtype, offset):
    X, resp, shift, Xs = _problem(dtype, offset, d=5)
    nk, means, cov = gm.estimate_parameters(_stats(Xs, resp, ct), REG, ct, _xtx(Xs, ct))
    assert nk.dtype == means.dtype == cov.dtype == torch.float64
    # The same values in float64 (float32 data and responsibilities upcast), the same frame.
    sk_nk, sk_means, sk_cov = skgm._estimate_gaussian_parameters(Xs.double().numpy(), resp.astype(np.float64), REG, ct)
    _close(nk, sk_nk, STATS_TOL)
    _close(means, sk_means, STATS_TOL)
    _close(cov, sk_cov, STATS_TOL)
    # Covariances do not depend on the frame; the means in the data's frame are the shifted ones + shift.
    # Against scikit-learn on the unshifted data: exact arithmetic gives the same; see below for the
    # cancellation scikit-learn suffers far from the origin.
    # In float32 the shifted rows are rounded (x - shift in float32, as a fit does): ~eps32 |x| / |mean|.
    raw_nk, raw_means, _ = skgm._estimate_gaussian_parameters(X.astype(np.float64), resp.astype(np.float64), REG, ct)
    _close(means + shift, raw_means, STATS_TOL if dtype == np.float64 else 1e-5)
    if offset == 0.0 and dtype == np.float32:
        # scikit-learn computing in float32 itself.
        _, f32_means, f32_cov = skgm._estimate_gaussian_parameters(X, resp, REG, ct)
        assert f32_cov.dtype == np.float32
        _close(means + shift, f32_means, NATIVE_F32_TOL)
        _close(cov, f32_cov, NATIVE_F32_TOL)


@pytest.mark.parametrize("ct", ["tied", "diag", "spherical"])
def test_far_from_the_origin_the_shifted_statistics_beat_sklearns_cancellation(ct):
    # scikit-learn forms tied, diag and spherical covariances as E[x x] - mean^2 on the data as
    # given: at an offset of 1e4 (x^2 ~ 1e8) float64 keeps ~1e-8 of a unit variance. Its full
    # covariance is centred per component (sum r (x - mean)^2), accurate anywhere: the reference
    # here (its diagonal for diag, the mean of that for spherical, sum_k nk_k cov_k / n for tied).
    # gpuclust's statistics, on data minus its mean, match that reference to 1e-12.
    X, resp, shift, Xs = _problem(np.float64, FAR, d=5)
    X64, r64 = X, resp
    nk, _, full = skgm._estimate_gaussian_parameters(X64, r64, 0.0, "full")
    reference = {
        "tied": np.einsum("k,kij->ij", nk, full) / nk.sum(),
        "diag": np.diagonal(full, axis1=1, axis2=2),
        "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1),
    }[ct] + (REG * np.eye(5) if ct == "tied" else REG)
    _, _, cov = gm.estimate_parameters(_stats(Xs, resp, ct), REG, ct, _xtx(Xs, ct))
    _close(cov, reference, STATS_TOL)
    _, _, sk_raw = skgm._estimate_gaussian_parameters(X64, r64, REG, ct)
    _close(sk_raw, reference, 1e-5)  # scikit-learn itself: only to its cancellation (observed ~2e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_statistics_summed_over_tiles_equal_one_tile(ct, dtype):
    X, resp, shift, Xs = _problem(dtype, FAR, n=257, d=6)
    whole = _stats(Xs, resp, ct)
    bounds = [0, 1, 18, 100, 101, 200, 257]  # uneven tiles, single rows among them
    for buffers in (None, TileBuffers()):  # new tensors per tile, or the reused buffers of a fit
        tiled = _stats(Xs, resp, ct, bounds, buffers)
        for name in ("nk", "sx", "sxx"):
            a, b = getattr(tiled, name), getattr(whole, name)
            assert (a is None) == (b is None) == (name == "sxx" and ct == "tied")
            if a is not None:
                assert a.dtype == torch.float64
                _close(a, b, STATS_TOL)
        _close(
            gm.estimate_parameters(tiled, REG, ct, _xtx(Xs, ct))[2],
            gm.estimate_parameters(whole, REG, ct, _xtx(Xs, ct))[2],
            STATS_TOL,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", gm.STACKED_TYPES)
def test_stacked_statistics_equal_the_plain_ones(ct, dtype):
    # diag and spherical: [x, x*x] or [x, ||x||^2] and one GEMM per tile, against accumulate_stats.
    X, resp, shift, Xs = _problem(dtype, FAR, n=230, d=5)
    plain = _stats(Xs, resp, ct)
    resp_t = _t(resp)
    one = gm.new_stats(3, 5, ct, CPU)
    gm.accumulate_stats_stacked(one, gm.stack_squares(Xs.double(), ct), resp_t)
    # As a fit's passes form them: StackedTiles over X's tiles (kept or formed per pass), with the
    # float64 buffer float32 responsibilities are copied into.
    for keep in (False, True):
        tiles = gm.StackedTiles(230, 64, 5, ct, resp_t.dtype, CPU, keep=keep)
        for _ in range(2):  # kept: formed on the first pass, read as they are on the second
            stats, start = gm.new_stats(3, 5, ct, CPU), 0
            for Z, Z64 in tiles.tiles(TensorRows(_t(X)), 64, shift.to(resp_t.dtype)):
                c = Z.shape[0]
                assert Z.dtype == resp_t.dtype and Z64.dtype == torch.float64
                r64 = None if dtype == np.float64 else torch.empty(c, 3, dtype=torch.float64)
                gm.accumulate_stats_stacked(stats, Z64, resp_t[start : start + c], r64)
                start += c
            assert start == 230
            for name in ("nk", "sx", "sxx"):
                _close(getattr(stats, name), getattr(plain, name), STATS_TOL)
    for name in ("nk", "sx", "sxx"):
        _close(getattr(one, name), getattr(plain, name), STATS_TOL)
    a = gm.estimate_parameters(one, REG, ct)
    b = gm.estimate_parameters(plain, REG, ct)
    for x, y in zip(a, b):
        _close(x, y, STATS_TOL)


@pytest.mark.parametrize("ct", gm.STACKED_TYPES)
def test_working_dtype_tiles_for_the_fused_e_step_have_the_float64_paths_bits(ct):
    # float64_tiles=False (the fused E-step reads only the float32 tiles): no float64 tile is given
    # and keep keeps float32 rows; every pass's tiles are bit for bit the default path's.
    X, _, shift, _ = _problem(np.float32, FAR, n=230, d=5)
    rows, shift32 = TensorRows(_t(X)), shift.to(torch.float32)
    reference = [Z.clone() for Z, _ in gm.StackedTiles(230, 64, 5, ct, torch.float32, CPU).tiles(rows, 64, shift32)]
    for keep in (False, True):
        tiles = gm.StackedTiles(230, 64, 5, ct, torch.float32, CPU, keep=keep, float64_tiles=False)
        for _ in range(3):  # kept: formed on the first pass, read as they are on the next ones
            got = [(Z.clone(), Z64) for Z, Z64 in tiles.tiles(rows, 64, shift32)]
            assert all(Z64 is None for _, Z64 in got) and len(got) == len(reference)
            for (Z, _), ref in zip(got, reference):
                assert Z.dtype == torch.float32 and torch.equal(Z, ref)
        if keep:
            assert tiles.kept.dtype == torch.float32 and tiles.kept.shape == (230, tiles.width)
    with pytest.raises(ValueError, match="narrower"):
        gm.StackedTiles(230, 64, 5, ct, torch.float64, CPU, float64_tiles=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_m_step_equals_sklearns(ct, dtype):
    X, resp, shift, Xs = _problem(dtype, d=4)
    p = gm.MixtureParameters.from_stats(_stats(Xs, resp, ct), REG, ct, _xtx(Xs, ct), dtype == np.float32)
    sk = _sk_m_step(Xs.double().numpy(), resp.astype(np.float64), ct)
    _close(p.weights, sk.weights_, STATS_TOL)
    assert abs(float(p.weights.sum()) - 1.0) < 1e-15
    _close(p.means, sk.means_, STATS_TOL)
    _close(p.covariances, sk.covariances_, STATS_TOL)
    _close(p.precisions_cholesky, sk.precisions_cholesky_, FACTOR_TOL[np.float64])


@pytest.mark.parametrize("offset", [0.0, FAR])
def test_tied_uncentred_start_equals_sklearns(offset):
    # "k-means++" / "random_from_data" starts: one sample per component. scikit-learn's tied estimate
    # then mixes X^T X over all n samples with counts over the K chosen ones (origin-dependent);
    # gpuclust forms it from the shifted scatter matrix.
    X, _, shift, Xs = _problem(np.float64, offset, n=120, d=4)
    chosen = np.array([5, 50, 99])
    resp = np.zeros((120, 3))
    resp[chosen, [0, 1, 2]] = 1.0
    stats = _stats(Xs[chosen], np.eye(3), "tied")
    nk, means, _ = gm.estimate_parameters(stats, REG, "tied", _xtx(Xs, "tied"))
    cov = gm.covariance_tied_uncentred(_xtx(Xs, "tied"), 120, shift, nk, means, REG)
    _, _, sk_cov = skgm._estimate_gaussian_parameters(X, resp, REG, "tied")
    _close(cov, sk_cov, STATS_TOL)


# --- precision Cholesky factors, round trips, log-determinants -------------------------------------


def _covariances(ct, dtype, d=5, K=3, seed=1):
    X, resp, _, Xs = _problem(np.float64, n=200, d=d, K=K, seed=seed)
    cov = skgm._estimate_gaussian_parameters(X, resp, REG, ct)[2]
    return cov.astype(dtype)


# Cholesky factors and triangular solves of matrices of condition ~10-100, in the dtype given:
# observed 6e-16 (float64) and 2e-7 (float32).
FACTOR_TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_precision_cholesky_and_round_trips_equal_sklearns(ct, dtype):
    cov = _covariances(ct, dtype)
    tol = FACTOR_TOL[dtype]
    P = gm.precision_cholesky(_t(cov), ct)
    sk_P = skgm._compute_precision_cholesky(cov, ct)
    assert P.dtype == _t(cov).dtype and P.shape == sk_P.shape
    _close(P, sk_P, tol)
    if ct in ("full", "tied"):
        assert torch.equal(P, torch.triu(P))  # upper triangular, as scikit-learn's
    precisions = gm.precisions_from_cholesky(P, ct)
    cov64 = cov.astype(np.float64)
    inverse = np.linalg.inv(cov64) if ct in ("full", "tied") else 1.0 / cov64
    _close(precisions, inverse, tol)
    # precisions -> Cholesky factor (precisions_init) -> covariances
    P_back = gm.precision_cholesky_from_precisions(precisions, ct)
    xp, _ = get_namespace(cov)  # this function of scikit-learn's takes no default namespace
    _close(P_back, skgm._compute_precision_cholesky_from_precisions(precisions.numpy(), ct, xp=xp), tol)
    _close(P_back, P, tol)
    _close(gm.covariances_from_precision_cholesky(P_back, ct), cov64, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_log_det_equals_sklearns(ct, dtype):
    cov = _covariances(ct, dtype, d=6)
    P = skgm._compute_precision_cholesky(cov, ct)
    got = gm.log_det_cholesky(_t(P), ct, 6)
    want = skgm._compute_log_det_cholesky(P, ct, n_features=6)
    _close(got, want, FACTOR_TOL[dtype])
    # and -log det(covariance) / 2 computed independently
    c = cov.astype(np.float64)
    direct = {
        "full": lambda: -0.5 * np.linalg.slogdet(c)[1],
        "tied": lambda: -0.5 * np.linalg.slogdet(c)[1],
        "diag": lambda: -0.5 * np.log(c).sum(1),
        "spherical": lambda: -3.0 * np.log(c),
    }[ct]()
    _close(got, direct, FACTOR_TOL[dtype])


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ill_defined_covariance_raises_sklearns_message(ct, dtype):
    cov = _covariances(ct, np.float64, d=4)
    bad = 1  # component 1 (full, diag, spherical) or the tied matrix is made indefinite / non-positive
    if ct == "full":
        cov[bad, 2, 3] = cov[bad, 3, 2] = 2 * np.sqrt(cov[bad, 2, 2] * cov[bad, 3, 3])
    elif ct == "tied":
        cov[0, 1] = cov[1, 0] = 2 * np.sqrt(cov[0, 0] * cov[1, 1])
    elif ct == "diag":
        cov[bad, 2] = 0.0
    else:
        cov[bad] = -1e-9
    with pytest.raises(ValueError) as sk_error:
        skgm._compute_precision_cholesky(cov.astype(dtype), ct)
    f32 = dtype == np.float32
    with pytest.raises(ValueError) as error:
        gm.precision_cholesky(_t(cov), ct, f32)
    sk_message, message = str(sk_error.value), str(error.value)
    assert sk_message.startswith(SKLEARN_MESSAGE)
    # scikit-learn's text whole (its float32 hint included), then what gpuclust adds.
    assert message.startswith(sk_message), (message, sk_message)
    if ct != "tied":
        assert message.endswith(f"The first such component is component {bad}.")
    # and the positive definite covariances go through
    gm.precision_cholesky(_t(_covariances(ct, np.float64, d=4)), ct, f32)


def test_per_matrix_loop_equals_the_batch():
    # The one-matrix-at-a-time factorization a GPU takes at large D, run on CPU tensors.
    cov = _t(_covariances("full", np.float64, d=6))
    chol = torch.linalg.cholesky_ex(cov)
    looped = gm._per_matrix(torch.linalg.cholesky_ex, cov, one_at_a_time=True)
    batched = gm._per_matrix(torch.linalg.cholesky_ex, cov, one_at_a_time=False)
    for a, b, c in zip(looped, batched, chol):
        torch.testing.assert_close(a, c, rtol=1e-14, atol=0)
        torch.testing.assert_close(b, c, rtol=1e-14, atol=0)


# --- E-step: weighted log-probabilities and their normalisation ------------------------------------


def _mixture(ct, offset=0.0, d=4):
    """Parameters fitted by scikit-learn's M-step on shifted float64 data, as gpuclust's (float64) ones."""
    X, resp, shift, Xs = _problem(np.float64, offset, d=d, seed=3)
    sk = _sk_m_step(Xs.numpy(), resp, ct)
    params = gm.MixtureParameters(*(_t(a) for a in (sk.weights_, sk.means_, sk.covariances_, sk.precisions_cholesky_)))
    return X, shift, sk, params


@pytest.mark.parametrize("offset", [0.0, FAR])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_weighted_log_prob_equals_sklearns(ct, dtype, offset):
    X, shift, sk, params = _mixture(ct, offset)
    Xs = _t(X.astype(dtype)) - shift.to(_t(X.astype(dtype)).dtype)
    working = params.working(Xs.dtype, ct)
    got = working.weighted_log_prob(Xs)
    assert got.dtype == Xs.dtype and got.shape == (300, 3)
    # scikit-learn in float64 on the same (shifted, working-dtype) values
    want = sk._estimate_weighted_log_prob(Xs.double().numpy())
    _close(got, want, WORK_TOL[dtype])
    # which is _estimate_log_gaussian_prob + log(weights)
    direct = skgm._estimate_log_gaussian_prob(Xs.double().numpy(), sk.means_, sk.precisions_cholesky_, ct)
    _close(got, direct + np.log(sk.weights_), WORK_TOL[dtype])
    if ct in gm.STACKED_TYPES:
        # the paths a fit takes: reused buffers, and the stacked tile given directly
        _close(working.weighted_log_prob(Xs, TileBuffers()), want, WORK_TOL[dtype])
        _close(working.weighted_log_prob_stacked(gm.stack_squares(Xs, ct)), want, WORK_TOL[dtype])
    if dtype == np.float64:
        # scikit-learn on the data as given (means in its frame): at offset 1e4 its expanded diag and
        # spherical forms cancel ~|x|^2 = 1e8 (observed 2e-9 relative; full and tied 3e-13), hence the
        # looser bound there.
        raw = skgm._estimate_log_gaussian_prob(X, sk.means_ + shift.numpy(), sk.precisions_cholesky_, ct)
        _close(got, raw + np.log(sk.weights_), WORK_TOL[dtype] if offset == 0.0 else 1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_normalized_log_prob_equals_sklearns(ct, dtype):
    X, shift, sk, params = _mixture(ct)
    Xs = _t(X.astype(dtype)) - shift.to(_t(X.astype(dtype)).dtype)
    wlp = params.working(Xs.dtype, ct).weighted_log_prob(Xs)
    sk_norm, sk_log_resp = sk._estimate_log_prob_resp(Xs.double().numpy())
    log_norm, resp = gm.normalize_log_prob(wlp.clone())
    _close(log_norm, sk_norm, WORK_TOL[dtype])
    np.testing.assert_allclose(resp.double().numpy(), np.exp(sk_log_resp), rtol=0, atol=WORK_TOL[dtype])
    # and from the very same weighted log-probabilities, scikit-learn's logsumexp
    w = wlp.double().numpy()
    lse = logsumexp(w, axis=1)
    eps = np.finfo(dtype).eps
    _close(log_norm, lse, 4 * eps)
    np.testing.assert_allclose(resp.double().numpy(), np.exp(w - lse[:, None]), rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalize_log_prob_floors_tiny_responsibilities(dtype):
    # A documented deviation: arguments are clamped at half the log of the smallest normal number,
    # so a responsibility scikit-learn gives as exp(-1000) = 0 is sqrt(tiny) here (1.5e-154 in
    # float64, 1.1e-19 in float32). The log-likelihood is unchanged.
    wlp = torch.tensor([[0.0, -1000.0, -2.0], [-5.0, -5.0, -1e6]], dtype=dtype)
    w = wlp.double().numpy()
    log_norm, resp = gm.normalize_log_prob(wlp.clone())
    floor = float(np.exp(0.5 * np.log(torch.finfo(dtype).tiny)))
    sk_resp = np.exp(w - logsumexp(w, axis=1, keepdims=True))
    assert sk_resp[0, 1] == sk_resp[1, 2] == 0.0
    # the floor divided by the row's total, as every entry of the row
    floored = np.maximum(np.exp(w - w.max(1, keepdims=True)), floor)
    # (float32: the clamp's argument -43.7 is itself rounded to float32, 2e-6 relative after exp)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(resp.double().numpy(), floored / floored.sum(1, keepdims=True), rtol=rtol)
    assert float(resp[0, 1]) > 0.5 * floor and float(resp[1, 2]) > 0.25 * floor
    _close(log_norm, logsumexp(w, axis=1), 4 * torch.finfo(dtype).eps)
    np.testing.assert_allclose(resp.double().numpy(), sk_resp, rtol=4 * torch.finfo(dtype).eps, atol=2 * floor)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="normalize_log_prob's float32 floor (1.1e-19 per row) adds n * 1e-19 to a dead component's nk, "
    "more than nk's 10*eps64 = 2.2e-15 once n > ~2e4 (and already ~1 % of the data's variance in its "
    "covariance at n = 300): it gets the data's mean and covariance, not scikit-learn's mean 0 and "
    "covariance reg_covar (scikit-learn's nk also gets 10*eps32 = 1.2e-6)",
)
def test_a_component_no_sample_supports_keeps_sklearns_estimate_in_float32():
    rng = np.random.RandomState(0)
    n, K = 50_000, 3
    Xs = _t(rng.randn(n, 3).astype(np.float32))
    wlp = _t(rng.randn(n, K).astype(np.float32))
    wlp[:, 2] -= 1000.0  # no sample within e^-1000 of component 2
    _, resp = gm.normalize_log_prob(wlp.clone())
    nk, means, cov = gm.estimate_parameters(_stats(Xs, resp, "diag"), REG, "diag")
    w = wlp.double().numpy()
    sk_resp = np.exp(w - logsumexp(w, axis=1, keepdims=True)).astype(np.float32)
    _, sk_means, sk_cov = skgm._estimate_gaussian_parameters(Xs.numpy(), sk_resp, REG, "diag")
    np.testing.assert_allclose(cov[2].numpy(), sk_cov[2], rtol=1e-3)  # ~0.8 here against 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ct", TYPES)
def test_one_em_iteration_equals_sklearns(ct, dtype):
    # E-step (working parameters, normalisation, statistics) then M-step, chained as GaussianMixture
    # does, against scikit-learn's _e_step + _m_step in float64 on the same shifted values.
    X, shift, sk, params = _mixture(ct, d=3)
    Xs = _t(X.astype(dtype)) - shift.to(_t(X.astype(dtype)).dtype)
    log_norm, resp = gm.normalize_log_prob(params.working(Xs.dtype, ct).weighted_log_prob(Xs))
    stats = _stats(Xs, resp, ct)
    new = gm.MixtureParameters.from_stats(stats, REG, ct, _xtx(Xs, ct))
    sk_mean_norm, sk_log_resp = sk._e_step(Xs.double().numpy())
    assert abs(float(log_norm.double().mean()) - sk_mean_norm) <= WORK_TOL[dtype] * abs(sk_mean_norm)
    sk._m_step(Xs.double().numpy(), sk_log_resp)
    tol = WORK_TOL[dtype]  # float32: the responsibilities' rounding (observed 4e-7)
    for got, want in zip(
        (new.weights, new.means, new.covariances, new.precisions_cholesky),
        (sk.weights_, sk.means_, sk.covariances_, sk.precisions_cholesky_),
    ):
        _close(got, want, tol)


# --- properties --------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
        elements=st.floats(-1e4, 1e4, allow_nan=False),
    ),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_normalize_log_prob_gives_distributions(w, dtype):
    wlp = _t(w).to(dtype)
    w = wlp.double().numpy()  # the values in the working dtype
    log_norm, resp = gm.normalize_log_prob(wlp.clone())
    r = resp.double().numpy()
    eps = torch.finfo(dtype).eps
    assert np.all(r > 0) and np.all(r <= 1)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=0, atol=2 * w.shape[1] * eps)
    lse = logsumexp(w, axis=1)
    np.testing.assert_allclose(log_norm.double().numpy(), lse, rtol=4 * eps, atol=4 * eps)
    assert np.all(log_norm.double().numpy() >= w.max(1) - 4 * eps * np.abs(w).max(1))
    # scikit-learn's responsibilities (exp(w - logsumexp), here with the row's maximum taken out first
    # so that the reference is exact in float64), up to the floor of
    # test_normalize_log_prob_floors_tiny_responsibilities. float32: w - max is rounded in float32, a
    # relative error of up to eps32 * |w - max| <= 22 eps32 where a responsibility is above the floor.
    floor = np.exp(0.5 * np.log(torch.finfo(dtype).tiny))
    e = np.exp(w - w.max(1, keepdims=True))
    np.testing.assert_allclose(r, e / e.sum(1, keepdims=True), rtol=64 * eps, atol=2 * floor)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(TYPES),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
    st.floats(-1e3, 1e3),
    st.booleans(),
)
def test_statistics_give_symmetric_positive_definite_covariances(ct, d, seed, offset, collapsed):
    # Any data (collapsed onto one point or not) and any responsibilities: after reg_covar the
    # covariances are symmetric positive definite, precision_cholesky does not raise, and they are
    # scikit-learn's.
    rng = np.random.RandomState(seed)
    n, K = int(rng.randint(2, 40)), int(rng.randint(1, 4))
    X = np.zeros((n, d)) + offset if collapsed else rng.randn(n, d) * rng.uniform(0.01, 10) + offset
    resp = rng.dirichlet(np.full(K, 0.3), size=n)
    Xs = _t(X) - _t(X).mean(0)
    nk, means, cov = gm.estimate_parameters(_stats(Xs, resp, ct), REG, ct, _xtx(Xs, ct))
    if ct in ("full", "tied"):
        torch.testing.assert_close(cov, cov.transpose(-1, -2), rtol=0, atol=1e-12 * float(cov.abs().max()))
        assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    else:
        assert bool((cov > 0).all())
    P = gm.precision_cholesky(cov, ct)
    assert bool(torch.isfinite(P).all())
    _, _, sk_cov = skgm._estimate_gaussian_parameters(Xs.numpy(), resp, REG, ct)
    _close(cov, sk_cov, 1e-9)  # scales from 0.01 to 10 and collapsed data: looser than STATS_TOL


# --- the per-matrix loop a GPU takes at large D ---------------------------------------------------


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
