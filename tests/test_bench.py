"""gpuclust.app.bench: the benchmark harness (grids, cases, data, measurement, memory, tables, runner)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuclust import COVARIANCE_TYPES
from gpuclust.app import bench
from gpuclust.app.bench import (
    GRIDS,
    Case,
    data,
    default_tag,
    measure,
    memory,
    read_jsonl,
    run_case,
    run_grid,
    runner,
    summarize_file,
    work_per_iteration,
)

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_grid_writes_well_formed_results(tmp_path):
    rows = run_grid(GRIDS["cpu-small"], tmp_path, "tiny", repeats=2)
    assert [r["status"] for r in rows] == ["ok"] * len(GRIDS["cpu-small"])
    assert read_jsonl(tmp_path / "tiny.jsonl") == json.loads(json.dumps(rows))
    for r in rows:
        assert 0 < r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
        assert r["peak_memory_bytes"] > 0 and 0 <= r["completeness"] <= 1 and "nmi" in r and "ari" in r
        assert r["environment"]["torch"] and "cpu_count" in r["environment"]
        if r["algorithm"] == "gmm":
            assert "log_likelihood" in r
    table = (tmp_path / "tiny.md").read_text()
    assert "vs scikit-learn" in table and ("x faster" in table or "x slower" in table)
    assert (tmp_path / "tiny_pareto.png").is_file() and (tmp_path / "tiny_time_per_iter.png").is_file()


def test_same_start_gives_same_quality_as_sklearn():
    rows = [
        run_case(
            Case("gmm", b, "cpu", "synthetic", 1500, 4, 3, covariance_type="full", dtype="float64", iters=5), repeats=1
        )
        for b in ("torch", "sklearn")
    ]
    assert abs(rows[0]["log_likelihood"] - rows[1]["log_likelihood"]) < 1e-6 * abs(rows[1]["log_likelihood"])


def test_missing_backend_is_a_skipped_row_not_a_crash():
    row = run_case(Case("kmeans", "cuml", "cuda", "synthetic", 100, 2, 2), repeats=1)
    assert row["status"] == "skipped" and row["reason"]


def test_work_per_iteration_floors():
    case = Case("kmeans", "torch", "cpu", "pixels", 60000, 784, 10)
    assert work_per_iteration(case) == {"bytes_per_iter": 60000 * 784 * 4, "flops_per_iter": 2 * 60000 * 784 * 10}


def test_readme_results_section_is_generated_from_committed_results():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "update_readme.py"), "--check-only"])
    assert out.returncode == 0, "README.md is stale: run python benchmarks/update_readme.py"


def test_sklearn_cases_run_on_the_cpu_in_every_grid():
    for name, cases in GRIDS.items():
        for c in cases:
            if c.backend == "sklearn":
                assert c.device == "cpu", (name, c.label)
    with pytest.raises(ValueError, match="sklearn runs on the CPU"):
        Case("kmeans", "sklearn", "cuda", "synthetic", 100, 2, 2)


def test_gpu_grid_is_ordered_cheap_to_expensive_with_full_covariance_last():
    cases = GRIDS["gpu"]
    assert [c.covariance_type for c in cases[-2:]] == ["full", "full"]
    big_full = [i for i, c in enumerate(cases) if c.covariance_type == "full" and c.n * c.d * c.d * c.k > 1e10]
    assert big_full == [len(cases) - 2, len(cases) - 1]
    last = {(c.data, c.n, c.d, c.k) for c in cases[-2:]}
    assert last == {("ae-seed-3", 48000, 6272, 10), ("synthetic", 10**6, 128, 1024)}
    covs = {c.covariance_type for c in cases if c.data == "ae-seed-3" and c.backend == "torch"}
    assert covs == set(COVARIANCE_TYPES)
    assert any(c.algorithm == "kmeans" and (c.n, c.d) == (60000, 784) for c in cases)


def test_toy_grid_mirrors_the_gpu_grid_on_the_cpu():
    toy, gpu = GRIDS["gpu-toy"], GRIDS["gpu"]
    assert len(toy) == len(gpu)
    for t, g in zip(toy, gpu):
        assert (t.algorithm, t.backend, t.covariance_type, t.dtype, t.mode) == (
            g.algorithm,
            g.backend,
            g.covariance_type,
            g.dtype,
            g.mode,
        )
        assert t.device == ("cuda" if g.backend == "cuml" else "cpu") and t.n <= 240


def test_a_runtime_error_is_an_error_row_with_its_message(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(measure, "_timed_fit", boom)
    row = run_case(Case("gmm", "torch", "cpu", "synthetic", 100, 2, 2, covariance_type="diag"), repeats=1)
    assert row["status"] == "error" and "CUDA out of memory" in row["reason"] and "boom" in row["traceback"]


def test_missing_device_and_cuml_on_cpu_are_skipped():
    row = run_case(Case("kmeans", "cuml", "cpu", "synthetic", 100, 2, 2), repeats=1)
    assert row["status"] == "skipped" and "CUDA only" in row["reason"]
    if not torch.cuda.is_available():
        row = run_case(Case("kmeans", "torch", "cuda", "synthetic", 100, 2, 2), repeats=1)
        assert row["status"] == "skipped" and "no CUDA GPU" in row["reason"]


def test_peak_memory_does_not_include_the_previous_fit(monkeypatch):
    """Every timed fit starts with no earlier estimator alive: the ones made before are collected."""
    import weakref

    alive_at_fit = []
    made = []
    real = measure._make_estimator

    def tracking(*args, **kwargs):
        est = real(*args, **kwargs)
        alive_at_fit.append(sum(r() is not None for r in made))
        made.append(weakref.ref(est))
        return est

    monkeypatch.setattr(measure, "_make_estimator", tracking)
    row = run_case(Case("gmm", "torch", "cpu", "synthetic", 300, 3, 2, covariance_type="diag", iters=2), repeats=2)
    assert row["status"] == "ok" and len(alive_at_fit) == 1 + 2 * (2 + row["remeasured"])
    assert alive_at_fit == [0] * len(alive_at_fit)
    assert 0 < row["memory_before_fit_bytes"] <= row["peak_memory_bytes"]


def _high_water_mark_or_skip():
    with bench.PeakRss() as probe:
        pass
    if probe.method != "high-water mark":
        pytest.skip(f"the kernel's peak cannot be restarted here (method {probe.method!r})")


def test_peak_rss_sees_a_transient_allocation_and_not_an_earlier_one():
    """The peak is restarted per block: an earlier, larger peak is not counted; a freed array is."""
    _high_water_mark_or_skip()
    # Above glibc's largest mmap threshold (32 MiB), so each array is mapped afresh and unmapped on
    # release whatever the allocator did before: the transient is always new resident memory.
    big = np.ones(192 * 2**20 // 8)
    del big
    with bench.PeakRss() as rss:
        transient = np.ones(64 * 2**20 // 8)
        del transient
    assert rss.method == "high-water mark"
    assert 60 * 2**20 <= rss.peak - rss.start < 160 * 2**20


def test_a_cpu_row_says_how_its_peak_was_measured():
    _high_water_mark_or_skip()
    row = run_case(Case("kmeans", "torch", "cpu", "synthetic", 300, 3, 2, iters=2), repeats=1)
    assert row["peak_memory_method"] == "high-water mark"
    assert 0 < row["memory_before_fit_bytes"] <= row["peak_memory_bytes"]


def test_a_restart_that_is_ignored_is_not_trusted(monkeypatch):
    """A write to clear_refs that is accepted but does nothing leaves the old peak: fall back to sampling."""
    import builtins
    import io

    real_open = builtins.open
    big = np.ones(192 * 2**20 // 8)  # the lifetime peak is now at least this far above the current size
    del big

    def fake_open(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            return io.StringIO()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert not memory._reset_peak_rss()
    with bench.PeakRss() as rss:
        pass
    assert rss.method == "sampled"


def test_peak_rss_falls_back_to_sampling_where_the_peak_cannot_be_restarted(monkeypatch):
    monkeypatch.setattr(memory, "_reset_peak_rss", lambda: False)
    with bench.PeakRss() as rss:
        held = np.ones(64 * 2**20 // 8)
        time.sleep(0.1)  # the sampler wakes every 2 ms
        del held  # freed before the block ends: only the sampler can have seen it
    assert rss.method == "sampled" and rss.peak - rss.start >= 60 * 2**20
    row = run_case(Case("kmeans", "torch", "cpu", "synthetic", 300, 3, 2, iters=2), repeats=1)
    assert row["peak_memory_method"] == "sampled"


def test_without_proc_the_peak_is_not_measured_and_tables_say_so(monkeypatch):
    """No /proc (not Linux): no sampler thread, the row's peak is None, printed as n/a."""
    monkeypatch.setattr(bench.PeakRss, "_rss", lambda self: None)
    started = []
    monkeypatch.setattr(bench.PeakRss, "_run", lambda self: started.append(1))
    with bench.PeakRss() as rss:
        pass
    assert rss.method == "unavailable" and rss.peak is None and not started
    row = run_case(Case("kmeans", "torch", "cpu", "synthetic", 300, 3, 2, iters=2), repeats=1)
    assert row["status"] == "ok" and row["peak_memory_method"] == "unavailable"
    assert row["peak_memory_bytes"] is None and row["memory_before_fit_bytes"] is None
    assert bench.mib(row["peak_memory_bytes"]) == "n/a"


def test_rows_are_appended_case_by_case_and_a_cut_line_is_ignored(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    seen = []

    def say(msg):
        seen.append(len(read_jsonl(path)))

    cases = GRIDS["cpu-small"][:2]
    run_grid(cases, tmp_path, "t", repeats=1, say=say)
    assert seen[0] == 0 and len(read_jsonl(path)) == 2  # the second case began after the first row was stored
    assert seen[2] == 1
    with open(path, "a") as fh:
        fh.write('{"status": "ok", "cut sh')
    assert len(read_jsonl(path)) == 2
    md = summarize_file(path)
    assert md == tmp_path / "t.md" and "vs scikit-learn" in md.read_text()


def test_default_tag_names_the_card():
    assert default_tag("cpu", GRIDS["cpu"]) == "cpu"
    if torch.cuda.is_available():
        assert default_tag("gpu", GRIDS["gpu"]).startswith("gpu_nvidia")
    assert runner._slug("NVIDIA H200") == "nvidia_h200"


def test_rows_carry_the_commit_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUCLUST_COMMIT", "abc1234")
    rows = run_grid(GRIDS["cpu-small"][:1], tmp_path, "c", repeats=1)
    assert rows[0]["environment"]["git_commit"] == "abc1234"


def test_fashion_data_is_read_from_gpuclust_data(monkeypatch, tmp_path):
    """The GPU check stages the dataset in .data/ and points GPUCLUST_DATA at it; the bench must read it."""
    import numpy as np

    import gpuclust.app.datasets

    seen = []

    def fake_loader(split, data_dir=None, download=False):
        seen.append(data_dir)
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50)

    monkeypatch.setattr(gpuclust.app.datasets, "load_fashion_mnist", fake_loader)
    monkeypatch.setenv("GPUCLUST_DATA", str(tmp_path))
    data._DATA_CACHE.clear()
    X, y = bench.make_data(Case("kmeans", "torch", "cpu", "pixels", 40, 784, 3))
    data._DATA_CACHE.clear()
    assert seen == [str(tmp_path)] and X.shape == (40, 784) and len(y) == 40


def test_converged_fits_predicted_over_the_limit_are_skipped_saying_why(tmp_path):
    from dataclasses import replace

    per_iter = [c for c in GRIDS["cpu-small"] if c.algorithm == "kmeans" and c.backend == "torch"][0]
    converged = replace(per_iter, mode="converged", iters=300)
    other = replace(converged, backend="sklearn", kmeans_algorithm="lloyd")  # no per-iteration row of its own
    rows = run_grid([per_iter, converged, other], tmp_path, "limit", repeats=1, converged_limit=1e-9)
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok"]
    reason = rows[1]["reason"]
    assert reason.startswith("not run:") and "up to 300 iterations" in reason and "predicted" in reason
    assert rows[1]["tol"] is not None and rows[1]["label"] == converged.label
    # Without a limit (or under it) the same case runs.
    again = run_grid([per_iter, converged], tmp_path, "nolimit", repeats=1, converged_limit=None)
    assert [r["status"] for r in again] == ["ok", "ok"]


# --- the per-iteration time is never negative (issue 24) ------------------------------------------------

_TINY = Case("gmm", "torch", "cpu", "synthetic", 100, 2, 2, covariance_type="diag", iters=2)


def _scripted_clock(monkeypatch, short, long):
    """Real fits, but their times are the scripted ones: 1-iteration fits take ``short``, long ones ``long``."""
    real = measure._timed_fit
    script = {1: list(short), 1 + _TINY.iters: list(long)}

    def timed(case, X, init, max_iter, tol):
        fit = real(case, X, init, max_iter, tol)
        if max_iter in script:  # the warm-up (2 iterations) keeps its own time
            fit.seconds = script[max_iter].pop(0)
        return fit

    monkeypatch.setattr(measure, "_timed_fit", timed)
    return script


def test_a_long_fit_no_slower_than_a_short_one_is_never_a_negative_time(monkeypatch):
    # The clock's noise is larger than the iterations' work every time: no time can be given.
    _scripted_clock(monkeypatch, short=[0.005] * 20, long=[0.003] * 20)
    row = run_case(_TINY, repeats=1)
    assert row["status"] == "skipped" and "noise" in row["reason"], row
    assert "seconds_median" not in row


def test_a_noisy_pair_is_measured_again_and_the_fastest_fits_are_used(monkeypatch):
    # First pair: the 1-iteration fit was slowed down (5 ms) past the long one (3 ms); then 1 ms and 4 ms.
    script = _scripted_clock(monkeypatch, short=[0.005, 0.001], long=[0.003, 0.004])
    row = run_case(_TINY, repeats=1)
    assert row["status"] == "ok", row
    assert row["seconds_median"] == pytest.approx((0.003 - 0.001) / _TINY.iters)  # the fastest of each
    assert row["remeasured"] == 1 and script == {1: [], 3: []}


def test_every_time_is_positive_whatever_the_clock_says(monkeypatch):
    rng = np.random.default_rng(0)
    _scripted_clock(monkeypatch, short=list(rng.uniform(0, 0.01, 200)), long=list(rng.uniform(0, 0.01, 200)))
    for _ in range(5):
        row = run_case(_TINY, repeats=3)
        if row["status"] == "ok":
            assert 0 < row["seconds_min"] <= row["seconds_median"] <= row["seconds_max"]
        else:
            assert row["status"] == "skipped" and "noise" in row["reason"]


def test_a_fit_that_stops_after_one_iteration_has_no_time_per_iteration(monkeypatch):
    monkeypatch.setattr(measure, "_iterations", lambda est, asked: 1)  # tol=0, and yet it stopped at once
    row = run_case(_TINY, repeats=1)
    assert row["status"] == "skipped" and "stopped after 1 iteration" in row["reason"], row
