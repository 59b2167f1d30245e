"""Measuring one case: timed fits (differential per iteration), their peak memory and their quality."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
import traceback
import warnings
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ...device import synchronize
from ..costs import gmm_flops_per_iteration, kmeans_flops_per_iteration
from .cases import CPU_ONLY_BACKENDS, Case, CaseSkipped, stopping
from .data import initial_params, make_data
from .memory import PeakRss
from .peers import INIT_NOTES, PEER_ALGORITHMS, PEERS, check_peer

# The last timed fit's estimator, weakly: a full garbage collection (a quarter second with torch
# loaded) is needed only when reference counting alone did not free it.
_last_estimator = None


def _release(device: torch.device, collect: bool = False) -> None:
    """Free what the previous fit left (call with no estimator alive) and restart the peak count."""
    if collect or (_last_estimator is not None and _last_estimator() is not None):
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _make_estimator(case, max_iter, init, tol):
    if case.backend in PEERS:
        return PEERS[case.backend](case, max_iter, init, tol)
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
        from ...kmeans import KMeans

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
    from ...gaussian_mixture import GaussianMixture

    return GaussianMixture(case.k, device=case.device, **kw)


def _fit_device(case) -> torch.device:
    """Where the fit runs: scikit-learn on the CPU always, so its rows never get CUDA memory figures."""
    return torch.device("cpu" if case.backend in CPU_ONLY_BACKENDS else case.device)


def _to_backend(case, X):
    if case.backend in CPU_ONLY_BACKENDS:
        return X.astype(case.dtype, copy=False)
    return torch.as_tensor(X.astype(case.dtype, copy=False), device=_fit_device(case))


@dataclass
class _Fit:
    est: object
    seconds: float
    peak: int | None  # bytes: max_memory_allocated on CUDA, resident set size on the CPU (None: unmeasured)
    before: int | None  # bytes in use when the fit began (the data, the allocator's and torch's own)
    memory_method: str  # how ``peak`` was measured (the row's ``peak_memory_method``)


def _timed_fit(case, X, init, max_iter, tol) -> _Fit:
    """One fit, timed; the caller holds no earlier estimator (it would count in this fit's peak)."""
    device = _fit_device(case)
    global _last_estimator
    _release(device)
    est = _make_estimator(case, max_iter, init, tol)
    _last_estimator = weakref.ref(est)
    synchronize(device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    # On a GPU the allocator counts the peak; the host's resident set is not watched at all.
    with warnings.catch_warnings(), contextlib.nullcontext() if cuda else PeakRss() as rss:
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X)
        synchronize(device)
        seconds = time.perf_counter() - t0
    if cuda:
        return _Fit(est, seconds, int(torch.cuda.max_memory_allocated(device)), int(before), "cuda allocator")
    if rss.method == "unavailable":
        return _Fit(est, seconds, None, None, rss.method)
    return _Fit(est, seconds, int(rss.peak), int(rss.start), rss.method)


def _quality(case, est, X, labels):
    from ...metrics import adjusted_rand_score, completeness_score, normalized_mutual_info_score

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


def _check_runnable(case):
    if case.backend in PEER_ALGORITHMS:
        check_peer(case)
    if case.backend == "cuml":
        if not case.device.startswith("cuda"):
            raise CaseSkipped("cuML runs on CUDA only")
        import importlib

        importlib.import_module("cuml")
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        raise CaseSkipped("no CUDA GPU (torch.cuda.is_available() is False)")


def _iterations(est, asked):
    """The iterations a fit ran as the library reports them; ``asked`` only where it cannot say."""
    n = getattr(est, "n_iter_", None)
    return asked if n is None else int(n)


# How many (1-iteration, long) pairs a repeat may time before a case is declared below the clock's noise.
MAX_PAIRS = 5


def _per_iteration(case, X, init, max_iter):
    """One repeat's seconds per iteration, ``(T(max_iter) - T(1)) / (iterations beyond the first)``.

    Noise only ever adds time, so T(1) and T(max_iter) are each the fastest of the fits timed in
    this repeat. Where the long fit is not slower than the short one (the iterations' work is below
    the clock's noise: tiny cases, a busy machine), one more pair is timed, up to ``MAX_PAIRS``;
    then the case is a skipped row saying so, never a time at or below zero. Returns the seconds,
    the last long fit (for memory and quality; no earlier fit is kept alive while one is timed)
    and the number of pairs timed.
    """
    short = long = None
    for pairs in range(1, MAX_PAIRS + 1):
        fit = None  # the previous pair's long fit must not count in this pair's peaks
        first = _timed_fit(case, X, init, 1, 0.0)
        if short is None or first.seconds < short[0]:
            short = (first.seconds, _iterations(first.est, 1))
        del first
        fit = _timed_fit(case, X, init, max_iter, 0.0)
        extra = _iterations(fit.est, max_iter) - short[1]
        if extra < 1:
            raise CaseSkipped(
                f"no time per iteration: with tol=0 the fit stopped after {short[1] + extra} iteration(s), "
                "none beyond the first to time"
            )
        long = fit.seconds if long is None else min(long, fit.seconds)
        if long > short[0]:
            return (long - short[0]) / extra, fit, pairs
    raise CaseSkipped(
        f"no time per iteration: in {MAX_PAIRS} tries a {max_iter}-iteration fit was never slower than a "
        f"1-iteration fit ({1e3 * long:.3f} ms against {1e3 * short[0]:.3f} ms): the iterations take "
        "less time than the clock's noise here; use a larger N, D or K, or more iterations"
    )


def _measure(case, repeats, seed):
    X_np, labels = make_data(case, seed)
    X = _to_backend(case, X_np)
    init = initial_params(case, X_np, seed)
    stop = stopping(case)
    _timed_fit(case, X, init, 2, 0.0)  # warm-up (kernels, allocator, thread pools); freed at once
    times, peaks, befores, methods = [], [], [], set()
    remeasured = 0
    for _ in range(repeats):
        fit = None  # the previous repeat's estimator must not count in this repeat's peak
        if case.mode == "per_iter":
            seconds, fit, pairs = _per_iteration(case, X, init, stop.max_iter)
            times.append(seconds)
            remeasured += pairs - 1
        else:
            fit = _timed_fit(case, X, init, stop.max_iter, stop.tol)
            times.append(fit.seconds)
        peaks.append(fit.peak)
        befores.append(fit.before)
        methods.add(fit.memory_method)
    n_iter = getattr(fit.est, "n_iter_", None)
    return {
        "status": "ok",
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "repeats": repeats,
        **({"remeasured": remeasured} if case.mode == "per_iter" else {}),
        # None where the library does not say (the row's n_iter_note says so); never a guess.
        "n_iter": None if n_iter is None else int(n_iter),
        **({"n_iter_note": "not reported by the library"} if n_iter is None else {}),
        # None where nothing could measure it (peak_memory_method "unavailable": no /proc).
        "peak_memory_bytes": None if None in peaks else max(peaks),
        "memory_before_fit_bytes": None if None in befores else max(befores),
        "peak_memory_method": " and ".join(sorted(methods)),
        **_quality(case, fit.est, X, labels),
    }


def row_head(case: Case, environment=None) -> dict:
    """What every row of a case says before it is measured: the case, its work, start and stopping rule."""
    row = {**asdict(case), "label": case.label, **work_per_iteration(case), "environment": environment}
    row["init"] = INIT_NOTES.get(case.backend, "shared")  # the start every backend is given, or what differs
    stop = stopping(case)
    row.update(max_iter=stop.max_iter, tol=stop.tol, stopping_rule=stop.rule)
    return row


def run_case(case: Case, repeats: int = 3, seed: int = 0, environment=None) -> dict:
    """Measure one case; never raises for a backend that is missing or fails (the row says why).

    A missing backend (ImportError) or device is a "skipped" row; any other failure, CUDA out of
    memory included, is an "error" row with the exception's message and the end of its traceback.
    """
    row = row_head(case, environment)
    t0 = time.perf_counter()
    try:
        _check_runnable(case)
        row.update(_measure(case, repeats, seed))
    except CaseSkipped as exc:
        row.update(status="skipped", reason=str(exc))
    except ImportError as exc:
        row.update(status="skipped", reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        row.update(
            status="error",
            reason=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:],
        )
    finally:
        if case.device.startswith("cuda") and torch.cuda.is_available():
            _release(_fit_device(case), collect=True)  # what a failed case held must not burden the next one
    row["wall_seconds"] = time.perf_counter() - t0
    return row
