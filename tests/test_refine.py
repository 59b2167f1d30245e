"""gpuclust.app.refine: k-NN graphs, the UMAP-style embedding and refinement; the pipeline's tasks using it."""

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


# --- task 5: autoencoders side by side, self-labelling (issue 17) ----------------------------------


def test_inductive_info_holds_the_training_clustering():
    X, y = blobs(300)
    _, info = refine_inductive(
        X, X[:10], n_clusters=4, config=RefineConfig(n_neighbors=10, embed_epochs=20, max_train_points=200)
    )
    assert info["train_index"].shape == (200,) and np.all(np.diff(info["train_index"]) > 0)
    assert info["train_labels"].shape == (200,) and info["train_confidence"].shape == (200,)
    assert bool(((info["train_confidence"] > 0) & (info["train_confidence"] <= 1 + 1e-6)).all())
    assert completeness_score(y[info["train_index"]], info["train_labels"]) > 0.9


def test_confident_members_takes_each_clusters_most_confident_deterministically():
    from gpuclust.app.selflabel import confident_members

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    confidence = torch.tensor([0.9, 0.5, 0.9, 0.7, 0.6, 0.8, 0.3])
    assert confident_members(labels, confidence, 4, 0.5).tolist() == [0, 2, 5, 6]  # a tie keeps index order
    assert confident_members(labels, confidence, 4, 1.0).tolist() == list(range(7))
    with pytest.raises(ValueError, match="keep_fraction"):
        confident_members(labels, confidence, 4, 0.0)


def _stripes(n, seed):
    # Two kinds of image: horizontal or vertical bars at random places (class = orientation).
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    y = rng.integers(0, 2, n)
    for i, (c, at) in enumerate(zip(y, rng.integers(4, 20, n))):
        if c:
            images[i, :, at : at + 4] = 255
        else:
            images[i, at : at + 4, :] = 255
    return images, y


def test_self_label_learns_the_clusters_from_pixels_deterministically():
    from gpuclust.app.autoencoder import ConvAutoencoder
    from gpuclust.app.selflabel import SelfLabelConfig, self_label

    train, y = _stripes(200, 0)
    test, y_test = _stripes(60, 1)
    noisy = torch.as_tensor(y).clone()
    noisy[:20] = 1 - noisy[:20]  # a tenth of the clustering wrong, and unsure of those
    confidence = torch.ones(200)
    confidence[:20] = 0.1
    torch.manual_seed(0)
    ae = ConvAutoencoder("dense10")
    cfg = SelfLabelConfig(epochs=4, batch_size=32, keep_fraction=0.8)
    a, info = self_label(ae, train, noisy, confidence, test, n_clusters=2, config=cfg, seed=0)
    b, _ = self_label(ae, train, noisy, confidence, test, n_clusters=2, config=cfg, seed=0)
    assert torch.equal(a, b) and info["n_trained_on"] == 160
    assert float((a.numpy() == y_test).mean()) > 0.9
    with pytest.raises(ValueError, match="one entry per training image"):
        self_label(ae, train[:10], noisy, confidence, test, n_clusters=2, config=cfg)


def test_self_label_runs_the_cuda_path_on_the_cpu_when_asked():
    from gpuclust.app.autoencoder import ConvAutoencoder
    from gpuclust.app.selflabel import SelfLabelConfig, self_label

    train, y = _stripes(120, 0)
    test, _ = _stripes(30, 1)
    torch.manual_seed(0)
    ae = ConvAutoencoder("dense10")
    cfg = SelfLabelConfig(epochs=2, batch_size=32, keep_fraction=0.8)
    labels, confidence = torch.as_tensor(y), torch.ones(120)
    default, _ = self_label(ae, train, labels, confidence, test, n_clusters=2, config=cfg, seed=0)
    off, _ = self_label(ae, train, labels, confidence, test, n_clusters=2, config=cfg, channels_last_bf16=False)
    on, info = self_label(ae, train, labels, confidence, test, n_clusters=2, config=cfg, channels_last_bf16=True)
    assert torch.equal(default, off)  # None on the CPU: the CPU path
    assert on.dtype == torch.long and on.shape == (30,) and info["n_trained_on"] == 96
    assert set(on.tolist()) <= {0, 1}


def test_profiles_set_self_labelling():
    full = RunConfig(profile="full").resolved(torch.device("cpu"))
    quick = RunConfig(profile="quick").resolved(torch.device("cpu"))
    assert (full.self_label, quick.self_label) == (True, False)
    assert RunConfig(profile="full", self_label=False).resolved(torch.device("cpu")).self_label is False


def test_merge_by_graph_joins_the_groups_the_graph_holds_together():
    from gpuclust.app.refine import merge_by_graph

    # Six groups of two nodes; heavy edges join groups 0-1 and 2-3-4, group 5 stands alone.
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    edges = [(0, 1, 1.0), (2, 3, 1.0), (1, 2, 0.9), (4, 5, 1.0), (6, 7, 1.0), (5, 6, 0.8), (8, 9, 1.0), (7, 8, 0.7)]
    edges += [(10, 11, 1.0), (3, 4, 0.05), (9, 10, 0.05)]
    rows = torch.tensor([e[0] for e in edges] + [e[1] for e in edges])
    cols = torch.tensor([e[1] for e in edges] + [e[0] for e in edges])
    weights = torch.tensor([e[2] for e in edges] * 2)
    assert merge_by_graph(labels, (rows, cols, weights), 3).tolist() == [0, 0, 1, 1, 1, 2]
    assert merge_by_graph(labels, (rows, cols, weights), 6).tolist() == [0, 1, 2, 3, 4, 5]
    # An empty group (no node has label 2 here) takes no part and maps to cluster 0.
    relabelled = torch.where(labels >= 2, labels + 1, labels)
    out = merge_by_graph(relabelled, (rows, cols, weights), 3)
    assert out[2] == 0 and out.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_over_clustering_needs_the_graph_and_merges_blobs_split_in_two():
    from gpuclust.app.refine import cluster_embedding

    X, y = blobs(400, k=3)
    with pytest.raises(ValueError, match="graph"):
        cluster_embedding(X, 3, RefineConfig(over_clustering=2), 0)
    config = RefineConfig(n_neighbors=10, embed_epochs=30, over_clustering=3)
    _, info = refine_inductive(X, X, n_clusters=3, config=config)
    labels = info["train_labels"]
    assert int(labels.max()) == 2 and completeness_score(y, labels) > 0.9


@pytest.mark.realdata
def test_run_reports_task5_rows_deterministically(fashion_train):
    config = RunConfig(
        device="cpu", epochs=1, limit=300, covariance_types=("diag",), progress=False, batch_size=100, self_label=True
    )
    first, second = run_experiments(config), run_experiments(config)
    rows = {r["task"]: r for r in first["results"]}
    assert rows["task5_merged_inductive"]["protocol"] == "inductive"
    assert rows["task5_merged_transductive"]["protocol"] == "transductive"
    assert rows["task5_merged_inductive"]["over_clustering"] == 2
    assert rows["task4_umap_gmm_inductive"]["over_clustering"] == 1
    assert (
        not rows["task4_umap_gmm_inductive"]["embedding_reused"] and rows["task5_merged_inductive"]["embedding_reused"]
    )
    assert rows["task5_merged_transductive"]["embedding_reused"]
    assert rows["task5_selflabel_inductive"]["protocol"] == "inductive"
    for task in ("task5_merged_inductive", "task5_merged_transductive", "task5_selflabel_inductive"):
        assert np.array_equal(first["predictions"][task], second["predictions"][task]), task
    report = render_report(first, {})
    assert "| task5_selflabel_inductive | inductive |" in report


@pytest.mark.realdata
def test_save_codes_writes_the_codes(fashion_train, tmp_path):
    from gpuclust.app.report import write_run_folder

    config = RunConfig(
        device="cpu",
        epochs=1,
        limit=120,
        covariance_types=("diag",),
        progress=False,
        batch_size=60,
        refine=False,
        save_codes=True,
    )
    paths = write_run_folder(run_experiments(config), tmp_path)
    with np.load(paths["codes"]) as codes:
        assert sorted(codes.files) == ["test_codes", "test_labels", "train_codes", "train_index", "train_labels"]
        assert codes["train_codes"].shape == (96, 10) and codes["test_codes"].shape == (120, 10)
        assert codes["train_labels"].shape == (96,) and codes["test_labels"].shape == (120,)
    config.save_codes = False
    assert "codes" not in write_run_folder(run_experiments(config), tmp_path)
    assert not (tmp_path / "codes.npz").exists()  # a previous run's codes do not stay beside new results


def test_a_reused_embedding_gives_the_same_clustering():
    X, _ = blobs(300)
    Xt, _ = blobs(40, seed=2)
    first, info = refine_inductive(X, Xt, n_clusters=4, config=SMALL, seed=1)
    again, info2 = refine_inductive(X, Xt, n_clusters=4, config=SMALL, seed=1, embedding=info["embedding"])
    assert torch.equal(first, again) and info2["embedding"][0] is info["embedding"][0]  # not recomputed
    t1, tinfo = refine_transductive(X, Xt, n_clusters=4, config=SMALL, seed=1)
    t2, _ = refine_transductive(X, Xt, n_clusters=4, config=SMALL, seed=1, embedding=tinfo["embedding"])
    assert torch.equal(t1, t2)


def test_merged_confidence_survives_empty_last_components_and_stays_in_0_1():
    from gpuclust.app.refine import cluster_embedding, merge_by_graph

    # Six distinct codes repeated: a mixture of 20 components leaves the last ones empty.
    Y = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)).repeat(5, 1)
    config = RefineConfig(over_clustering=2, covariance_type="diag", n_neighbors=5)
    labels, confidence = cluster_embedding(
        Y, 10, config, 0, graph=fuzzy_graph(*knn_graph(Y, 5)), return_confidence=True
    )
    assert labels.shape == confidence.shape == (30,) and int(labels.max()) < 10
    assert bool(((confidence >= 0) & (confidence <= 1)).all())
    with pytest.raises(ValueError, match="n_clusters"):
        merge_by_graph(labels, fuzzy_graph(*knn_graph(Y, 5)), 0)


def test_a_reused_embedding_of_other_codes_is_refused():
    X, _ = blobs(200)
    _, tinfo = refine_transductive(X, X[:20], n_clusters=4, config=SMALL)
    with pytest.raises(ValueError, match="rows for 200 codes"):
        refine_inductive(X, X[:20], n_clusters=4, config=SMALL, embedding=tinfo["embedding"])


def test_self_label_checks_labels_and_settings_and_keeps_the_callers_random_state():
    from gpuclust.app.autoencoder import ConvAutoencoder
    from gpuclust.app.selflabel import SelfLabelConfig, self_label

    train, y = _stripes(40, 0)
    ae = ConvAutoencoder("dense10")
    labels, confidence = torch.as_tensor(y), torch.ones(40)
    cfg = SelfLabelConfig(epochs=1, batch_size=16)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        self_label(ae, train, labels + 1, confidence, train[:5], n_clusters=2, config=cfg)
    for bad in (SelfLabelConfig(epochs=0), SelfLabelConfig(max_shift=-1), SelfLabelConfig(max_shift=40)):
        with pytest.raises(ValueError, match="epochs|max_shift"):
            self_label(ae, train, labels, confidence, train[:5], n_clusters=2, config=bad)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    self_label(ae, train, labels, confidence, train[:5], n_clusters=2, config=cfg)
    assert torch.equal(torch.rand(3), expected)
