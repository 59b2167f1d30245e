"""Out-of-core input (memmap, .npy path, row blocks, callable): same tiles, same sums, same results as in memory.

Tests gpuclust.sources through both estimators and the CLI (a cross-cutting suite).
"""

import mmap
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _strategies import OneHotKMeans
from conftest import COVARIANCE_TYPES

import gpuclust.sources as sources
from gpuclust import GaussianMixture, KMeans


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(5, 6))
    X = (centres[rng.integers(0, 5, 3000)] + rng.standard_normal((3000, 6))).astype(np.float32)
    return X


@pytest.fixture
def npy(tmp_path, data):
    path = tmp_path / "X.npy"
    np.save(path, data)
    return str(path)


def as_blocks(X, sizes=(1000, 1, 777)):
    cuts = np.cumsum(sizes)
    return np.split(X, cuts)


def every_form(X, path):
    """The out-of-core forms of X: a memmap, a path, a list of blocks, a callable."""
    return {
        "memmap": np.load(path, mmap_mode="r"),
        "path": path,
        "blocks": as_blocks(X),
        "callable": lambda: iter(as_blocks(X, (500, 2500))),
    }


KM = dict(n_clusters=5, random_state=0, device="cpu", chunk_size=700, tol=0, max_iter=30)


def assert_same_centres(got, expected, err_msg=""):
    """Bit for bit: the CPU's accumulation is the same in memory and streamed."""
    np.testing.assert_array_equal(got, expected, err_msg=err_msg)


@pytest.mark.parametrize("algorithm", ["lloyd", "auto"])
def test_kmeans_out_of_core_equals_in_memory(data, npy, algorithm):
    ref = KMeans(algorithm=algorithm, **KM).fit(data)
    for form, X in every_form(data, npy).items():
        est = KMeans(algorithm=algorithm, **KM).fit(X)
        assert_same_centres(est.cluster_centers_, ref.cluster_centers_, err_msg=form)
        np.testing.assert_array_equal(est.labels_, ref.labels_, err_msg=form)
        assert isinstance(est.labels_, np.ndarray) and est.n_iter_ == ref.n_iter_
        assert est.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)
    mm = np.load(npy, mmap_mode="r")
    np.testing.assert_array_equal(ref.predict(mm), ref.predict(data))
    np.testing.assert_array_equal(ref.transform(npy), ref.transform(data))
    assert ref.score(mm) == pytest.approx(ref.score(data), rel=1e-12)


def test_kmeans_out_of_core_weights_float64_and_empty_clusters(data, tmp_path):
    X = data.astype(np.float64)
    X[:40] = X[0]  # duplicates: with random init some clusters empty out and are re-seeded
    path = tmp_path / "X64.npy"
    np.save(path, X)
    w = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0])
    kw = dict(KM, n_clusters=12, init="random", n_init=2, algorithm="lloyd")
    ref = KMeans(**kw).fit(X, sample_weight=w)
    est = KMeans(**kw).fit(np.load(path, mmap_mode="r"), sample_weight=w)
    np.testing.assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.cluster_centers_.dtype == np.float64


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random"])
def test_gmm_out_of_core_equals_in_memory(data, npy, covariance_type, init_params):
    kw = dict(n_components=4, covariance_type=covariance_type, init_params=init_params, random_state=0,
              device="cpu", chunk_size=700, max_iter=5, tol=0)  # fmt: skip
    with pytest.warns(Warning):
        ref = GaussianMixture(**kw).fit(data)
    for form, X in every_form(data, npy).items():
        with pytest.warns(Warning):
            est = GaussianMixture(**kw).fit(X)
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_array_equal(getattr(est, name), getattr(ref, name), err_msg=f"{form} {name}")
        assert est.lower_bound_ == ref.lower_bound_
    mm = np.load(npy, mmap_mode="r")
    np.testing.assert_array_equal(ref.predict(mm), ref.predict(data))
    np.testing.assert_array_equal(ref.predict_proba(npy), ref.predict_proba(data))
    np.testing.assert_array_equal(ref.score_samples(mm), ref.score_samples(data))
    assert ref.score(mm) == ref.score(data)


def test_labels_written_into_callers_memmap(data, npy, tmp_path):
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int64, shape=(data.shape[0],))
    km = KMeans(**KM)
    assert km.fit_predict(npy, out=out) is out
    np.testing.assert_array_equal(out, KMeans(**KM).fit(data).labels_)
    out2 = np.lib.format.open_memmap(tmp_path / "labels2.npy", mode="w+", dtype=np.int32, shape=(data.shape[0],))
    assert km.predict(npy, out=out2) is out2
    np.testing.assert_array_equal(out2, out)
    gm = GaussianMixture(3, random_state=0, device="cpu")
    out3 = np.zeros(data.shape[0], dtype=np.int64)
    assert gm.fit_predict(npy, out=out3) is out3
    np.testing.assert_array_equal(out3, gm.predict(data))
    with pytest.raises(ValueError, match="shape"):
        km.predict(npy, out=np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="out-of-core"):
        km.predict(data, out=out)


def test_memmap_row_range_and_strided_view(data, npy):
    mm = np.load(npy, mmap_mode="r")
    ref = KMeans(**KM).fit(data[700:2900])
    assert_same_centres(KMeans(**KM).fit(mm[700:2900]).cluster_centers_, ref.cluster_centers_)
    strided = KMeans(**KM).fit(mm[:, ::2])  # not one contiguous region of the file: read through the map
    assert_same_centres(strided.cluster_centers_, KMeans(**KM).fit(data[:, ::2]).cluster_centers_)


def test_init_sample_is_bounded_and_reproducible(data, npy, monkeypatch):
    monkeypatch.setattr(sources, "INIT_SAMPLE_ELEMENTS", 600 * data.shape[1])
    taken = []
    real_rows = sources.RowSource.rows

    def spy(self, indices):
        taken.append(len(indices))
        return real_rows(self, indices)

    monkeypatch.setattr(sources.RowSource, "rows", spy)
    a = KMeans(**KM).fit(npy)
    b = KMeans(**KM).fit(np.load(npy, mmap_mode="r"))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert taken == [600, 600]  # 600 of the 3000 rows: the bound, not the data
    c = KMeans(**dict(KM, random_state=1)).fit(npy)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)
    g1 = GaussianMixture(5, covariance_type="diag", random_state=0, device="cpu").fit(npy)
    g2 = GaussianMixture(5, covariance_type="diag", random_state=0, device="cpu").fit(npy)
    np.testing.assert_array_equal(g1.means_, g2.means_)
    assert taken[3:] == [600, 600]
    # the sample still finds the clusters: close to the in-memory fit's
    full = KMeans(**dict(KM, tol=1e-4)).fit(data)
    assert a.inertia_ == pytest.approx(full.inertia_, rel=0.01)


def test_cuda_feed_logic_on_the_cpu(data, npy):
    """The pinned-buffer/side-stream rotation, with the CPU stand-ins for streams and events."""
    source = sources.as_source(npy)
    for dtype in (torch.float32, torch.float64):
        tiles = [(r, t.clone()) for r, t in sources._DeviceFeed(source, 700, torch.device("cpu"))]
        assert [r.start for r, _ in tiles] == list(range(0, data.shape[0], 700))
        np.testing.assert_array_equal(torch.cat([t for _, t in tiles]).numpy(), data)
        got = torch.cat([t.clone() for _, t in source.tiles(700, torch.device("cpu"), dtype, prefetch=True)])
        assert got.dtype == dtype and torch.equal(got, torch.from_numpy(data).to(dtype))
    # the double buffer across block boundaries, with a last partial tile
    feed = sources._DeviceFeed(sources.as_source(as_blocks(data)), 700, torch.device("cpu"))
    np.testing.assert_array_equal(torch.cat([t.clone() for _, t in feed]).numpy(), data)
    # the CUDA branches end to end: tiles through the feed, one-hot centre sums per tile
    rows = sources.SourceRows(source, torch.device("cpu"), torch.float32, prefetch=True)
    assert rows.prefetch and not sources.SourceRows(source, torch.device("cpu"), torch.float32).prefetch
    est = OneHotKMeans(**KM).fit(npy)
    ref = OneHotKMeans(algorithm="lloyd", **KM).fit(data)
    np.testing.assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(est.cluster_centers_, KMeans(**KM).fit(data).cluster_centers_, rtol=1e-5, atol=1e-5)


def test_immediate_event_must_be_recorded():
    with pytest.raises(RuntimeError, match="never recorded"):
        sources._ImmediateEvent().synchronize()


# ------------------------------------------------------------------------------ bad input
def fitted(data):
    km = KMeans(**KM).fit(data)
    gm = GaussianMixture(2, random_state=0, device="cpu").fit(data)
    return km, gm, km.cluster_centers_.copy(), gm.means_.copy()


def bad_inputs(data, tmp_path):
    np.save(tmp_path / "one_d.npy", data[:, 0])
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    nan = data.copy()
    nan[1234, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    widths = [data[:100], data[100:200, :5]]
    nan_blocks = [data[:1000], nan[1000:2000]]

    def generator():
        yield data

    return [
        (str(tmp_path / "one_d.npy"), "2-d"),
        (str(tmp_path / "text.npy"), "numeric"),
        (str(tmp_path / "junk.npy"), "not a readable .npy"),
        (str(tmp_path / "missing.npy"), "no such file"),
        (str(tmp_path / "nan.npy"), r"rows 0-2999 contains NaN .*row 1234"),
        (np.load(tmp_path / "nan.npy", mmap_mode="r"), r"rows 0-2999 contains NaN"),
        (widths, r"block 1 \(rows 100-199\) has 5 features"),
        (nan_blocks, r"block 1 \(rows 1000-1999\) contains NaN .*row 234"),
        (generator(), "iterated only once"),
        (lambda: iter([]), "no blocks"),
    ]


def test_bad_input_raises_and_leaves_fitted_estimators_unchanged(data, tmp_path):
    km, gm, centres, means = fitted(data)
    for X, message in bad_inputs(data, tmp_path):
        for est in (km, gm):
            with pytest.raises(ValueError, match=message):
                est.fit(X)
        np.testing.assert_array_equal(km.cluster_centers_, centres)
        np.testing.assert_array_equal(gm.means_, means)
        assert isinstance(km.labels_, np.ndarray) and km.labels_.shape == (data.shape[0],)
    with pytest.raises(ValueError, match="the same rows on every pass"):
        calls = []

        def changing():
            calls.append(1)
            return iter([data[: 10 * (1 + len(calls) % 2)]])

        KMeans(2, device="cpu").fit(changing)
    with pytest.raises(ValueError, match="callable"):
        KMeans(2, device="cpu", init=lambda X, k, random_state: X[:k]).fit([data])
    with pytest.raises(ValueError, match="needs X in memory"):
        KMeans(2, device="cpu", backend="sklearn").fit([data])


# ------------------------------------------------------------------------------ distributed
WORKER = textwrap.dedent(
    """
    import sys, numpy as np, torch.distributed as dist
    from gpuclust import KMeans, GaussianMixture
    rank, world, port, path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mm = np.load(path, mmap_mode="r")
    n = mm.shape[0]
    shard = slice(rank * n // world, (rank + 1) * n // world)
    kw = dict(n_clusters=5, random_state=0, device="cpu", chunk_size=300, tol=0, max_iter=20, algorithm="lloyd",
              distributed=True)
    a = KMeans(**kw).fit(np.ascontiguousarray(mm[shard]))
    b = KMeans(**kw).fit(mm[shard])
    gkw = dict(n_components=3, covariance_type="full", init_params="k-means++", random_state=0, device="cpu",
               max_iter=5, tol=0, distributed=True)
    c = GaussianMixture(**gkw).fit(np.ascontiguousarray(mm[shard]))
    d = GaussianMixture(**gkw).fit(mm[shard])
    np.savez(out, a=a.cluster_centers_, b=b.cluster_centers_, la=a.labels_, lb=np.asarray(b.labels_),
             c=c.means_, d=d.means_)
    dist.destroy_process_group()
    """
)


def test_distributed_each_rank_streams_its_shard(data, npy, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", port, npy, str(tmp_path / f"r{r}.npz")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output
    for r in range(2):
        got = np.load(tmp_path / f"r{r}.npz")
        np.testing.assert_array_equal(got["a"], got["b"])
        np.testing.assert_array_equal(got["la"], got["lb"])
        np.testing.assert_array_equal(got["c"], got["d"])


# ------------------------------------------------------------------------------ command line
def test_cli_streams_a_file_larger_than_the_memory_limit(data, npy, tmp_path, capsys):
    from gpuclust.app.cli import main

    labels = tmp_path / "labels.npy"
    args = ["cluster", "--features", npy, "--n-clusters", "5", "--device", "cpu", "--max-iter", "3"]
    assert main([*args, "--memory-limit", "0.00001", "--save-labels", str(labels)]) == 0
    out, err = capsys.readouterr()
    assert "streamed from disk" in out and "3000 samples in 5 clusters" in out
    assert "pass 1" in err  # a progress bar per pass
    streamed = np.load(labels)
    assert main([*args, "--save-labels", str(labels), "-q"]) == 0  # small enough: loaded whole
    out, _ = capsys.readouterr()
    assert "streamed" not in out
    np.testing.assert_array_equal(streamed, np.load(labels))
    nan = data.copy()
    nan[5, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    code = main(["cluster", "--features", str(tmp_path / "nan.npy"), "--memory-limit", "0.00001", "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and "contains NaN" in err and len(err.strip().splitlines()) == 1


def test_far_from_the_origin_streams_as_in_memory(tmp_path):
    # Float32 data with a large offset: the streamed fit centres tile by tile, as the in-memory one does.
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(6000, centers=3, n_features=2, cluster_std=1.0, random_state=0)
    X = (X + 45000.0).astype(np.float32)
    path = tmp_path / "far.npy"
    np.save(path, X)
    mem = KMeans(3, random_state=0, n_init=1, algorithm="lloyd", device="cpu").fit(X)
    streamed = KMeans(3, random_state=0, n_init=1, algorithm="lloyd", device="cpu").fit(str(path))
    np.testing.assert_array_equal(streamed.labels_, mem.labels_)
    assert streamed.inertia_ == pytest.approx(mem.inertia_, rel=1e-5)


def test_big_endian_files_stream(tmp_path):
    X = np.random.RandomState(0).rand(500, 4)
    path = tmp_path / "be.npy"
    np.save(path, X.astype(">f8"))
    mem = KMeans(3, random_state=0, n_init=1, device="cpu").fit(X)
    streamed = KMeans(3, random_state=0, n_init=1, device="cpu").fit(str(path))
    np.testing.assert_array_equal(streamed.labels_, mem.labels_)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_big_endian_files_stream_through_the_cuda_feed(tmp_path, dtype):
    # The CUDA feed reads the file's bytes into native pinned buffers: they must be byte-swapped
    # there (they were taken as native values: garbage, or a NaN error when the garbage had one).
    X = np.random.RandomState(1).rand(1000, 5).astype(dtype)
    path = tmp_path / "be.npy"
    np.save(path, X)
    source = sources.as_source(str(path))
    got = torch.cat([t.clone() for _, t in source.tiles(300, torch.device("cpu"), torch.float64, prefetch=True)])
    np.testing.assert_array_equal(got.numpy(), X.astype(np.float64))


def test_out_must_have_the_results_dtype(tmp_path):
    X = np.random.RandomState(0).rand(400, 3)
    path = tmp_path / "x.npy"
    np.save(path, X)
    km = KMeans(3, random_state=0, n_init=1, device="cpu").fit(str(path))
    with pytest.raises(ValueError, match="32 bits or more"):
        km.predict(str(path), out=np.empty(400, np.uint8))
    out = np.empty(400, np.int32)  # fit_predict works on its own int64 labels and copies them over
    assert km.fit_predict(str(path), out=out) is out
    np.testing.assert_array_equal(out, km.labels_)


def test_streamed_tiles_respect_the_memory_budget(tmp_path):
    X = np.random.RandomState(0).rand(4000, 256).astype(np.float32)
    km = KMeans(2, device="cpu", memory_budget=1 << 20).fit(X[:50])
    assert km._tile_rows(4000, 256, 2) * 256 * 4 <= 1 << 20


@pytest.mark.parametrize("seed", [50, 114, 264, 284])
def test_equally_far_samples_relocate_alike_in_memory_and_streamed(seed, tmp_path):
    # 30 integers in {0, 1, 2} and 3 centres on the half-integer grid: clusters empty out and
    # several samples are equally far from their centre, so which one an empty cluster takes
    # must not depend on tiles (seeds 50, 264 and 284 chose differently with topk; 114 did not).
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 3, size=(30, 1)).astype(np.float64)
    init = rng.integers(0, 6, size=(3, 1)) * 0.5
    kw = dict(n_clusters=3, init=init, n_init=1, tol=0, max_iter=50, device="cpu")
    ref = KMeans(algorithm="lloyd", **kw).fit(X)
    path = tmp_path / "x.npy"
    np.save(path, X)
    for est in (KMeans(algorithm="hamerly", **kw).fit(X), KMeans(algorithm="lloyd", chunk_size=7, **kw).fit(str(path))):
        np.testing.assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(est.labels_, ref.labels_)
        assert est.n_iter_ == ref.n_iter_


def test_read_only_rows_are_never_shared_with_torch(tmp_path):
    # One-row tiles of a strided read-only memmap are views of the map: torch must get copies,
    # not the map's read-only memory. (Checked on the tiles themselves: torch's "not writable"
    # warning comes once per process, so a warning-based test could pass on broken code.)
    X = np.random.RandomState(0).rand(400, 3).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")[::2]
    source = sources.as_source(mm)
    for rows, tile in source.tiles(1, torch.device("cpu"), torch.float32):
        assert not np.shares_memory(tile.numpy(), mm), rows
        np.testing.assert_array_equal(tile.numpy(), X[::2][rows])
    kw = dict(n_clusters=3, random_state=0, n_init=1, device="cpu", chunk_size=1)
    np.testing.assert_array_equal(KMeans(**kw).fit(mm).labels_, KMeans(**kw).fit(X[::2]).labels_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 50.0, 1e4])
@pytest.mark.parametrize("form", ["path", "memmap", "blocks"])
def test_kmeans_centres_far_from_the_origin_equal_in_memory(data, tmp_path, form, offset, dtype):
    # Data far from the origin are centred on their mean: in memory it was a float32 product
    # ``ones @ X``, out of core float64 sums per tile, and the centres ended 1 ulp apart (offset
    # 50, float32). Both now take the same float64 sums in the same tiles (sources.column_sums).
    X = (data.astype(np.float64) + offset).astype(dtype)
    path = tmp_path / "X.npy"
    np.save(path, X)
    source = {"path": str(path), "memmap": np.load(path, mmap_mode="r"), "blocks": as_blocks(X)}[form]
    ref = KMeans(**KM).fit(X)
    est = KMeans(**KM).fit(source)
    assert_same_centres(est.cluster_centers_, ref.cluster_centers_, err_msg=form)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.n_iter_ == ref.n_iter_
    assert est.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_kmeans_tolerance_is_the_same_in_memory_and_streamed(data, tmp_path, offset, capsys):
    # tol is relative to the data's variance: both take it from the centred rows' float64 sums in
    # the scan's tiles (out of core it came from the raw sums, 1% off at 1e4 in float32).
    X = (data.astype(np.float64) + offset).astype(np.float32)
    path = tmp_path / "X.npy"
    np.save(path, X)
    tolerances = []
    for source in (X, str(path)):
        KMeans(5, random_state=0, device="cpu", chunk_size=700, tol=1e-3, max_iter=60, verbose=1).fit(source)
        line = [s for s in capsys.readouterr().out.splitlines() if "within tolerance" in s]
        assert line, "the run must stop on the tolerance"
        tolerances.append(line[0].rsplit("tolerance ", 1)[1])
    assert tolerances[0] == tolerances[1]


@pytest.mark.parametrize(
    "how",
    ["same file", "hard link", "view of the memmap", "strided memmap view", "torch view", "own mmap of the path",
     "list of blocks"],
)  # fmt: skip
def test_out_that_shares_xs_storage_is_refused_and_x_is_untouched(tmp_path, how):
    # Integer data, one feature: an int64 labels array can lie on X's own bytes. Labels written
    # while later passes read X would change X (a wrong fit, and the user's file rewritten).
    rng = np.random.default_rng(0)
    path = tmp_path / "X.npy"
    np.save(path, rng.integers(0, 50, size=(600, 1)).astype(np.int64))
    before = path.read_bytes()
    X = np.load(path, mmap_mode="r+")
    if how == "same file":
        out, source = np.memmap(path, dtype=np.int64, mode="r+", offset=X.offset, shape=(600,)), str(path)
    elif how == "hard link":
        os.link(path, tmp_path / "link.npy")
        out, source = np.load(tmp_path / "link.npy", mmap_mode="r+")[:, 0], str(path)
    elif how == "view of the memmap":
        out, source = X[:, 0], X
    elif how == "torch view":  # no numpy base chain back to the memmap: found by address
        out, source = torch.from_numpy(X[:, 0]).numpy(), X
    elif how == "own mmap of the path":  # found through /proc/self/maps (Linux)
        if not os.path.exists("/proc/self/maps"):
            pytest.skip("no /proc/self/maps")
        with open(path, "r+b") as handle:
            mapping = mmap.mmap(handle.fileno(), 0)  # holds its own descriptor
        out, source = np.frombuffer(mapping, np.int64, offset=X.offset, count=600), str(path)
    elif how == "list of blocks":
        out, source = X[:, 0], [X[:300], X[300:]]
    else:  # a strided memmap is read through the map itself (_ArraySource)
        wide = np.lib.format.open_memmap(tmp_path / "wide.npy", mode="w+", dtype=np.int64, shape=(600, 2))
        wide[:] = rng.integers(0, 50, size=(600, 2))
        source, out = wide[::2], np.asarray(wide.reshape(-1)[:300])
        assert not source.flags.c_contiguous and out.flags.c_contiguous
    estimators = (KMeans(3, random_state=0, device="cpu", n_init=2), GaussianMixture(2, device="cpu"))
    for est in estimators:
        with pytest.raises(ValueError, match="shares memory or its file"):
            est.fit_predict(source, out=out)
        assert not hasattr(est, "n_iter_")  # refused before any fit
    fitted = KMeans(3, random_state=0, device="cpu").fit(source)
    with pytest.raises(ValueError, match="shares memory or its file"):
        fitted.predict(source, out=out)
    assert path.read_bytes() == before
