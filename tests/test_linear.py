"""The assignment GEMM's CPU path (oneDNN where torch has it, addmm elsewhere) and equal row tiles.

Tests gpuclust._linear and gpuclust._chunks.
"""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs

from gpuclust import KMeans, _linear
from gpuclust._chunks import balanced_tile_rows, tile_rows_for, tile_slices


@pytest.fixture
def without_onednn(monkeypatch):
    """A machine whose torch has no usable oneDNN linear."""
    monkeypatch.setattr(_linear, "onednn_available", lambda: False)


@pytest.fixture
def fresh_probe():
    """The cached probe forgotten before the test and after it (the next caller probes again)."""
    _linear.onednn_available.cache_clear()
    yield
    _linear.onednn_available.cache_clear()


def _operands(m=1000, d=37, k=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(m, d, generator=g, dtype=dtype), torch.randn(k, d, generator=g, dtype=dtype),
            torch.randn(k, generator=g, dtype=dtype))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_is_addmm_to_rounding(dtype):
    X, W, b = _operands(dtype=dtype)
    got = _linear.linear(X, W, b)
    assert got.dtype == dtype and got.shape == (1000, 7)
    exact = torch.addmm(b.double(), X.double(), W.double().T)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * 10)


def test_linear_rows_do_not_depend_on_the_tile():
    # Predictions and out-of-core passes tile X in other ways than the fit. Tiles of a handful
    # of rows (up to 5 here) take a matrix-vector kernel whose rounding differs; larger ones agree.
    X, W, b = _operands(m=3001)
    whole = _linear.linear(X, W, b)
    for size in (16, 512, 1000, 2000):  # last tiles of 9, 441, 1 + 1000 = 1001 ... rows
        slices = list(tile_slices(3001, size)) if size != 1000 else [slice(0, 2000), slice(2000, 3001)]
        parts = torch.cat([_linear.linear(X[s], W, b) for s in slices])
        assert torch.equal(parts, whole), size


def test_linear_takes_strided_and_empty_inputs():
    X, W, b = _operands()
    torch.testing.assert_close(_linear.linear(X[::3], W, b), torch.addmm(b, X[::3], W.T), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_linear.linear(X.T.contiguous().T, W, b), torch.addmm(b, X, W.T), rtol=1e-5, atol=1e-5)
    assert _linear.linear(X[:0], W, b).shape == (0, 7)


def test_probe_says_no_where_onednn_is_missing(monkeypatch, fresh_probe):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not _linear.onednn_available()
    X, W, b = _operands()
    assert torch.equal(_linear.linear(X, W, b), torch.addmm(b, X, W.T))


def test_probe_says_no_when_the_operator_fails(monkeypatch, fresh_probe):
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("no such operator")

    _linear.onednn_available.cache_clear()
    monkeypatch.setattr(torch.ops, "mkldnn", Broken(), raising=False)
    assert not _linear.onednn_available()


@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_kmeans_gives_the_same_fit_without_onednn(algorithm, monkeypatch):
    X, _ = make_blobs(3000, 20, centers=6, cluster_std=3.0, random_state=0)
    X = X.astype(np.float32)
    init = X[:6].copy()
    fast = KMeans(6, init=init, algorithm=algorithm, device="cpu", tol=0).fit(X)
    monkeypatch.setattr(_linear, "onednn_available", lambda: False)
    plain = KMeans(6, init=init, algorithm=algorithm, device="cpu", tol=0).fit(X)
    ref = SkKMeans(6, init=init, n_init=1, tol=0).fit(X)
    np.testing.assert_array_equal(fast.labels_, plain.labels_)
    np.testing.assert_array_equal(fast.labels_, ref.labels_)
    np.testing.assert_allclose(fast.cluster_centers_, ref.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert fast.n_iter_ == plain.n_iter_ == ref.n_iter_


@pytest.mark.parametrize(
    ("n", "chunk", "expected"), [(60000, 20815, 20000), (10, 3, 3), (10, 4, 4), (7, 100, 7), (1, 1, 1)]
)
def test_balanced_tile_rows_makes_equal_tiles(n, chunk, expected):
    got = balanced_tile_rows(n, chunk)
    assert got == expected
    sizes = [s.stop - s.start for s in tile_slices(n, got)]
    assert max(sizes) <= chunk and len(sizes) == -(-n // chunk) and max(sizes) - min(sizes) <= len(sizes)


def test_an_explicit_chunk_size_is_kept():
    assert tile_rows_for(60000, 100, torch.device("cpu"), chunk_size=20815) == 20815


def test_cpu_floors_script_writes_its_tables(tmp_path):
    # benchmarks/cpu_floors.py at toy size: the floors, every product layout and both estimators' rows.
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "floors.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_floors.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    for needle in ("## Machine rates", "floors: bytes", "addmm (MKL), one call", "gpuclust lloyd", "gpuclust hamerly",
                   "scikit-learn elkan", "| diag | gpuclust |", "| spherical | scikit-learn |"):  # fmt: skip
        assert needle in text, needle
    assert ("oneDNN linear, one call" in text) == _linear.onednn_available()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("context", ["float64 default dtype", "bfloat16 autocast"])
def test_probe_does_not_depend_on_where_it_is_first_asked(context, fresh_probe):
    # The answer is cached for the process: a caller's default dtype or autocast region must not
    # switch the fast path off for everyone after it.
    expected = _linear._probe_onednn()
    if context == "float64 default dtype":
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            assert _linear.onednn_available() == expected
        finally:
            torch.set_default_dtype(previous)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _linear.onednn_available() == expected
