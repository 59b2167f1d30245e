"""Running a grid: rows appended to a JSON-lines file case by case, then its tables and plots."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ...device import resolve_device
from .._atomic import atomic_write_text
from ..environment import device_name, environment
from .cases import CPU_ONLY_BACKENDS, GRIDS, stopping
from .measure import row_head, run_case
from .memory import mib
from .plots import plot_peers, plot_results
from .tables import peer_points, results_table


def read_jsonl(path) -> list:
    """The rows of a JSON-lines file; a last line cut short (a killed writer) is left out."""
    p = Path(path)
    if not p.exists():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return rows


def write_jsonl(path, rows):
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path, row) -> None:
    """Append one row and push it to disk at once (flush and fsync): a killed run keeps it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# A converged fit predicted (per-iteration time x max_iter, warm-up and repeats included) to take
# longer than this is not run: scikit-learn's GMM on 1,000,000 x 32, K=256 takes 19 s per
# iteration on 2 cores, up to 100 iterations, 4 times over.
CONVERGED_LIMIT_SECONDS = 1800.0


def _same_case_per_iteration(case, rows):
    """This case's per-iteration seconds from ``rows`` (same library, data and sizes), or None."""
    key = asdict(replace(case, mode="per_iter", iters=0))
    for r in rows:
        if r.get("status") == "ok" and r.get("mode") == "per_iter":
            if all(r.get(f) == v for f, v in key.items() if f != "iters"):
                return r["seconds_median"]
    return None


def _too_long(case, rows, repeats, limit):
    """The reason a converged case is not run, or None: its predicted time is over ``limit`` seconds."""
    if case.mode != "converged" or limit is None:
        return None
    per_iter = _same_case_per_iteration(case, rows)
    if per_iter is None:
        return None
    predicted = per_iter * (stopping(case).max_iter * repeats + 2)  # faiss: its own iteration count
    if predicted <= limit:
        return None
    return (
        f"not run: {per_iter:.1f} s per iteration (this grid's per-iteration row) x up to "
        f"{stopping(case).max_iter} iterations "
        f"x {repeats} repeats = {predicted / 60:.0f} min predicted, over the limit of {limit / 60:.0f} min"
    )


def run_grid(cases, out_dir, tag, repeats=3, seed=0, say=lambda m: None, fresh=True,
             converged_limit=CONVERGED_LIMIT_SECONDS):  # fmt: skip
    """Run every case, appending its row to ``<out>/<tag>.jsonl`` as it is measured; then summarize.

    ``fresh=False`` keeps the rows already in the file (another run's, e.g. one cut short) and adds
    this run's after them; the summary is made from all the file's rows. A converged case whose
    per-iteration row predicts more than ``converged_limit`` seconds (None: no limit) is a
    skipped row saying so.
    """
    check_tag(tag)  # a public entry point too: "../x" must not reach the unlink below
    env = environment(resolve_device("auto"))
    path = Path(out_dir) / f"{tag}.jsonl"
    if fresh:
        path.unlink(missing_ok=True)
    rows = []
    for i, case in enumerate(cases, 1):
        say(f"[{i}/{len(cases)}] {case.label}")
        reason = _too_long(case, read_jsonl(path), repeats, converged_limit)
        if reason is not None:
            row = {**row_head(case, env), "status": "skipped", "reason": reason}
        else:
            row = run_case(case, repeats=repeats, seed=seed, environment=env)
        append_jsonl(path, row)
        rows.append(row)
        if row["status"] == "ok":
            say(
                f"    {1e3 * row['seconds_median']:.2f} ms{'/iter' if case.mode == 'per_iter' else ''}, "
                f"peak {mib(row['peak_memory_bytes'])}, completeness {row['completeness']:.3f}"
            )
        else:
            say(f"    {row['status']}: {row['reason']}")
    summarize(read_jsonl(path) if not fresh else rows, Path(out_dir) / f"{tag}.md", Path(out_dir) / tag)
    return rows


def summarize_file(jsonl_path, plots=True) -> Path:
    """Table and plots next to a stored JSON-lines file (``x.jsonl`` -> ``x.md``, ``x_*.png``)."""
    path = Path(jsonl_path)
    stem = path.with_suffix("")
    # Not stem.with_suffix(".md"): a dotted tag ("run.v2") would lose ".v2" and overwrite run.md.
    table = stem.with_name(stem.name + ".md")
    summarize(read_jsonl(path), table, stem if plots else None)
    return table


def summarize(rows, markdown_path, plot_prefix):
    """Markdown tables and plots from rows of the same run (no plots when ``plot_prefix`` is None).

    The first table has every row with its ratio to scikit-learn; the second (:func:`peer_table`)
    gpuclust against every other library (both: :func:`results_table`); ``<prefix>_time_per_iter.png``
    and ``<prefix>_pareto.png`` are :func:`plot_results`, ``<prefix>_peers.png`` is :func:`plot_peers`.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    atomic_write_text(markdown_path, "\n".join(results_table(rows)) + "\n")
    if ok and plot_prefix is not None:
        plot_results(ok, plot_prefix)
        if peer_points(ok):
            plot_peers(ok, f"{plot_prefix}_peers.png")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def default_tag(grid, cases) -> str:
    """The results file's name: the grid's, with the card's on a GPU ("gpu" -> "gpu_nvidia_h200")."""
    if any(c.device.startswith("cuda") and c.backend != "cuml" for c in cases) and torch.cuda.is_available():
        return f"{grid}_{_slug(device_name(torch.device('cuda')))}"
    return grid


# A tag names files inside the output folder: a plain name, never a path (``../x`` would write, and
# first delete, a ``x.jsonl`` outside the folder the user named).
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_tag(tag: str) -> str:
    """``tag`` if it is a plain file-name stem (letters, digits, ``.``, ``_``, ``-``), else ValueError."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag) or len(tag) > 100:
        raise ValueError(
            f"tag {tag!r} must be a plain name of at most 100 letters, digits, '.', '_' or '-' (not a path), "
            "starting with a letter or digit"
        )
    return tag


def run_named_grid(grid, out_dir, *, tag=None, repeats=3, seed=0, device="auto", say=lambda m: None, fresh=True):
    """Run the grid ``GRIDS[grid]`` (on ``device`` where not "auto"); return its rows and the JSONL path.

    scikit-learn and faiss cases stay on the CPU and cuML cases on CUDA whatever ``device`` says. The
    default ``tag`` is the grid's name, with the card's appended when the grid runs on a GPU.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid {grid!r} is not one of {sorted(GRIDS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    if tag is not None:
        check_tag(tag)
    cases = GRIDS[grid]
    if device != "auto":
        cases = [replace(c, device=device) if c.backend not in CPU_ONLY_BACKENDS + ("cuml",) else c for c in cases]
    tag = tag or default_tag(grid, cases)
    rows = run_grid(cases, out_dir, tag, repeats=repeats, seed=seed, say=say, fresh=fresh)
    return rows, Path(out_dir) / f"{tag}.jsonl"
