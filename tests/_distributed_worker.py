"""One rank of the distributed tests: `python _distributed_worker.py RANK WORLD PORT OUT [die]`.

Fits KMeans and every GMM covariance type on its block of the shared synthetic data
(gloo on 127.0.0.1) and saves the fitted parameters to OUT. With `die`, rank 1 exits
abruptly after a few collectives, in the middle of a fit.
"""

import datetime
import os
import sys
import time

import numpy as np
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import COVARIANCE_TYPES, overlapping_blobs

from gpuclust import GaussianMixture, KMeans
from gpuclust.distributed import DistributedFitError, TorchDistComm, shard_rows


def shared_data():
    X, _ = overlapping_blobs(n=1203, d=5, k=4, seed=11)
    return X


def shared_gmm_init(X, covariance_type, k=4):
    rng = np.random.RandomState(0)
    means = X[rng.choice(len(X), k, replace=False)]
    cov = np.cov(X.T, bias=True)
    prec = {
        "full": np.repeat(np.linalg.inv(cov)[None], k, 0),
        "tied": np.linalg.inv(cov),
        "diag": np.repeat(1 / np.diag(cov)[None], k, 0),
        "spherical": np.full(k, 1 / np.diag(cov).mean()),
    }
    return {"weights_init": np.full(k, 1 / k), "means_init": means, "precisions_init": prec[covariance_type]}


def fit_all(X, distributed):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed 60 EM iterations, converged or not
        return _fit_all(X, distributed)


def _fit_all(X, distributed):
    out = {}
    km = KMeans(
        4, init=X[:4] if not distributed else shared_data()[:4], device="cpu", distributed=distributed, tol=1e-6
    ).fit(X)
    out["kmeans_centers"], out["kmeans_inertia"], out["kmeans_n_iter"] = km.cluster_centers_, km.inertia_, km.n_iter_
    km = KMeans(4, random_state=3, device="cpu", distributed=distributed).fit(X)
    out["kmeanspp_centers"] = km.cluster_centers_
    full = shared_data()
    for cov in COVARIANCE_TYPES:
        gmm = GaussianMixture(
            4,
            covariance_type=cov,
            device="cpu",
            distributed=distributed,
            tol=1e-8,
            max_iter=60,
            **shared_gmm_init(full, cov),
        ).fit(X)
        out[f"{cov}_means"], out[f"{cov}_covariances"] = gmm.means_, gmm.covariances_
        out[f"{cov}_weights"], out[f"{cov}_lower_bound"], out[f"{cov}_n_iter"] = (
            gmm.weights_,
            gmm.lower_bound_,
            gmm.n_iter_,
        )
    gmm = GaussianMixture(4, covariance_type="diag", device="cpu", distributed=distributed, random_state=2).fit(X)
    out["kmeansinit_means"] = gmm.means_
    # Data far from the origin: fit centres it; predict and score must see the same geometry.
    for offset, dtype in ((1e4, np.float32), (1e8, np.float64)):
        far = (X + offset).astype(dtype)
        km = KMeans(4, random_state=0, device="cpu", distributed=distributed).fit(far)
        key = f"far{offset:g}"
        out[f"{key}_predict_mismatch"] = np.count_nonzero(km.predict(far) != km.labels_)
        out[f"{key}_local_score"], out[f"{key}_inertia"] = km.score(far), km.inertia_
    return out


def main():
    rank, world, port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    die = len(sys.argv) > 5 and sys.argv[5] == "die"
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=20),
    )
    X = shard_rows(shared_data())
    if die:
        calls = {"n": 0}
        original = TorchDistComm.sum_

        def sum_then_maybe_die(self, tensor, what=""):
            calls["n"] += 1
            if rank == 1 and calls["n"] == 8:
                os._exit(17)  # vanish mid-fit: no clean shutdown, no error sent
            return original(self, tensor, what)

        TorchDistComm.sum_ = sum_then_maybe_die
        start = time.monotonic()
        try:
            GaussianMixture(
                4, covariance_type="full", device="cpu", distributed=True, max_iter=200, tol=0, random_state=0
            ).fit(X)
        except DistributedFitError as exc:
            with open(out_path, "w") as fh:
                fh.write(f"{time.monotonic() - start:.1f}\n{exc}\n")
            # The process group is broken: its teardown would abort the interpreter.
            os._exit(3)
        sys.exit(0)
    np.savez(out_path, **fit_all(X, True))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
