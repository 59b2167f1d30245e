"""Bit-for-bit comparison of KMeans and GaussianMixture fits across two versions of gpuclust (issue 25).

Runs a fixed list of cases, scaled down from the committed benchmark cases (``benchmarks/run_cpu.sh``:
``gpuclust bench --grid cpu`` and ``--grid cpu-memory``, whose data and starting points are the
harness's ``make_data`` and ``_initial_params``, in ``gpuclust/app/bench.py`` at 8ef2505) plus the
code paths around them (k-means++/random seeding, n_init, lloyd/elkan/hamerly/auto,
float32/float64, sample weights, sparse CSR, data far from the origin, tol=0, chunked and
out-of-core input, every covariance type and ``init_params``, warm starts, ``kmeans_plusplus``).
Every case has a fixed ``random_state`` and runs on ``device="cpu"`` with a fixed number of threads
(``--threads``, default 1). For each case the JSON output holds the sha256 of the bytes (with dtype
and shape) of every fitted attribute and of predict/transform/score outputs on the training data,
the reprs of scalars, the warnings raised, or the exception if the case failed. The data are made
here, self-contained (Fashion-MNIST read from its IDX files, numpy seeds), so the script needs
nothing from gpuclust but its public estimators; inputs are 64-byte aligned so that the BLAS's
rounding cannot depend on where the allocator put them.

Whichever gpuclust is first on ``sys.path`` is measured (``--root`` puts a checkout first); the JSON
records its path, commit and a hash of its sources.

    # the baseline (a worktree of the commit before the refactor) and the current tree
    BASE=benchmarks/results/refactor_baseline_8ef2505.json
    git worktree add /tmp/cmp_base 8ef2505
    PYTHONPATH=/tmp/cmp_base python benchmarks/compare_refactor.py --out $BASE   # or --root /tmp/cmp_base
    python benchmarks/compare_refactor.py --out /tmp/cmp_now.json
    python benchmarks/compare_refactor.py --compare $BASE /tmp/cmp_now.json

``--compare A.json B.json`` prints one row per case (identical / DIFFERENT with the fields that
differ / ERROR / MISSING) and exits 1 if any case is not identical. ``--arrays DIR`` also saves every
case's arrays (``DIR/<case>.npz``); when both runs saved them, ``--compare`` prints the largest
absolute difference of each differing array. ``--list`` lists the cases, ``--cases PATTERN`` (fnmatch,
comma-separated) runs some of them (compared with a full run, the others are then MISSING).
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

FASHION_MNIST = Path(os.environ.get("GPUCLUST_DATA", "/usr/share/datasets/fashion-mnist"))
N_PIXELS = 10000  # first rows of Fashion-MNIST train (the committed cases use 60000)
SEED = 0

# ------------------------------------------------------------------------------------------ data


def aligned(a, align=64):
    """A C-contiguous copy of ``a`` whose data start on an ``align``-byte boundary."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off : off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def read_idx(path):
    """An IDX file (gzip or not) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class Data:
    """The cases' inputs, made once: the same generators as the benchmark harness, smaller."""

    def __init__(self, tmpdir):
        self.tmp = Path(tmpdir)
        self._cache = {}

    def get(self, name):
        if name not in self._cache:
            self._cache[name] = getattr(self, "_" + name.replace("-", "_"))()
        return self._cache[name]

    def _pixels_u8(self):
        for fn in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
            if (FASHION_MNIST / fn).exists():
                return read_idx(FASHION_MNIST / fn)[:N_PIXELS]
        raise FileNotFoundError(f"no train-images-idx3-ubyte(.gz) in {FASHION_MNIST}")

    # bench.make_data "pixels": flatten_pixels, i.e. uint8 / 255 in float32.
    def _pixels(self):
        u8 = self.get("pixels_u8")
        return aligned((u8.reshape(len(u8), -1).astype(np.float32) / 255.0).astype(np.float32, copy=False))

    def _pixels64(self):
        return aligned(self.get("pixels").astype(np.float64))

    # bench.make_data "pca-50": scikit-learn's PCA(50, random_state=seed) of the pixels, as float32.
    def _pca50(self):
        from sklearn.decomposition import PCA

        return aligned(PCA(50, random_state=SEED).fit_transform(self.get("pixels")).astype(np.float32))

    def _pca50_64(self):
        return aligned(self.get("pca50").astype(np.float64))

    def _pca98(self):
        from sklearn.decomposition import PCA

        return aligned(PCA(98, random_state=SEED).fit_transform(self.get("pixels")).astype(np.float32))

    def _pca98_64(self):
        return aligned(self.get("pca98").astype(np.float64))

    # bench.make_data "synthetic" (the cpu-memory grid: D=32, K=256), smaller N.
    def _synthetic(self, n=20000, d=32, k=256, seed=SEED):
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=4.0, size=(k, d)).astype(np.float32)
        labels = rng.integers(0, k, size=n)
        return aligned(centers[labels] + rng.normal(size=(n, d)).astype(np.float32))

    # benchmarks/out_of_core_cpu.py's write_data: 64 blobs of scale 5, float32.
    def _blobs(self, n=20000, d=32, seed=SEED):
        rng = np.random.default_rng(seed)
        centres = rng.normal(scale=5.0, size=(64, d)).astype(np.float32)
        return aligned(centres[rng.integers(0, 64, n)] + rng.standard_normal((n, d), dtype=np.float32))

    def _blobs_npy(self):
        return self._npy("blobs")

    # Far from the origin: the blobs moved by 1e4 in float32 (issue 24's case).
    def _far(self):
        return aligned((self.get("blobs")[:8000].astype(np.float64) + 1e4).astype(np.float32))

    # Overlapping clusters far from the origin: the pca-50 rows moved by 1e4 in float32.
    def _farpca(self):
        return aligned((self.get("pca50").astype(np.float64) + 1e4).astype(np.float32))

    def _far_npy(self):
        return self._npy("far")

    def _farpca_npy(self):
        return self._npy("farpca")

    def _pixels_npy(self):
        return self._npy("pixels")

    def _npy(self, name):
        path = self.tmp / f"{name}.npy"
        np.save(path, self.get(name))
        return str(path)

    def _weights(self):
        return aligned(np.random.default_rng(7).uniform(0.1, 3.0, size=N_PIXELS))

    def _weights5000(self):  # the sparse cases' 5000 rows
        return aligned(self.get("weights")[:5000])

    def _blob_weights(self):
        return aligned(np.random.default_rng(8).uniform(0.1, 3.0, size=len(self.get("blobs"))))

    def _sparse(self):
        import scipy.sparse as sp

        m = sp.csr_matrix(self.get("pixels")[:5000])
        return sp.csr_matrix((aligned(m.data), aligned(m.indices), aligned(m.indptr)), shape=m.shape)

    def _sparse64(self):
        import scipy.sparse as sp

        m = self.get("sparse").astype(np.float64)
        return sp.csr_matrix((aligned(m.data), aligned(m.indices), aligned(m.indptr)), shape=m.shape)


def harness_init(X, k, algorithm, covariance_type=None, seed=SEED):
    """bench._initial_params: the shared starting point of the committed benchmark cases."""
    rng = np.random.default_rng(seed)
    means = aligned(X[rng.choice(len(X), k, replace=False)].astype(np.float64))
    if algorithm == "kmeans":
        return {"init": means}
    var = X.var(0).astype(np.float64) + 1e-3
    prec = {
        "full": lambda: np.repeat(np.diag(1 / var)[None], k, 0),
        "tied": lambda: np.diag(1 / var),
        "diag": lambda: np.repeat((1 / var)[None], k, 0),
        "spherical": lambda: np.full(k, 1 / var.mean()),
    }[covariance_type]()
    return {"weights_init": aligned(np.full(k, 1.0 / k)), "means_init": means, "precisions_init": aligned(prec)}


# -------------------------------------------------------------------------------------- recording


def digest(x):
    """``dtype[shape]:sha256`` of an array's bytes (torch tensors and sparse results made dense)."""
    if x is None:
        return "None"
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if hasattr(x, "toarray"):
        x = x.toarray()
    a = np.ascontiguousarray(np.asarray(x))
    return f"{a.dtype.str}{list(a.shape)}:{hashlib.sha256(a.tobytes()).hexdigest()}"


def scalar(x):
    if isinstance(x, (bool, np.bool_)):
        return repr(bool(x))
    if isinstance(x, (int, np.integer)):
        return repr(int(x))
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return f"{type(x).__name__}:{x.item()!r}"
    return f"{type(x).__name__}:{x!r}"


class Record:
    """The fields of one case: digests of arrays, reprs of scalars; the arrays kept for ``--arrays``."""

    def __init__(self):
        self.fields, self.arrays = {}, {}

    def array(self, name, x):
        self.fields[name] = digest(x)
        if x is not None:
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            if hasattr(x, "toarray"):
                x = x.toarray()
            self.arrays[name] = np.array(x)

    def value(self, name, x):
        self.fields[name] = scalar(x)


KMEANS_ATTRS = ("cluster_centers_", "labels_")
GMM_ARRAYS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


def record_kmeans(rec, km, X, sample_weight=None, prefix=""):
    for a in KMEANS_ATTRS:
        rec.array(prefix + a, getattr(km, a))
    rec.value(prefix + "inertia_", km.inertia_)
    rec.value(prefix + "n_iter_", km.n_iter_)
    if hasattr(km, "backend_"):
        rec.value(prefix + "backend_", km.backend_)
    rec.array(prefix + "predict", km.predict(X))
    rec.array(prefix + "transform", km.transform(X))
    rec.value(prefix + "score", km.score(X))
    if sample_weight is not None:
        rec.value(prefix + "score_weighted", km.score(X, sample_weight=sample_weight))


def record_gmm(rec, gm, X, prefix=""):
    for a in GMM_ARRAYS:
        rec.array(prefix + a, getattr(gm, a))
    rec.value(prefix + "lower_bound_", gm.lower_bound_)
    rec.array(prefix + "lower_bounds_", np.asarray(getattr(gm, "lower_bounds_", None), dtype=np.float64))
    rec.value(prefix + "n_iter_", gm.n_iter_)
    rec.value(prefix + "converged_", gm.converged_)
    rec.array(prefix + "predict", gm.predict(X))
    rec.array(prefix + "predict_proba", gm.predict_proba(X))
    rec.array(prefix + "score_samples", gm.score_samples(X))
    rec.value(prefix + "score", gm.score(X))


# ------------------------------------------------------------------------------------------ cases

CASES = {}


def case(name):
    def register(fn):
        if name in CASES:
            raise ValueError(f"duplicate case {name}")
        CASES[name] = fn
        return fn

    return register


def kmeans_case(name, data, k=10, weights=None, **params):
    """KMeans(k, device='cpu', **params).fit(X[, sample_weight]) and its outputs on X."""

    @case(name)
    def run(d, rec):
        from gpuclust import KMeans

        X = d.get(data)
        w = d.get(weights) if weights else None
        rec.array("input", X)
        km = KMeans(k, device="cpu", **params)
        km.fit(X, sample_weight=w)
        record_kmeans(rec, km, X, sample_weight=w)


def harness_kmeans_case(name, data, k, algorithm, iters):
    """bench's per-iteration KMeans case: the shared array init, tol=0, 1 + iters iterations."""

    @case(name)
    def run(d, rec):
        from gpuclust import KMeans

        X = d.get(data)
        rec.array("input", X)
        km = KMeans(k, max_iter=1 + iters, tol=0.0, device="cpu", algorithm=algorithm, **harness_init(X, k, "kmeans"))
        km.fit(X)
        record_kmeans(rec, km, X)


def harness_gmm_case(name, data, k, cov, max_iter, tol):
    """bench's GaussianMixture case: the shared weights/means/precisions, reg_covar=1e-4."""

    @case(name)
    def run(d, rec):
        from gpuclust import GaussianMixture

        X = d.get(data)
        rec.array("input", X)
        # bench computes the starting point from the float32 data, before the float64 conversion.
        init = harness_init(d.get(data[: -len("_64")]) if data.endswith("_64") else X, k, "gmm", cov)
        gm = GaussianMixture(k, covariance_type=cov, max_iter=max_iter, tol=tol, reg_covar=1e-4, device="cpu", **init)
        gm.fit(X)
        record_gmm(rec, gm, X)


def gmm_case(name, data, k=10, **params):
    @case(name)
    def run(d, rec):
        from gpuclust import GaussianMixture

        X = d.get(data)
        rec.array("input", X)
        gm = GaussianMixture(k, device="cpu", **params)
        gm.fit(X)
        record_gmm(rec, gm, X)


# The committed CPU grid, scaled: KMeans pixels K=10 float32 per iteration (lloyd, hamerly) ...
harness_kmeans_case("bench_kmeans_pixels_f32_lloyd_tol0", "pixels", 10, "lloyd", 20)
harness_kmeans_case("bench_kmeans_pixels_f32_hamerly_tol0", "pixels", 10, "hamerly", 20)
harness_kmeans_case("bench_kmeans_pixels_f32_auto_tol0", "pixels", 10, "auto", 20)
# ... GMM pca-50 K=10 float64 per iteration (tol=0, 1 + 5 iterations) and converged (tol=1e-3, <= 100) ...
for _cov in ("full", "tied", "diag", "spherical"):
    harness_gmm_case(f"bench_gmm_pca50_f64_{_cov}_tol0", "pca50_64", 10, _cov, 6, 0.0)
    harness_gmm_case(f"bench_gmm_pca50_f64_{_cov}_converged", "pca50_64", 10, _cov, 100, 1e-3)
for _cov in ("full", "tied", "diag", "spherical"):
    harness_gmm_case(f"bench_gmm_pca98_f64_{_cov}_tol0", "pca98_64", 10, _cov, 6, 0.0)
# ... and the cpu-memory case: GMM diag synthetic D=32 K=256 float32 (1 + 2 iterations, tol=0).
harness_gmm_case("bench_gmm_synthetic_f32_diag_k256_tol0", "synthetic", 256, "diag", 3, 0.0)

# KMeans seeding, restarts and algorithms on the pixels.
for _dt, _data in (("f32", "pixels"), ("f64", "pixels64")):
    for _init in ("k-means++", "random"):
        _i = "kpp" if _init == "k-means++" else "random"
        for _alg in ("lloyd", "elkan", "hamerly", "auto"):
            for _n_init in (1, 3):
                if _dt == "f64" and (_n_init == 3 or _alg == "elkan"):
                    continue  # float64: one restart, the three distinct algorithms
                kmeans_case(
                    f"kmeans_pixels_{_dt}_{_i}_{_alg}_ninit{_n_init}",
                    _data,
                    init=_init,
                    n_init=_n_init,
                    algorithm=_alg,
                    random_state=_n_init,
                )
kmeans_case("kmeans_pixels_f32_random_auto_ninitauto", "pixels", init="random", random_state=5)
kmeans_case("kmeans_pixels_f32_kpp_lloyd_tol0", "pixels", tol=0.0, max_iter=40, algorithm="lloyd", random_state=0)
kmeans_case("kmeans_pixels_f32_kpp_hamerly_tol0", "pixels", tol=0.0, max_iter=40, algorithm="hamerly", random_state=0)
kmeans_case("kmeans_pixels_f64_kpp_auto_tol0", "pixels64", tol=0.0, max_iter=40, random_state=0)
kmeans_case("kmeans_pixels_f32_kpp_lloyd_maxiter3", "pixels", max_iter=3, algorithm="lloyd", random_state=0)
# K*D < 2048: "auto" is lloyd.
kmeans_case("kmeans_pca50_f32_kpp_auto", "pca50", random_state=0)
kmeans_case("kmeans_pca50_f64_random_auto_ninit3", "pca50_64", init="random", n_init=3, random_state=0)
# Sample weights (also the probabilities of init="random"'s draws).
for _alg in ("lloyd", "hamerly"):
    kmeans_case(f"kmeans_pixels_f32_weighted_kpp_{_alg}", "pixels", weights="weights", algorithm=_alg, random_state=0)
    kmeans_case(
        f"kmeans_pixels_f32_weighted_random_{_alg}_ninit3",
        "pixels",
        weights="weights",
        init="random",
        n_init=3,
        algorithm=_alg,
        random_state=0,
    )
kmeans_case("kmeans_pixels_f64_weighted_kpp_auto", "pixels64", weights="weights", random_state=0)
# chunk_size: several tiles in memory.
for _alg in ("lloyd", "hamerly"):
    kmeans_case(f"kmeans_pixels_f32_chunk1000_kpp_{_alg}", "pixels", chunk_size=1000, algorithm=_alg, random_state=0)
    kmeans_case(
        f"kmeans_pixels_f64_chunk777_random_{_alg}", "pixels64", chunk_size=777, init="random", n_init=2,
        algorithm=_alg, random_state=0,
    )  # fmt: skip
kmeans_case("kmeans_pixels_f32_budget1MiB_kpp_auto", "pixels", memory_budget=1 << 20, random_state=0)
# Sparse CSR (scipy): plain Lloyd.
for _dt, _data in (("f32", "sparse"), ("f64", "sparse64")):
    kmeans_case(f"kmeans_sparse_{_dt}_kpp", _data, random_state=0)
    kmeans_case(f"kmeans_sparse_{_dt}_random_ninit3", _data, init="random", n_init=3, random_state=0)
kmeans_case("kmeans_sparse_f32_kpp_tol0", "sparse", tol=0.0, max_iter=25, random_state=0)
kmeans_case("kmeans_sparse_f32_weighted_kpp", "sparse", weights="weights5000", random_state=0)
kmeans_case("kmeans_sparse_f32_chunk600_kpp", "sparse", chunk_size=600, random_state=0)
# Far from the origin (offset 1e4, float32), default tol and tol=0.
for _alg in ("lloyd", "hamerly", "auto"):
    kmeans_case(f"kmeans_far_f32_kpp_{_alg}", "far", k=16, algorithm=_alg, random_state=0)
    kmeans_case(f"kmeans_far_f32_kpp_{_alg}_tol0", "far", k=16, algorithm=_alg, tol=0.0, max_iter=30, random_state=0)
for _alg in ("lloyd", "hamerly"):
    kmeans_case(f"kmeans_farpca_f32_kpp_{_alg}", "farpca", algorithm=_alg, random_state=0)
    kmeans_case(f"kmeans_farpca_f32_kpp_{_alg}_tol0", "farpca", algorithm=_alg, tol=0.0, max_iter=60, random_state=0)
kmeans_case(
    "kmeans_far_f32_random_lloyd_ninit3", "far", k=16, init="random", n_init=3, algorithm="lloyd", random_state=0
)
kmeans_case("kmeans_far_f32_chunk500_kpp_lloyd", "far", k=16, chunk_size=500, algorithm="lloyd", random_state=0)
# In-memory blobs: the out-of-core cases' counterparts.
kmeans_case("kmeans_blobs_f32_kpp_lloyd", "blobs", k=16, algorithm="lloyd", random_state=0)
kmeans_case("kmeans_blobs_f32_kpp_lloyd_chunk1024", "blobs", k=16, algorithm="lloyd", chunk_size=1024, random_state=0)


def _blocks(X, sizes=(3000, 5000, 1234, 4321, 2000)):
    """X as a list of row blocks of uneven sizes (cycling through ``sizes``), none empty."""
    out, start, i = [], 0, 0
    while start < len(X):
        out.append(aligned(X[start : start + sizes[i % len(sizes)]]))
        start += sizes[i % len(sizes)]
        i += 1
    return out


def _ooc_source(d, kind, data="blobs"):
    """An out-of-core view of the data: a .npy path, a memmap, a list of row blocks or a callable."""
    X = d.get(data)
    if kind == "npy":
        return d.get(data + "_npy")
    if kind == "memmap":
        return np.load(d.get(data + "_npy"), mmap_mode="r")
    blocks = _blocks(X)
    if kind == "blocks":
        return blocks
    if kind == "callable":
        return lambda: iter(blocks)
    raise ValueError(kind)


def ooc_kmeans_case(name, kind, data="blobs", k=16, weights=None, fit_predict_out=False, **params):
    """KMeans on out-of-core input (chunk_size small: ~20 tiles a pass), outputs on the same source."""

    @case(name)
    def run(d, rec):
        from gpuclust import KMeans

        src = _ooc_source(d, kind, data)
        rec.array("input", d.get(data))
        w = d.get(weights) if weights else None
        km = KMeans(k, device="cpu", chunk_size=1000, **params)
        if fit_predict_out:
            out = np.lib.format.open_memmap(d.tmp / f"{name}_labels.npy", mode="w+", dtype=np.int64,
                                            shape=(len(d.get(data)),))  # fmt: skip
            res = km.fit_predict(src, sample_weight=w, out=out)
            rec.value("fit_predict_returned_out", res is out)
            rec.array("fit_predict", np.asarray(res))
        else:
            km.fit(src, sample_weight=w)
        record_kmeans(rec, km, src, sample_weight=w)
        if fit_predict_out:
            out2 = np.lib.format.open_memmap(d.tmp / f"{name}_labels2.npy", mode="w+", dtype=np.int32,
                                             shape=(len(d.get(data)),))  # fmt: skip
            res = km.predict(src, out=out2)
            rec.value("predict_returned_out", res is out2)
            rec.array("predict_out", np.asarray(res))


for _kind in ("npy", "memmap", "blocks", "callable"):
    ooc_kmeans_case(f"ooc_kmeans_{_kind}_f32_kpp", _kind, random_state=0)
ooc_kmeans_case("ooc_kmeans_npy_f32_random_ninit3", "npy", init="random", n_init=3, random_state=0)
ooc_kmeans_case("ooc_kmeans_blocks_f32_random", "blocks", init="random", random_state=1)
ooc_kmeans_case("ooc_kmeans_memmap_f32_kpp_tol0", "memmap", tol=0.0, max_iter=20, random_state=0)
ooc_kmeans_case("ooc_kmeans_npy_f32_weighted_kpp", "npy", weights="blob_weights", random_state=0)
ooc_kmeans_case("ooc_kmeans_npy_f32_fit_predict_out", "npy", fit_predict_out=True, random_state=0)
ooc_kmeans_case("ooc_kmeans_memmap_f32_fit_predict_out", "memmap", fit_predict_out=True, random_state=2)
ooc_kmeans_case("ooc_kmeans_far_npy_f32_kpp", "npy", data="far", random_state=0)
ooc_kmeans_case("ooc_kmeans_far_npy_f32_kpp_tol0", "npy", data="far", tol=0.0, max_iter=30, random_state=0)
ooc_kmeans_case("ooc_kmeans_farpca_npy_f32_kpp", "npy", data="farpca", k=10, random_state=0)
ooc_kmeans_case("ooc_kmeans_farpca_npy_f32_kpp_tol0", "npy", data="farpca", k=10, tol=0.0, max_iter=60,
                random_state=0)  # fmt: skip
ooc_kmeans_case("ooc_kmeans_pixels_npy_f32_kpp", "npy", data="pixels", k=10, random_state=0)
ooc_kmeans_case("ooc_kmeans_pixels_memmap_f32_random_ninit2", "memmap", data="pixels", k=10, init="random",
                n_init=2, random_state=0)  # fmt: skip
ooc_kmeans_case("ooc_kmeans_far_blocks_f32_kpp_tol0", "blocks", data="far", tol=0.0, max_iter=30, random_state=0)


# GaussianMixture: every covariance type, dtype and init_params.
for _cov in ("full", "tied", "diag", "spherical"):
    for _dt, _data in (("f32", "pca50"), ("f64", "pca50_64")):
        gmm_case(f"gmm_pca50_{_dt}_{_cov}_kmeans", _data, covariance_type=_cov, max_iter=60, random_state=0)
    for _ip in ("k-means++", "random", "random_from_data"):
        _i = {"k-means++": "kpp"}.get(_ip, _ip)
        gmm_case(
            f"gmm_pca50_f64_{_cov}_{_i}", "pca50_64", covariance_type=_cov, init_params=_ip, max_iter=40,
            random_state=1,
        )  # fmt: skip
    gmm_case(f"gmm_pca50_f32_{_cov}_random_from_data", "pca50", covariance_type=_cov,
             init_params="random_from_data", max_iter=40, random_state=2)  # fmt: skip
    gmm_case(f"gmm_pca50_f64_{_cov}_chunk700", "pca50_64", covariance_type=_cov, chunk_size=700, max_iter=30,
             random_state=0)  # fmt: skip
gmm_case("gmm_pca50_f64_diag_ninit3_kpp", "pca50_64", covariance_type="diag", n_init=3, init_params="k-means++",
         max_iter=40, random_state=0)  # fmt: skip
gmm_case("gmm_pca50_f32_full_ninit2", "pca50", covariance_type="full", n_init=2, max_iter=30, random_state=0)
# diag/spherical keep [x, x*x] for the fit when it fits in memory_budget: also the path that does not.
for _cov in ("diag", "spherical"):
    for _dt, _data in (("f32", "pca50"), ("f64", "pca50_64")):
        gmm_case(f"gmm_pca50_{_dt}_{_cov}_budget256KiB", _data, covariance_type=_cov, memory_budget=1 << 18,
                 max_iter=40, random_state=0)  # fmt: skip
gmm_case("gmm_far_f32_diag_kmeans", "far", k=8, covariance_type="diag", max_iter=40, random_state=0)
gmm_case("gmm_far_f32_full_kpp", "far", k=8, covariance_type="full", init_params="k-means++", max_iter=40,
         random_state=0)  # fmt: skip


def warm_start_case(name, data, cov, **params):
    """fit (max_iter=5), then two warm-started fits of 5 more iterations each; every state recorded."""

    @case(name)
    def run(d, rec):
        from gpuclust import GaussianMixture

        X = d.get(data)
        rec.array("input", X)
        gm = GaussianMixture(10, covariance_type=cov, max_iter=5, warm_start=True, device="cpu", **params)
        for step in range(3):
            gm.fit(X)
            record_gmm(rec, gm, X, prefix=f"fit{step}.")


for _cov in ("full", "tied", "diag", "spherical"):
    warm_start_case(f"gmm_pca50_f64_{_cov}_warm_start", "pca50_64", _cov, random_state=0)
warm_start_case("gmm_pca50_f32_diag_warm_start_kpp", "pca50", "diag", init_params="k-means++", random_state=3)


def ooc_gmm_case(name, kind, cov, fit_predict_out=False, fits=1, data="blobs", k=8, max_iter=30, **params):
    """GaussianMixture on out-of-core input (chunk_size 1000), ``fits`` fits in a row (warm starts)."""

    @case(name)
    def run(d, rec):
        from gpuclust import GaussianMixture

        src = _ooc_source(d, kind, data)
        rec.array("input", d.get(data))
        gm = GaussianMixture(k, covariance_type=cov, device="cpu", chunk_size=1000, max_iter=max_iter, **params)
        if fit_predict_out:
            out = np.lib.format.open_memmap(d.tmp / f"{name}_labels.npy", mode="w+", dtype=np.int64,
                                            shape=(len(d.get(data)),))  # fmt: skip
            res = gm.fit_predict(src, out=out)
            rec.value("fit_predict_returned_out", res is out)
            rec.array("fit_predict", np.asarray(res))
            record_gmm(rec, gm, src)
            return
        for step in range(fits):
            gm.fit(src)
            record_gmm(rec, gm, src, prefix=f"fit{step}." if fits > 1 else "")


for _cov in ("full", "tied", "diag", "spherical"):
    ooc_gmm_case(f"ooc_gmm_npy_f32_{_cov}_kpp", "npy", _cov, init_params="k-means++", random_state=0)
ooc_gmm_case("ooc_gmm_npy_f32_diag_kmeans", "npy", "diag", random_state=0)
ooc_gmm_case("ooc_gmm_npy_f32_full_random", "npy", "full", init_params="random", random_state=0)
ooc_gmm_case("ooc_gmm_memmap_f32_diag_random_from_data", "memmap", "diag", init_params="random_from_data",
             random_state=0)  # fmt: skip
ooc_gmm_case("ooc_gmm_blocks_f32_spherical_kpp", "blocks", "spherical", init_params="k-means++", random_state=0)
ooc_gmm_case("ooc_gmm_npy_f32_diag_fit_predict_out", "npy", "diag", fit_predict_out=True,
             init_params="k-means++", random_state=0)  # fmt: skip
ooc_gmm_case("ooc_gmm_npy_f32_diag_warm_start", "npy", "diag", warm_start=True, fits=3, max_iter=4,
             init_params="k-means++", random_state=0)  # fmt: skip
for _cov in ("full", "diag"):
    ooc_gmm_case(f"ooc_gmm_farpca_npy_f32_{_cov}_kpp", "npy", _cov, data="farpca", k=10, init_params="k-means++",
                 random_state=0)  # fmt: skip
ooc_gmm_case("ooc_gmm_farpca_npy_f32_diag_kmeans", "npy", "diag", data="farpca", k=10, random_state=0)


def kmeans_plusplus_case(name, data, k=10, weights=None, **params):
    @case(name)
    def run(d, rec):
        from gpuclust import kmeans_plusplus

        X = d.get(data)
        rec.array("input", X)
        w = d.get(weights) if weights else None
        centers, indices = kmeans_plusplus(X, k, sample_weight=w, device="cpu", **params)
        rec.array("centers", centers)
        rec.array("indices", indices)


kmeans_plusplus_case("kmeans_plusplus_pixels_f32", "pixels", random_state=0)
kmeans_plusplus_case("kmeans_plusplus_pixels_f64", "pixels64", random_state=0)
kmeans_plusplus_case("kmeans_plusplus_pixels_f32_weighted", "pixels", weights="weights", random_state=1)
kmeans_plusplus_case("kmeans_plusplus_pixels_f32_trials5", "pixels", random_state=2, n_local_trials=5)
kmeans_plusplus_case("kmeans_plusplus_synthetic_f32_k256", "synthetic", k=256, random_state=0)
kmeans_plusplus_case("kmeans_plusplus_far_f32", "far", k=16, random_state=0)


# ---------------------------------------------------------------------------------------- running


def _git(root, *args):
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def gpuclust_identity():
    import gpuclust

    pkg = Path(gpuclust.__file__).resolve().parent
    root = pkg.parent
    sources = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        sources.update(str(p.relative_to(pkg)).encode() + b"\0" + p.read_bytes() + b"\0")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "gpuclust")
    return {
        "gpuclust_file": str(Path(gpuclust.__file__).resolve()),
        "gpuclust_version": getattr(gpuclust, "__version__", None),
        "commit": _git(root, "rev-parse", "HEAD"),
        "gpuclust_dirty": None if status is None else bool(status),
        "gpuclust_sources_sha256": sources.hexdigest(),
    }


def environment(threads):
    import scipy
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "n_pixels": N_PIXELS,
    }


def selected(patterns):
    if not patterns:
        return list(CASES)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in CASES if any(fnmatch.fnmatchcase(n, p) for p in pats)]


def run_cases(args):
    import torch

    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    names = selected(args.cases)
    ident = gpuclust_identity()
    print(f"gpuclust from {ident['gpuclust_file']} (commit {ident['commit']}, dirty={ident['gpuclust_dirty']}), "
          f"{len(names)} cases, {args.threads} threads", flush=True)  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="cmp_data_")
    arrays_dir = Path(args.arrays) if args.arrays else None
    if arrays_dir:
        arrays_dir.mkdir(parents=True, exist_ok=True)
    results, t_all = {}, time.perf_counter()
    try:
        data = Data(tmp)
        for name in names:
            rec = Record()
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    CASES[name](data, rec)
                    error = None
                except Exception as exc:  # every failure is a result to record
                    error = f"{type(exc).__name__}: {exc}"
                    tb = traceback.format_exc(limit=-3)
            seconds = time.perf_counter() - t0
            seen = []
            for w in caught:
                s = f"{w.category.__name__}: {w.message}"
                if s not in seen:
                    seen.append(s)
            entry = {"fields": rec.fields, "warnings": seen, "error": error, "seconds": round(seconds, 3)}
            if error:
                entry["traceback"] = tb
            results[name] = entry
            if arrays_dir and rec.arrays:
                np.savez(arrays_dir / f"{name}.npz", **rec.arrays)
            print(f"{seconds:7.2f} s  {name}" + (f"  ERROR {error}" if error else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_all
    out = {
        "meta": {
            **ident,
            **environment(args.threads),
            "argv": sys.argv,
            "arrays": str(arrays_dir.resolve()) if arrays_dir else None,
            "total_seconds": round(total, 2),
        },
        "cases": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    n_err = sum(1 for r in results.values() if r["error"])
    print(f"{len(results)} cases in {total:.1f} s, {n_err} errors; wrote {args.out}")
    return 0


# -------------------------------------------------------------------------------------- comparing


def _max_abs_diff(arrays_a, arrays_b, case_name, field):
    try:
        a = np.load(Path(arrays_a) / f"{case_name}.npz")[field]
        b = np.load(Path(arrays_b) / f"{case_name}.npz")[field]
    except (OSError, KeyError, TypeError):
        return None
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.size == 0:
        return "empty"
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        return f"{int(np.count_nonzero(a != b))} of {a.size} differ"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    scale = np.abs(a.astype(np.float64)).max()
    return f"max |diff| {diff.max():.3g} (rel {diff.max() / scale if scale else float('nan'):.3g})"


def compare(path_a, path_b):
    A, B = json.loads(Path(path_a).read_text()), json.loads(Path(path_b).read_text())
    ma, mb = A["meta"], B["meta"]
    for tag, path, m in (("A", path_a, ma), ("B", path_b, mb)):
        print(f"{tag}: {path}\n   gpuclust {m.get('gpuclust_file')} commit {m.get('commit')} "
              f"dirty={m.get('gpuclust_dirty')} sources {str(m.get('gpuclust_sources_sha256'))[:12]}")  # fmt: skip
    for key in ("threads", "numpy", "scipy", "sklearn", "torch", "python", "machine", "script_sha256", "n_pixels"):
        if ma.get(key) != mb.get(key):
            print(f"NOTE: {key} differs between the runs: {ma.get(key)!r} vs {mb.get(key)!r}")
    names = list(A["cases"]) + [n for n in B["cases"] if n not in A["cases"]]
    width = max(len(n) for n in names)
    bad = 0
    counts = {}
    print()
    print(f"{'case':<{width}}  result")
    for name in names:
        a, b = A["cases"].get(name), B["cases"].get(name)
        if a is None or b is None:
            status, detail = "MISSING", f"only in {'B' if a is None else 'A'}"
        elif a["error"] or b["error"]:
            status = "ERROR"
            detail = f"A: {a['error'] or 'ok'} | B: {b['error'] or 'ok'}"
        else:
            keys = list(a["fields"]) + [k for k in b["fields"] if k not in a["fields"]]
            diff = [k for k in keys if a["fields"].get(k) != b["fields"].get(k)]
            if a["warnings"] != b["warnings"]:
                diff.append("warnings")
            if not diff:
                status, detail = "identical", f"{len(keys)} fields"
            else:
                status = "DIFFERENT"
                parts = []
                for k in diff:
                    extra = None
                    if k != "warnings" and ma.get("arrays") and mb.get("arrays"):
                        extra = _max_abs_diff(ma["arrays"], mb["arrays"], name, k)
                    fa, fb = a["fields"].get(k), b["fields"].get(k)
                    if extra is None and fa is not None and fb is not None and ":" not in fa + fb:
                        extra = f"{fa} vs {fb}"  # scalars: show both values
                    parts.append(f"{k} ({extra})" if extra else k)
                detail = ", ".join(parts)
        counts[status] = counts.get(status, 0) + 1
        bad += status != "identical"
        print(f"{name:<{width}}  {status:<9}  {detail}")
    print()
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(names)} cases")
    return 1 if bad else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file to write (run mode)")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two runs; exit 1 if any differ"
    )
    parser.add_argument("--root", help="a gpuclust checkout to import (put first on sys.path)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1: about a minute on a shared 2-core machine, where 2 "
                             "threads per process can take ten times as long; compare runs made with the same "
                             "count, as reductions may round differently with another)")  # fmt: skip
    parser.add_argument("--cases", help="comma-separated fnmatch patterns of the cases to run")
    parser.add_argument("--arrays", help="also save every case's arrays as DIR/<case>.npz")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(selected(args.cases)))
        return 0
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("--out is required to run the cases (or use --compare / --list)")
    if args.root:
        sys.path.insert(0, str(Path(args.root).resolve()))
    return run_cases(args)


if __name__ == "__main__":
    sys.exit(main())
