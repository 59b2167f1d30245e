"""One Lloyd iteration of KMeans on a GPU: gpuclust against fast-pytorch-kmeans, with host syncs counted.

    python benchmarks/cuda_lloyd_overhead.py --out runs/lloyd.jsonl [--dry-run] [--label TEXT]

Fashion-MNIST pixels (60000x784 float32, ``$GPUCLUST_DATA`` or the loader's search order) or,
where they cannot be loaded, seeded uniform data of that shape; K=10 from shared centres.
Time per iteration as in ``gpuclust.app.bench``: ``(T(1 + iters) - T(1)) / (n_iter - 1)`` with
tol=0, CUDA synchronized before every clock read, two warm-ups, median of ``--repeats``. The
spread between processes (for gpuclust, up to 1.7x on one H200) exceeds that within one: compare
versions by running each more than once, alternating.
Then, in fits that are not timed, per iteration (the same difference of a long and a one-iteration
fit): the CUDA calls that synchronize (``torch.cuda.set_sync_debug_mode("warn")``, one warning
each; CUDA only), the host reads seen by torch's dispatcher (scalar reads, data-shaped ops such
as nonzero, ``.tolist()``/``.cpu()``) and the other non-view ops (about one kernel launch each).
One JSON line per library and measurement goes to ``--out``. 10 to 19 s a run on an H200.
``--dry-run``: a small case on the CPU, in seconds. It runs gpuclust's CPU branches (no switch
forces the CUDA ones any more): it checks the script, not the CUDA Lloyd loop's host reads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: another gpuclust may be compared

import gpuclust
from gpuclust import KMeans


class HostReads(TorchDispatchMode):
    """Counts the ops that make the host wait for the device, and the other non-view ops."""

    WAITS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.reads = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in self.WAITS or (name == "index" and any(i is not None and i.dtype == torch.bool for i in args[1])):
            self.reads += 1
        elif not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._real = {m: getattr(torch.Tensor, m) for m in ("tolist", "cpu", "numpy")}
        for m, real in self._real.items():  # copies to the host are not all seen by the dispatcher
            setattr(
                torch.Tensor, m, lambda t, *a, _r=real, **k: setattr(self, "reads", self.reads + 1) or _r(t, *a, **k)
            )
        return super().__enter__()

    def __exit__(self, *exc):
        for m, real in self._real.items():
            setattr(torch.Tensor, m, real)
        return super().__exit__(*exc)


def load_data(n, d, dry_run):
    if not dry_run and (n, d) == (60000, 784):
        try:
            from gpuclust.app.datasets import flatten_pixels, load_fashion_mnist

            return flatten_pixels(load_fashion_mnist("train", os.environ.get("GPUCLUST_DATA"))[0][:n]), "fashion-mnist"
        except (FileNotFoundError, ValueError, OSError):
            pass
    return np.random.default_rng(0).random((n, d), dtype=np.float32), "uniform-seed0"


class GpuclustFit:
    name = "gpuclust"

    def __init__(self, X, init, device):
        self.X, self.init, self.device = X, init, device

    def __call__(self, max_iter):
        km = KMeans(len(self.init), init=self.init, max_iter=max_iter, tol=0.0, device=self.device,
                    backend="torch", algorithm="lloyd").fit(self.X)  # fmt: skip
        return km.n_iter_, lambda: float(km.inertia_)


class FastKMeansFit:
    name = "fast-pytorch-kmeans"

    def __init__(self, X, init, device):
        from fast_pytorch_kmeans import KMeans as FastKMeans

        self.cls, self.X, self.init = FastKMeans, X, torch.as_tensor(init, device=device, dtype=X.dtype)

    def __call__(self, max_iter):
        km = self.cls(len(self.init), max_iter=max_iter, tol=0.0, verbose=1, mode="euclidean")
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            km.fit(self.X, self.init.clone())
        used = re.search(r"used (\d+) iterations", printed.getvalue())
        # outside the timed fit: its labels are those of the centres before the last update
        inertia = lambda: float(((self.X - km.centroids[km.predict(self.X)]) ** 2).sum(dtype=torch.float64))
        return (int(used.group(1)) if used else max_iter), inertia


def per_iteration(fit, iters, sync):
    """``(T(1 + iters) - T(1)) / (n_iter - 1)`` in ms, and the long fit's n_iter and inertia."""
    times = {}
    for m in (1, 1 + iters):
        sync()
        t0 = time.perf_counter()
        times[m] = fit(m)
        sync()
        times[m] = (time.perf_counter() - t0, *times[m])
    (t1, n1, _), (tn, nn, inertia) = times[1], times[1 + iters]
    return 1e3 * (tn - t1) / max(1, nn - n1), nn, inertia()


def counts_per_iteration(fit, iters, cuda):
    """Sync warnings (CUDA), host reads and other ops per iteration: long fit minus one-iteration fit."""
    out = {}
    for m in (1, 1 + iters):
        syncs = None
        if cuda:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fit(m)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        with HostReads() as counter:
            n = fit(m)[0]
        out[m] = (n, syncs, counter.reads, counter.ops)
    (n1, s1, r1, o1), (nn, sn, rn, on) = out[1], out[1 + iters]
    steps = max(1, nn - n1)
    return {
        "cuda_syncs_per_iter": None if s1 is None else (sn - s1) / steps,
        "host_reads_per_iter": (rn - r1) / steps,
        "ops_per_iter": (on - o1) / steps,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines file the rows are appended to")
    p.add_argument("--dry-run", action="store_true", help="small case on the CPU (its own branches)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--label", default="", help="free text stored in every row (which gpuclust this is)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        p.error("no CUDA device: use --dry-run for the CPU check")
    n, d, k = (1000, 16, 10) if args.dry_run else (60000, 784, 10)
    iters, repeats = (3, 2) if args.dry_run else (args.iters, args.repeats)
    device = torch.device("cuda" if cuda else "cpu")
    X_np, data = load_data(n, d, args.dry_run)
    init = X_np[np.random.default_rng(0).choice(n, k, replace=False)].astype(np.float64)
    X = torch.as_tensor(X_np, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fits = [GpuclustFit]
    try:
        import fast_pytorch_kmeans  # noqa: F401

        fits.append(FastKMeansFit)
    except ImportError:
        print("fast-pytorch-kmeans not importable: gpuclust alone")
    head = {
        "label": args.label, "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "torch": torch.__version__, "gpuclust": str(Path(gpuclust.__file__).parent), "data": data,
        "n": n, "d": d, "k": k, "iters": iters, "repeats": repeats,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as out:
        for make in fits:
            fit = make(X, init, device)
            started = time.perf_counter()
            for _ in range(2):  # warm-up: on an H200 the first full-length fits were still up to 1.6x slower
                per_iteration(fit, iters, sync)
            runs = [per_iteration(fit, iters, sync) for _ in range(repeats)]
            row = {**head, "library": fit.name, "ms_per_iter_median": statistics.median(r[0] for r in runs)}
            row.update(ms_per_iter_all=[round(r[0], 4) for r in runs], n_iter=runs[-1][1], inertia=runs[-1][2])
            row.update(counts_per_iteration(fit, iters, cuda), seconds=round(time.perf_counter() - started, 2))
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row))


if __name__ == "__main__":
    main()
