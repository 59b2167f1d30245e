"""Full-covariance EM at large D on this CPU, at a scale it can run: where the time of a pass goes.

Measures, for K=10 components and D in (256, 512, 1024), float32 data:
- one E+M pass of gpuclust's GaussianMixture (median of repeats, after a warm-up);
- the same statistics formed the way 0.1.0 did (a K x D x D float32 product per tile, converted and
  added into float64), for the ratio;
- the M-step's factorization (Cholesky + triangular inverse of the K covariances), batched and
  one matrix at a time.
Floors: the pass's FLOPs (y = Xs @ P_k and the second moments, 2 * 2 * n * K * D^2) over the
measured float32/float64 GEMM rates. Writes benchmarks/results/large_d_cpu.md.

    python benchmarks/large_d_cpu.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import gpuclust._gmm_numerics as gm
from gpuclust import GaussianMixture
from gpuclust.app.environment import environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds

OUT = Path(__file__).resolve().parent / "results" / "large_d_cpu.md"


def old_statistics(Xs, resp, K):
    """0.1.0's full second moments: a float32 (K, D, D) product per tile, converted to float64."""
    weighted = resp.T.unsqueeze(2) * Xs.unsqueeze(0)
    return torch.matmul(weighted.transpose(1, 2), Xs).to(torch.float64)


def gemm_rate(dtype, size=1024):
    a = torch.randn(size, size, dtype=dtype)
    seconds = median_seconds(lambda: a @ a, 5)
    return 2 * size**3 / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # max_iter=1 fits do not converge, by design
    dims, n, repeats = ((64, 128), 1000, 1) if args.quick else ((256, 512, 1024), 4000, 3)
    K = 10
    rate32, rate64 = gemm_rate(torch.float32), gemm_rate(torch.float64)
    rows = []
    rng = np.random.default_rng(0)
    for D in dims:
        X = torch.as_tensor(rng.normal(size=(n, D)).astype(np.float32))
        X[:, : D // 2] += torch.as_tensor(rng.integers(0, K, n)[:, None].astype(np.float32))
        gmm = GaussianMixture(K, covariance_type="full", max_iter=1, tol=0.0, random_state=0, device="cpu",
                              reg_covar=1e-3, init_params="random_from_data")  # fmt: skip
        gmm.fit(X)
        start = dict(weights_init=gmm.weights_, means_init=gmm.means_, precisions_init=gmm.precisions_)
        # Per EM pass, differential: (T(1 + 2 iterations) - T(1 iteration)) / 2 from the same start.
        timed = lambda iters: median_seconds(lambda: gmm.set_params(max_iter=iters, **start).fit(X), repeats)
        e_m = (timed(3) - timed(1)) / 2
        cov = torch.as_tensor(gmm.covariances_, dtype=torch.float64)
        resp = torch.softmax(torch.randn(n, K), 1)
        Xs = X - X.mean(0)
        stats_new = median_seconds(lambda: gm.accumulate_stats(gm.new_stats(K, D, "full", X.device), Xs, resp, "full"),
                                   repeats)  # fmt: skip
        stats_old = median_seconds(lambda: old_statistics(Xs, resp, K), repeats)
        batched = median_seconds(lambda: gm.precision_cholesky(cov, "full"), repeats)
        looped = median_seconds(lambda: [gm.precision_cholesky(c.unsqueeze(0), "full") for c in cov], repeats)
        flops_e, flops_s = 2 * n * K * D * D, 2 * n * K * D * D
        floor = flops_e / rate32 + flops_s / rate64
        rows.append((D, e_m, floor, stats_new, stats_old, batched, looped))
        print(f"D={D}: pass {1e3 * e_m:.1f} ms (floor {1e3 * floor:.1f}), statistics {1e3 * stats_new:.1f} ms "
              f"(0.1.0: {1e3 * stats_old:.1f}), factorization batched {1e3 * batched:.1f} ms, "
              f"looped {1e3 * looped:.1f} ms", file=sys.stderr)  # fmt: skip
    env = environment(torch.device("cpu"))
    lines = [
        f"Full covariance at large D on {env['device_name']} ({env['cpu_count']} threads), torch {env['torch']}, "
        f"commit {env['git_commit']}; n={n}, K={K}, float32 data, median of {repeats} after a warm-up. "
        f"Measured GEMM rates: float32 {rate32 / 1e9:.0f} GFLOP/s, float64 {rate64 / 1e9:.0f} GFLOP/s.",
        "",
        "| D | E+M pass (ms) | floor (ms) | pass / floor | statistics, in place float64 (ms) | "
        "statistics, 0.1.0 float32 + convert (ms) | factorization batched (ms) | one at a time (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for D, e_m, floor, s_new, s_old, batched, looped in rows:
        lines.append(f"| {D} | {1e3 * e_m:.1f} | {1e3 * floor:.1f} | {e_m / floor:.2f} | {1e3 * s_new:.1f} | "
                     f"{1e3 * s_old:.1f} | {1e3 * batched:.1f} | {1e3 * looped:.1f} |")  # fmt: skip
    lines += ["", "Floor: y = Xs @ P_k at the float32 rate plus the second moments at the float64 rate "
              "(2 n K D^2 FLOPs each)."]  # fmt: skip
    if not args.quick:
        OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
