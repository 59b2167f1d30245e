"""Issue 26's CPU case: a Lloyd iteration at 1,000,000 x 32, K=256, float32, against faiss and scikit-learn.

The committed peers table (`results/peers_cpu.md`, commit 896e1140) had ours at 324 ms an
iteration against faiss's 130 ms with all rows (`faiss-all-rows`) and scikit-learn's 273 ms.
This runs that case again in one process, so that every ratio compares runs of the same
session: ours with ``algorithm="auto"`` (Hamerly's bounds at this width) and ``"lloyd"``,
faiss with its default 256-points-per-centroid subsample and with all rows, scikit-learn's
Lloyd and Elkan; per iteration (same initial centres) and to a converged fit, 3 repeats, the
median. Run it on an otherwise idle machine from the repository root, after
``pip install -e '.[app,peers]'``:

    python benchmarks/lloyd_cpu_1m.py && python benchmarks/update_readme.py
"""

from gpuclust.app.bench import run_grid
from gpuclust.app.bench.cases import MAX_ITER, _kmeans_cases

OUT, TAG = "benchmarks/results", "peers_cpu_1m"
SHAPE = ("synthetic", 1_000_000, 32, 256)


def cases():
    """Per iteration (5 iterations from the same centres), then converged fits, library by library."""
    out = []
    for mode, iters in (("per_iter", 5), ("converged", MAX_ITER["kmeans"])):
        out += _kmeans_cases(("faiss", "faiss-all-rows"), "cpu", *SHAPE, iters=iters, mode=mode)
        out += _kmeans_cases(("torch",), "cpu", *SHAPE, iters=iters, algorithms=("auto", "lloyd"), mode=mode)
        out += _kmeans_cases(("sklearn",), "cpu", *SHAPE, iters=iters, sklearn_algorithms=("lloyd", "elkan"), mode=mode)
    return out


def main():
    run_grid(cases(), OUT, TAG, repeats=3, say=lambda message: print(message, flush=True), fresh=True)


if __name__ == "__main__":
    main()
