"""gpuclust.metrics: the clustering scores against scikit-learn's, without integer matrix products."""

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from conftest import DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from gpuclust import metrics

PAIRS = [
    ("completeness_score", skm.completeness_score),
    ("homogeneity_score", skm.homogeneity_score),
    ("v_measure_score", skm.v_measure_score),
    ("normalized_mutual_info_score", skm.normalized_mutual_info_score),
    ("adjusted_rand_score", skm.adjusted_rand_score),
    ("mutual_info_score", skm.mutual_info_score),
]
rng = np.random.RandomState(0)
EDGE_CASES = {
    "random": (rng.randint(0, 10, 500), rng.randint(0, 10, 500)),
    "one_cluster": (rng.randint(0, 5, 100), np.zeros(100, dtype=int)),
    "one_class": (np.zeros(100, dtype=int), rng.randint(0, 5, 100)),
    "both_single": (np.zeros(50, dtype=int), np.full(50, 7)),
    "all_singletons": (rng.randint(0, 4, 60), np.arange(60)),
    "more_clusters_than_classes": (rng.randint(0, 3, 300), rng.randint(0, 12, 300)),
    "permuted_identical": (np.arange(200) % 7, (np.arange(200) % 7 + 3) % 7),
    "non_contiguous_values": (rng.choice([-5, 3, 100, 2**40], 400), rng.choice([9, 1000, -1], 400)),
    "single_sample": (np.array([1]), np.array([4])),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("name,reference", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_sklearn(case, name, reference, device):
    t, p = EDGE_CASES[case]
    ours = getattr(metrics, name)(torch.as_tensor(t, device=device), torch.as_tensor(p, device=device))
    assert ours == pytest.approx(reference(t, p), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name,reference", PAIRS, ids=[p[0] for p in PAIRS])
def test_numpy_and_list_input(name, reference):
    t, p = EDGE_CASES["random"]
    assert getattr(metrics, name)(t, p) == pytest.approx(reference(t, p), rel=1e-9, abs=1e-12)
    assert getattr(metrics, name)(list(t), list(p)) == pytest.approx(reference(t, p), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 9)), min_size=1, max_size=80))
def test_random_labelings_match_sklearn(pairs):
    t = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    for name, reference in PAIRS:
        assert getattr(metrics, name)(t, p) == pytest.approx(reference(t, p), rel=1e-9, abs=1e-9), name


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=60), st.permutations(list(range(6))))
def test_scores_invariant_to_renaming_clusters(labels, perm):
    t = np.array(labels)
    p = (t * 3 + 1) % 6
    renamed = np.array(perm)[p]
    for name, _ in PAIRS:
        assert getattr(metrics, name)(t, p) == pytest.approx(getattr(metrics, name)(t, renamed), abs=1e-12)
    assert metrics.cluster_accuracy(t, renamed) == pytest.approx(metrics.cluster_accuracy(t, p))


def brute_force_accuracy(t, p):
    import itertools

    classes, clusters = np.unique(t), np.unique(p)
    best = 0
    if len(clusters) <= len(classes):
        mappings = (dict(zip(clusters, perm)) for perm in itertools.permutations(classes, len(clusters)))
    else:
        mappings = (dict(zip(perm, classes)) for perm in itertools.permutations(clusters, len(classes)))
    for mapping in mappings:
        best = max(best, sum(mapping.get(c) == y for c, y in zip(p, t)))
    return best / len(t)


@pytest.mark.parametrize("seed", range(4))
def test_cluster_accuracy_is_the_best_one_to_one_matching(seed):
    r = np.random.RandomState(seed)
    t, p = r.randint(0, 4, 40), r.randint(0, 5, 40)
    assert metrics.cluster_accuracy(t, p) == pytest.approx(brute_force_accuracy(t, p))


def test_cluster_accuracy_perfect_under_permutation_and_match_clusters():
    t = np.arange(100) % 10
    p = (t + 4) % 10 + 20
    assert metrics.cluster_accuracy(t, p) == 1.0
    mapping, counts, classes, clusters = metrics.match_clusters(t, p)
    assert all(mapping[c] == (c - 20 - 4) % 10 for c in mapping)
    assert counts.shape == (10, 10) and int(counts.sum()) == 100


def test_contingency_matrix_matches_sklearn():
    t, p = EDGE_CASES["non_contiguous_values"]
    counts, classes, clusters = metrics.contingency_matrix(t, p, return_labels=True)
    np.testing.assert_array_equal(counts.numpy(), skm.cluster.contingency_matrix(t, p))
    np.testing.assert_array_equal(classes.numpy(), np.unique(t))


def test_adjusted_rand_does_not_overflow_on_large_inputs():
    r = np.random.RandomState(1)
    t, p = r.randint(0, 10, 200_000), r.randint(0, 10, 200_000)
    assert metrics.adjusted_rand_score(t, p) == pytest.approx(skm.adjusted_rand_score(t, p), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "t,p,match",
    [
        ([0, 1, 2], [0, 1], "3 entries but labels_pred has 2"),
        ([], [], "empty"),
        (np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int), "1-d"),
        (np.array(["a", 1, None], dtype=object), [0, 1, 2], "cannot be compared"),
    ],
)
def test_bad_input(t, p, match):
    with pytest.raises(ValueError, match=match):
        metrics.completeness_score(t, p)


@pytest.mark.parametrize("kind", ["str", "float", "object", "torch-float"])
def test_labels_of_any_kind_as_scikit_learn_takes_them(kind):
    rng = np.random.RandomState(0)
    t, p = rng.randint(0, 4, 300), rng.randint(0, 5, 300)
    convert = {"str": lambda a: np.array([f"c{v}" for v in a]), "float": lambda a: a * 0.5 + 0.25,
               "object": lambda a: np.array([f"o{v}" for v in a], dtype=object),
               "torch-float": lambda a: torch.as_tensor(a * 0.5)}[kind]  # fmt: skip
    ref = convert(t) if kind != "torch-float" else t * 0.5
    ours = metrics.all_scores(convert(t), convert(p))
    sk_t, sk_p = (ref, p * 0.5) if kind == "torch-float" else (convert(t), convert(p))
    assert ours["nmi"] == pytest.approx(skm.normalized_mutual_info_score(sk_t, sk_p), abs=1e-12)
    assert ours["ari"] == pytest.approx(skm.adjusted_rand_score(sk_t, sk_p), abs=1e-12)
    assert ours["completeness"] == pytest.approx(skm.completeness_score(sk_t, sk_p), abs=1e-12)


def test_all_scores_keys():
    t, p = EDGE_CASES["random"]
    scores = metrics.all_scores(t, p)
    assert set(scores) == {"completeness", "homogeneity", "v_measure", "nmi", "ari", "cluster_accuracy"}
    assert scores["completeness"] == pytest.approx(skm.completeness_score(t, p), rel=1e-9)


# --- CUDA has no integer matrix products: the metrics never ask for one ---------------------------


_PRODUCTS = {torch.matmul, torch.mm, torch.mv, torch.bmm, torch.addmm, torch.addmv, torch.dot, torch.Tensor.__matmul__,
             torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.mv, torch.Tensor.addmm, torch.Tensor.addmv}  # fmt: skip


class NoIntegerProducts(TorchFunctionMode):
    """Refuses integer matrix products, as CUDA does ("addmv_impl_cuda" not implemented for 'Long')."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(not (t.is_floating_point() or t.is_complex()) for t in tensors):
                raise RuntimeError(f"{func.__name__} of integer tensors is not implemented on CUDA")
        return func(*args, **kwargs)


def test_the_cuda_rule_checker_catches_integer_products():
    with NoIntegerProducts(), pytest.raises(RuntimeError, match="not implemented on CUDA"):
        torch.ones(3, 3, dtype=torch.int64) @ torch.ones(3, dtype=torch.int64)


@pytest.mark.parametrize("n", [50, 70_000])
def test_every_metric_avoids_integer_matrix_products(n):
    rng = np.random.RandomState(0)
    y, p = rng.randint(0, 10, n), rng.randint(0, 12, n)
    p[: n // 2] = y[: n // 2]
    yt, pt = torch.as_tensor(y), torch.as_tensor(p)
    with NoIntegerProducts():
        ours = metrics.all_scores(yt, pt)
    assert ours["ari"] == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-12)
    assert ours["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, p), abs=1e-12)
    assert ours["completeness"] == pytest.approx(skm.completeness_score(y, p), abs=1e-12)
