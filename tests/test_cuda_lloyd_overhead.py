"""benchmarks/cuda_lloyd_overhead.py's dry run: the GPU script works before it gets a GPU.

Tests benchmarks/cuda_lloyd_overhead.py over gpuclust._kmeans_core (a cross-cutting suite).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_lloyd_overhead.py"


def test_dry_run_writes_one_row_per_library(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--label", "ci"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    libraries = ["gpuclust"] + (["fast-pytorch-kmeans"] if importlib.util.find_spec("fast_pytorch_kmeans") else [])
    assert [r["library"] for r in rows] == libraries
    for r in rows:
        assert r["label"] == "ci" and r["n_iter"] == 4 and r["ms_per_iter_median"] > 0 and r["inertia"] > 0
        assert r["cuda_syncs_per_iter"] is None and r["ops_per_iter"] > 0
    # The dry run counts gpuclust's CPU branches (nothing forces the CUDA ones): some reads of the
    # host per iteration, at least the stopping test's; the CUDA loop's own count is the GPU run's.
    assert rows[0]["host_reads_per_iter"] >= 1.0
    assert rows[0]["device"] == "cpu (dry run)"
    if len(rows) == 2:  # the same data and start: the same clustering, to float32 rounding
        assert abs(rows[0]["inertia"] - rows[1]["inertia"]) <= 1e-5 * rows[0]["inertia"]
