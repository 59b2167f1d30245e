"""The GPU check's dry run: every step of benchmarks/gpu_check.sh at toy size on the CPU.

GPU time is rare and short; this makes sure the script itself works before it gets any.

Tests benchmarks/gpu_check.sh over gpuclust.app.bench (a cross-cutting suite).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuclust.app.bench import GRIDS, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "smoke", "tests", "bench", "summarize"]


PEER_MODULES = {"fast-pytorch-kmeans": "fast_pytorch_kmeans", "torchgmm": "torchgmm"}


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _fashion_mnist_available():
    from gpuclust.app.datasets import load_fashion_mnist

    try:
        load_fashion_mnist("train")
    except (FileNotFoundError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPUCLUST_COMMIT": "dryrun1"}
    env.pop("GPUCLUST_GPU_RUN", None)
    env.pop("GPUCLUST_GPU_CHECK_DRY_RUN", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    return proc, out


def test_dry_run_exits_0_and_every_step_ran(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == STEPS
    assert all(s["rc"] == 0 and not s["timed_out"] and s["dry_run"] for s in steps)
    assert "timeouts sum to" in proc.stdout
    total = int(proc.stdout.split("timeouts sum to ")[1].split("s")[0])
    assert total < 480  # the GPU check's 8 minutes, kill grace included
    log = (out / "check.log").read_text()
    assert all(f"===== {name}: rc=0" in log for name in STEPS)
    # The device tool brings back at most 8 files from $OUT, and no tree.
    names = {p.name for p in out.iterdir()}
    assert names == {"check.log", "steps.jsonl", "smoke.jsonl", "gpu-toy.jsonl", "gpu-toy.md"}


def test_smoke_lines_cover_every_check_and_none_failed(dry_run):
    _, out = dry_run
    rows = read_jsonl(out / "smoke.jsonl")
    by_name = {r["check"]: r for r in rows}
    assert len(by_name) == len(rows)
    bad = {n: (r["status"], r.get("reason")) for n, r in by_name.items() if r["status"] not in ("ok", "skipped")}
    assert not bad
    skipped = {n for n, r in by_name.items() if r["status"] == "skipped"}
    # Only what needs CuPy on a GPU may be skipped in the dry run; everything else runs on CPU stand-ins.
    assert skipped == {"cupy:kmeans", "cupy:gmm", "autoencoder:encode-to-cupy"}
    assert sum(n.startswith("kmeans:") for n in by_name) == 2 * 3 * 2
    assert sum(n.startswith("gmm:") for n in by_name) == 4 * 4 * 2
    assert "metric:adjusted_rand_score" in by_name and "em-full:one-iteration" in by_name
    assert by_name["torchrun:one-rank"]["backend"] == "gloo"
    assert sum(n.startswith("cholesky:") for n in by_name) == 3 * 2
    assert all("cholesky_batched_ms" in r for n, r in by_name.items() if n.startswith("cholesky:"))


def test_tests_step_selects_the_cuda_tests(dry_run):
    _, out = dry_run
    log = (out / "check.log").read_text()
    tests = log.split("===== tests (")[1].split("===== tests:")[0]
    assert "[cuda" in tests and "tests collected" in tests and "test_gpu_check.py::" not in tests


def test_bench_rows_are_the_toy_grid_in_order(dry_run):
    _, out = dry_run
    rows = read_jsonl(out / "gpu-toy.jsonl")
    assert [r["label"] for r in rows] == [c.label for c in GRIDS["gpu-toy"]]
    assert all(r["environment"]["git_commit"] == "dryrun1" for r in rows)
    for r in rows:
        if r["backend"] == "cuml":
            assert r["status"] == "skipped"
        elif r["backend"] in PEER_MODULES and r["status"] == "skipped":
            # Neither installed here nor brought as a wheel in .whl/ (benchmarks/fetch_peer_wheels.sh).
            assert not _installed(PEER_MODULES[r["backend"]]) and "gpuclust[peers]" in r["reason"]
        elif r["data"] == "synthetic" or _fashion_mnist_available():
            # At toy size one iteration is within the clock's noise: the runner's honest "never slower"
            # row (gpuclust.app.bench.measure) is an outcome of timing, not of the code under test.
            clock_noise = r["status"] == "skipped" and "was never slower than" in r.get("reason", "")
            assert r["status"] == "ok" or clock_noise, r.get("reason")
        assert r["device"] == ("cuda" if r["backend"] == "cuml" else "cpu")
    assert sum(r["status"] == "ok" for r in rows) >= len(rows) // 2  # clock noise spares most rows
    assert "vs scikit-learn" in (out / "gpu-toy.md").read_text()
    assert {"fast-pytorch-kmeans", "torchgmm"} <= {r["backend"] for r in rows}
    bench_log = (out / "check.log").read_text().split("===== bench (")[1]
    assert "peer wheels" in bench_log.split("===== bench:")[0]  # the wheels step said what it did


def test_a_failing_step_does_not_stop_the_next(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": "false"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--steps", "smoke,tests,summarize"], capture_output=True,
                          text=True, env=env, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "3 step(s) failed" in proc.stdout
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["smoke", "tests", "summarize"] and all(s["rc"] != 0 for s in steps)


def test_unknown_step_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--steps", "nope"], capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path)}, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "unknown step nope" in proc.stderr


# --- the scale step (issue 26): benchmarks/gpu_scale.py's dry run, every case at toy size on the CPU ---

FLOOR_FIELDS = {"x_bytes_per_pass", "gemm_flops_per_iter", "nk_bytes_avoided_per_iter", "floor_precision",
                "floor_s", "floor_hbm_s", "floor_gemm_s", "floor_unfused_s", "floor_note"}  # fmt: skip


@pytest.fixture(scope="module")
def scale_dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_scale_out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPUCLUST_COMMIT": "dryrun2"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--steps", "env,scale"], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    return proc, out


def test_scale_step_runs_every_task_and_says_why_any_is_skipped(scale_dry_run):
    from gpuclust.app.bench.scale import GPUCLUST, SCALE_CASES, tasks, toy

    proc, out = scale_dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "timeouts sum to 474s" in proc.stdout  # env + scale, kill grace included: under the 8 minutes
    assert {p.name for p in out.iterdir()} == {"check.log", "steps.jsonl", "scale-toy.jsonl", "scale-toy.md"}
    rows = read_jsonl(out / "scale-toy.jsonl")
    expected = tasks([toy(c) for c in SCALE_CASES], "cpu")
    assert [(r["name"], r["library"], r["mode"]) for r in rows] == [(t.case.name, t.library, t.mode) for t in expected]
    for r in rows:
        assert FLOOR_FIELDS <= set(r) and r["floor_s"] is None and "no floor" in r["floor_note"]  # a CPU: no card
        assert r["environment"]["git_commit"] == "dryrun2" and r["status"] in ("ok", "skipped"), r.get("reason")
        if r["status"] == "skipped":
            assert r["reason"] and "\n" not in r["reason"]
        if r["library"] == GPUCLUST and r["status"] == "skipped":
            assert r["reason"].startswith("no time per iteration")  # a toy fit below this busy CPU's clock noise
        if r["library"] in ("faiss-gpu", "cuml"):
            assert r["status"] == "skipped" and r["reason"].startswith("not measured")
        if r["library"].startswith("flash-kmeans") and r["status"] == "skipped":
            assert "CUDA only" in r["reason"] or "not installed" in r["reason"]


def test_scale_rows_carry_time_memory_and_quality(scale_dry_run):
    _, out = scale_dry_run
    rows = [r for r in read_jsonl(out / "scale-toy.jsonl") if r["status"] == "ok"]
    converged = [r for r in rows if r["library"] == "gpuclust" and r["mode"] == "converged"]
    assert len(converged) == 3  # each converged gpuclust fit is measured whatever the clock's noise
    assert any(r["library"] == "sklearn-array-api" for r in rows)  # scikit-learn >= 1.8 is a test dependency
    for r in rows:
        assert 0 < r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"] and r["device"] == "cpu"
        assert r["reference_rows"] >= 1 and "peak_memory_bytes" in r
        if r["algorithm"] == "kmeans":
            assert r["inertia_per_row_f64"] > 0
        elif r["library"] in ("gpuclust", "sklearn-array-api", "sklearn-array-api-cpu"):
            assert r["mean_log_likelihood_f64"] == pytest.approx(r["mean_log_likelihood_own"], rel=1e-4)
        if r["library"] == "gpuclust":  # float32 labels against the float64 nearest centre / likeliest component
            least = 1.0 if r["algorithm"] == "kmeans" else 0.99
            assert r["exact_label_agreement"] >= least
        elif "label_agreement" in r:
            assert 0 <= r["label_agreement"] <= 1 and -1 <= r["ari_vs_gpuclust"] <= 1


def test_scale_table_has_one_section_per_case_with_the_floor_column(scale_dry_run):
    from gpuclust.app.bench.scale import SCALE_CASES

    _, out = scale_dry_run
    text = (out / "scale-toy.md").read_text()
    for c in SCALE_CASES:
        assert f"### {c.name} (floor at " in text
    assert text.count("| library | mode | ms (median) | spread | floor ms | x of floor | peer / gpuclust |") == len(
        SCALE_CASES
    )
    assert "card not in the peaks table: no floor" in text and "not measured: faiss-gpu" in text
