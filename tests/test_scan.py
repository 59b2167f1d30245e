"""gpuclust.app.scan: neighbour-consistency heads (scan_cluster), label alignment and graph modularity."""

import numpy as np
import pytest
import torch

from gpuclust.app.refine import knn_graph
from gpuclust.app.scan import ScanConfig, align_labels, graph_modularity, scan_cluster
from gpuclust.metrics import adjusted_rand_score

SMALL = ScanConfig(n_neighbors=5, n_heads=3, ensemble=2, epochs=40, batch_size=32, hidden=32, lr=3e-3)


def _blobs(n_per=60, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0]], dtype=np.float32)
    X = np.concatenate([c + rng.normal(size=(n_per, 4)).astype(np.float32) for c in centres])
    return torch.as_tensor(X), np.repeat(np.arange(3), n_per)


def test_scan_cluster_finds_separated_blobs_and_labels_unseen_points_deterministically():
    X, y = _blobs()
    Q, yq = _blobs(20, seed=1)
    _, neighbours = knn_graph(X, 5)
    labels, info = scan_cluster(X, Q, neighbours, n_clusters=3, config=SMALL, seed=0)
    assert labels.shape == (60,) and labels.dtype == torch.int64
    assert adjusted_rand_score(yq, labels.numpy()) > 0.9
    assert adjusted_rand_score(y, info["train_labels"].numpy()) > 0.9
    assert len(info["consistency"]) == 3 and len(info["heads"]) == 2
    assert float(info["train_confidence"].min()) >= 0.0 and float(info["train_confidence"].max()) <= 1.0 + 1e-6
    again, _ = scan_cluster(X, Q, neighbours, n_clusters=3, config=SMALL, seed=0)
    assert torch.equal(labels, again)


def test_scan_cluster_leaves_the_callers_random_state_alone():
    X, _ = _blobs(20)
    _, neighbours = knn_graph(X, 5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    scan_cluster(X, X, neighbours, n_clusters=3, config=SMALL, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (ScanConfig(n_heads=2, ensemble=3), "ensemble=3"),
        (ScanConfig(epochs=0), "epochs=0"),
        (ScanConfig(lr=0.0), "lr must be positive"),
        (ScanConfig(n_neighbors=100), "n_neighbors=100"),
    ],
)
def test_scan_cluster_rejects_bad_settings(config, match):
    X, _ = _blobs(20)
    _, neighbours = knn_graph(X, 5)
    with pytest.raises(ValueError, match=match):
        scan_cluster(X, X, neighbours, n_clusters=3, config=config)


def test_scan_cluster_wants_one_neighbour_row_per_code():
    X, _ = _blobs(20)
    _, neighbours = knn_graph(X[:30], 5)
    with pytest.raises(ValueError, match="30 rows for 60"):
        scan_cluster(X, X, neighbours, n_clusters=3, config=SMALL)


def test_align_labels_undoes_a_permutation():
    reference = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])
    relabelled = np.argsort(perm)[reference]  # cluster c of reference became argsort(perm)[c]
    assert np.array_equal(align_labels(reference, relabelled, 3)[relabelled], reference)


def test_graph_modularity_ranks_the_true_clustering_above_one_cluster_and_noise():
    X, y = _blobs()
    _, neighbours = knn_graph(X, 5)
    true = graph_modularity(torch.as_tensor(y), neighbours, 3)
    assert true == pytest.approx(1.0 - 3 * (1 / 3) ** 2, abs=0.02)
    assert graph_modularity(torch.zeros(180, dtype=torch.long), neighbours, 3) == pytest.approx(0.0)
    noise = torch.as_tensor(np.random.default_rng(0).integers(0, 3, 180))
    assert abs(graph_modularity(noise, neighbours, 3)) < 0.1
    with pytest.raises(ValueError, match="rows for"):
        graph_modularity(torch.zeros(10, dtype=torch.long), neighbours, 3)
