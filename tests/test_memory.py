"""Memory of tiled passes: what a pass allocates must not grow with its number of tiles or passes.

Tests gpuclust._chunks and gpuclust.sources through both estimators (a cross-cutting suite).
"""

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import gpuclust._chunks as chunks
from gpuclust import GaussianMixture, KMeans

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc/self/status")

# Runs in a fresh process with two torch threads (the default on the 2-core machines the issue was
# measured on): streams a float32 .npy file through a KMeans fit and prints the anonymous resident
# memory (RssAnon) and the high-water mark of the resident memory (VmHWM), in MiB, after every pass.
_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(2)
    from gpuclust import KMeans
    from gpuclust.sources import with_progress

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) >> 10

    path, k, chunk, passes = sys.argv[1], *map(int, sys.argv[2:5])
    seen = []

    class Bar:
        def __init__(self, n_rows):
            pass

        def update(self, rows):
            pass

        def close(self):
            seen.append((status("RssAnon"), status("VmHWM")))

    init = np.load(path, mmap_mode="r")[:k].copy()
    KMeans(k, init=init, n_init=1, max_iter=passes, tol=0, device="cpu", chunk_size=chunk).fit(with_progress(path, Bar))
    print(json.dumps(seen))
    """
)


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    """655,360 x 32 float32 (80 MiB): 22 tiles of 30,000 rows, whose K=256 scores are 29 MiB each."""
    path = tmp_path_factory.mktemp("memory") / "X.npy"
    rng = np.random.default_rng(0)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(655_360, 32))
    for start in range(0, X.shape[0], 1 << 17):
        X[start : start + (1 << 17)] = rng.standard_normal((1 << 17, 32), dtype=np.float32)
    X.flush()
    del X
    return str(path)


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _malloc_in_use():
    """Bytes glibc's malloc has handed out and not had back (heap chunks and mmapped ones); None without glibc 2.33+."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["kmeans", "gmm"])
def test_nothing_a_pass_keeps_grows_with_its_tiles(tmp_path, kind):
    # A streamed Lloyd pass kept every tile's old labels and weights (two small tensors a tile) until
    # its end: between the freed (rows, k) score matrices of the next tiles, they kept glibc from
    # reusing that memory (issue 24). The bytes malloc has out at the end of each tile (the progress
    # bar's update) must not grow through a pass: before the fix they grew by ~3 MiB over the
    # 100 tiles of the first Lloyd pass here.
    if _malloc_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    from gpuclust.sources import with_progress

    X = np.random.default_rng(0).standard_normal((1_000_000, 2), dtype=np.float32)
    path = tmp_path / "X.npy"
    np.save(path, X)
    passes = []

    class Bar:
        def __init__(self, n_rows):
            passes.append([])

        def update(self, rows):
            passes[-1].append(_malloc_in_use())

        def close(self):
            pass

    source = with_progress(str(path), Bar)
    if kind == "kmeans":
        KMeans(64, init=X[:64], n_init=1, max_iter=4, tol=0, device="cpu", chunk_size=10_000).fit(source)
    else:
        GaussianMixture(
            16,
            covariance_type="diag",
            init_params="random_from_data",
            max_iter=4,
            tol=0,
            device="cpu",
            chunk_size=10_000,
            random_state=0,
        ).fit(source)
    tile_passes = [p for p in passes if len(p) == 100]
    assert len(tile_passes) >= 4
    # From the second tile on: on CUDA paths the progress of tile i is reported when tile i + 1 is
    # read, before tile i is used (when the pass's buffers are made).
    growth = [(p[-1] - p[1]) >> 10 for p in tile_passes]
    assert max(growth) < 512, f"KiB more in use at the end of each pass than after its second tile: {growth}"


@needs_proc
def test_streamed_kmeans_resident_memory_stays_flat_with_two_threads(wide_file):
    # Issue 24's symptom: with two threads, a streamed KMeans fit's freed (rows, k) scores, between
    # tensors kept per tile, left glibc's arenas growing through every pass (20M x 32, K=256:
    # +8.8 GiB). At this size, before the fix, RssAnon grew by ~440 MiB over six passes in some
    # runs (glibc's arenas depend on the threads' timing) and stayed flat in others; after it,
    # it stays where the second pass (the first full assignment) left it.
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, wide_file, "256", "30000", "6"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) >= 6, seen  # a validation pass, then one per assignment or E-step
    anon, peak = [a for a, _ in seen], [p for _, p in seen]
    assert max(anon[2:]) - anon[1] < 64, f"RssAnon (MiB) at the end of each pass: {anon}"
    assert peak[-1] - peak[1] < 64, f"VmHWM (MiB) at the end of each pass: {peak}"


@pytest.fixture
def count_buffers(monkeypatch):
    """Every :class:`TileBuffers` made from here on; ``total()`` sums the buffers they allocated."""
    made = []
    original = chunks.TileBuffers.__init__

    def spy(self):
        original(self)
        made.append(self)

    monkeypatch.setattr(chunks.TileBuffers, "__init__", spy)

    class Counter:
        @staticmethod
        def total():
            return sum(b.allocations for b in made)

        @staticmethod
        def reset():
            made.clear()

    return Counter


def _blobs(n=6000, d=5, dtype=np.float32):
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=5.0, size=(6, d))
    return (centres[rng.integers(0, 6, n)] + rng.standard_normal((n, d))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("streamed", [False, True])
def test_kmeans_buffers_are_allocated_once_per_fit(count_buffers, tmp_path, dtype, streamed):
    # The buffers a fit allocates do not depend on how many tiles or passes it makes.
    X = _blobs(dtype=dtype)
    path = tmp_path / "X.npy"
    np.save(path, X)
    counts = {}
    for chunk, max_iter in ((3000, 2), (3000, 8), (250, 2), (250, 8)):
        count_buffers.reset()
        est = KMeans(
            6, init=X[:6], n_init=1, max_iter=max_iter, tol=0, chunk_size=chunk, device="cpu", algorithm="lloyd"
        )
        est.fit(str(path) if streamed else X)
        counts[chunk, max_iter] = count_buffers.total()
    assert len(set(counts.values())) == 1, counts


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("streamed", [False, True])
def test_gmm_buffers_are_allocated_once_per_fit(count_buffers, tmp_path, covariance_type, streamed):
    X = _blobs()
    path = tmp_path / "X.npy"
    np.save(path, X)
    counts = {}
    for chunk, max_iter in ((3000, 2), (3000, 6), (250, 2), (250, 6)):
        count_buffers.reset()
        est = GaussianMixture(
            4,
            covariance_type=covariance_type,
            init_params="random_from_data",
            max_iter=max_iter,
            tol=0,
            chunk_size=chunk,
            device="cpu",
            random_state=0,
        )
        est.fit(str(path) if streamed else X)
        counts[chunk, max_iter] = count_buffers.total()
    assert len(set(counts.values())) == 1, counts


def test_row_blocks_never_leave_one_row_alone():
    # oneDNN gives a row other bits in a one-row product (a matrix-vector kernel).
    for n in range(1, 40):
        for bytes_per_row in (1, 3, 7, 100):
            blocks = list(chunks.row_blocks(n, bytes_per_row, block_bytes=20))
            assert [r for b in blocks for r in range(b.start, b.stop)] == list(range(n))
            assert n == 1 or all(b.stop - b.start >= 2 for b in blocks), (n, bytes_per_row, blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_into_buffers_have_the_bits_of_new_tensors(dtype):
    from gpuclust._kmeans_core import nearest_center, squared_norms
    from gpuclust._linear import linear

    g = torch.Generator().manual_seed(0)
    X = torch.randn(70_001, 9, generator=g, dtype=dtype) * 3 + 40
    C = torch.randn(300, 9, generator=g, dtype=dtype) * 3 + 40
    c_sq, x_sq = squared_norms(C), squared_norms(X)
    whole = linear(X, C * -2.0, c_sq)  # one product: the bits before the products ran in blocks
    expected = whole.min(dim=1)
    buffers = chunks.TileBuffers()
    labels, dist = nearest_center(X, C, c_sq, x_sq, distances=False, buffers=buffers)
    assert torch.equal(labels, expected.indices) and torch.equal(dist, expected.values)
    out = buffers.get("into", whole.shape, dtype, X.device)
    assert torch.equal(chunks.linear_into(X, C * -2.0, c_sq, out), whole)
