"""gpuclust.distributed: two gloo ranks on 127.0.0.1 fit as one process does; init_from_env's start-up."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COVARIANCE_TYPES, TORCHRUN_ENV, free_port

WORKER = Path(__file__).with_name("_distributed_worker.py")
sys.path.insert(0, str(Path(__file__).parent))


def launch(tmp_path, world=2, extra=()):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(port), str(tmp_path / f"rank{r}.npz"), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    return procs


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    procs = launch(tmp)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [dict(np.load(tmp / f"rank{r}.npz")) for r in range(2)]


@pytest.fixture(scope="module")
def single_results():
    from _distributed_worker import fit_all, shared_data

    return fit_all(shared_data(), False)


def test_every_rank_ends_with_identical_parameters(two_rank_results):
    a, b = two_rank_results
    for key in a:
        if "local" not in key and "mismatch" not in key:  # each rank's own rows
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def test_kmeans_equals_single_process(two_rank_results, single_results):
    d = two_rank_results[0]
    assert rel(d["kmeans_centers"], single_results["kmeans_centers"]) < 1e-10
    assert rel(d["kmeans_inertia"], single_results["kmeans_inertia"]) < 1e-10
    assert int(d["kmeans_n_iter"]) == single_results["kmeans_n_iter"]
    # k-means++ on the gathered rows picks the same seeds as one process on all rows.
    assert rel(d["kmeanspp_centers"], single_results["kmeanspp_centers"]) < 1e-10


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gmm_equals_single_process(two_rank_results, single_results, covariance_type):
    d = two_rank_results[0]
    for name in ("means", "covariances", "weights", "lower_bound"):
        key = f"{covariance_type}_{name}"
        assert rel(d[key], single_results[key]) < 1e-10, key
    assert int(d[f"{covariance_type}_n_iter"]) == single_results[f"{covariance_type}_n_iter"]


def test_gmm_kmeans_init_is_consistent(two_rank_results, single_results):
    assert rel(two_rank_results[0]["kmeansinit_means"], single_results["kmeansinit_means"]) < 1e-10


@pytest.mark.parametrize("key", ["far10000", "far1e+08"])
def test_kmeans_predict_and_score_see_the_fit_geometry_on_far_data(two_rank_results, key):
    """Each rank's predict equals its labels_, and the ranks' scores add up to -inertia_."""
    assert [int(r[f"{key}_predict_mismatch"]) for r in two_rank_results] == [0, 0]
    total = sum(float(r[f"{key}_local_score"]) for r in two_rank_results)
    assert total == pytest.approx(-float(two_rank_results[0][f"{key}_inertia"]), rel=1e-12)


def test_a_rank_that_dies_mid_fit_ends_the_others_with_a_clear_error(tmp_path):
    start = time.monotonic()
    procs = launch(tmp_path, extra=("die",))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    elapsed = time.monotonic() - start
    assert procs[1].returncode == 17, outs[1]
    assert procs[0].returncode == 3, outs[0]
    message = (tmp_path / "rank0.npz").read_text()
    assert "rank 0 of 2" in message and "peer rank has failed" in message
    assert elapsed < 60


def test_distributed_without_process_group_is_clear_error():
    from gpuclust import KMeans

    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        KMeans(2, distributed=True, device="cpu").fit(np.random.rand(10, 2))


def test_cli_cluster_distributed_under_torchrun(tmp_path):
    from _distributed_worker import shared_data

    X = shared_data()
    np.save(tmp_path / "x.npy", X)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "-m",
        "gpuclust",
        "cluster",
        "--distributed",
        "--algorithm",
        "kmeans",
        "--n-clusters",
        "4",
        "--features",
        str(tmp_path / "x.npy"),
        "--save-labels",
        str(tmp_path / "labels.npy"),
        "-q",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "distributed over 2 ranks" in out.stdout and f"{len(X)} samples" in out.stdout
    assert np.load(tmp_path / "labels.npy").shape == (len(X),)


# --- start-up: init_from_env (issue 13) -----------------------------------------------------------


@pytest.mark.parametrize(
    "change,match",
    [
        ({"RANK": "2"}, "RANK=2 must be less than WORLD_SIZE=2"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 must be between 1 and 65535"),
        ({"MASTER_ADDR": "no-such-host.invalid"}, "MASTER_ADDR='no-such-host.invalid' cannot be resolved"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR not set"),
    ],
)
def test_init_from_env_validates_the_environment_first(monkeypatch, change, match):
    from gpuclust.distributed import init_from_env

    for key, value in {**TORCHRUN_ENV, **change}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        init_from_env(backend="gloo", startup_timeout_seconds=1)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_init_from_env_bounds_the_wait_for_a_world_that_never_assembles(monkeypatch, rank):
    from gpuclust.distributed import init_from_env

    for key, value in {**TORCHRUN_ENV, "RANK": rank, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="the 2 ranks did not assemble"):
        init_from_env(backend="gloo", startup_timeout_seconds=1)
    assert time.perf_counter() - started < 20
    assert not torch.distributed.is_initialized()
