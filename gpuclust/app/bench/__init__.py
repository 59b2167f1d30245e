"""Benchmark harness: speed, memory and quality of KMeans and GaussianMixture across backends.

Each case is one (algorithm, covariance type, backend, device, data, N, D, K, dtype).
Timing follows the usual rules: a warm-up fit first, CUDA synchronized before every
clock read, several repeats, median and spread reported. Per-iteration time is
differential, ``(T(1 + iters) - T(1)) / iters`` with ``tol=0``, so set-up, init and
final passes cancel for every backend alike; a pair whose long fit is not slower than
its short one is timed again (the fastest of each kept), and a case whose iterations
stay below the clock's noise is a skipped row, never a time at or below zero. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the kernel's peak resident set size
(``VmHWM``, restarted per fit; sampled every 2 ms where it cannot be restarted) on
the CPU, both taken after the previous fit's estimator has been freed (and CUDA's
cache emptied), so one fit's figure never includes another's. scikit-learn runs on
the host's cores and its rows say device "cpu" in every grid. Every row records
quality (completeness, NMI, ARI; log-likelihood for GMM) and the environment
(versions, card, commit). Rows are appended to a JSON-lines file case by case and
flushed, so a killed run keeps what it measured; tables and plots are made from
the stored rows by :func:`summarize` (or :func:`summarize_file`).

The harness is a package of modules with one job each; everything here is public, and this
package re-exports what the command line (``gpuclust bench``) and ``benchmarks/*.py`` use:

- :mod:`.cases`: :class:`Case`, the named :data:`GRIDS`, :func:`toy_case`, and how each timed
  fit stops (:func:`stopping`, :data:`DEFAULT_STOPPING`);
- :mod:`.data`: :func:`make_data` (a case's data) and :func:`initial_params` (the start every
  backend is given);
- :mod:`.memory`: :class:`PeakRss` (a CPU fit's peak resident set size) and :func:`mib`;
- :mod:`.peers`: the adapters of the other libraries (:data:`PEERS`);
- :mod:`.measure`: :func:`run_case` (one case, timed, its memory and quality) and :func:`row_head`;
- :mod:`.tables` and :mod:`.plots`: :func:`results_table`, :func:`peer_table`, :func:`plot_results`,
  :func:`plot_peers`;
- :mod:`.runner`: :func:`run_grid`, :func:`run_named_grid`, :func:`summarize`,
  :func:`summarize_file` and the JSON-lines files (:func:`read_jsonl`, :func:`append_jsonl`);
- the ``scale`` grid (issue 26; ``benchmarks/gpu_scale.py``), imported by module: :mod:`.scale` (its
  cases, data made on the device, timing, float64 quality, wall budget: ``run_scale``), :mod:`.floors`
  (each case's floor and the per-card datasheet peaks), :mod:`.scale_peers` (flash-kmeans, fastkmeans,
  fast-pytorch-kmeans, torchgmm, scikit-learn's array-API GaussianMixture) and :mod:`.scale_tables`.
"""

from .cases import (
    CPU_ONLY_BACKENDS,
    DEFAULT_STOPPING,
    FAISS_NITER,
    GRIDS,
    MAX_ITER,
    PEER_GMM,
    PEER_KMEANS,
    Case,
    CaseSkipped,
    Stopping,
    stopping,
    toy_case,
)
from .data import initial_params, make_data
from .measure import MAX_PAIRS, row_head, run_case, work_per_iteration
from .memory import PeakRss, mib
from .peers import PEERS, PYCAVE_REASON
from .plots import plot_peers, plot_results
from .runner import (
    CONVERGED_LIMIT_SECONDS,
    append_jsonl,
    default_tag,
    read_jsonl,
    run_grid,
    run_named_grid,
    summarize,
    summarize_file,
    write_jsonl,
)
from .tables import library, peer_points, peer_table, results_table

__all__ = [
    "CONVERGED_LIMIT_SECONDS",
    "CPU_ONLY_BACKENDS",
    "DEFAULT_STOPPING",
    "FAISS_NITER",
    "GRIDS",
    "MAX_ITER",
    "MAX_PAIRS",
    "PEERS",
    "PEER_GMM",
    "PEER_KMEANS",
    "PYCAVE_REASON",
    "Case",
    "CaseSkipped",
    "PeakRss",
    "Stopping",
    "append_jsonl",
    "default_tag",
    "initial_params",
    "library",
    "make_data",
    "mib",
    "peer_points",
    "peer_table",
    "plot_peers",
    "plot_results",
    "read_jsonl",
    "results_table",
    "row_head",
    "run_case",
    "run_grid",
    "run_named_grid",
    "stopping",
    "summarize",
    "summarize_file",
    "toy_case",
    "work_per_iteration",
    "write_jsonl",
]
