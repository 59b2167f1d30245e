"""The ``scale`` grid: KMeans and GaussianMixture at the sizes GPU users bring, against the peers and the floor.

Each task is one (case, library, mode). Data are seeded blobs made on the device itself (nothing
crosses the host link). Per iteration: ``(T(1 + iters) - T(1)) / iters`` with ``tol=0``, the device
synchronized before every clock read, a warm-up fit first, the median of the repeats; converged:
each library's default tolerance, end to end. Each row carries its floor (:mod:`.floors`), written
before the measurement, and its quality: for KMeans the mean squared distance to the nearest
centre computed in float64 on a subsample; for mixtures the mean log-likelihood in float64 on a
subsample (from the fitted weights, means and covariances where the library exposes them) and the
library's own score; and for every path the share of the subsample's labels equal to gpuclust's
float32 labels (``label_agreement``), and, for gpuclust, equal to the float64 nearest centre
(``exact_label_agreement``). Tasks run cheapest first under a wall budget: once it is spent, every
remaining task is a skipped row saying so. Rows are appended to a JSON-lines file as each finishes.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace

import torch

from ...device import synchronize
from .cases import CaseSkipped
from .floors import card_peaks, floor_fields
from .scale_peers import NOT_MEASURED, PEER_IMPORTS, SCALE_PEERS, fit_gpuclust_gmm, fit_gpuclust_kmeans
from .scale_tables import scale_table

REFERENCE_ELEMENTS = 2**26  # subsample rows x K (x D for full) of the float64 reference
GPUCLUST = "gpuclust"


@dataclass(frozen=True)
class ScaleCase:
    name: str
    algorithm: str  # "kmeans" or "gmm"
    n: int
    d: int
    k: int
    covariance_type: str | None = None
    precision: str = "highest"  # the estimators' matmul_precision; the floor's precision
    iters: int = 5
    peers: tuple = ()
    converged: tuple = ()  # libraries that also get a converged row

    @property
    def floor_precision(self):
        # The precision the estimator runs at (KMeans's cases: the fused assignment in TF32, near
        # ties re-checked in float32), so a floor never assumes tensor cores a case does not use.
        return self.precision


_KM = ("flash-kmeans", "flash-kmeans-fp16", "fastkmeans", "fast-pytorch-kmeans", "faiss-gpu", "cuml")
SCALE_CASES = [
    ScaleCase("kmeans 60000x784 K=10", "kmeans", 60_000, 784, 10, precision="tf32", iters=20, peers=_KM,
              converged=(GPUCLUST, "flash-kmeans", "fast-pytorch-kmeans")),
    ScaleCase("kmeans 1Mx128 K=1024", "kmeans", 1_000_000, 128, 1024, precision="tf32", iters=10, peers=_KM,
              converged=(GPUCLUST, "flash-kmeans")),
    ScaleCase("kmeans 8Mx128 K=1024", "kmeans", 8_000_000, 128, 1024, precision="tf32", iters=5,
              peers=("flash-kmeans",)),
    ScaleCase("kmeans 4Mx128 K=65536", "kmeans", 4_000_000, 128, 65536, precision="tf32", iters=3,
              peers=("flash-kmeans",)),
    ScaleCase("gmm diag 1Mx128 K=1024", "gmm", 1_000_000, 128, 1024, "diag", iters=5,
              peers=("torchgmm", "sklearn-array-api", "sklearn-array-api-cpu", "cuml"), converged=(GPUCLUST,)),
    ScaleCase("gmm spherical 1Mx128 K=1024", "gmm", 1_000_000, 128, 1024, "spherical", iters=5,
              peers=("torchgmm", "sklearn-array-api")),
    ScaleCase("gmm diag 10Mx128 K=1024", "gmm", 10_000_000, 128, 1024, "diag", iters=3),
    ScaleCase("gmm spherical 10Mx128 K=1024", "gmm", 10_000_000, 128, 1024, "spherical", iters=3),
    ScaleCase("gmm full 1Mx128 K=1024 tf32", "gmm", 1_000_000, 128, 1024, "full", "tf32", iters=2),
    ScaleCase("gmm full 1Mx128 K=1024 highest", "gmm", 1_000_000, 128, 1024, "full", "highest", iters=2),
]  # fmt: skip


def toy(case: ScaleCase) -> ScaleCase:
    """The same case at toy size (the CPU dry run): a few seconds, every code path kept."""
    return replace(case, n=min(case.n, 1500), d=min(case.d, 8), k=min(case.k, 6), iters=2)


@dataclass(frozen=True)
class Task:
    case: ScaleCase
    library: str
    mode: str  # "per_iter" or "converged"


# Rough rates (FLOP/s) that only order the tasks cheapest first and predict whether one fits the budget
# (cpu: the GPU machine's 16 cores; on a CPU-only dry run every size is a toy one).
_RATE = {"cuda": 2e13, "cpu": 3e11}
CPU_PEER_REPEATS = 1  # a peer on the host's cores: one repeat (its per-iteration time is seconds)


def estimated_seconds(task: Task, device: str) -> float:
    from .floors import gemm_flops

    c = task.case
    on = "cpu" if task.library == "sklearn-array-api-cpu" else device
    flops = gemm_flops(c.algorithm, c.covariance_type, c.n, c.d, c.k)
    cpu = not on.startswith("cuda")
    if task.mode == "converged":
        iters = 300 if c.algorithm == "kmeans" else 100
    else:
        iters = 3 * c.iters + 5 if cpu else 2 * c.iters + 4
    return flops * iters / _RATE["cpu" if cpu else "cuda"]


def tasks(cases, device="cuda") -> list:
    """Every (case, library, mode), cheapest first; gpuclust's row of a case before its peers'."""
    out = []
    for c in cases:
        out += [Task(c, GPUCLUST, "per_iter")] + [Task(c, p, "per_iter") for p in c.peers]
        out += [Task(c, lib, "converged") for lib in c.converged]
    rank = {GPUCLUST: 0}
    return sorted(out, key=lambda t: (estimated_seconds(t, device), t.case.name, rank.get(t.library, 1)))


def device_blobs(case: ScaleCase, device, seed=0, chunk=1 << 20):
    """Seeded blobs made on ``device``: K centres N(0, 1) per coordinate, unit noise, float32, in chunks."""
    g = torch.Generator(device=device).manual_seed(seed)
    centers = torch.randn(case.k, case.d, generator=g, device=device)
    X = torch.empty(case.n, case.d, device=device)
    for s in range(0, case.n, chunk):
        e = min(s + chunk, case.n)
        lab = torch.randint(0, case.k, (e - s,), generator=g, device=device)
        X[s:e] = centers[lab] + torch.randn(e - s, case.d, generator=g, device=device)
    return X


def shared_start(X, case: ScaleCase, seed=0):
    """The start every library that takes one is given: K distinct rows of X chosen by a seeded draw."""
    g = torch.Generator(device=X.device).manual_seed(seed + 1)
    idx = torch.randperm(case.n, generator=g, device=X.device)[: case.k]
    return X[idx].clone()


def reference_rows(case: ScaleCase) -> int:
    """Rows of the float64 reference subsample: rows x K (x D for full) at most REFERENCE_ELEMENTS."""
    per_row = case.k * (case.d if case.covariance_type == "full" else 1)
    return max(1, min(case.n, REFERENCE_ELEMENTS // per_row))


def _nearest64(Xs, centers):
    """Float64 squared distance to, and index of, the nearest centre (chunked over centres)."""
    C = centers.to(Xs.device, torch.float64)
    best = torch.full((len(Xs),), math.inf, dtype=torch.float64, device=Xs.device)
    arg = torch.zeros(len(Xs), dtype=torch.long, device=Xs.device)
    for s in range(0, len(C), 4096):
        d2 = torch.cdist(Xs, C[s : s + 4096]).square()
        v, i = d2.min(1)
        better = v < best
        best, arg = torch.where(better, v, best), torch.where(better, i + s, arg)
    return best, arg


def weighted_log_probs64(Xs, weights, means, covariances, covariance_type):
    """log(w_k) + log N(x | mu_k, Sigma_k) in float64, (rows, K), from scikit-learn-shaped parameters."""
    f = {"dtype": torch.float64, "device": Xs.device}
    w, mu, cov = (torch.as_tensor(t).to(**f) for t in (weights, means, covariances))
    n, d = Xs.shape
    if covariance_type == "full":
        L = torch.linalg.cholesky(cov)  # (K, D, D); one batched solve per component, no (rows, K, D, D) copy
        z = torch.linalg.solve_triangular(L, Xs.T[None] - mu[:, :, None], upper=False)  # (K, D, rows)
        maha = z.square().sum(1).T
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    else:
        var = cov if covariance_type == "diag" else cov[:, None].expand(-1, d)
        prec = 1.0 / var
        maha = Xs.square() @ prec.T - 2 * Xs @ (mu * prec).T + (mu.square() * prec).sum(1)
        logdet = torch.log(var).sum(1)
    return -0.5 * (d * math.log(2 * math.pi) + logdet + maha) + torch.log(w)


def log_likelihood64(Xs, weights, means, covariances, covariance_type) -> float:
    """Mean log-likelihood of ``Xs`` in float64 (:func:`weighted_log_probs64`)."""
    return float(torch.logsumexp(weighted_log_probs64(Xs, weights, means, covariances, covariance_type), 1).mean())


def quality(case: ScaleCase, X, fitted, ours_labels=None) -> dict:
    """A fit's quality on the float64 subsample, and its labels' agreement with gpuclust's float32 labels."""
    m = reference_rows(case)
    Xs = X[:m].to(torch.float64)
    q = {"reference_rows": m}
    labels = fitted.labels[:m] if fitted.labels is not None else None
    if case.algorithm == "kmeans":
        if fitted.centers is not None:
            best, arg = _nearest64(Xs, fitted.centers)
            q["inertia_per_row_f64"] = float(best.mean())
            if labels is None:  # the library gives no labels: the float64 nearest centre stands for them
                labels = arg
            else:  # the library's own labels (its last assignment) against the float64 nearest centre
                q["exact_label_agreement"] = float((labels.to(arg.device) == arg).double().mean())
    else:
        if fitted.means is not None:
            logp = weighted_log_probs64(Xs, fitted.weights, fitted.means, fitted.covariances, case.covariance_type)
            q["mean_log_likelihood_f64"] = float(torch.logsumexp(logp, 1).mean())
            if fitted.predict is not None:
                labels = torch.as_tensor(fitted.predict(X[:m])).to(logp.device)
                q["exact_label_agreement"] = float((labels == logp.argmax(1)).double().mean())
            labels = logp.argmax(1) if labels is None else labels
        if fitted.score is not None:
            q["mean_log_likelihood_own"] = float(fitted.score(X[:m]))
    if labels is not None:
        q["_labels"] = labels.cpu()
        if ours_labels is not None:
            from ...metrics import adjusted_rand_score

            q["label_agreement"] = float((labels.cpu() == ours_labels).double().mean())
            q["ari_vs_gpuclust"] = float(adjusted_rand_score(ours_labels.numpy(), labels.cpu().numpy()))
    return q


# Each library's default tolerance for the converged rows (and its iteration cap).
CONVERGED_TOL = {
    (GPUCLUST, "kmeans"): 1e-4,
    (GPUCLUST, "gmm"): 1e-3,
    ("flash-kmeans", "kmeans"): 1e-8,  # FlashKMeans' default
    ("fast-pytorch-kmeans", "kmeans"): 1e-4,
}
CONVERGED_MAX_ITER = {"kmeans": 300, "gmm": 100}


def _fit_function(task: Task):
    if task.library == GPUCLUST:
        return fit_gpuclust_kmeans if task.case.algorithm == "kmeans" else fit_gpuclust_gmm
    return SCALE_PEERS[task.library][1]


def _check(task: Task, device: str):
    """Raise CaseSkipped (with the one-line reason) or ImportError for a task that cannot run here."""
    import importlib

    if task.library in NOT_MEASURED:
        raise CaseSkipped(NOT_MEASURED[task.library])
    if task.library == GPUCLUST:
        return
    algorithm = SCALE_PEERS[task.library][0]
    if algorithm != task.case.algorithm:
        raise CaseSkipped(f"{task.library} has no {task.case.algorithm}")
    importlib.import_module(PEER_IMPORTS[task.library])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaseSkipped("no CUDA GPU (torch.cuda.is_available() is False)")


def _timed(fit, X, start, max_iter, tol, case, device):
    """One fit, the device synchronized before each clock read: (seconds, Fitted)."""
    synchronize(device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit(X, start, max_iter, tol, case)
    synchronize(device)
    return time.perf_counter() - t0, fitted


def _peak(device, reset=False):
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return None
    return int(torch.cuda.max_memory_allocated(device))


def measure(task: Task, X, start, repeats: int) -> dict:
    """Time one task: warm-up, then the median of ``repeats`` (per iteration: differential, tol=0)."""
    case, fit, device = task.case, _fit_function(task), X.device
    per = task.mode == "per_iter"
    if per:
        max_iter, tol = 1 + case.iters, 0.0
    else:
        max_iter, tol = CONVERGED_MAX_ITER[case.algorithm], CONVERGED_TOL.get((task.library, case.algorithm), 1e-3)
        repeats = 1
    if device.type == "cpu" and task.library in SCALE_PEERS and SCALE_PEERS[task.library][2] == "cpu":
        repeats = CPU_PEER_REPEATS
    _timed(fit, X, start, 2, 0.0, case, device)  # warm-up: kernels compiled, allocator grown
    times = []
    for _ in range(repeats):
        short = _timed(fit, X, start, 1, 0.0, case, device)[0] if per else 0.0
        _peak(device, reset=True)
        seconds, fitted = _timed(fit, X, start, max_iter, tol, case, device)
        ran = fitted.n_iter if fitted.n_iter is not None else max_iter
        if per and (ran < 2 or seconds <= short):
            raise CaseSkipped(
                f"no time per iteration: {ran} iteration(s), long fit {seconds:.4f} s vs short {short:.4f} s"
            )
        times.append((seconds - short) / (ran - 1) if per else seconds)
    return {
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "repeats": repeats,
        "max_iter": max_iter,
        "tol": tol,
        "n_iter": fitted.n_iter,
        "peak_memory_bytes": _peak(device),
        "_fitted": fitted,
    }


class CaseData:
    """The current case's X on the device and its shared start; one case's data held at a time."""

    def __init__(self, device, seed=0):
        self.device, self.seed, self.name, self.X, self.start = torch.device(device), seed, None, None, None
        self.ours_labels = {}  # (case name, mode) -> gpuclust's float32 labels of the subsample

    def get(self, case: ScaleCase):
        if case.name != self.name:
            self.X = self.start = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            X = device_blobs(case, self.device, self.seed)
            cache = {}
            self.start = {
                "centers": shared_start(X, case, self.seed),
                "host": lambda: cache.setdefault("host", X.cpu().numpy()),
                "cpu": lambda: cache.setdefault("cpu", X.cpu()),
            }
            self.X, self.name = X, case.name
        return self.X, self.start


def task_head(task: Task, environment, peaks) -> dict:
    """What a row says before it is measured: the case, the library, the device and the floor."""
    c = task.case
    row = {**asdict(c), "library": task.library, "mode": task.mode, "environment": environment}
    row.pop("peers"), row.pop("converged")
    note = SCALE_PEERS[task.library][3] if task.library in SCALE_PEERS else "public estimator; its own path choice"
    row.update(note=note, dtype="float32", data="blobs made on the device, seeded")
    row.update(floor_fields(c.algorithm, c.covariance_type, c.n, c.d, c.k, c.floor_precision, peaks))
    return row


def run_task(task: Task, data: CaseData, repeats: int, environment=None, peaks=None) -> dict:
    """Measure one task; never raises: a missing or failing library is a skipped or error row saying why."""
    row = task_head(task, environment, peaks)
    _float32_matmuls_exact()
    t0 = time.perf_counter()
    fitted = None
    try:
        on_cpu = task.library in SCALE_PEERS and SCALE_PEERS[task.library][2] == "cpu"
        _check(task, "cpu" if on_cpu else str(data.device))
        X, start = data.get(task.case)
        row["device"] = "cpu" if on_cpu else str(X.device)
        got = measure(task, start["cpu"]() if on_cpu else X, start, repeats)
        fitted = got.pop("_fitted")
        ours = data.ours_labels.get((task.case.name, task.mode))
        q = quality(task.case, X, fitted, None if task.library == GPUCLUST else ours)
        labels = q.pop("_labels", None)
        if task.library == GPUCLUST and labels is not None:
            data.ours_labels[(task.case.name, task.mode)] = labels
        row.update(status="ok", **got, **q)
        if row.get("floor_s") and task.mode == "per_iter":
            row["x_of_floor"] = row["seconds_median"] / row["floor_s"]
    except CaseSkipped as exc:
        row.update(status="skipped", reason=str(exc))
    except ImportError as exc:
        row.update(status="skipped", reason=f"not installed: {type(exc).__name__}: {exc}".splitlines()[0])
    except Exception as exc:  # one failing library must not stop the grid
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300], traceback=tb[-2000:])
    finally:
        del fitted
        if data.device.type == "cuda":
            torch.cuda.empty_cache()
    row["wall_seconds"] = time.perf_counter() - t0
    row["left_tf32_on"] = _tf32_on()  # this library switched TF32 on for the whole process (reset before the next)
    return row


def _float32_matmuls_exact():
    """A library that switches TF32 on globally must not speed up (or round) the tasks after it."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def _tf32_on():
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def _budget_reason(task, rows, spent, budget, device="cuda"):
    """Why a task is not started (the wall budget is spent, or its converged fit would overrun it), or None."""
    if spent >= budget:
        return f"not run: the wall budget of {budget:.0f} s is spent ({spent:.0f} s used); tasks run cheapest first"
    guess = estimated_seconds(task, device)
    if guess > budget - spent:
        return f"not run: about {guess:.0f} s predicted (rough rate), {budget - spent:.0f} s of the wall budget left"
    if task.mode != "converged":
        return None
    per = [r for r in rows if r["name"] == task.case.name and r["library"] == task.library
           and r["mode"] == "per_iter" and r["status"] == "ok"]  # fmt: skip
    if per:
        predicted = per[0]["seconds_median"] * CONVERGED_MAX_ITER[task.case.algorithm] + per[0]["wall_seconds"] / 4
        if predicted > budget - spent:
            return f"not run: up to {predicted:.0f} s predicted, {budget - spent:.0f} s of the wall budget left"
    return None


def run_scale(cases, out_path, device="cuda", budget_s=420.0, repeats=3, seed=0, say=print):
    """Run every task of ``cases`` cheapest first, appending each row to ``out_path`` as it finishes.

    Once ``budget_s`` seconds have passed, every remaining task is a skipped row saying so. The
    markdown tables (:func:`scale_table`) are written next to the rows (``x.jsonl`` -> ``x.md``).
    """
    from pathlib import Path

    from .._atomic import atomic_write_text
    from ..environment import environment
    from .runner import append_jsonl

    env = environment(torch.device(device))
    peaks = card_peaks(env["device_name"]) if str(device).startswith("cuda") else None
    say(f"scale grid on {env['device_name']}: peaks {peaks.name if peaks else 'unknown (floors blank)'}")
    path = Path(out_path)
    path.unlink(missing_ok=True)
    data, rows, t0 = CaseData(device, seed), [], time.perf_counter()
    for i, task in enumerate(tasks(cases, device), 1):
        spent = time.perf_counter() - t0
        reason = _budget_reason(task, rows, spent, budget_s, str(device))
        if reason is None:
            row = run_task(task, data, repeats, env, peaks)
        else:
            row = {**task_head(task, env, peaks), "status": "skipped", "reason": reason, "wall_seconds": 0.0}
        append_jsonl(path, row)
        rows.append(row)
        say(f"[{i}] {task.case.name} {task.library} {task.mode}: {_said(row)}")
    atomic_write_text(path.with_suffix(".md"), "\n".join(scale_table(rows)) + "\n")
    return rows


def summarize_scale_file(jsonl_path):
    """Write the tables next to stored scale rows (``x.jsonl`` -> ``x.md``), e.g. after a run cut short."""
    from pathlib import Path

    from .._atomic import atomic_write_text
    from .runner import read_jsonl

    path = Path(jsonl_path)
    atomic_write_text(path.with_suffix(".md"), "\n".join(scale_table(read_jsonl(path))) + "\n")
    return path.with_suffix(".md")


def _said(row):
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason'][:160]}"
    floor = f", {row['x_of_floor']:.1f}x floor" if row.get("x_of_floor") else ""
    return f"{1e3 * row['seconds_median']:.3f} ms{floor} ({row['wall_seconds']:.1f} s)"
