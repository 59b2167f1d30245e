import json
import subprocess
import sys
from pathlib import Path

from gpuclust.app.bench import GRIDS, Case, read_jsonl, run_case, run_grid, work_per_iteration

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_grid_writes_well_formed_results(tmp_path):
    rows = run_grid(GRIDS["cpu-small"], tmp_path, "tiny", repeats=2)
    assert [r["status"] for r in rows] == ["ok"] * len(GRIDS["cpu-small"])
    assert read_jsonl(tmp_path / "tiny.jsonl") == json.loads(json.dumps(rows))
    for r in rows:
        assert r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
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
