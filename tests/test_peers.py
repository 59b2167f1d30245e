"""What users would pick instead (issue 16): peer rows, their stopping rules, the ratio table, the plot, the README.

Tests gpuclust.app.bench.peers and the harness's peer tables, and the scale grid's adapters
(gpuclust.app.bench.scale_peers).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from gpuclust.app import bench
from gpuclust.app.bench import (
    DEFAULT_STOPPING,
    GRIDS,
    MAX_ITER,
    PEER_GMM,
    PEER_KMEANS,
    Case,
    peer_points,
    peer_table,
    read_jsonl,
    run_case,
    stopping,
    summarize,
    summarize_file,
    write_jsonl,
)
from gpuclust.app.bench import peers as adapters

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "faiss": "faiss",
    "faiss-all-rows": "faiss",
    "fast-pytorch-kmeans": "fast_pytorch_kmeans",
    "torchgmm": "torchgmm",
}


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def peer_rows():
    """Every peers-small case once (seconds): per iteration and converged, every library."""
    return [run_case(c, repeats=1) for c in GRIDS["peers-small"]]


def test_peers_run_or_are_skipped_with_the_reason(peer_rows):
    sk = {(r["algorithm"], r["mode"]): r for r in peer_rows if r["backend"] == "sklearn" and r["status"] == "ok"}
    for r in peer_rows:
        module = MODULES.get(r["backend"])
        if r["backend"] == "pycave":
            assert r["status"] == "skipped" and "torch<2.0" in r["reason"]
        elif r["backend"] == "torchgmm" and r["covariance_type"] == "tied":
            assert r["status"] == "skipped" and "no 'tied'" in r["reason"]
        elif module is None:
            assert r["status"] == "ok", r.get("reason")
        elif not _installed(module):
            assert r["status"] == "skipped" and "gpuclust[peers]" in r["reason"]
        else:
            assert r["status"] == "ok", r.get("reason")
            assert r["device"] == "cpu" and r["completeness"] > 0.5
            if r["algorithm"] == "kmeans":  # same centres, same data: the same partition as scikit-learn
                assert r["ari"] == pytest.approx(sk[("kmeans", r["mode"])]["ari"], abs=0.05)
    assert all("torchgmm's own" in r["init"] for r in peer_rows if r["backend"] == "torchgmm")


def test_converged_rows_stop_by_each_librarys_own_default_rule(peer_rows):
    converged = [r for r in peer_rows if r["mode"] == "converged" and r["status"] == "ok"]
    assert {r["backend"] for r in converged} >= {"torch", "sklearn"}
    for r in converged:
        tol, rule = DEFAULT_STOPPING[(r["algorithm"], r["backend"])]
        assert (r["tol"], r["stopping_rule"]) == (tol, rule)
        fixed = r["backend"].startswith("faiss")
        assert r["max_iter"] == (25 if fixed else MAX_ITER[r["algorithm"]])
        # A real count, and a converged one: every library stopped by its rule before its cap.
        assert isinstance(r["n_iter"], int) and 1 <= r["n_iter"] <= r["max_iter"]
        if not fixed:
            assert r["n_iter"] < r["max_iter"], r["label"]
    for algorithm, tol in (("kmeans", 1e-4), ("gmm", 1e-3)):
        mine = [r for r in converged if r["algorithm"] == algorithm and r["backend"] in ("torch", "sklearn")]
        assert {r["tol"] for r in mine} == {tol}
        # A drop-in: the same rule from the same start takes the same iterations as scikit-learn's lloyd.
        ours = {r["covariance_type"]: r["n_iter"] for r in mine if r["backend"] == "torch"}
        theirs = {r["covariance_type"]: r["n_iter"] for r in mine if r["backend"] == "sklearn"}
        assert ours and all(abs(ours[c] - theirs[c]) <= 1 for c in ours), (ours, theirs)
    for r in peer_rows:
        if r["mode"] == "per_iter":
            assert (r["tol"], r["max_iter"]) == (0.0, 1 + r["iters"])


def test_every_peers_case_runs_every_library_per_iteration_and_converged():
    for name in ("peers", "peers-small"):
        cases = GRIDS[name]
        libraries = {}
        for c in cases:
            key = (c.algorithm, c.data, c.n, c.d, c.k, c.covariance_type, c.mode)
            libraries.setdefault(key, set()).add((c.backend, c.kmeans_algorithm))
            if c.mode == "converged":
                assert c.iters == MAX_ITER[c.algorithm]
        for (algorithm, *case, mode), libs in libraries.items():
            peers = PEER_KMEANS if algorithm == "kmeans" else PEER_GMM
            assert {b for b, _ in libs} == set(peers) | {"torch", "sklearn"}, (name, case, mode)
            other = "converged" if mode == "per_iter" else "per_iter"
            assert libraries[(algorithm, *case, other)] == libs
            if algorithm == "kmeans":
                assert ("sklearn", "elkan") in libs
    shapes = {(c.algorithm, c.data, c.n, c.d, c.k, c.covariance_type) for c in GRIDS["peers"]}
    assert shapes == {
        ("kmeans", "pixels", 60000, 784, 10, None),
        ("kmeans", "pca-50", 60000, 50, 10, None),
        ("kmeans", "synthetic", 1_000_000, 32, 256, None),
        *{("gmm", "pca-50", 60000, 50, 10, cov) for cov in ("full", "tied", "diag", "spherical")},
        ("gmm", "synthetic", 1_000_000, 32, 256, "diag"),
    }


def test_stopping_rules():
    per_iter = Case("kmeans", "faiss", "cpu", "synthetic", 100, 2, 2, iters=7)
    assert (stopping(per_iter).max_iter, stopping(per_iter).tol) == (8, 0.0)
    faiss = Case("kmeans", "faiss", "cpu", "synthetic", 100, 2, 2, mode="converged", iters=300)
    assert (stopping(faiss).max_iter, stopping(faiss).tol) == (25, 0.0)
    fast = Case("kmeans", "fast-pytorch-kmeans", "cpu", "synthetic", 100, 2, 2, mode="converged", iters=300)
    assert (stopping(fast).max_iter, stopping(fast).tol) == (300, 1e-4) and "absolute" in stopping(fast).rule
    gmm = Case("gmm", "torchgmm", "cpu", "synthetic", 100, 2, 2, "diag", mode="converged", iters=100)
    assert (stopping(gmm).max_iter, stopping(gmm).tol) == (100, 1e-3)
    for c in GRIDS["peers"]:  # every library that runs has its default rule on record
        if c.mode == "converged" and c.backend != "pycave":
            assert stopping(c).tol is not None, c.label


def test_fast_pytorch_kmeans_iterations_are_read_from_its_report():
    printed = "used 17 iterations (0.0025s) to cluster 2000 items into 5 clusters\n"
    assert adapters._fast_kmeans_iterations(printed) == 17
    assert adapters._fast_kmeans_iterations("") is None
    pytest.importorskip("fast_pytorch_kmeans")
    import numpy as np
    import torch

    X_np, _ = bench.make_data(Case("kmeans", "fast-pytorch-kmeans", "cpu", "synthetic", 2000, 8, 5))
    X, init = torch.as_tensor(X_np), {"init": X_np[:5].astype(np.float64)}
    case = Case("kmeans", "fast-pytorch-kmeans", "cpu", "synthetic", 2000, 8, 5)
    assert adapters.FastPytorchKMeans(case, 3, init, 0.0).fit(X).n_iter_ == 3
    assert 3 < adapters.FastPytorchKMeans(case, 300, init, 1e-4).fit(X).n_iter_ < 300


def test_faiss_iterations_are_its_objectives():
    pytest.importorskip("faiss")
    X, _ = bench.make_data(Case("kmeans", "faiss", "cpu", "synthetic", 2000, 8, 5))
    est = adapters.FaissKMeans(Case("kmeans", "faiss", "cpu", "synthetic", 2000, 8, 5), 25, {"init": X[:5]}, 0.0)
    est.fit(X)
    assert est.n_iter_ == len(est._km.obj) and 1 <= est.n_iter_ <= 25


def test_torchgmm_fits_float64():
    pytest.importorskip("torchgmm")
    case = Case("gmm", "torchgmm", "cpu", "synthetic", 600, 4, 3, "diag", dtype="float64", mode="converged", iters=100)
    row = run_case(case, repeats=1)
    assert row["status"] == "ok", row.get("reason")
    assert row["n_iter"] < 100 and row["completeness"] > 0.5


@pytest.mark.parametrize("backend", ["faiss", "fast-pytorch-kmeans", "torchgmm"])
def test_a_missing_peer_is_a_skipped_row(monkeypatch, backend):
    monkeypatch.setitem(sys.modules, MODULES[backend], None)  # importing it now raises ImportError
    alg, cov = ("gmm", "diag") if backend == "torchgmm" else ("kmeans", None)
    for mode in ("per_iter", "converged"):
        row = run_case(Case(alg, backend, "cpu", "synthetic", 100, 2, 2, cov, mode=mode), repeats=1)
        assert row["status"] == "skipped" and f"{backend} is not installed" in row["reason"]
        assert "gpuclust[peers]" in row["reason"]


def test_pycave_is_a_skipped_row_that_says_why():
    for alg, cov in (("kmeans", None), ("gmm", "full")):
        row = run_case(Case(alg, "pycave", "cpu", "synthetic", 100, 2, 2, cov), repeats=1)
        assert row["status"] == "skipped" and "torch<2.0" in row["reason"] and "pytorch-lightning" in row["reason"]
    with pytest.raises(ValueError, match="faiss runs on the CPU"):
        Case("kmeans", "faiss", "cuda", "synthetic", 100, 2, 2)


def test_the_gpu_grid_has_cuda_rows_for_the_pure_python_peers():
    cuda = {(c.backend, c.algorithm, c.data, c.covariance_type) for c in GRIDS["gpu"] if c.device == "cuda"}
    assert ("fast-pytorch-kmeans", "kmeans", "pixels", None) in cuda
    assert ("torchgmm", "gmm", "pca-50", "diag") in cuda
    # Cheap cases only: the two peers come before every case at D=6272 or N=1e6.
    order = [c.backend for c in GRIDS["gpu"]]
    first_big = next(i for i, c in enumerate(GRIDS["gpu"]) if c.d > 1000 or c.n > 100_000)
    assert max(order.index("fast-pytorch-kmeans"), order.index("torchgmm")) < first_big
    # Peers the grid runs on CUDA are not moved to the GPU where they cannot go (faiss-cpu).
    assert all(c.device == "cpu" for c in GRIDS["peers"] if c.backend in bench.CPU_ONLY_BACKENDS)


# ------------------------------------------------------------------- tables, plot, README (rows made here)


def _row(backend, seconds, *, algorithm="kmeans", mode="converged", status="ok", kmeans_algorithm="auto",
         covariance_type=None, data="synthetic", n_iter=10, completeness=0.9):  # fmt: skip
    row = {
        "algorithm": algorithm,
        "backend": backend,
        "device": "cpu",
        "data": data,
        "n": 1000,
        "d": 8,
        "k": 4,
        "covariance_type": covariance_type,
        "dtype": "float32",
        "mode": mode,
        "iters": 300,
        "kmeans_algorithm": kmeans_algorithm,
        "label": f"{algorithm} {backend} {data}",
        "status": status,
        "environment": {"device_name": "Test CPU", "device": "cpu", "cpu_count": 2, "torch": "x", "sklearn": "y"},
    }
    if status != "ok":
        return {**row, "reason": f"{backend} is not installed (test)"}
    quality = {"log_likelihood": -1.5} if algorithm == "gmm" else {"inertia": 123.0}
    return {
        **row,
        **quality,
        "seconds_median": seconds,
        "seconds_min": seconds,
        "seconds_max": seconds,
        "n_iter": n_iter,
        "peak_memory_bytes": 2**20,
        "bytes_per_iter": 32000,
        "flops_per_iter": 64000,
        "completeness": completeness,
        "nmi": completeness,
        "ari": completeness,
        "tol": 1e-4,
        "max_iter": 300,
        "stopping_rule": "test",
    }


def _rows():
    return [
        _row("faiss", 4.0, n_iter=25),
        _row("fast-pytorch-kmeans", 1.0, n_iter=40),
        _row("pycave", None, status="skipped"),
        _row("torch", 2.0, n_iter=12, completeness=0.95),
        _row("sklearn", 3.0, kmeans_algorithm="elkan", n_iter=12, completeness=0.95),
        _row("torch", 0.002, mode="per_iter"),
        _row("faiss", 0.001, mode="per_iter"),
        _row("faiss", 9.0, data="pixels"),  # another case: never against the synthetic one
        _row("torch", 0.5, algorithm="gmm", covariance_type="diag", n_iter=7),
        _row("torchgmm", 1.5, algorithm="gmm", covariance_type="diag", n_iter=5, completeness=0.8),
    ]


def _line(table, *starts):
    found = [line for line in table if all(s in line for s in starts)]
    assert len(found) == 1, (starts, table)
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_peer_table_gives_ours_against_every_library_of_the_same_case():
    table = peer_table(_rows())
    header = _line(table, "KMeans case")
    assert header[2:] == ["gpuclust", "faiss/cpu", "fast-pytorch-kmeans/cpu", "pycave/cpu", "sklearn-elkan/cpu"]
    line = dict(zip(header, _line(table, "converged fit", "KMeans synthetic")))
    # Converged fits carry their completeness: a faster fit is only worth it at the same quality.
    assert line["gpuclust"] == "gpuclust/cpu: 2.00 s, 12 it., compl. 0.950"
    assert line["faiss/cpu"] == "4.00 s, 25 it., compl. 0.900: ours 2.00x faster"
    assert line["fast-pytorch-kmeans/cpu"] == "1.00 s, 40 it., compl. 0.900: ours 2.00x slower"
    assert line["pycave/cpu"] == "skipped"
    assert line["sklearn-elkan/cpu"] == "3.00 s, 12 it., compl. 0.950: ours 1.50x faster"
    per_iter = dict(zip(header, _line(table, "KMeans synthetic", "per iteration")))
    assert per_iter["gpuclust"] == "gpuclust/cpu: 2.00 ms" and per_iter["faiss/cpu"] == "1.00 ms: ours 2.00x slower"
    assert per_iter["fast-pytorch-kmeans/cpu"] == ""
    assert not any("pixels" in line for line in table)  # no gpuclust row for it: nothing to compare
    gmm_header = _line(table, "GaussianMixture case")
    gmm = dict(zip(gmm_header, _line(table, "GMM diag")))
    assert gmm_header[2:] == ["gpuclust", "torchgmm/cpu"]
    assert gmm["torchgmm/cpu"] == "1.50 s, 5 it., compl. 0.800: ours 3.00x faster"
    assert peer_table([_row("torch", 1.0), _row("torch", 1.0, algorithm="gmm", covariance_type="full")]) == []


def test_summarize_writes_the_peers_table_and_one_point_per_library(tmp_path):
    rows = _rows()
    summarize(rows, tmp_path / "t.md", tmp_path / "t")
    md = (tmp_path / "t.md").read_text()
    assert "### gpuclust against every other library in this run" in md
    assert "4.00 s, 25 it., compl. 0.900: ours 2.00x faster" in md
    main = _line(md.splitlines(), "| kmeans fast-pytorch-kmeans synthetic |")
    assert "40" in main and "123" in main and "tol=0.0001" in main  # iterations, inertia, its tolerance
    png = tmp_path / "t_peers.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = peer_points([r for r in rows if r["status"] == "ok"])
    assert sorted(lib for lib, *_ in points["KMeans synthetic 1000x8 K=4 float32"]) == [
        "faiss/cpu", "fast-pytorch-kmeans/cpu", "gpuclust/cpu", "sklearn-elkan/cpu"]  # fmt: skip
    assert ("torchgmm/cpu", 1.5, 0.8) in points["GMM diag synthetic 1000x8 K=4 float32"]
    assert "KMeans pixels 1000x8 K=4 float32" not in points  # one library alone: no comparison
    # Without another library in any converged case there is no peers plot.
    summarize([_row("torch", 1.0)], tmp_path / "u.md", tmp_path / "u")
    assert not (tmp_path / "u_peers.png").exists() and "every other library" not in (tmp_path / "u.md").read_text()


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "benchmarks" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_readme_shows_a_peers_result(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:start -->\n<!-- results:end -->\n\nafter\n")
    update = _update_readme()
    args = ["--results", str(results), "--readme", str(readme)]
    assert update.main(args) == 0
    assert "Against other libraries" not in readme.read_text()  # no peers result, no section
    write_jsonl(results / "peers.jsonl", _rows())
    summarize_file(results / "peers.jsonl")
    assert update.main([*args, "--check-only"]) == 1  # stale now
    assert update.main(args) == 0 and update.main([*args, "--check-only"]) == 0
    text = readme.read_text()
    assert "### Against other libraries, Test CPU (`peers.jsonl`)" in text
    assert "4.00 s, 25 it., compl. 0.900: ours 2.00x faster" in text
    assert "1.50 s, 5 it., compl. 0.800: ours 3.00x faster" in text
    assert "](benchmarks/results/peers_peers.png)" in text
    assert "- pycave skipped: pycave is not installed (test)" in text
    assert text.endswith("<!-- results:end -->\n\nafter\n")
    assert len(read_jsonl(results / "peers.jsonl")) == len(_rows())


def test_update_readme_skips_the_gpu_checks_logs_kept_beside_its_rows(tmp_path):
    # benchmarks/README.md keeps gpu_<card>_smoke.jsonl and _steps.jsonl next to gpu_<card>.jsonl.
    results = tmp_path / "results"
    results.mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    write_jsonl(results / "gpu_test_card.jsonl", _rows())
    write_jsonl(results / "gpu_test_card_smoke.jsonl", [{"check": "kmeans cuda", "status": "ok"}])
    write_jsonl(results / "gpu_test_card_steps.jsonl", [{"step": "env", "rc": 0}])
    assert _update_readme().main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "gpu_test_card.jsonl" in text and "_smoke" not in text and "_steps" not in text


# --- the scale grid's adapters (issue 26): one call, one result shape, reasons for what cannot run ---

from gpuclust.app.bench import scale, scale_peers  # noqa: E402

_SCALE_KM = scale.ScaleCase("toy", "kmeans", 600, 4, 3, iters=2)


def _scale_start(case):

    X = scale.device_blobs(case, "cpu")
    return X, {"centers": scale.shared_start(X, case), "host": lambda: X.numpy(), "cpu": lambda: X}


def test_every_scale_peer_is_registered_with_its_import_and_note():
    assert set(scale_peers.SCALE_PEERS) == set(scale_peers.PEER_IMPORTS)
    for algorithm, fit, where, note in scale_peers.SCALE_PEERS.values():
        assert algorithm in ("kmeans", "gmm") and callable(fit) and where in ("same", "cpu") and note
    assert set(scale_peers.NOT_MEASURED) == {"faiss-gpu", "cuml"}


def test_flash_kmeans_on_the_cpu_says_it_needs_cuda():
    pytest.importorskip("flash_kmeans")
    X, start = _scale_start(_SCALE_KM)
    with pytest.raises(bench.CaseSkipped, match="CUDA only"):
        scale_peers.SCALE_PEERS["flash-kmeans"][1](X, start, 3, 0.0, _SCALE_KM)


def test_fastkmeans_adapter_returns_its_centres():
    pytest.importorskip("fastkmeans")
    X, start = _scale_start(_SCALE_KM)
    fitted = scale_peers.fit_fastkmeans(X, start, 5, 0.0, _SCALE_KM)
    assert fitted.centers.shape == (3, 4) and fitted.n_iter is None and fitted.labels is None


def test_sklearn_array_api_needs_scipys_array_api_mode(monkeypatch):
    monkeypatch.delenv("SCIPY_ARRAY_API", raising=False)
    case = scale.ScaleCase("toy", "gmm", 600, 4, 3, "diag", iters=2)
    X, start = _scale_start(case)
    with pytest.raises(bench.CaseSkipped, match="SCIPY_ARRAY_API=1"):
        scale_peers.SCALE_PEERS["sklearn-array-api"][1](X, start, 3, 0.0, case)


def test_gpuclust_adapters_give_labels_centres_and_parameters():
    X, start = _scale_start(_SCALE_KM)
    km = scale_peers.fit_gpuclust_kmeans(X, start, 3, 0.0, _SCALE_KM)
    assert km.n_iter == 3 and km.labels.shape == (600,) and km.centers.shape == (3, 4)
    case = scale.ScaleCase("toy", "gmm", 600, 4, 3, "full", "tf32", iters=2)
    gm = scale_peers.fit_gpuclust_gmm(X, start, 3, 0.0, case)
    assert gm.covariances.shape == (3, 4, 4) and gm.predict(X).shape == (600,)
    assert scale.log_likelihood64(X.double(), gm.weights, gm.means, gm.covariances, "full") == pytest.approx(
        gm.score(X), rel=1e-4
    )
