"""scikit-learn's own KMeans and GaussianMixture tests, run against gpuclust.

The test file that ships inside the installed scikit-learn is copied with its estimator import
pointed at gpuclust and run in a subprocess: its error messages, warnings and numbers are part
of the API a drop-in replacement keeps. Tests that reach scikit-learn's private internals
(attributes and functions gpuclust does not have) are left out, each with its reason, and so are
the few where gpuclust answers differently on purpose.

Tests gpuclust.kmeans and gpuclust.gaussian_mixture (a cross-cutting suite).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn

SKLEARN = Path(sklearn.__file__).parent

SUITES = {
    "kmeans": {
        "file": SKLEARN / "cluster" / "tests" / "test_k_means.py",
        "import": (
            "from sklearn.cluster import KMeans, MiniBatchKMeans, k_means, kmeans_plusplus",
            "from sklearn.cluster import MiniBatchKMeans, k_means\nfrom gpuclust import KMeans, kmeans_plusplus",
        ),
        # test name -> why it is left out
        "private": {
            "test_kmeans_init_auto_with_initial_centroids": "reads the private KMeans._n_init",
            "test_n_init_auto": "reads the private KMeans._n_init",
            "test_sample_weight_init": "calls the private KMeans._init_centroids",
            "test_sample_weight_zero": "calls the private KMeans._init_centroids",
        },
    },
    "gaussian_mixture": {
        "file": SKLEARN / "mixture" / "tests" / "test_gaussian_mixture.py",
        "import": ("from sklearn.mixture import GaussianMixture\n", "from gpuclust import GaussianMixture\n"),
        "private": {
            "test_gaussian_mixture_precisions_init": "calls the private GaussianMixture._set_parameters",
            "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
                "mocks scikit-learn's private _estimate_gaussian_parameters"
            ),
        },
        # Where gpuclust answers differently on purpose (test id -> why).
        "differs": {
            "test_score[float32]": (
                "score is the mean log-likelihood summed in float64; scikit-learn's test wants the float32 mean of "
                "score_samples to 7 decimals (they differ by 2.2e-7)"
            ),
        },
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_sklearns_own_tests_pass(suite, tmp_path):
    spec = SUITES[suite]
    if not spec["file"].exists():
        pytest.skip(f"this scikit-learn ({sklearn.__version__}) ships no {spec['file'].name}")
    source = spec["file"].read_text()
    theirs, ours = spec["import"]
    if theirs not in source:
        pytest.skip(f"scikit-learn {sklearn.__version__}'s {spec['file'].name} imports differently: update SUITES")
    (tmp_path / f"test_{suite}_sklearn_suite.py").write_text(source.replace(theirs, ours, 1))
    shutil.copy(SKLEARN / "conftest.py", tmp_path / "conftest.py")  # its fixtures (global_random_seed)
    test_file = tmp_path / f"test_{suite}_sklearn_suite.py"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        f"not ({' or '.join(spec['private'])})",
    ]
    for test_id in spec.get("differs", {}):
        cmd += ["--deselect", f"{test_file.name}::{test_id}"]
    # float32 too: a GPU user's default dtype.
    env = {**os.environ, "SKLEARN_RUN_FLOAT32_TESTS": "1"}
    out = subprocess.run([*cmd, test_file.name], capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    failed = re.findall(r"^FAILED (\S+)", out.stdout, flags=re.M)
    assert out.returncode == 0, failed or out.stdout[-3000:]
    assert re.search(r"\d+ passed", out.stdout)
