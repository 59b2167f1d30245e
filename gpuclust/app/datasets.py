"""Fashion-MNIST for the application: find it, or download it, then read and validate the IDX files.

Part of the application, not the library (it downloads over HTTP): ``gpuclust.load_fashion_mnist``
and its two companions still reach it, with a FutureWarning, until 0.5. ``$GPUCLUST_DATA`` names
the folder to read from, ``$GPUCLUST_FASHION_MNIST_URL`` a download mirror.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import stat
import tempfile
import urllib.error
import urllib.request
import zlib
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
# The largest file the loader reads, decompressed (train images: 47,040,016 bytes), and downloads.
MAX_IDX_BYTES = 64 << 20
MAX_DOWNLOAD_BYTES = 64 << 20
# Seconds a download may stall (connect or between two reads) before it is abandoned.
DOWNLOAD_TIMEOUT_SECONDS = 60


def cache_dir() -> Path:
    """The user cache for downloads: ``$XDG_CACHE_HOME/gpuclust/fashion-mnist`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpuclust" / "fashion-mnist"


def search_dirs(data_dir=None) -> list[Path]:
    """Where the loader looks, in order: only the given location when there is one.

    An explicit ``data_dir`` (or, without it, ``$GPUCLUST_DATA``) is the only place looked in;
    the user cache and Debian's copy are searched only when no location is given.
    """
    explicit = _explicit_location(data_dir)
    if explicit is not None:
        return [explicit[0]]
    return [cache_dir(), DEBIAN_DIR]


def _explicit_location(data_dir):
    """(folder, how it was given) for an explicit location, or None."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "data_dir"
    if os.environ.get("GPUCLUST_DATA"):
        return Path(os.environ["GPUCLUST_DATA"]).expanduser(), "$GPUCLUST_DATA"
    return None


def _kind(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _find_file(directory: Path, stem: str) -> Path | None:
    """``stem``.gz or ``stem`` in ``directory``; ValueError when the name holds something other than a file."""
    for name in (stem + ".gz", stem):
        path = directory / name
        if not os.path.lexists(path):
            continue
        kind = _kind(path)
        if kind != "a regular file":
            raise ValueError(f"{path}: is {kind}, not a Fashion-MNIST IDX file.")
        return path
    return None


def _check_explicit_dir(directory: Path, given: str, stems) -> list[Path | None]:
    """The split's files in an explicitly given folder; FileNotFoundError naming the folder otherwise."""
    if not os.path.lexists(directory):
        raise FileNotFoundError(f"{directory} (from {given}) does not exist; it is the only place looked in.")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} (from {given}) is {_kind(directory)}, not a directory.")
    if not any(directory.iterdir()):
        raise FileNotFoundError(f"{directory} (from {given}) is empty; put the Fashion-MNIST IDX files there.")
    return [_find_file(directory, stem) for stem in stems]


def _open_idx(path: Path):
    """A binary stream of the file's IDX bytes: gunzipped on the fly when it is gzip (told by its magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_exactly(fh, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        block = fh.read(min(left, 1 << 20))
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def _read_bytes(path: Path, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """The file's IDX bytes, streamed: the header, then at most the body it promises plus one byte.

    Decompression stops there, so a small .gz that expands to far more is refused after reading
    only what a valid file would hold (``parse_idx`` then reports it as too long).
    """
    try:
        with _open_idx(path) as fh:
            head = _read_exactly(fh, 4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                return head  # parse_idx names the problem
            dims_raw = _read_exactly(fh, 4 * head[3])
            raw = head + dims_raw
            if len(dims_raw) < 4 * head[3]:
                return raw
            dims = [int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(head[3])]
            expected = len(raw) + math.prod(dims)  # Python ints: a hostile header cannot overflow it
            if expected > max_bytes:
                raise ValueError(
                    f"{path}: the header's dimensions {tuple(dims)} promise {expected} bytes, more than the "
                    f"{max_bytes} a Fashion-MNIST file may hold."
                )
            return raw + _read_exactly(fh, expected - len(raw) + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot be read as an (optionally gzipped) IDX file: {exc}") from None


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
    expected = header + math.prod(dims)
    if len(raw) < expected:
        raise ValueError(f"{source}: truncated: {len(raw)} bytes, but the header's dimensions {dims} need {expected}.")
    if len(raw) > expected:
        raise ValueError(f"{source}: too long: more than the {expected} bytes the header's dimensions {dims} need.")
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


def _progress_bar(total, desc, enabled=True):
    """A tqdm byte counter when ``enabled`` and tqdm is installed (the ``app`` extra), else nothing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _download_file(stem: str, target_dir: Path, base_url: str, progress: bool = True) -> Path:
    """Fetch ``stem``.gz into ``target_dir``, atomically, only after its checksum passes."""
    target_dir.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + stem + ".gz"
    final = target_dir / (stem + ".gz")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        logger.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            received = 0
            with _progress_bar(total, stem, progress) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    received += len(block)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise ValueError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes; not a Fashion-MNIST file.")
                    out.write(block)
                    bar.update(len(block))
        raw = _read_bytes(tmp)
        _check_sha256(raw, stem, url)
        os.replace(tmp, final)
        return final
    except TimeoutError as exc:
        raise OSError(f"could not download {url}: no data for {DOWNLOAD_TIMEOUT_SECONDS} s ({exc})") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
        raise OSError(f"could not download {url}: {exc}") from None
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


def load_fashion_mnist(
    split: str = "train",
    data_dir=None,
    download: bool = False,
    *,
    verify: bool = True,
    progress: bool = True,
    on_source=None,
):
    """Load a Fashion-MNIST split as uint8 arrays.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    data_dir : path-like, optional
        The folder holding the files. When given (or, without it, when
        ``$GPUCLUST_DATA`` is set) it is the only place looked in: a folder that
        does not exist, is empty, lacks a file or holds something other than a
        file under a file's name is an error naming it, never a fall-back.
        With no location given, the loader looks in the user cache
        (``~/.cache/gpuclust/fashion-mnist``), then in Debian's
        ``/usr/share/datasets/fashion-mnist``.
    download : bool, default=False
        Fetch missing files (checksummed, atomically renamed into place) into the
        given location, or into the user cache when none is given.
        ``GPUCLUST_FASHION_MNIST_URL`` names a mirror.
    verify : bool, default=True
        Check the sha256 of the decompressed files against the published ones.
    progress : bool, default=True
        Show a download progress bar (when tqdm is installed).
    on_source : callable(Path), optional
        Called with the folder the files were read from.

    Returns
    -------
    images : ndarray of shape (n_samples, 28, 28), uint8
    labels : ndarray of shape (n_samples,), uint8
        Class indices into :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    ValueError
        A file is malformed, corrupt, undecodable or inconsistent, or a file's name
        holds a directory, FIFO or broken link; the message names it.
    FileNotFoundError
        The given location does not exist, is empty or lacks a file; or, with no
        location given, the data is nowhere and ``download`` is False. The message
        names where it looked and how to get the data.
    OSError
        A download failed or stalled; the message names the URL.
    """
    if split not in _SPLIT_STEMS:
        raise ValueError(f"split={split!r} is not one of 'train', 'test'.")
    stems = _SPLIT_STEMS[split]
    candidates, target = _candidates(split, stems, data_dir, download)
    for directory, paths in candidates:
        if all(paths):
            return _loaded(split, directory, paths, stems, verify, on_source)
    if not download:
        raise FileNotFoundError(_not_found_message(split, search_dirs(data_dir)))
    base_url = os.environ.get("GPUCLUST_FASHION_MNIST_URL", FASHION_MNIST_URL)
    paths = [_find_file(target, stem) or _download_file(stem, target, base_url, progress) for stem in stems]
    return _loaded(split, target, paths, stems, verify, on_source)


def _candidates(split, stems, data_dir, download):
    """([(folder, the split's files there or None)], the folder downloads go to), in search order.

    An explicit location is the only candidate: FileNotFoundError naming it when it lacks a file
    and nothing may be downloaded.
    """
    explicit = _explicit_location(data_dir)
    if explicit is None:
        return [(d, [_find_file(d, stem) for stem in stems]) for d in search_dirs()], cache_dir()
    directory, given = explicit
    if download:
        directory.mkdir(parents=True, exist_ok=True)
        paths = [_find_file(directory, stem) for stem in stems]
    else:
        paths = _check_explicit_dir(directory, given, stems)
    missing = [stem for stem, path in zip(stems, paths) if path is None]
    if missing and not download:
        raise FileNotFoundError(
            f"{directory} (from {given}) has no {missing[0]}.gz or {missing[0]} (Fashion-MNIST {split} split); "
            "it is the only place looked in."
        )
    return [(directory, paths)], directory


def _loaded(split, directory, paths, stems, verify, on_source):
    logger.info("loading Fashion-MNIST %s from %s", split, directory)
    images, labels = _load_pair(paths[0], paths[1], stems, verify)
    if on_source is not None:
        on_source(directory)
    return images, labels


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
