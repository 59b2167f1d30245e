"""Fashion-MNIST: find it, or download it, then read and validate the IDX files."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

logger = logging.getLogger("gpuclust")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The dataset's canonical location; GPUCLUST_FASHION_MNIST_URL overrides it (a mirror).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# file stem -> (sha256 of the *decompressed* IDX bytes, expected dims)
FILES = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
}
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08


def cache_dir() -> Path:
    """The user cache for downloads: ``$XDG_CACHE_HOME/gpuclust/fashion-mnist`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpuclust" / "fashion-mnist"


def search_dirs(data_dir=None) -> list[Path]:
    """Where the loader looks, in order."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("GPUCLUST_DATA"):
        dirs.append(Path(os.environ["GPUCLUST_DATA"]).expanduser())
    dirs += [cache_dir(), DEBIAN_DIR]
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    """The file's IDX bytes, decompressed when it is gzip (told by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: cannot be read as an (optionally gzipped) IDX file: {exc}") from exc


def parse_idx(raw: bytes, *, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse the bytes of an unsigned-byte IDX file into an array, validating the header.

    Raises ValueError naming ``source`` and the problem.
    """
    if len(raw) < 4:
        raise ValueError(f"{source}: truncated, only {len(raw)} bytes (no IDX header).")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{source}: wrong magic number {raw[:4].hex()} (an IDX file starts with 0000).")
    if raw[2] != _IDX_UINT8:
        raise ValueError(f"{source}: IDX type code 0x{raw[2]:02x}, expected 0x08 (unsigned byte).")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise ValueError(f"{source}: {dims_n} dimensions in the header, expected {ndim}.")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise ValueError(f"{source}: truncated inside the header ({len(raw)} of {header} bytes).")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_n))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise ValueError(f"{source}: {what}: {len(raw)} bytes, but the header's dimensions {dims} need {expected}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _check_sha256(raw: bytes, stem: str, source) -> None:
    want = FILES[stem][0]
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise ValueError(
            f"{source}: checksum mismatch (sha256 {got}, expected {want}); the file is corrupt or not Fashion-MNIST."
        )


def _load_pair(images_path: Path, labels_path: Path, stems, verify: bool):
    raw_images, raw_labels = _read_bytes(images_path), _read_bytes(labels_path)
    images = parse_idx(raw_images, source=str(images_path), ndim=3)
    labels = parse_idx(raw_labels, source=str(labels_path), ndim=1)
    if verify:
        _check_sha256(raw_images, stems[0], images_path)
        _check_sha256(raw_labels, stems[1], labels_path)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, expected 28x28.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels."
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is outside 0-9.")
    return images, labels


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress_bar(total, desc):
    """A tqdm byte counter when tqdm is installed (the ``app`` extra), else nothing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _download_file(stem: str, target_dir: Path, base_url: str) -> Path:
    """Fetch ``stem``.gz into ``target_dir``, atomically, only after its checksum passes."""
    target_dir.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + stem + ".gz"
    final = target_dir / (stem + ".gz")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        logger.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with _progress_bar(total, stem) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        raw = _read_bytes(tmp)
        _check_sha256(raw, stem, url)
        os.replace(tmp, final)
        return final
    except urllib.error.URLError as exc:
        raise OSError(f"could not download {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _not_found_message(split, dirs):
    looked = "\n".join(f"  - {d}" for d in dirs)
    return (
        f"Fashion-MNIST ({split} split) was not found. Looked in:\n{looked}\n"
        "Get it in one of three ways:\n"
        "  1. pass download=True (CLI: --download) to fetch it into the user cache;\n"
        "  2. on Debian/Ubuntu: apt-get install dataset-fashion-mnist;\n"
        "  3. put the four IDX files (.gz or raw) in a folder and pass data_dir= "
        "(CLI: --data-dir) or set GPUCLUST_DATA."
    )


def load_fashion_mnist(split: str = "train", data_dir=None, download: bool = False, *, verify: bool = True):
    """Load a Fashion-MNIST split as uint8 arrays.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    data_dir : path-like, optional
        Looked in first; then ``$GPUCLUST_DATA``, the user cache
        (``~/.cache/gpuclust/fashion-mnist``) and Debian's
        ``/usr/share/datasets/fashion-mnist``.
    download : bool, default=False
        When found nowhere, fetch the files into the user cache (checksummed,
        atomically renamed into place). ``GPUCLUST_FASHION_MNIST_URL`` names a mirror.
    verify : bool, default=True
        Check the sha256 of the decompressed files against the published ones.

    Returns
    -------
    images : ndarray of shape (n_samples, 28, 28), uint8
    labels : ndarray of shape (n_samples,), uint8
        Class indices into :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    ValueError
        A file is malformed, corrupt or inconsistent; the message names it.
    FileNotFoundError
        Not found anywhere and ``download`` is False; the message lists where
        it looked and how to get the data.
    """
    if split not in _SPLIT_STEMS:
        raise ValueError(f"split={split!r} is not one of 'train', 'test'.")
    stems = _SPLIT_STEMS[split]
    dirs = search_dirs(data_dir)
    for directory in dirs:
        paths = [_find_file(directory, stem) for stem in stems]
        if all(paths):
            logger.info("loading Fashion-MNIST %s from %s", split, directory)
            return _load_pair(paths[0], paths[1], stems, verify)
    if not download:
        raise FileNotFoundError(_not_found_message(split, dirs))
    base_url = os.environ.get("GPUCLUST_FASHION_MNIST_URL", FASHION_MNIST_URL)
    target = cache_dir()
    paths = [_find_file(target, stem) or _download_file(stem, target, base_url) for stem in stems]
    return _load_pair(paths[0], paths[1], stems, verify)


def train_validation_split(n_samples: int, validation_fraction: float = 0.2, seed: int = 0):
    """Seeded shuffled split of ``range(n_samples)`` into train and validation indices (80:20 by default)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1).")
    order = np.random.default_rng(seed).permutation(n_samples)
    n_val = int(round(n_samples * validation_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def flatten_pixels(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 784) in [0, 1]: the seed's normalized, flattened pixels."""
    return (images.reshape(len(images), -1).astype(dtype) / 255.0).astype(dtype, copy=False)
