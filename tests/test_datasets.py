import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import gpuclust.datasets as ds
from gpuclust import FASHION_MNIST_CLASSES, load_fashion_mnist, train_validation_split


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
        load_fashion_mnist("train", data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "debian" in msg
    assert "download=True" in msg and "apt-get install dataset-fashion-mnist" in msg and "GPUCLUST_DATA" in msg


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
