"""gpuclust._argmin.first_min: torch.min(dim=1)'s values and first indices, by vectorized passes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuclust import KMeans
from gpuclust._argmin import MASKED_ARGMIN_FROM, first_min


def _first_min_of(scores):
    m = scores.shape[0]
    out = (torch.empty(m, dtype=scores.dtype), torch.empty(m, dtype=torch.int64))
    first_min(scores, out)
    return out


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 3 * MASKED_ARGMIN_FROM),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_same_values_and_first_index_as_torch_min_with_many_ties(m, k, levels, seed, dtype):
    # Few distinct values: most rows have their minimum several times, so the first index matters.
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-levels, levels + 1, (m, k), generator=g).to(dtype) * 0.25
    values, indices = _first_min_of(scores)
    expected = torch.min(scores, dim=1)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)
    # The first index: nothing before it equals the minimum (torch.min's own, not just any tie).
    before = torch.arange(k).unsqueeze(0) < indices.unsqueeze(1)
    assert not bool(((scores == values.unsqueeze(1)) & before).any())


def test_signed_zeros_and_infinities_tie_as_torch_min_ties_them():
    k = MASKED_ARGMIN_FROM + 3
    scores = torch.ones(4, k)
    scores[0, [5, 9]] = torch.tensor([0.0, -0.0])
    scores[1, [2, 30]] = torch.tensor([-0.0, 0.0])
    scores[2, :] = float("inf")
    scores[3, [k - 1]] = float("-inf")
    values, indices = _first_min_of(scores)
    assert indices.tolist() == [5, 2, 0, k - 1]
    assert torch.equal(values, torch.min(scores, dim=1).values)
    # The first minimum's own zero, bit for bit (torch.equal takes -0.0 == +0.0).
    assert torch.signbit(values).tolist() == torch.signbit(torch.min(scores, dim=1).values).tolist() == [
        False, True, False, True,
    ]  # fmt: skip


@pytest.mark.parametrize("dtype,k", [(torch.bfloat16, 300), (torch.float16, 3000), (torch.bfloat16, 3000)])
def test_narrow_floats_take_torch_min(dtype, k):
    # Their integers are exact only to 256 (bf16) and 2048 (float16): weights k..1 would round.
    scores = torch.ones(2, k, dtype=dtype)
    scores[:, [1, 2]] = 0.0
    values, indices = _first_min_of(scores)
    assert indices.tolist() == [1, 1] and values.tolist() == [0.0, 0.0]


def test_a_nan_row_gets_torch_mins_answer():
    scores = torch.randn(3, MASKED_ARGMIN_FROM * 2)
    scores[1, 7] = float("nan")
    values, indices = _first_min_of(scores)
    expected = torch.min(scores, dim=1)
    assert torch.equal(indices, expected.indices)
    assert torch.equal(values.isnan(), expected.values.isnan())


def test_writes_into_views_of_larger_buffers_with_a_reused_mask():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 64, generator=g)
    values, indices = torch.full((80,), 7.0), torch.full((80,), -1, dtype=torch.int64)
    mask = torch.empty(64, 64)
    for rows in (slice(0, 30), slice(30, 50)):
        first_min(scores[rows], (values[10:60][rows], indices[10:60][rows]), mask[: rows.stop - rows.start])
    expected = torch.min(scores, dim=1)
    assert torch.equal(values[10:60], expected.values) and torch.equal(indices[10:60], expected.indices)
    assert bool((values[:10] == 7).all()) and bool((indices[60:] == -1).all())


@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
def test_kmeans_with_many_centres_matches_scikit_learn_on_the_cpu_float32_path(algorithm):
    # K >= MASKED_ARGMIN_FROM takes first_min in both Lloyd's and Hamerly's assignment.
    from sklearn.cluster import KMeans as SkKMeans

    rng = np.random.default_rng(0)
    k = 2 * MASKED_ARGMIN_FROM
    X = (rng.normal(size=(k, 5)) * 4)[rng.integers(0, k, 3000)] + rng.normal(size=(3000, 5))
    X = X.astype(np.float32)
    init = X[rng.choice(3000, k, replace=False)]
    ours = KMeans(k, init=init, n_init=1, max_iter=30, algorithm=algorithm, device="cpu").fit(X)
    ref = SkKMeans(k, init=init, n_init=1, max_iter=30, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    # float32 centres: sums in a different order; 1e-4 relative is float32's accumulated rounding here.
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("error")  # a scratch too small for a block is resized by torch, with a warning
@pytest.mark.parametrize("route", ["nearest_center", "assign_top2"])
def test_blocks_of_a_tile_of_any_size_get_torch_mins_labels(route):
    # k=1024 float32: blocks of 1024 rows (gpuclust._chunks.PRODUCT_BLOCK_BYTES); 2049 rows end with a
    # block of 1025 (a one-row remainder joins the block before), larger than the first block.
    from gpuclust import _kmeans_core as core

    g = torch.Generator().manual_seed(0)
    k, m = 1024, 2049
    X, centers = torch.randn(m, 3, generator=g), torch.randn(k, 3, generator=g)
    X[5] = centers[7] = centers[9]  # an exact tie: the first of the two centres
    x_sq = core.squared_norms(X)
    if route == "nearest_center":
        labels, _ = core.assign(X, x_sq, centers, tile_rows=m)
    else:
        labels, _, _ = core.assign_top2(X, x_sq, centers, tile_rows=m)
    reference = torch.addmm(core.squared_norms(centers), X, centers.T, alpha=-2.0).min(dim=1).indices
    # Products by another kernel may round near ties differently: all but a few rows agree, row 5 exactly.
    assert int(labels[5]) == 7
    assert float((labels == reference).float().mean()) > 0.999
