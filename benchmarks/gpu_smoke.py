"""The GPU check's smoke step: every CUDA path of gpuclust once, each check on its own.

    python benchmarks/gpu_smoke.py --out DIR [--dry-run] [--budget SECONDS] [--only NAME]

Each check compares a fit (or a score) on CUDA with the same one on the CPU, or times a
kernel, and appends one JSON line to ``DIR/smoke.jsonl`` as soon as it ends (flushed and
fsynced, so a killed run keeps every finished line). A check that fails is recorded with its
message and traceback and the next one runs. Status per line: "ok", "mismatch" (ran, but the
CUDA result differs from the CPU's beyond the stated tolerance: the numbers are in the line),
"error", or "skipped" (with the reason: no GPU, no CuPy, the time budget spent).

``--dry-run`` runs every check at toy size on the CPU, with gloo in place of NCCL; what needs a
GPU or CuPy is recorded as skipped. It takes seconds and is what CI runs (tests/test_gpu_check.py).
The "device" side of each comparison then runs gpuclust's CPU branches (no switch forces the CUDA
ones any more), so the dry run checks the script and its plumbing, not the CUDA code paths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpuclust import COVARIANCE_TYPES, GaussianMixture, KMeans, metrics  # noqa: E402
from gpuclust.device import synchronize  # noqa: E402

GMM_INITS = ("kmeans", "k-means++", "random", "random_from_data")
KMEANS_INITS = ("k-means++", "random", "array")
DTYPES = ("float32", "float64")
# CUDA against CPU: labels must agree (ARI) and the objective match to this relative tolerance.
ARI_MIN = 0.99
RTOL = {"float32": 1e-3, "float64": 1e-6}


class Skip(Exception):
    """The check cannot run here; the reason is recorded."""


class Sizes:
    """Problem sizes: real ones on a GPU, toy ones for the dry run."""

    def __init__(self, dry_run):
        self.kmeans = (400, 4, 3) if dry_run else (20000, 32, 8)  # n, d, k
        self.gmm = (300, 3, 3) if dry_run else (6000, 12, 5)
        self.metrics_n = 500 if dry_run else 200_000
        self.ae_images = 16 if dry_run else 1920  # 2 batches per epoch
        self.ae_batch = 8 if dry_run else 960
        self.em_full = (300, 64, 3) if dry_run else (5000, 6272, 10)  # n, D, K
        self.chol_dims = (16, 32, 64) if dry_run else (1024, 2048, 6272)
        self.chol_k = 3 if dry_run else 10
        self.dist = (400, 4, 3) if dry_run else (20000, 16, 8)
        self.timeout = 60 if dry_run else 45  # torchrun: a hung NCCL must not eat the step


class Context:
    def __init__(self, dry_run, out_dir):
        self.dry_run = dry_run
        self.out_dir = Path(out_dir)
        self.sizes = Sizes(dry_run)
        self.has_cuda = torch.cuda.is_available() and not dry_run
        # The device under test: CUDA, or in the dry run the CPU (its own branches).
        self.device = torch.device("cuda" if self.has_cuda else "cpu")

    def need_cuda(self, what):
        if not self.has_cuda:
            raise Skip(f"{what} needs a CUDA GPU" + (" (dry run)" if self.dry_run else ""))

    def cupy(self):
        self.need_cuda("CuPy")
        try:
            import cupy
        except ImportError as exc:
            raise Skip(f"CuPy is not importable: {exc}") from exc
        return cupy


# ------------------------------------------------------------------------------------- helpers


def blobs(n, d, k, dtype, seed=0, spread=8.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(dtype), labels


def host(a):
    """Any array (torch on any device, CuPy, numpy) as numpy."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def matched_rel_error(a, b, a_labels, b_labels):
    """Rows of ``a`` (per cluster) against ``b``'s, clusters matched through the labels."""
    mapping, *_ = metrics.match_clusters(np.asarray(b_labels), np.asarray(a_labels))
    pairs = [(ca, cb) for ca, cb in mapping.items() if ca < len(a) and cb < len(b)]
    if not pairs:
        return float("nan")
    return rel(np.stack([a[ca] for ca, _ in pairs]), np.stack([b[cb] for _, cb in pairs]))


def floats(value):
    """A score, or a tuple of scores (floats, numpy or 0-d tensors on any device), as a float array."""
    values = value if isinstance(value, (tuple, list)) else [value]
    return np.array([float(v) for v in values])


def timed(fn, device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def verdict(ok):
    return "ok" if ok else "mismatch"


# --------------------------------------------------------------------------------------- checks


def check_environment(ctx):
    row = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "dry_run": ctx.dry_run,
        "device": str(ctx.device),
        "git_commit": os.environ.get("GPUCLUST_COMMIT"),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(
            device_name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
        with contextlib.suppress(Exception):
            v = torch.cuda.nccl.version()
            row["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    try:
        import cupy

        row["cupy"] = cupy.__version__
    except ImportError as exc:
        row["cupy"] = f"not importable: {exc}"
    return row


def check_metric(ctx, name):
    from sklearn import metrics as skm

    n = ctx.sizes.metrics_n
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, n)
    p = np.where(rng.random(n) < 0.7, (y + 3) % 12, rng.integers(0, 12, n))
    yt, pt = torch.as_tensor(y, device=ctx.device), torch.as_tensor(p, device=ctx.device)
    fn = getattr(metrics, name)
    on_dev = fn(yt, pt)
    on_cpu = fn(y, p)
    ref = getattr(skm, name, None)
    row = {}
    if name == "contingency_matrix":
        row["max_abs_diff"] = float(np.abs(host(on_dev) - host(on_cpu)).max())
        row["vs_sklearn_max_abs_diff"] = float(np.abs(host(on_dev) - skm.cluster.contingency_matrix(y, p)).max())
        ok = row["max_abs_diff"] == 0 and row["vs_sklearn_max_abs_diff"] == 0
    elif name == "match_clusters":
        ok = on_dev[0] == on_cpu[0]
        row["mapping_equal"] = bool(ok)
    elif name == "all_scores":
        row.update({f"{k}_rel_diff": abs(on_dev[k] - on_cpu[k]) / max(abs(on_cpu[k]), 1e-30) for k in on_cpu})
        ok = all(v <= 1e-9 for v in row.values())
    else:
        a, b = floats(on_dev), floats(on_cpu)
        row.update(value=a.tolist(), cpu_value=b.tolist(), rel_diff=rel(a, b))
        ok = row["rel_diff"] <= 1e-9
        if ref is not None:
            row["sklearn_value"] = np.atleast_1d(np.asarray(ref(y, p), dtype=float)).tolist()
            row["vs_sklearn_rel_diff"] = rel(a, row["sklearn_value"])
            ok = ok and row["vs_sklearn_rel_diff"] <= 1e-9
    row["type_on_device"] = type(on_dev).__name__
    return {"status": verdict(ok), **row}


def check_kmeans(ctx, algorithm, init, dtype):
    n, d, k = ctx.sizes.kmeans
    X, _ = blobs(n, d, k, dtype)
    start = X[:: max(1, n // k)][:k] if init == "array" else init
    kw = dict(init=start, n_init=1, random_state=0, algorithm=algorithm, backend="torch", dtype=dtype)
    cpu, t_cpu = timed(lambda: KMeans(k, device="cpu", **kw).fit(X), torch.device("cpu"))
    Xd = torch.as_tensor(X, device=ctx.device)
    dev, t_dev = timed(lambda: KMeans(k, device=ctx.device, **kw).fit(Xd), ctx.device)
    labels = host(dev.labels_)
    row = {
        "ari_vs_cpu": float(metrics.adjusted_rand_score(cpu.labels_, labels)),
        "inertia_rel_diff": abs(float(dev.inertia_) - cpu.inertia_) / cpu.inertia_,
        "centers_rel_err": matched_rel_error(host(dev.cluster_centers_), cpu.cluster_centers_, labels, cpu.labels_),
        "n_iter": int(dev.n_iter_),
        "n_iter_cpu": int(cpu.n_iter_),
        "seconds": t_dev,
        "seconds_cpu": t_cpu,
        "labels_type": f"{type(dev.labels_).__name__}:{getattr(dev.labels_, 'device', '')}",
    }
    ok = row["ari_vs_cpu"] >= ARI_MIN and row["inertia_rel_diff"] <= RTOL[dtype]
    return {"status": verdict(ok), **row}


def check_gmm(ctx, cov, init, dtype):
    n, d, k = ctx.sizes.gmm
    X, _ = blobs(n, d, k, dtype)
    kw = dict(covariance_type=cov, init_params=init, random_state=0, dtype=dtype)
    cpu, t_cpu = timed(lambda: GaussianMixture(k, device="cpu", **kw).fit(X), torch.device("cpu"))
    Xd = torch.as_tensor(X, device=ctx.device)
    dev, t_dev = timed(lambda: GaussianMixture(k, device=ctx.device, **kw).fit(Xd), ctx.device)
    labels = host(dev.predict(Xd))
    cpu_labels = cpu.predict(X)
    row = {
        "ari_vs_cpu": float(metrics.adjusted_rand_score(cpu_labels, labels)),
        "lower_bound": float(dev.lower_bound_),
        "lower_bound_cpu": float(cpu.lower_bound_),
        "lower_bound_rel_diff": abs(float(dev.lower_bound_) - cpu.lower_bound_) / max(abs(cpu.lower_bound_), 1e-30),
        "means_rel_err": matched_rel_error(host(dev.means_), cpu.means_, labels, cpu_labels),
        "weights_rel_err": rel(np.sort(host(dev.weights_)), np.sort(cpu.weights_)),
        "n_iter": int(dev.n_iter_),
        "n_iter_cpu": int(cpu.n_iter_),
        "converged": bool(dev.converged_),
        "seconds": t_dev,
        "seconds_cpu": t_cpu,
    }
    ok = row["ari_vs_cpu"] >= ARI_MIN and row["lower_bound_rel_diff"] <= RTOL[dtype]
    return {"status": verdict(ok), **row}


def check_cupy(ctx, algorithm):
    cupy = ctx.cupy()
    n, d, k = ctx.sizes.kmeans if algorithm == "kmeans" else ctx.sizes.gmm
    X, _ = blobs(n, d, k, "float32")
    Xc = cupy.asarray(X)
    if algorithm == "kmeans":
        make = lambda: KMeans(k, init=X[:k], n_init=1, device="cuda")
    else:
        make = lambda: GaussianMixture(k, covariance_type="full", random_state=0, device="cuda")
    est = make().fit(Xc)
    ref = make().fit(torch.as_tensor(X, device="cuda"))
    pred = est.predict(Xc)
    fitted = est.cluster_centers_ if algorithm == "kmeans" else est.means_
    row = {
        "predict_type": type(pred).__name__,
        "fitted_type": type(fitted).__name__,
        "ari_vs_torch_input": float(
            metrics.adjusted_rand_score(host(ref.predict(torch.as_tensor(X, device="cuda"))), host(pred))
        ),  # fmt: skip
    }
    ok = isinstance(pred, cupy.ndarray) and isinstance(fitted, cupy.ndarray) and row["ari_vs_torch_input"] >= ARI_MIN
    return {"status": verdict(ok), **row}


def _images(ctx, n):
    try:
        from gpuclust.app.datasets import load_fashion_mnist

        images, _ = load_fashion_mnist("train", os.environ.get("GPUCLUST_DATA"))
        return images[:n], "fashion-mnist"
    except (FileNotFoundError, ValueError):
        return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8), "random"


def check_autoencoder(ctx, state):
    from gpuclust.app.training import encode, train_autoencoder

    n, batch = ctx.sizes.ae_images, ctx.sizes.ae_batch
    images, source = _images(ctx, n + n // 4)
    train, val = images[:n], images[n:]
    kw = dict(preset="seed", batch_size=batch, seed=0, device=ctx.device, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ae.ckpt"
        t0 = time.perf_counter()
        train_autoencoder(train, val, epochs=1, checkpoint=ckpt, **kw)
        resumed, h_resumed = train_autoencoder(train, val, epochs=2, checkpoint=ckpt, resume=True, **kw)
        seconds = time.perf_counter() - t0
        _, h_straight = train_autoencoder(train, val, epochs=2, **kw)
        z = encode(resumed, images)
    state["latent"] = z
    row = {
        "images": source,
        "val_loss_resumed": h_resumed.val_loss,
        "val_loss_straight": h_straight.val_loss,
        "resume_rel_diff": rel(h_resumed.val_loss, h_straight.val_loss),
        "images_per_second": h_resumed.images_per_second,
        "seconds_two_runs": seconds,
        "latent_shape": list(z.shape),
        "latent_device": str(z.device),
        "latent_finite": bool(torch.isfinite(z).all()),
    }
    ok = row["latent_finite"] and len(h_resumed.val_loss) == 2 and row["resume_rel_diff"] <= 1e-2
    return {"status": verdict(ok), **row}


def check_encode_cupy(ctx, state):
    cupy = ctx.cupy()
    z = state.get("latent")
    if z is None:
        raise Skip("the autoencoder check gave no latent")
    zc = cupy.from_dlpack(z)
    row = {"shape": list(zc.shape), "zero_copy": int(zc.data.ptr) == z.data_ptr()}
    return {"status": verdict(row["zero_copy"] and tuple(zc.shape) == tuple(z.shape)), **row}


def check_torchrun(ctx):
    n, d, k = ctx.sizes.dist
    X, y = blobs(n, d, k, "float32")
    backend = "nccl" if ctx.has_cuda else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", X)
        np.save(Path(tmp) / "y.npy", y)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
               "-m", "gpuclust", "cluster", "--distributed", "--algorithm", "gmm", "--covariance-type", "full",
               "--n-clusters", str(k), "--features", str(Path(tmp) / "x.npy"), "--labels", str(Path(tmp) / "y.npy"),
               "--save-labels", str(Path(tmp) / "labels.npy")]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env["OMP_NUM_THREADS"] = "1"
        if not ctx.has_cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run: gloo on the CPU even where a GPU exists
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=ctx.sizes.timeout, cwd=tmp)
        seconds = time.perf_counter() - t0
        labels = np.load(Path(tmp) / "labels.npy") if (Path(tmp) / "labels.npy").is_file() else None
    row = {
        "backend": backend,
        "returncode": proc.returncode,
        "seconds": seconds,
        "stdout_tail": proc.stdout[-1500:],
        "stderr_tail": proc.stderr[-3000:],
        "ari_vs_truth": float(metrics.adjusted_rand_score(y, labels)) if labels is not None else None,
    }
    ok = proc.returncode == 0 and "distributed over 1 ranks" in proc.stdout and labels is not None
    return {"status": verdict(ok), **row}


def check_em_full(ctx):
    """One full-covariance EM iteration at the seed latent's width: time of fit(2) - fit(1)."""
    n, D, K = ctx.sizes.em_full
    X, _ = blobs(n, D, K, "float32", spread=1.0)
    Xd = torch.as_tensor(X, device=ctx.device)
    kw = dict(covariance_type="full", init_params="random_from_data", reg_covar=1e-2, tol=0.0,
              random_state=0, dtype="float32", device=ctx.device)  # fmt: skip
    if ctx.has_cuda:
        torch.cuda.reset_peak_memory_stats()
    times, lbs = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one or two iterations do not converge, by design
        _, cold = timed(lambda: GaussianMixture(K, max_iter=1, **kw).fit(Xd), ctx.device)  # warm-up
        for iters in (1, 2):
            gmm, times[iters] = timed(lambda it=iters: GaussianMixture(K, max_iter=it, **kw).fit(Xd), ctx.device)
            lbs[iters] = float(gmm.lower_bound_)
            del gmm
    row = {
        "n": n,
        "D": D,
        "K": K,
        "seconds_first_fit_cold": cold,
        "seconds_fit_1_iter": times[1],
        "seconds_fit_2_iter": times[2],
        "seconds_per_iteration": times[2] - times[1],
        "lower_bound": lbs[2],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if ctx.has_cuda else None,
    }
    return {"status": verdict(np.isfinite(lbs[1]) and np.isfinite(lbs[2])), **row}


def _spd_batch(K, D, dtype, device):
    """K symmetric positive definite D x D matrices (diagonally dominant: 2I + a symmetric part < 1)."""
    g = torch.Generator(device=device).manual_seed(0)
    U = torch.rand(K, D, D, generator=g, device=device, dtype=dtype).mul_(2).sub_(1)
    A = (U + U.transpose(1, 2)).div_(2 * D)
    A.diagonal(dim1=1, dim2=2).add_(2.0)
    return A


def _median_ms(fn, device, repeats=3, cap_seconds=2.0):
    """Median of a few timed calls after a warm-up; a call slower than ``cap_seconds`` is not repeated."""
    _, first = timed(fn, device)  # warm-up: library handles, workspaces
    if first > cap_seconds:  # too slow to spend GPU time on repeats: the cold call is the figure
        return 1e3 * first
    times = []
    for _ in range(repeats):
        _, t = timed(fn, device)
        times.append(t)
        if t > cap_seconds:  # slow enough that one more is not worth the GPU time
            break
    return 1e3 * float(np.median(times))


def check_cholesky(ctx, D, dtype):
    """Batched cholesky_ex and triangular solve over (K, D, D) against a Python loop over K."""
    K = ctx.sizes.chol_k
    dev = ctx.device
    A = _spd_batch(K, D, getattr(torch, dtype), dev)
    eye = torch.eye(D, dtype=A.dtype, device=dev)
    row = {"K": K, "D": D, "dtype": dtype}
    row["cholesky_batched_ms"] = _median_ms(lambda: torch.linalg.cholesky_ex(A), dev)
    row["cholesky_looped_ms"] = _median_ms(lambda: [torch.linalg.cholesky_ex(A[k]) for k in range(K)], dev)
    L, info = torch.linalg.cholesky_ex(A)
    L_loop = torch.stack([torch.linalg.cholesky_ex(A[k])[0] for k in range(K)])
    row["cholesky_info_max"] = int(info.max())
    row["batched_vs_looped_rel_diff"] = float((L - L_loop).abs().max() / L_loop.abs().max())
    del L_loop
    row["solve_batched_ms"] = _median_ms(lambda: torch.linalg.solve_triangular(L, eye, upper=False), dev)
    row["solve_looped_ms"] = _median_ms(
        lambda: [torch.linalg.solve_triangular(L[k], eye, upper=False) for k in range(K)], dev
    )
    row["faster"] = "batched" if row["cholesky_batched_ms"] <= row["cholesky_looped_ms"] else "looped"
    ok = row["cholesky_info_max"] == 0 and row["batched_vs_looped_rel_diff"] <= RTOL[dtype]
    return {"status": verdict(ok), **row}


def checks(ctx):
    """(name, callable) in the order they run: quick and most telling first."""
    state = {}
    yield "environment", lambda: {"status": "ok", **check_environment(ctx)}
    for name in ("adjusted_rand_score", "contingency_matrix", "mutual_info_score", "normalized_mutual_info_score",
                 "homogeneity_completeness_v_measure", "homogeneity_score", "completeness_score", "v_measure_score",
                 "cluster_accuracy", "match_clusters", "all_scores"):  # fmt: skip
        yield f"metric:{name}", lambda name=name: check_metric(ctx, name)
    for algorithm in ("kmeans", "gmm"):
        yield f"cupy:{algorithm}", lambda a=algorithm: check_cupy(ctx, a)
    for algorithm in ("lloyd", "hamerly"):
        for init in KMEANS_INITS:
            for dtype in DTYPES:
                yield (
                    f"kmeans:{algorithm}:{init}:{dtype}",
                    lambda a=algorithm, i=init, t=dtype: check_kmeans(ctx, a, i, t),
                )
    for cov in COVARIANCE_TYPES:
        for init in GMM_INITS:
            for dtype in DTYPES:
                yield f"gmm:{cov}:{init}:{dtype}", lambda c=cov, i=init, t=dtype: check_gmm(ctx, c, i, t)
    yield "autoencoder:train-resume-encode", lambda: check_autoencoder(ctx, state)
    yield "autoencoder:encode-to-cupy", lambda: check_encode_cupy(ctx, state)
    yield "torchrun:one-rank", lambda: check_torchrun(ctx)
    # Cheap Cholesky sizes first; at the seed latent's width, float32 (what the EM runs) before the
    # EM iteration and float64 last, so a slow batched kernel costs the least that it can.
    *small, large = ctx.sizes.chol_dims
    for D in small:
        for dtype in DTYPES:
            yield f"cholesky:D={D}:{dtype}", lambda D=D, t=dtype: check_cholesky(ctx, D, t)
    yield f"cholesky:D={large}:float32", lambda: check_cholesky(ctx, large, "float32")
    yield "em-full:one-iteration", lambda: check_em_full(ctx)
    yield f"cholesky:D={large}:float64", lambda: check_cholesky(ctx, large, "float64")


def append_line(path, row):
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_check(name, fn):
    t0 = time.perf_counter()
    try:
        row = fn()
    except Skip as exc:
        row = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        row = {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:],
        }
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"check": name, **row, "wall_seconds": round(time.perf_counter() - t0, 4)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for smoke.jsonl (default $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (what CI runs)")
    parser.add_argument("--budget", type=float, default=105.0, help="seconds; checks not begun by then are skipped")
    parser.add_argument("--only", help="run only the checks whose name contains this")
    args = parser.parse_args(argv)
    dry = args.dry_run or os.environ.get("GPUCLUST_GPU_CHECK_DRY_RUN") == "1"
    out = Path(args.out) / "smoke.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(dry, args.out)
    began = time.perf_counter()
    counts = {}
    for name, fn in checks(ctx):
        if args.only and args.only not in name:
            continue
        if time.perf_counter() - began > args.budget:
            row = {"check": name, "status": "skipped", "reason": f"the smoke step's budget of {args.budget:.0f} s"}
        elif not dry and not torch.cuda.is_available() and name != "environment":
            # Not the dry run: comparing the CPU with itself would pass for nothing.
            row = {"check": name, "status": "skipped", "reason": "no CUDA GPU (use --dry-run for the CPU stand-ins)"}
        else:
            row = run_check(name, fn)
        append_line(out, row)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        extra = row.get("reason", "")
        print(f"{row['status']:>8}  {name}  {row.get('wall_seconds', 0):.2f}s  {extra}"[:300], flush=True)
    print(f"smoke: {counts} in {time.perf_counter() - began:.1f} s; lines in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
