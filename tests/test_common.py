"""scikit-learn's own estimator checks on both estimators (the drop-in contract, tested not assumed).

Tests gpuclust.kmeans and gpuclust.gaussian_mixture (a cross-cutting suite).
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from gpuclust import GaussianMixture, KMeans

# Only where scikit-learn's own estimator fails the same check (sklearn 1.9: KMeans fails both;
# k-means++ seeding draws from the weights, so weighted and repeated samples seed differently).
_SAMPLE_WEIGHT_REASON = (
    "scikit-learn's KMeans fails it too: the seeding draws differ between weighted and repeated samples"
)
EXPECTED_FAILED = {
    "KMeans": {
        "check_sample_weight_equivalence_on_dense_data": _SAMPLE_WEIGHT_REASON,
        "check_sample_weight_equivalence_on_sparse_data": _SAMPLE_WEIGHT_REASON,
    },
    "GaussianMixture": {},
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED[type(estimator).__name__]


# Small settings keep the ~100 checks fast; the contract does not depend on them.
@parametrize_with_checks(
    [KMeans(n_init=2, max_iter=20, device="cpu"), GaussianMixture(max_iter=20, device="cpu")],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
