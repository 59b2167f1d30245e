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


# --- the scale grid (issue 26): floors, peaks, order, float64 reference, budget, tables ---

from gpuclust.app.bench import floors, scale, scale_peers, scale_tables  # noqa: E402


def test_card_peaks_are_chosen_from_the_device_name():
    assert floors.card_peaks("NVIDIA H200").name == "NVIDIA H200 141GB"
    assert floors.card_peaks("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM 80GB"
    for unknown in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", "AMD EPYC", None):
        assert floors.card_peaks(unknown) is None
    h100 = floors.CARD_PEAKS["h100-sxm"]
    assert h100.hbm_bytes_per_s == 3.35e12 and floors.CARD_PEAKS["h200"].hbm_bytes_per_s == 4.8e12
    # Dense figures: the datasheet's tensor-core rows are with 2:4 sparsity, twice these.
    assert h100.flops_per_s == {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}


def test_kmeans_floor_by_hand():
    h100 = floors.CARD_PEAKS["h100-sxm"]
    f = floors.floor_fields("kmeans", None, 1_000_000, 128, 1024, "tf32", h100)
    assert f["x_bytes_per_pass"] == 512_000_000
    assert f["gemm_flops_per_iter"] == 262_144_000_000  # 2 N D K
    assert f["nk_bytes_avoided_per_iter"] == 8_192_000_000  # distances written and read back, float32
    assert f["floor_hbm_s"] == pytest.approx(152.84e-6, rel=1e-4)  # 512e6 / 3.35e12
    assert f["floor_gemm_s"] == pytest.approx(529.90e-6, rel=1e-4)  # 2.62144e11 / 494.7e12
    assert f["floor_s"] == f["floor_gemm_s"]
    assert f["floor_unfused_s"] == pytest.approx(152.84e-6 + 8.192e9 / 3.35e12, rel=1e-4)
    # The seed's size on an H200: bound by reading X (the issue's "about 0.04 ms").
    g = floors.floor_fields("kmeans", None, 60_000, 784, 10, "tf32", floors.CARD_PEAKS["h200"])
    assert g["floor_s"] == g["floor_hbm_s"] == pytest.approx(188_160_000 / 4.8e12)


def test_mixture_floors_by_hand():
    h200 = floors.CARD_PEAKS["h200"]
    n, d, k = 1_000_000, 128, 1024
    assert floors.gemm_flops("gmm", "diag", n, d, k) == 8 * n * d * k
    assert floors.gemm_flops("gmm", "spherical", n, d, k) == 4 * n * d * k
    full = floors.floor_fields("gmm", "full", n, d, k, "tf32", h200)
    assert full["gemm_flops_per_iter"] == 67_108_864_000_000  # 4 N K D^2
    assert full["floor_s"] == pytest.approx(0.135656, rel=1e-4)  # 6.7108864e13 / 494.7e12
    highest = floors.floor_fields("gmm", "full", n, d, k, "highest", h200)
    assert highest["floor_s"] == pytest.approx(1.003122, rel=1e-4)  # / 66.9e12 (FP32, no tensor cores)
    diag = floors.floor_fields("gmm", "diag", 10 * n, d, k, "highest", h200)
    assert diag["nk_bytes_avoided_per_iter"] == 4 * 4 * 10 * n * k
    assert diag["floor_hbm_s"] == pytest.approx(5.12e9 / 4.8e12)


def test_an_unknown_card_has_blank_floors_that_say_so():
    f = floors.floor_fields("kmeans", None, 1000, 8, 4, "tf32", None)
    assert f["floor_s"] is f["floor_gemm_s"] is f["floor_hbm_s"] is None
    assert "no floor" in f["floor_note"] and f["gemm_flops_per_iter"] == 2 * 1000 * 8 * 4


def test_scale_grid_is_the_issues_cases_cheapest_first():
    names = {c.name for c in scale.SCALE_CASES}
    assert {"kmeans 1Mx128 K=1024", "kmeans 8Mx128 K=1024", "kmeans 4Mx128 K=65536", "kmeans 60000x784 K=10",
            "gmm full 1Mx128 K=1024 tf32", "gmm full 1Mx128 K=1024 highest",
            "gmm diag 10Mx128 K=1024"} <= names  # fmt: skip
    order = scale.tasks(scale.SCALE_CASES)
    costs = [scale.estimated_seconds(t, "cuda") for t in order]
    assert costs == sorted(costs)
    for c in scale.SCALE_CASES:  # gpuclust's row of a case comes before its peers' (their labels compare to it)
        rows = [t.library for t in order if t.case == c and t.mode == "per_iter"]
        assert rows[0] == scale.GPUCLUST and set(rows[1:]) == set(c.peers)
    libraries = {p for c in scale.SCALE_CASES for p in c.peers}
    assert {"flash-kmeans", "fastkmeans", "fast-pytorch-kmeans", "torchgmm", "sklearn-array-api",
            "sklearn-array-api-cpu", "faiss-gpu", "cuml"} <= libraries  # fmt: skip


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_float64_log_likelihood_equals_scikit_learns(covariance_type):
    from sklearn.mixture import GaussianMixture as SkGMM

    X = np.random.default_rng(0).normal(size=(400, 3)) * [1.0, 2.0, 0.5]
    gm = SkGMM(3, covariance_type=covariance_type, random_state=0).fit(X)
    Xt = torch.as_tensor(X)
    ll = scale.log_likelihood64(Xt, gm.weights_, gm.means_, gm.covariances_, covariance_type)
    assert ll == pytest.approx(gm.score(X), rel=1e-10)
    logp = scale.weighted_log_probs64(Xt, gm.weights_, gm.means_, gm.covariances_, covariance_type)
    assert (logp.argmax(1).numpy() == gm.predict(X)).all()


def test_nearest_centre_in_float64_and_the_reference_size():
    X = torch.randn(300, 4, dtype=torch.float64)
    C = torch.randn(5000, 4)  # more centres than one chunk
    best, arg = scale._nearest64(X, C)
    d2 = ((X[:, None] - C[None].double()) ** 2).sum(-1)
    assert torch.equal(arg, d2.argmin(1)) and torch.allclose(best, d2.min(1).values)
    case = scale.SCALE_CASES[0]
    assert scale.reference_rows(scale.ScaleCase("x", "kmeans", 4_000_000, 128, 65536)) == 1024
    assert scale.reference_rows(scale.ScaleCase("x", "gmm", 1_000_000, 128, 1024, "full")) == 512
    assert scale.reference_rows(case) == min(case.n, 2**26 // case.k)


def test_device_blobs_are_seeded():
    case = scale.ScaleCase("x", "kmeans", 3000, 5, 4)
    a, b = scale.device_blobs(case, "cpu", 0, chunk=1000), scale.device_blobs(case, "cpu", 0, chunk=1000)
    assert a.shape == (3000, 5) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, scale.device_blobs(case, "cpu", 1))


def test_the_wall_budget_skips_what_is_left_saying_why():
    case = scale.toy(scale.SCALE_CASES[0])
    task = scale.Task(case, scale.GPUCLUST, "per_iter")
    assert "wall budget of 400 s is spent" in scale._budget_reason(task, [], 401.0, 400.0)
    assert scale._budget_reason(task, [], 1.0, 400.0, "cpu") is None
    big = scale.Task(scale.SCALE_CASES[0], "sklearn-array-api-cpu", "per_iter")
    big = scale.Task(next(c for c in scale.SCALE_CASES if "sklearn-array-api-cpu" in c.peers), big.library, "per_iter")
    assert "predicted" in scale._budget_reason(big, [], 390.0, 400.0)
    conv = scale.Task(case, scale.GPUCLUST, "converged")
    per = {"name": case.name, "library": scale.GPUCLUST, "mode": "per_iter", "status": "ok", "seconds_median": 1.0,
           "wall_seconds": 4.0}  # fmt: skip
    assert "predicted" in scale._budget_reason(conv, [per], 100.0, 400.0, "cpu")


def test_a_missing_peer_and_the_uninstallable_ones_are_skipped_rows(monkeypatch):
    case = scale.toy(scale.SCALE_CASES[0])
    data = scale.CaseData("cpu")
    monkeypatch.setitem(scale.PEER_IMPORTS, "fast-pytorch-kmeans", "no_such_module_here")
    row = scale.run_task(scale.Task(case, "fast-pytorch-kmeans", "per_iter"), data, 1)
    assert row["status"] == "skipped" and row["reason"].startswith("not installed") and "\n" not in row["reason"]
    row = scale.run_task(scale.Task(case, "faiss-gpu", "per_iter"), data, 1)
    assert row["status"] == "skipped" and "too big to carry" in row["reason"]
    assert "cannot be installed" in scale.run_task(scale.Task(case, "cuml", "per_iter"), data, 1)["reason"]


def test_scale_table_has_the_floor_and_every_peers_ratio():
    head = {"algorithm": "kmeans", "name": "kmeans 1Mx128 K=1024", "floor_precision": "tf32", "floor_s": 5e-4,
            "floor_unfused_s": 2.6e-3, "floor_card": "NVIDIA H200 141GB", "mode": "per_iter", "status": "ok",
            "seconds_min": 1e-3, "seconds_max": 1e-3, "n_iter": 11, "peak_memory_bytes": 2**30, "note": ""}  # fmt: skip
    rows = [
        {**head, "library": "gpuclust", "seconds_median": 1e-3, "inertia_per_row_f64": 100.0,
         "exact_label_agreement": 1.0, "environment": {"device_name": "NVIDIA H200"}},
        {**head, "library": "flash-kmeans", "seconds_median": 2e-3, "inertia_per_row_f64": 101.0,
         "label_agreement": 0.99, "ari_vs_gpuclust": 0.98},
        {**head, "library": "cuml", "status": "skipped", "reason": "not measured: cuML cannot be installed"},
    ]  # fmt: skip
    text = "\n".join(scale_tables.scale_table(rows))
    assert "### kmeans 1Mx128 K=1024 (floor at tf32: 0.500 ms/iter, unfused 2.600 ms; NVIDIA H200 141GB)" in text
    ours, flash, cuml = text.splitlines()[-3:]
    assert "| 1.000 | 1.000-1.000 | 0.500 | 2.0 |  |" in ours and "1.0000" in ours
    assert "| 2.000 |" in flash and "| 2.00x |" in flash and "+1.00e-02" in flash and "0.9900 (ARI 0.980)" in flash
    assert "skipped: not measured: cuML cannot be installed" in cuml


def test_labels_a_library_does_not_give_are_not_scored_as_exact():
    case = scale.ScaleCase("x", "kmeans", 500, 3, 4)
    X = scale.device_blobs(case, "cpu")
    C = scale.shared_start(X, case)
    without = scale.quality(case, X, scale_peers.Fitted(None, centers=C))
    assert "exact_label_agreement" not in without and without["inertia_per_row_f64"] > 0
    wrong = torch.zeros(500, dtype=torch.long)
    with_labels = scale.quality(case, X, scale_peers.Fitted(3, labels=wrong, centers=C), without["_labels"])
    assert with_labels["exact_label_agreement"] == with_labels["label_agreement"] < 1


def test_update_readme_puts_a_scale_file_into_the_results_section(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import update_readme
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = scale.run_scale([scale.toy(scale.SCALE_CASES[0])], tmp_path / "scale_nvidia_h200.jsonl", device="cpu",
                           repeats=1, say=lambda m: None)  # fmt: skip
    assert any(r["status"] == "ok" for r in rows)
    text = update_readme.render(tmp_path, ROOT)
    assert "### At the sizes GPU users bring" in text and "(`scale_nvidia_h200.jsonl`)" in text
    assert "#### kmeans 60000x784 K=10 (floor at tf32" in text


def test_run_grid_refuses_a_tag_that_is_a_path(tmp_path):
    from gpuclust.app.bench import run_grid

    (tmp_path / "out").mkdir()
    victim = tmp_path / "victim.jsonl"
    victim.write_text("the user's\n")
    with pytest.raises(ValueError, match="plain name"):
        run_grid([], tmp_path / "out", "../victim", repeats=1)
    assert victim.read_text() == "the user's\n" and not (tmp_path / "victim.md").exists()


def test_summarize_file_keeps_a_dotted_tags_whole_name(tmp_path):
    from gpuclust.app.bench.runner import run_grid, summarize_file

    run_grid([], tmp_path, "run", repeats=1)
    run_grid([], tmp_path, "run.v2", repeats=1)
    (tmp_path / "run.md").write_text("tag run's own table\n")
    before = (tmp_path / "run.md").read_text()
    assert summarize_file(tmp_path / "run.v2.jsonl", plots=False) == tmp_path / "run.v2.md"
    assert (tmp_path / "run.md").read_text() == before
