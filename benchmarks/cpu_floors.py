"""Floors first: how far a KMeans and a diag/spherical GaussianMixture iteration are from this CPU's limits.

For each case it writes down the floor before any timing of ours, from measured machine rates:
- bytes: X's bytes per pass over the read bandwidth (a fused reduction over the same X);
- FLOPs: the pass's GEMM FLOPs over the square-GEMM rate of the dtype (a peak the skinny
  products of clustering do not reach), and over the rate of the same product shape;
then times the product in each layout and tile size and at each thread count, and the whole
iteration of gpuclust and scikit-learn (differential: (T(1 + n) - T(1)) / n from the same start).

Cases: Fashion-MNIST pixels 60000x784 float32, K=10 (KMeans); PCA-50 features 60000x50
float64, K=10 (GaussianMixture diag and spherical). Writes benchmarks/results/cpu_floors.md.

    python benchmarks/cpu_floors.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGMM
from threadpoolctl import threadpool_limits

from gpuclust import GaussianMixture, KMeans
from gpuclust._linear import linear, onednn_available
from gpuclust.app.bench import Case, initial_params, make_data
from gpuclust.app.environment import environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds

OUT = Path(__file__).resolve().parent / "results" / "cpu_floors.md"


def square_gemm_rate(dtype, repeats, size=1024):
    a = torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ a, repeats)


def tiled(fn, n, rows):
    def run():
        for start in range(0, n, rows):
            fn(slice(start, min(start + rows, n)))

    return run


def assignment_variants(X, C):
    """The assignment product ``-2 X C^T + ||c||^2`` (n, k) in each layout gpuclust could use."""
    n, k = X.shape[0], C.shape[0]
    c_sq = (C * C).sum(1)
    m2c = -2.0 * C
    m2c_t = m2c.T.contiguous()
    pad = torch.zeros(16 * -(-k // 16), C.shape[1], dtype=C.dtype)
    pad[:k] = m2c
    pad_t = pad.T.contiguous()
    variants = {
        "addmm (MKL), one call": lambda: torch.addmm(c_sq, X, C.T, alpha=-2.0),
        "addmm (MKL), tiles of 4096": tiled(lambda r: torch.addmm(c_sq, X[r], C.T, alpha=-2.0), n, 4096),
        "addmm (MKL), tiles of 20000": tiled(lambda r: torch.addmm(c_sq, X[r], C.T, alpha=-2.0), n, 20000),
        "mm with -2C^T contiguous, then + ||c||^2": lambda: torch.mm(X, m2c_t).add_(c_sq),
        f"mm with k padded to {pad.shape[0]}": lambda: torch.mm(X, pad_t),
    }
    if X.shape[0] * X.shape[1] <= 64 << 20:
        X_t = X.T.contiguous()  # a transposed copy of X: twice the memory, so only measured
        variants["C X^T with X^T stored (a copy of X)"] = lambda: torch.mm(m2c, X_t)
    if onednn_available() and X.dtype == torch.float32:
        variants["oneDNN linear, one call"] = lambda: linear(X, m2c, c_sq)
        variants["oneDNN linear, tiles of 4096"] = tiled(lambda r: linear(X[r], m2c, c_sq), n, 4096)
        variants["oneDNN linear, tiles of 20000 (gpuclust)"] = tiled(lambda r: linear(X[r], m2c, c_sq), n, 20000)
    return variants


def _ratio(reference, t):
    """``reference / t`` as "1.50x faster" or "1.20x slower"."""
    return f"{reference / t:.2f}x faster" if t <= reference else f"{t / reference:.2f}x slower"


def per_iteration(make, X, iters, repeats):
    """(T(1 + iters) - T(1)) / iters, median of ``repeats``; the first fit warms up."""
    make(2).fit(X)
    out = []
    for _ in range(repeats):
        t1 = median_seconds(lambda: make(1).fit(X), 1)
        tn = median_seconds(lambda: make(1 + iters).fit(X), 1)
        out.append((tn - t1) / iters)
    return statistics.median(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    parser.add_argument("--out", default=str(OUT), help="markdown file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # tol=0 fits do not converge, by design
    quick = args.quick
    repeats, iters = (1, 2) if quick else (5, 20)  # 20 iterations: as the harness's per-iteration rows
    threads_all = torch.get_num_threads()
    thread_counts = sorted({1, threads_all})
    km_case = Case("kmeans", "torch", "cpu", "synthetic" if quick else "pixels", 2000 if quick else 60000,
                   32 if quick else 784, 10)  # fmt: skip
    Xk_np = make_data(km_case)[0].astype(np.float32)
    Xk = torch.from_numpy(Xk_np)
    env = environment(torch.device("cpu"))
    lines = [
        f"# Floors on {env['device_name']} ({threads_all} threads), torch {env['torch']}, commit {env['git_commit']}",
        "",
        f"Median of {repeats} after a warm-up. oneDNN linear available: {onednn_available()}.",
        "",
    ]
    rates = machine_rates(Xk, thread_counts, repeats)
    lines += rates_table(rates)
    lines += kmeans_section(km_case, Xk_np, rates, thread_counts, iters, repeats)
    g_case = Case("gmm", "torch", "cpu", "synthetic" if quick else "pca-50", 2000 if quick else 60000,
                  8 if quick else 50, 10, dtype="float64")  # fmt: skip
    lines += gmm_section(g_case, rates[threads_all]["read_GBps"], rates[threads_all]["f64"], iters, repeats)
    print("GaussianMixture done", file=sys.stderr)
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)  # atomic: a killed run leaves the previous results
    print(text)


def machine_rates(Xk, thread_counts, repeats):
    """{threads: read bandwidth of X (GB/s) and square-GEMM rates (FLOP/s) of float32 and float64}."""
    rates = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        # The fastest of three reductions that read X once: the bandwidth floor must not be flattering.
        read = min(median_seconds(fn, repeats) for fn in (Xk.sum, Xk.amax, lambda: torch.linalg.vector_norm(Xk, dim=1)))
        rates[threads] = {
            "read_GBps": Xk.nbytes / read / 1e9,
            "f32": square_gemm_rate(torch.float32, repeats),
            "f64": square_gemm_rate(torch.float64, repeats),
        }
    return rates


def rates_table(rates):
    lines = ["## Machine rates", "",
             "| threads | read X (GB/s) | float32 GEMM 1024^3 (GFLOP/s) | float64 GEMM (GFLOP/s) |",
             "|---|---|---|---|"]  # fmt: skip
    for threads, r in rates.items():
        lines.append(f"| {threads} | {r['read_GBps']:.1f} | {r['f32'] / 1e9:.0f} | {r['f64'] / 1e9:.0f} |")
    return lines


def kmeans_section(km_case, Xk_np, rates, thread_counts, iters, repeats):
    """The assignment product in each layout at each thread count, then whole iterations against scikit-learn."""
    Xk = torch.from_numpy(Xk_np)
    init = initial_params(km_case, Xk_np, 0)["init"]
    Ck = torch.from_numpy(init.astype(np.float32))
    n, d, k = Xk.shape[0], Xk.shape[1], Ck.shape[0]
    threads_all = max(thread_counts)
    flops = 2 * n * d * k
    lines = ["", f"## KMeans assignment, {km_case.data} {n}x{d} float32, K={k}", "",
             f"Per pass: {Xk.nbytes / 1e6:.0f} MB of X, {flops / 1e9:.2f} GFLOP.", "",
             "| threads | product | ms | x bytes floor | x FLOP floor (square-GEMM rate) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for threads in thread_counts:
        torch.set_num_threads(threads)
        bytes_floor = Xk.nbytes / (rates[threads]["read_GBps"] * 1e9)
        flop_floor = flops / rates[threads]["f32"]
        lines.append(f"| {threads} | floors: bytes {1e3 * bytes_floor:.2f} ms, FLOPs {1e3 * flop_floor:.2f} ms | | | |")
        for name, fn in assignment_variants(Xk, Ck).items():
            t = median_seconds(fn, repeats)
            lines.append(f"| {threads} | {name} | {1e3 * t:.2f} | {t / bytes_floor:.2f} | {t / flop_floor:.2f} |")
        print(f"KMeans products at {threads} thread(s) done", file=sys.stderr)
    torch.set_num_threads(threads_all)
    lines += ["", f"Whole iteration ({threads_all} threads; per iteration over {iters} iterations from the same "
              "centres):", "", "| estimator | ms per iteration | x bytes floor | vs scikit-learn lloyd |",
              "|---|---|---|---|"]  # fmt: skip
    bytes_floor = Xk.nbytes / (rates[threads_all]["read_GBps"] * 1e9)
    timings = {}
    for algorithm in ("lloyd", "hamerly"):
        make = lambda it, a=algorithm: KMeans(k, init=init, max_iter=it, tol=0.0, device="cpu", algorithm=a)
        timings[f"gpuclust {algorithm}"] = per_iteration(make, Xk, iters, repeats)
    for algorithm in ("lloyd", "elkan"):
        make = lambda it, a=algorithm: SkKMeans(k, init=init, n_init=1, max_iter=it, tol=0.0, algorithm=a)
        timings[f"scikit-learn {algorithm}"] = per_iteration(make, Xk_np, iters, repeats)
    for name, t in timings.items():
        lines.append(f"| {name} | {1e3 * t:.2f} | {t / bytes_floor:.2f} | {_ratio(timings['scikit-learn lloyd'], t)} |")
    print("KMeans iterations done", file=sys.stderr)
    return lines


def gmm_section(g_case, read_GBps, f64_rate, iters, repeats):
    """Floors of a diag/spherical EM iteration, and gpuclust's and scikit-learn's iterations against them."""
    threads_all = torch.get_num_threads()
    Xg_np = make_data(g_case)[0].astype(np.float64)
    Xg = torch.from_numpy(Xg_np)
    n, d, k = Xg.shape[0], Xg.shape[1], g_case.k
    gmm_flops = 2 * (2 * n * (2 * d) * k)  # [x, x*x] @ W (n, 2D, K) and resp^T @ [x, x*x]
    Z = torch.randn(n, 2 * d, dtype=torch.float64)
    W = torch.randn(k, 2 * d, dtype=torch.float64)
    R = torch.rand(n, k, dtype=torch.float64)
    tile = min(n, 20000)  # gpuclust's tiles at this size
    shape_rate = gmm_flops / (median_seconds(tiled(lambda r: torch.mm(Z[r], W.T), n, tile), repeats)
                              + median_seconds(tiled(lambda r: R[r].T @ Z[r], n, tile), repeats))  # fmt: skip
    bytes_floor = Xg.nbytes / (read_GBps * 1e9)
    lines = ["", f"## GaussianMixture, {g_case.data} {n}x{d} float64, K={k} ({threads_all} threads)", "",
             f"Per iteration: {Xg.nbytes / 1e6:.0f} MB of X, {gmm_flops / 1e9:.3f} GFLOP in the two products. "
             f"Floors: bytes {1e3 * bytes_floor:.2f} ms; FLOPs {1e3 * gmm_flops / f64_rate:.2f} ms "
             f"at the square-GEMM rate, {1e3 * gmm_flops / shape_rate:.2f} ms at the rate of these shapes "
             f"({shape_rate / 1e9:.0f} GFLOP/s, in tiles of {tile} rows).", "",
             "| covariance | estimator | ms per iteration | x bytes floor | vs scikit-learn |",
             "|---|---|---|---|---|"]  # fmt: skip
    for cov in ("diag", "spherical"):
        start = initial_params(Case("gmm", "torch", "cpu", g_case.data, n, d, k, covariance_type=cov), Xg_np, 0)
        kw = dict(covariance_type=cov, tol=0.0, reg_covar=1e-4, **start)
        ours = per_iteration(lambda it: GaussianMixture(k, max_iter=it, device="cpu", **kw), Xg, iters, repeats)
        with threadpool_limits(threads_all):
            theirs = per_iteration(lambda it: SkGMM(k, max_iter=it, **kw), Xg_np, iters, repeats)
        lines.append(f"| {cov} | gpuclust | {1e3 * ours:.2f} | {ours / bytes_floor:.1f} | {_ratio(theirs, ours)} |")
        lines.append(f"| {cov} | scikit-learn | {1e3 * theirs:.2f} | {theirs / bytes_floor:.1f} | |")
    products = gmm_flops / shape_rate
    lines += ["", f"Three times the bytes floor is {3e3 * bytes_floor:.2f} ms; diag's two products alone, at the rate "
              f"these shapes reach, take {1e3 * products:.2f} ms ({products / bytes_floor:.1f}x the bytes floor): "
              "below that, X and its squares must be read once and the products fused, beyond BLAS calls."]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
