import numpy as np
import pytest
import torch

from gpuclust.app.pipeline import RunConfig, run_experiments
from gpuclust.app.refine import (
    RefineConfig,
    fuzzy_graph,
    knn_graph,
    nearest_neighbors,
    refine_inductive,
    refine_transductive,
    umap_ab,
)
from gpuclust.app.report import render_report
from gpuclust.metrics import completeness_score

SMALL = RefineConfig(n_neighbors=10, embed_epochs=30)


def blobs(n=400, d=5, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 6
    labels = torch.randint(0, k, (n,), generator=g)
    return centers[labels] + torch.randn(n, d, generator=g), labels


def test_knn_graph_matches_brute_force():
    X, _ = blobs(300)
    d, i = knn_graph(X, 7, tile=64)
    full = torch.cdist(X, X)
    full.fill_diagonal_(float("inf"))
    ref_d, ref_i = torch.topk(full, 7, largest=False)
    torch.testing.assert_close(d, ref_d, rtol=1e-4, atol=1e-4)
    assert (i == ref_i).float().mean() > 0.99  # ties aside
    qd, qi = nearest_neighbors(X, X[:5], 1)
    assert qi.flatten().tolist() == [0, 1, 2, 3, 4] and float(qd.max()) < 1e-2


def test_fuzzy_graph_is_symmetric_with_weights_in_0_1():
    X, _ = blobs(200)
    rows, cols, w = fuzzy_graph(*knn_graph(X, 8))
    n = X.shape[0]
    dense = torch.zeros(n, n).index_put_((rows, cols), w)
    torch.testing.assert_close(dense, dense.T)
    assert float(w.min()) > 0 and float(w.max()) <= 1.0 + 1e-6
    assert (dense.diagonal() == 0).all()


def test_umap_ab_for_min_dist_zero():
    a, b = umap_ab(0.0)
    assert a == pytest.approx(1.93, abs=0.05) and b == pytest.approx(0.79, abs=0.02)


@pytest.mark.parametrize("fn", [refine_inductive, refine_transductive])
def test_variants_cluster_blobs_deterministically(fn):
    X, y = blobs(400)
    Xt, yt = blobs(120, seed=0)
    a, info = fn(X, Xt, n_clusters=4, config=SMALL, seed=3)
    b, _ = fn(X, Xt, n_clusters=4, config=SMALL, seed=3)
    assert a.shape == (120,) and torch.equal(a, b)
    assert completeness_score(yt, a) > 0.9
    assert info["n_embedded"] == (400 if fn is refine_inductive else 520)


def test_inductive_variant_never_sees_test_codes():
    X, _ = blobs(300)
    Xt, _ = blobs(50, seed=1)
    a, _ = refine_inductive(X, Xt, n_clusters=4, config=SMALL, seed=0)
    b, _ = refine_inductive(X, torch.cat([Xt, Xt * 0 + 100.0]), n_clusters=4, config=SMALL, seed=0)
    assert torch.equal(a, b[:50])  # other test points change nothing


def test_max_train_points_subsets_the_training_codes():
    X, _ = blobs(300)
    _, info = refine_inductive(
        X, X[:10], n_clusters=4, config=RefineConfig(n_neighbors=10, embed_epochs=5, max_train_points=120)
    )
    assert info["n_embedded"] == 120


@pytest.mark.realdata
def test_run_reports_inductive_and_transductive_rows_deterministically(fashion_train):
    config = RunConfig(device="cpu", epochs=1, limit=300, covariance_types=("diag",), progress=False, batch_size=100)
    first = run_experiments(config)
    second = run_experiments(config)
    rows = {r["task"]: r for r in first["results"]}
    assert [r["task"] for r in first["results"]][:3] == ["task1_kmeans_pixels", "task2_ae_kmeans", "task3_ae_gmm_diag"]
    assert rows["task4_umap_gmm_inductive"]["protocol"] == "inductive"
    assert rows["task4_umap_gmm_transductive"]["protocol"] == "transductive"
    assert rows["task4_umap_gmm_transductive"]["n_embedded"] == 540  # 240 training-split + 300 test codes
    for task in ("task4_umap_gmm_inductive", "task4_umap_gmm_transductive"):
        assert np.array_equal(first["predictions"][task], second["predictions"][task]), task
    report = render_report(first, {})
    line = next(ln for ln in report.splitlines() if ln.startswith("| task4_umap_gmm_transductive | **transductive**"))
    assert "%" in line
    assert "## Experiment table" in report
