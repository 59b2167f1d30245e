"""gpuclust.app.datasets: finding, reading, verifying and downloading Fashion-MNIST; the deprecated names."""

import gzip
import hashlib
import http.server
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import gpuclust.app.datasets as ds
from gpuclust.app.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, train_validation_split


def idx_bytes(array, type_code=0x08, magic=b"\x00\x00"):
    header = magic + bytes([type_code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_split(directory, split="train", n=20, images=None, labels=None, gz=True, **overrides):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(n, 28, 28)) if images is None else images
    labels = rng.randint(0, 10, size=n) if labels is None else labels
    stems = ds._SPLIT_STEMS[split]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, raw in zip(
        stems, (overrides.get("image_bytes") or idx_bytes(images), overrides.get("label_bytes") or idx_bytes(labels))
    ):
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return images.astype(np.uint8), labels.astype(np.uint8), paths


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path, monkeypatch):
    """No test sees the real cache, $GPUCLUST_DATA or Debian's copy unless it asks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUCLUST_DATA", raising=False)
    monkeypatch.setattr(ds, "DEBIAN_DIR", tmp_path / "debian")


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_raw_idx(tmp_path, gz):
    images, labels, _ = write_split(tmp_path / "d", gz=gz)
    got_images, got_labels = load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)
    assert got_images.dtype == np.uint8 and got_images.shape == (20, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (20,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_search_order_data_dir_then_env_then_cache_then_debian(tmp_path, monkeypatch):
    for name, n in [("debian", 4), ("cache/gpuclust/fashion-mnist", 5), ("env", 6), ("arg", 7)]:
        write_split(tmp_path / name, split="test", n=n)
    monkeypatch.setenv("GPUCLUST_DATA", str(tmp_path / "env"))
    assert len(load_fashion_mnist("test", data_dir=tmp_path / "arg", verify=False)[0]) == 7
    assert len(load_fashion_mnist("test", verify=False)[0]) == 6
    monkeypatch.delenv("GPUCLUST_DATA")
    assert len(load_fashion_mnist("test", verify=False)[0]) == 5
    (tmp_path / "cache/gpuclust/fashion-mnist/t10k-images-idx3-ubyte.gz").unlink()
    assert len(load_fashion_mnist("test", verify=False)[0]) == 4


def test_not_found_lists_places_and_remedies(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist("train")
    msg = str(err.value)
    assert str(ds.cache_dir()) in msg and "debian" in msg
    assert "download=True" in msg and "apt-get install dataset-fashion-mnist" in msg and "GPUCLUST_DATA" in msg


def _fifo(path):
    os.mkfifo(path)


def _broken_link(path):
    path.symlink_to(path.parent / "no-such-target")


@pytest.mark.parametrize("via_env", [False, True])
@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "is empty"),
        (lambda d: d.write_text("x"), "not a directory"),
        (lambda d: (write_split(d), (d / "train-labels-idx1-ubyte.gz").unlink()), "has no train-labels-idx1-ubyte"),
        (
            lambda d: (
                write_split(d),
                (d / "train-labels-idx1-ubyte.gz").unlink(),
                (d / "train-labels-idx1-ubyte.gz").mkdir(),
            ),
            "is a directory",
        ),  # fmt: skip
        (
            lambda d: (
                write_split(d),
                (d / "train-labels-idx1-ubyte.gz").unlink(),
                _fifo(d / "train-labels-idx1-ubyte.gz"),
            ),
            "is a FIFO",
        ),  # fmt: skip
        (
            lambda d: (
                write_split(d),
                (d / "train-labels-idx1-ubyte.gz").unlink(),
                _broken_link(d / "train-labels-idx1-ubyte.gz"),
            ),
            "broken symbolic link",
        ),  # fmt: skip
    ],
)
def test_explicit_location_is_the_only_place_looked_in(tmp_path, monkeypatch, setup, match, via_env):
    # Good data elsewhere, in the cache and Debian's folder: never used when a location is given.
    write_split(ds.cache_dir())
    write_split(tmp_path / "debian")
    where = tmp_path / "given"
    setup(where)
    if via_env:
        monkeypatch.setenv("GPUCLUST_DATA", str(where))
    with pytest.raises((FileNotFoundError, ValueError), match=match) as err:
        load_fashion_mnist("train", data_dir=None if via_env else where, verify=False)
    assert str(where) in str(err.value) and "\n" not in str(err.value)


def test_data_dir_wins_over_env_and_reports_its_source(tmp_path, monkeypatch):
    write_split(tmp_path / "arg", n=7)
    monkeypatch.setenv("GPUCLUST_DATA", str(tmp_path / "missing"))
    seen = []
    images, _ = load_fashion_mnist("train", data_dir=tmp_path / "arg", verify=False, on_source=seen.append)
    assert len(images) == 7 and seen == [tmp_path / "arg"]


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


good_labels = idx_bytes(np.zeros(3, dtype=np.uint8))
good_images = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize(
    "image_bytes,label_bytes,match",
    [
        (good_images[:-5], good_labels, "truncated"),
        (good_images + b"\x00", good_labels, "too long"),
        (good_images[:10], good_labels, "truncated inside the header"),
        (b"\x08\x03" + good_images[2:], good_labels, "magic number"),
        (good_images[:2] + b"\x0d" + good_images[3:], good_labels, "type code"),
        (good_images, idx_bytes(np.zeros((3, 1), dtype=np.uint8)), "dimensions"),
        (idx_bytes(np.zeros((3, 27, 27), dtype=np.uint8)), good_labels, "28x28"),
        (good_images, idx_bytes(np.zeros(4, dtype=np.uint8)), "3 images but .* 4 labels"),
        (good_images, idx_bytes(np.array([0, 10, 1], dtype=np.uint8)), "label 10 is outside 0-9"),
    ],
)
def test_bad_files_raise_value_error_naming_the_file(tmp_path, image_bytes, label_bytes, match):
    write_split(tmp_path / "d", n=3, image_bytes=image_bytes, label_bytes=label_bytes)
    with pytest.raises(ValueError, match=match) as err:
        load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)
    assert "ubyte" in str(err.value)


def test_corrupt_gzip_is_value_error(tmp_path):
    _, _, paths = write_split(tmp_path / "d")
    paths[0].write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images"):
        load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)


def test_checksum_mismatch_is_value_error(tmp_path):
    write_split(tmp_path / "d")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_fashion_mnist("train", data_dir=tmp_path / "d")


def test_split_is_seeded_80_20_and_disjoint():
    train, val = train_validation_split(1000, seed=3)
    assert len(train) == 800 and len(val) == 200
    assert not set(train) & set(val) and len(set(train) | set(val)) == 1000
    again = train_validation_split(1000, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(val, train_validation_split(1000, seed=4)[1])
    with pytest.raises(ValueError):
        train_validation_split(10, validation_fraction=1.0)


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


# --- download path, against a local HTTP server -----------------------------------------------


@pytest.fixture
def local_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_verifies_and_caches(local_server, monkeypatch):
    root, url = local_server
    images, labels, _ = write_split(root, split="test", n=12)
    raw = [idx_bytes(images), idx_bytes(labels)]
    # Pretend these small files are the published ones.
    monkeypatch.setitem(ds.FILES, "t10k-images-idx3-ubyte", (hashlib.sha256(raw[0]).hexdigest(), None))
    monkeypatch.setitem(ds.FILES, "t10k-labels-idx1-ubyte", (hashlib.sha256(raw[1]).hexdigest(), None))
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", url)
    got_images, got_labels = load_fashion_mnist("test", download=True)
    np.testing.assert_array_equal(got_images, images)
    cache = ds.cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # Second call finds the cache; no server needed.
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", "http://127.0.0.1:9/")
    assert len(load_fashion_mnist("test")[0]) == 12


def test_download_of_corrupt_file_leaves_nothing_behind(local_server, monkeypatch):
    root, url = local_server
    write_split(root, split="test", n=12)
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", url)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_fashion_mnist("test", download=True)
    cache = ds.cache_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_unreachable_is_clear_oserror(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", "http://127.0.0.1:9/")
    with pytest.raises(OSError, match="could not download"):
        load_fashion_mnist("test", download=True)
    assert list(ds.cache_dir().iterdir()) == []


# --- the real dataset -------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_dataset_counts_and_checksums(split, n, monkeypatch):
    monkeypatch.setattr(ds, "DEBIAN_DIR", Path("/usr/share/datasets/fashion-mnist"))
    try:
        images, labels = load_fashion_mnist(split, data_dir=os.environ.get("GPUCLUST_DATA"))
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set GPUCLUST_DATA)")
    assert images.shape == (n, 28, 28) and labels.shape == (n,)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))


# --- bounded, undecodable, stalled -------------------------------------------------------------


def _gzip_bomb(header_dims, body_mib):
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    chunk = bytes(1 << 20)
    header = b"\x00\x00\x08" + bytes([len(header_dims)]) + b"".join(d.to_bytes(4, "big") for d in header_dims)
    parts = [z.compress(header)] + [z.compress(chunk) for _ in range(body_mib)]
    return b"".join(parts) + z.flush()


def test_decompression_stops_at_the_size_the_header_promises(tmp_path):
    import tracemalloc

    _, _, paths = write_split(tmp_path / "d", n=3)
    paths[0].write_bytes(_gzip_bomb((3, 28, 28), body_mib=200))  # ~200 KiB that expands to 200 MiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="too long") as err:
            load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "train-images" in str(err.value)
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(
    "dims,match", [((1_000_000, 28, 28), "promise 784000016 bytes"), ((2**31, 2**31, 2**31), "promise 99035203")]
)
def test_header_promising_more_than_a_fashion_mnist_file_is_refused_before_reading(tmp_path, dims, match):
    _, _, paths = write_split(tmp_path / "d", n=3)
    paths[0].write_bytes(_gzip_bomb(dims, body_mib=1))
    with pytest.raises(ValueError, match=match):
        load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)


def test_corrupt_gzip_body_is_value_error_naming_the_file(tmp_path):
    _, _, paths = write_split(tmp_path / "d", n=50)
    good = paths[0].read_bytes()
    paths[0].write_bytes(good[:10] + b"\xff" * 20 + good[30:])  # deflate block type 3: zlib.error
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: cannot be read"):
        load_fashion_mnist("train", data_dir=tmp_path / "d", verify=False)


@pytest.fixture
def stalling_server():
    """Sends headers and a few bytes, then nothing."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"\x1f\x8b" + bytes(100))
        stop.wait(10)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/mirror"
    stop.set()
    listener.close()


def test_stalled_download_names_the_url(stalling_server, monkeypatch):
    monkeypatch.setattr(ds, "DOWNLOAD_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", stalling_server)
    with pytest.raises(OSError, match=r"could not download http://127\.0\.0\.1:\d+/mirror/t10k-images") as err:
        load_fashion_mnist("test", download=True)
    assert "0.5 s" in str(err.value)
    assert list(ds.cache_dir().iterdir()) == []


@pytest.mark.parametrize("progress", [False, True])
def test_download_progress_bar_only_when_asked(local_server, monkeypatch, capfd, progress):
    pytest.importorskip("tqdm")
    root, url = local_server
    images, labels, _ = write_split(root, split="test", n=12)
    for stem, arr in zip(ds._SPLIT_STEMS["test"], (images, labels)):
        monkeypatch.setitem(ds.FILES, stem, (hashlib.sha256(idx_bytes(arr)).hexdigest(), None))
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", url)
    monkeypatch.setattr(ds, "_progress_bar", lambda total, desc, enabled=True: calls.append(enabled) or ds._NoBar())
    calls = []
    load_fashion_mnist("test", download=True, progress=progress)
    assert calls == [progress, progress]
    assert capfd.readouterr().err == ""


def test_progress_bar_helper_is_silent_when_disabled(capfd):
    with ds._progress_bar(100, "x", enabled=False) as bar:
        bar.update(100)
    assert capfd.readouterr().err == ""


def test_download_into_the_given_location(local_server, tmp_path, monkeypatch):
    root, url = local_server
    images, labels, _ = write_split(root, split="test", n=12)
    for stem, arr in zip(ds._SPLIT_STEMS["test"], (images, labels)):
        monkeypatch.setitem(ds.FILES, stem, (hashlib.sha256(idx_bytes(arr)).hexdigest(), None))
    monkeypatch.setenv("GPUCLUST_FASHION_MNIST_URL", url)
    seen = []
    got, _ = load_fashion_mnist(
        "test", data_dir=tmp_path / "mine", download=True, progress=False, on_source=seen.append
    )
    assert len(got) == 12 and seen == [tmp_path / "mine"]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert not ds.cache_dir().exists()


# --- the loader moved to the application (issue 25); the old names warn until 0.5 ---------------


@pytest.mark.parametrize("name", ["load_fashion_mnist", "FASHION_MNIST_CLASSES", "train_validation_split"])
def test_deprecated_top_level_names_warn_and_give_the_applications_objects(name):
    import gpuclust

    with pytest.warns(FutureWarning, match=rf"gpuclust\.{name} is deprecated since 0\.3 .* removed in 0\.5") as got:
        value = getattr(gpuclust, name)
    assert value is getattr(ds, name)
    assert f"use gpuclust.app.datasets.{name}" in str(got[0].message)
    assert got[0].filename == __file__  # the caller's line, not gpuclust's


def test_deprecated_names_warn_through_from_import_too():
    with pytest.warns(FutureWarning, match="gpuclust.load_fashion_mnist is deprecated"):
        from gpuclust import load_fashion_mnist as old
    assert old is ds.load_fashion_mnist


def test_deprecated_names_are_not_in_all_nor_dir_and_star_import_does_not_warn():
    import warnings

    import gpuclust

    moved = {"load_fashion_mnist", "FASHION_MNIST_CLASSES", "train_validation_split"}
    assert not moved & set(gpuclust.__all__)
    assert not moved & set(dir(gpuclust)) and set(gpuclust.__all__) <= set(dir(gpuclust))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from gpuclust import *", {})
    with pytest.raises(AttributeError, match="has no attribute 'datasets'"):
        gpuclust.datasets  # noqa: B018 (the module moved to gpuclust.app.datasets; no alias is kept)
    with pytest.raises(ModuleNotFoundError):
        import gpuclust.datasets
