"""Benchmark harness: speed, memory and quality of KMeans and GaussianMixture across backends.

Each case is one (algorithm, covariance type, backend, device, data, N, D, K, dtype).
Timing follows the usual rules: a warm-up fit first, CUDA synchronized before every
clock read, several repeats, median and spread reported. Per-iteration time is
differential, ``(T(1 + iters) - T(1)) / iters`` with ``tol=0``, so set-up, init and
final passes cancel for every backend alike. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the sampled resident set size on
the CPU. Every row records quality (completeness, NMI, ARI; log-likelihood for
GMM) and the environment. Results are JSON lines; tables and plots are made from
them by :func:`summarize`.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ..device import resolve_device, synchronize
from ..gaussian_mixture import COVARIANCE_TYPES
from ._atomic import atomic_write_text
from ._plots import pyplot, save_png
from .costs import gmm_flops_per_iteration, kmeans_flops_per_iteration
from .environment import environment


@dataclass(frozen=True)
class Case:
    algorithm: str  # "kmeans" or "gmm"
    backend: str  # "torch", "sklearn", "cuml"
    device: str  # "cpu" or "cuda"
    data: str  # "synthetic", "pixels", "pca-<d>", "ae-<preset>-<epochs>"
    n: int
    d: int
    k: int
    covariance_type: str | None = None
    dtype: str = "float32"
    mode: str = "per_iter"  # "per_iter" (tol=0, differential) or "converged" (end to end)
    iters: int = 10
    kmeans_algorithm: str = "auto"

    @property
    def label(self):
        if self.algorithm == "kmeans":
            alg = f"kmeans-{self.kmeans_algorithm if self.kmeans_algorithm != 'auto' else 'lloyd'}"
        else:
            alg = f"gmm-{self.covariance_type}"
        return f"{alg} {self.backend}/{self.device} {self.data} n={self.n} d={self.d} k={self.k} {self.dtype}"


def _kmeans_cases(
    backends, device, data, n, d, k, dtype="float32", iters=20, algorithms=("auto",), sklearn_algorithms=("lloyd",)
):
    return [
        Case("kmeans", b, device, data, n, d, k, dtype=dtype, iters=iters, kmeans_algorithm=a)
        for b in backends
        for a in (sklearn_algorithms if b == "sklearn" else algorithms)
    ]


def _gmm_cases(
    backends,
    device,
    data,
    n,
    d,
    k,
    covs=COVARIANCE_TYPES,
    dtype="float32",
    iters=5,
    mode="per_iter",
):
    return [
        Case("gmm", b, device, data, n, d, k, covariance_type=c, dtype=dtype, iters=iters, mode=mode)
        for c in covs
        for b in backends
    ]


GRIDS = {
    # Seconds: what the tests run.
    "cpu-small": (
        _kmeans_cases(("torch", "sklearn"), "cpu", "synthetic", 2000, 8, 5, iters=5)
        + _gmm_cases(("torch", "sklearn"), "cpu", "synthetic", 2000, 8, 5, iters=3)
    ),
    # The committed CPU results (tens of minutes on 2 cores).
    "cpu": (
        _kmeans_cases(
            ("torch", "sklearn"),
            "cpu",
            "pixels",
            60000,
            784,
            10,
            iters=20,
            algorithms=("lloyd", "hamerly"),
            sklearn_algorithms=("lloyd", "elkan"),
        )
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-50", 60000, 50, 10, dtype="float64")
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-98", 60000, 98, 10, dtype="float64")
        + _gmm_cases(("torch", "sklearn"), "cpu", "pca-50", 60000, 50, 10, dtype="float64", mode="converged", iters=100)
    ),
    # Issue 4's memory case: diag, N=1e6, D=32, K=256, float32.
    "cpu-memory": _gmm_cases(("torch", "sklearn"), "cpu", "synthetic", 1_000_000, 32, 256, covs=("diag",), iters=2),
    # The GPU headline cases (benchmarks/gpu_check.sh), with scikit-learn on the host's cores as the peer.
    "gpu": (
        _kmeans_cases(("torch", "cuml"), "cuda", "pixels", 60000, 784, 10, iters=20, algorithms=("lloyd",))
        + _kmeans_cases(("sklearn",), "cpu", "pixels", 60000, 784, 10, iters=20)
        + _gmm_cases(("torch",), "cuda", "ae-seed-3", 48000, 6272, 10, iters=3)
        + _gmm_cases(("sklearn",), "cpu", "ae-seed-3", 48000, 6272, 10, covs=("diag", "spherical"), iters=2)
        + _gmm_cases(("torch",), "cuda", "synthetic", 1_000_000, 128, 1024, covs=("diag", "spherical", "full"), iters=3)
        + _gmm_cases(("torch", "sklearn"), "cuda", "pca-50", 60000, 50, 10, dtype="float64")
    ),
}


# ---------------------------------------------------------------------------------------- data

_DATA_CACHE: dict = {}


def make_data(case: Case, seed: int = 0):
    """(X, labels) for a case, as a float64 numpy array (converted per backend later) and int labels."""
    key = (case.data, case.n, case.d, case.k, seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    if case.data == "synthetic":
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=4.0, size=(case.k, case.d)).astype(np.float32)
        labels = rng.integers(0, case.k, size=case.n)
        X = centers[labels] + rng.normal(size=(case.n, case.d)).astype(np.float32)
    else:
        from ..datasets import flatten_pixels, load_fashion_mnist

        images, labels = load_fashion_mnist("train", os.environ.get("GPUCLUST_DATA"))
        images, labels = images[: case.n], labels[: case.n]
        if case.data == "pixels":
            X = flatten_pixels(images)
        elif case.data.startswith("pca-"):
            from sklearn.decomposition import PCA

            X = PCA(int(case.data[4:]), random_state=seed).fit_transform(flatten_pixels(images)).astype(np.float32)
        elif case.data.startswith("ae-"):
            _, preset, epochs = case.data.split("-")
            from .training import encode, train_autoencoder

            device = resolve_device("auto")
            split = int(0.8 * len(images))
            model, _ = train_autoencoder(
                images[:split],
                images[split:],
                preset=preset,
                epochs=int(epochs),
                seed=seed,
                device=device,
                progress=False,
            )
            X = encode(model, images).cpu().numpy()
        else:
            raise ValueError(f"unknown data {case.data!r}")
    if X.shape != (case.n, case.d):
        raise ValueError(f"{case.data} gave shape {X.shape}, the case says ({case.n}, {case.d})")
    _DATA_CACHE[key] = (X, np.asarray(labels))
    return _DATA_CACHE[key]


# ------------------------------------------------------------------------------------ measuring


class _RssSampler:
    """Peak resident set size of this process while active (sampled every 2 ms from /proc)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            return 0

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _initial_params(case, X, seed):
    """Shared starting point (GMM: weights, means, precisions; KMeans: centres) for all backends."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), case.k, replace=False)].astype(np.float64)
    if case.algorithm == "kmeans":
        return {"init": means}
    var = X.var(0).astype(np.float64) + 1e-3
    prec = {
        "full": lambda: np.repeat(np.diag(1 / var)[None], case.k, 0),
        "tied": lambda: np.diag(1 / var),
        "diag": lambda: np.repeat((1 / var)[None], case.k, 0),
        "spherical": lambda: np.full(case.k, 1 / var.mean()),
    }[case.covariance_type]()
    return {"weights_init": np.full(case.k, 1.0 / case.k), "means_init": means, "precisions_init": prec}


def _make_estimator(case, max_iter, init, tol):
    if case.algorithm == "kmeans":
        if case.backend == "sklearn":
            from sklearn.cluster import KMeans as SkKMeans

            return SkKMeans(
                case.k,
                init=init["init"],
                n_init=1,
                max_iter=max_iter,
                tol=tol,
                algorithm="elkan" if case.kmeans_algorithm == "elkan" else "lloyd",
            )
        from ..kmeans import KMeans

        return KMeans(
            case.k,
            init=init["init"],
            max_iter=max_iter,
            tol=tol,
            device=case.device,
            backend=case.backend,
            algorithm=case.kmeans_algorithm,
        )
    kw = dict(covariance_type=case.covariance_type, max_iter=max_iter, tol=tol, reg_covar=1e-4, **init)
    if case.backend == "sklearn":
        from sklearn.mixture import GaussianMixture as SkGMM

        return SkGMM(case.k, **kw)
    from ..gaussian_mixture import GaussianMixture

    return GaussianMixture(case.k, device=case.device, **kw)


def _to_backend(case, X):
    if case.backend == "sklearn":
        return X.astype(case.dtype, copy=False)
    return torch.as_tensor(X.astype(case.dtype, copy=False), device=case.device)


def _timed_fit(case, X, init, max_iter, tol):
    device = torch.device(case.device)
    est = _make_estimator(case, max_iter, init, tol)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    with warnings.catch_warnings(), _RssSampler() as rss:
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X)
        synchronize(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return est, seconds, int(peak)


def _quality(case, est, X, labels):
    from ..metrics import adjusted_rand_score, completeness_score, normalized_mutual_info_score

    pred = est.predict(X)
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    q = {
        "completeness": completeness_score(labels, pred),
        "nmi": normalized_mutual_info_score(labels, pred),
        "ari": adjusted_rand_score(labels, pred),
    }
    if case.algorithm == "gmm":
        q["log_likelihood"] = float(est.score(X))
    else:
        q["inertia"] = float(est.inertia_)
    return q


def work_per_iteration(case) -> dict:
    """Bytes of X read and floating-point operations per iteration: the floors' numerators."""
    n, d, k = case.n, case.d, case.k
    item = 8 if case.dtype == "float64" else 4
    if case.algorithm == "kmeans":
        flops = kmeans_flops_per_iteration(n, d, k)
    else:
        flops = gmm_flops_per_iteration(case.covariance_type, n, d, k)
    return {"bytes_per_iter": n * d * item, "flops_per_iter": flops}


def run_case(case: Case, repeats: int = 3, seed: int = 0, environment=None) -> dict:
    """Measure one case; never raises for a backend that is missing or fails (the row says why)."""
    row = {**asdict(case), "label": case.label, **work_per_iteration(case), "environment": environment}
    try:
        if case.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU")
        if case.backend == "cuml":
            import importlib

            importlib.import_module("cuml")
        X_np, labels = make_data(case, seed)
        X = _to_backend(case, X_np)
        init = _initial_params(case, X_np, seed)
        _timed_fit(case, X, init, 2, 0.0)  # warm-up: kernels, allocator, thread pools
        if case.mode == "per_iter":
            times, peaks = [], []
            for _ in range(repeats):
                est_a, t_a, _ = _timed_fit(case, X, init, 1, 0.0)
                est_b, t_b, peak = _timed_fit(case, X, init, 1 + case.iters, 0.0)
                steps = max(1, est_b.n_iter_ - est_a.n_iter_)
                times.append((t_b - t_a) / steps)
                peaks.append(peak)
            est = est_b
        else:
            times, peaks = [], []
            for _ in range(repeats):
                est, t, peak = _timed_fit(case, X, init, case.iters, 1e-4 if case.algorithm == "kmeans" else 1e-3)
                times.append(t)
                peaks.append(peak)
        row.update(
            status="ok",
            seconds_median=statistics.median(times),
            seconds_min=min(times),
            seconds_max=max(times),
            repeats=repeats,
            n_iter=int(est.n_iter_),
            peak_memory_bytes=max(peaks),
            **_quality(case, est, X, labels),
        )
    except Exception as exc:
        row.update(
            status="skipped" if isinstance(exc, (ImportError, RuntimeError)) else "error",
            reason=f"{type(exc).__name__}: {exc}",
        )
    return row


# --------------------------------------------------------------------------------- the grid, I/O


def read_jsonl(path) -> list:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def write_jsonl(path, rows):
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def run_grid(cases, out_dir, tag, repeats=3, seed=0, say=lambda m: None):
    """Run every case, rewriting ``<out>/<tag>.jsonl`` atomically after each; then summarize."""
    env = environment(resolve_device("auto"))
    path = Path(out_dir) / f"{tag}.jsonl"
    rows = []
    for i, case in enumerate(cases, 1):
        say(f"[{i}/{len(cases)}] {case.label}")
        row = run_case(case, repeats=repeats, seed=seed, environment=env)
        rows.append(row)
        write_jsonl(path, rows)
        if row["status"] == "ok":
            say(
                f"    {1e3 * row['seconds_median']:.2f} ms{'/iter' if case.mode == 'per_iter' else ''}, "
                f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB, completeness {row['completeness']:.3f}"
            )
        else:
            say(f"    {row['status']}: {row['reason']}")
    summarize(rows, Path(out_dir) / f"{tag}.md", Path(out_dir) / tag)
    return rows


def _peer_key(row):
    return (
        row["algorithm"],
        row.get("covariance_type"),
        row["data"],
        row["n"],
        row["d"],
        row["k"],
        row["dtype"],
        row["mode"],
    )


def summarize(rows, markdown_path, plot_prefix):
    """Markdown table with ratios to scikit-learn from the same run, and the plots."""
    ok = [r for r in rows if r["status"] == "ok"]
    # The peer is scikit-learn's default algorithm (lloyd for KMeans), measured in the same run.
    sk = {_peer_key(r): r for r in ok if r["backend"] == "sklearn" and r["kmeans_algorithm"] in ("auto", "lloyd")}
    env = next((r["environment"] for r in rows if r.get("environment")), {}) or {}
    lines = [
        f"Device: {env.get('device_name', '?')} ({env.get('device', '?')}), {env.get('cpu_count', '?')} CPU "
        f"threads; torch {env.get('torch', '?')}, scikit-learn {env.get('sklearn', '?')}; commit "
        f"{env.get('git_commit', '?')}.",
        "",
        "| case | mode | time (median) | spread | vs scikit-learn | peak memory | GB/s of X | GFLOP/s | "
        "completeness | NMI | ARI |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['mode']} | {r['status']}: {r['reason'][:80]} |" + " |" * 8)
            continue
        per = r["mode"] == "per_iter"
        t = r["seconds_median"]
        peer = sk.get(_peer_key(r))
        ratio = (
            ""
            if peer is None or r["backend"] == "sklearn"
            else f"{peer['seconds_median'] / t:.2f}x faster"
            if peer["seconds_median"] >= t
            else f"{t / peer['seconds_median']:.2f}x slower"
        )
        bw = f"{r['bytes_per_iter'] / t / 1e9:.1f}" if per else ""
        gf = f"{r['flops_per_iter'] / t / 1e9:.1f}" if per else ""
        lines.append(
            f"| {r['label']} | {'per iteration' if per else 'converged fit'} | "
            f"{1e3 * t:.2f} ms | {1e3 * r['seconds_min']:.2f}-{1e3 * r['seconds_max']:.2f} | {ratio} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} MiB | {bw} | {gf} | {r['completeness']:.3f} | "
            f"{r['nmi']:.3f} | {r['ari']:.3f} |"
        )
    atomic_write_text(markdown_path, "\n".join(lines) + "\n")
    if ok:
        _plot(ok, plot_prefix)


_COLORS = {"kmeans": "tab:gray", "full": "tab:red", "tied": "tab:purple", "diag": "tab:blue", "spherical": "tab:green"}
_MARKERS = {"torch": "o", "sklearn": "x", "cuml": "s"}


def _plot(rows, prefix):
    """Time per iteration by covariance type and D, and completeness against time (Pareto view)."""
    plt = pyplot()

    def kind(r):
        return "kmeans" if r["algorithm"] == "kmeans" else r["covariance_type"]

    per_iter = [r for r in rows if r["mode"] == "per_iter" and r["algorithm"] == "gmm"]
    if per_iter:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for cov, backend, device in sorted({(r["covariance_type"], r["backend"], r["device"]) for r in per_iter}):
            pts = sorted(
                (r["d"], 1e3 * r["seconds_median"])
                for r in per_iter
                if (r["covariance_type"], r["backend"], r["device"]) == (cov, backend, device)
            )
            ax.plot(
                *zip(*pts),
                marker=_MARKERS.get(backend, "o"),
                color=_COLORS[cov],
                ls="-" if backend == "torch" else "--",
                label=f"{cov}, {backend}/{device}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("D (features, log)")
        ax.set_ylabel("ms per EM iteration (log)")
        ax.set_title("GaussianMixture time per iteration (solid: gpuclust, dashed: scikit-learn)")
        ax.legend(fontsize=7, ncol=2)
        save_png(fig, f"{prefix}_time_per_iter.png")
    # End-to-end fits where the grid has them (time to a converged model), else per-iteration times.
    mode = "converged" if any(r["mode"] == "converged" for r in rows) else "per_iter"
    chosen = [r for r in rows if r["mode"] == mode]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = set()
    for r in chosen:
        key = (kind(r), r["backend"])
        ax.scatter(
            r["seconds_median"],
            r["completeness"],
            color=_COLORS[kind(r)],
            marker=_MARKERS.get(r["backend"], "o"),
            s=50,
            label=None if key in seen else f"{kind(r)}, {r['backend']}",
        )
        seen.add(key)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per fit (log)" if mode == "converged" else "seconds per iteration (log)")
    ax.set_ylabel("completeness")
    ax.set_title("Quality against time: up and to the left is better")
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, f"{prefix}_pareto.png")


def run_named_grid(grid, out_dir, *, tag=None, repeats=3, seed=0, device="auto", say=lambda m: None):
    """Run the grid ``GRIDS[grid]`` (on ``device`` where not "auto"); return its rows and the JSONL path."""
    if grid not in GRIDS:
        raise ValueError(f"grid {grid!r} is not one of {sorted(GRIDS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    cases = GRIDS[grid]
    if device != "auto":
        cases = [replace(c, device=device) if c.backend != "sklearn" else c for c in cases]
    tag = tag or grid
    return run_grid(cases, out_dir, tag, repeats=repeats, seed=seed, say=say), Path(out_dir) / f"{tag}.jsonl"
