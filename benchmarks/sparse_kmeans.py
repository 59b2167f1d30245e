"""Sparse KMeans time per iteration, gpuclust vs scikit-learn, on a real TF-IDF matrix (CPU).

The matrix is built from the standard library's docstrings (no download). Both fit from the
same k-means++ centres with tol=0; the time per iteration is the differential
``(T(1 + n) - T(1)) / n`` (median of the repeats), which removes set-up and the final
assignment pass. Writes ``benchmarks/results/sparse_kmeans_cpu.md``.

    python benchmarks/sparse_kmeans.py [--repeats 5] [--iters 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import kmeans_plusplus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _text import tfidf_matrix

from gpuclust import KMeans


def _seconds(make, X, init, max_iter, repeats):
    times = []
    for _ in range(repeats):
        est = make(init, max_iter)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        times.append(time.perf_counter() - start)
    return statistics.median(times), est


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sparse_kmeans_cpu.md"))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (torch and scikit-learn's OpenMP); 1 gives figures that "
                             "other processes on a shared machine cannot distort")  # fmt: skip
    args = parser.parse_args()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    n = args.iters
    makers = {
        "gpuclust (torch, CSR)": lambda init, it: KMeans(
            len(init), init=init, n_init=1, max_iter=it, tol=0, device="cpu"
        ),
        "scikit-learn lloyd": lambda init, it: SkKMeans(len(init), init=init, n_init=1, max_iter=it, tol=0),
    }
    rows = []
    for norm in (None,):  # unit rows tie exactly (see tests/_text.py) and converge in a few iterations
        for dtype in (np.float64, np.float32):
            X = tfidf_matrix(limit=3000, dtype=dtype, norm=norm)
            for k in (10, 50):
                init, _ = kmeans_plusplus(X, k, random_state=0)
                for name, make in makers.items():
                    t1, _ = _seconds(make, X, init, 1, args.repeats)
                    tn, est = _seconds(make, X, init, 1 + n, args.repeats)
                    per_iter = (tn - t1) / n
                    rows.append((name, norm or "none", np.dtype(dtype).name, k, est.n_iter_, per_iter * 1e3, t1 * 1e3))
                    print(rows[-1], flush=True)
    sk_threads = "its default threads" if args.threads is None else f"{args.threads} thread(s)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Sparse KMeans on the CPU: time per iteration",
        "",
        f"TF-IDF of the standard library's docstrings: {X.shape[0]} documents x {X.shape[1]} terms, "
        f"{X.nnz} stored values (density {X.nnz / (X.shape[0] * X.shape[1]):.4f}); sublinear tf, "
        "English stop words removed, min_df=2.",
        f"Same k-means++ centres for both, tol=0; per iteration = (T(1+{n}) - T(1)) / {n}, "
        f"median of {args.repeats} repeats. Made by `python benchmarks/sparse_kmeans.py"
        f"{'' if args.threads is None else f' --threads {args.threads}'}`.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs visible "
        f"(shared), torch {torch.__version__} ({torch.get_num_threads()} threads), scikit-learn "
        f"{sklearn.__version__} ({sk_threads}), numpy {np.__version__}, Python {platform.python_version()}, "
        f"commit {commit}.",
        "",
        f"A row whose 'iterations run' is below {1 + n} stopped by strict convergence; its figure is not valid.",
        "",
        "| implementation | row norm | dtype | k | iterations run | ms / iteration | T(1) ms |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} | {f:.2f} | {g:.1f} |" for a, b, c, d, e, f, g in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
