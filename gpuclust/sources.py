"""Out-of-core input: row blocks read from a .npy file, a NumPy memmap or a re-iterable source, tile by tile.

An estimator's passes over such data iterate :meth:`RowSource.tiles`, which yields the same
row tiles (same boundaries, same values) as slicing the data in memory would, so the sums
are the same. Files are read with ``pread`` into two reused host buffers (pinned on CUDA),
never mapped whole, so the process's resident memory stays at a few tiles whatever the
file's size. On CUDA, tile ``i + 1`` is copied host -> device on a side stream while
tile ``i`` is computed on (see :class:`_DeviceFeed`).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ._arrays import default_dtype, sparse_csr, to_output
from ._chunks import TileBuffers

__all__ = ["RowSource", "as_source", "init_sample", "is_out_of_core", "with_progress"]

# Rows per tile of the validation pass (column sums, norms), the same for every source and
# for in-memory data, so that the sums it gives are identical however X is passed.
SCAN_ROWS = 1 << 16
# Bytes of float64 in one block of the column sums. torch converts what it sums to float64 first:
# a whole 65,536-row tile of 784 features took a 411 MB copy and 0.11 s, in blocks of 4 MiB 8 ms.
# In memory and out of core the blocks are the same (they start at each tile), so are the sums.
SUM_BLOCK_BYTES = 4 << 20


def is_out_of_core(X) -> bool:
    """Whether ``X`` is passed by reference to rows that are read tile by tile (not converted whole)."""
    if isinstance(X, (RowSource, np.memmap, os.PathLike, Callable)) and not isinstance(X, torch.Tensor):
        return True
    if isinstance(X, str):
        return X.endswith(".npy")
    if isinstance(X, (list, tuple)) and len(X) > 0:
        return all(isinstance(b, (np.ndarray, torch.Tensor)) and b.ndim == 2 for b in X)
    return _is_one_shot_iterator(X)


def _is_one_shot_iterator(X) -> bool:
    return isinstance(X, Iterator)


def as_source(X, name: str = "X") -> RowSource:
    """The :class:`RowSource` for out-of-core input ``X`` (see :func:`is_out_of_core`).

    Raises
    ------
    ValueError
        For a generator or other one-shot iterator (the fit makes many passes), a path that is
        not a 2-d numeric .npy file, or an empty sequence.
    """
    if isinstance(X, RowSource):
        return X
    if _is_one_shot_iterator(X):
        raise ValueError(
            f"{name} is a {type(X).__name__}, which can be iterated only once, but a fit makes many passes over "
            "the data: pass a list of arrays, or a callable that returns a new iterator of row blocks on each call."
        )
    if isinstance(X, (str, os.PathLike)):
        return _FileSource.from_path(os.fspath(X))
    if isinstance(X, np.memmap):
        return _FileSource.from_memmap(X, name)
    if callable(X):
        return _BlockSource(X, name)
    if isinstance(X, (list, tuple)):
        return _BlockSource(lambda: iter(X), name, n_blocks=len(X))
    raise TypeError(f"{name} of type {type(X).__name__} is not an out-of-core source.")


def _native(dtype) -> np.dtype:
    """``dtype`` in this machine's byte order (torch takes no other)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.byteorder in ("=", "|") else dtype.newbyteorder("=")


class RowSource:
    """Rows of a 2-d array read in order, a tile at a time.

    Attributes
    ----------
    n_rows : int or None
        Number of rows (None for a callable source until one pass has counted them).
    n_features : int or None
        Row width (None for a callable source until its first block).
    dtype : numpy.dtype or None
        Dtype of the stored values.
    name : str
        How errors name the source.
    """

    n_rows: int | None = None
    n_features: int | None = None
    dtype: np.dtype | None = None
    name: str = "X"

    def shares_storage_with(self, out: np.ndarray) -> bool:
        """Whether writing ``out`` could change these rows (a file or memory they are read from).

        False where the source cannot tell (the blocks a callable makes).
        """
        return False

    def compute_dtype(self, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
        """The dtype the tiles are computed in (as :func:`gpuclust._arrays.as_tensor` decides)."""
        if dtype is not None:
            return dtype
        return default_dtype(torch.from_numpy(np.empty(0, dtype=_native(self.dtype))).dtype, device)

    def host_tiles(self, tile_rows: int, buffers: list[np.ndarray] | None = None):
        """Yield ``(rows, array)``: consecutive tiles of ``tile_rows`` rows, checked.

        The array is valid until the next-but-one tile is read (two buffers alternate).
        """
        raise NotImplementedError

    def tiles(
        self,
        tile_rows: int,
        device: torch.device,
        dtype: torch.dtype,
        buffers: TileBuffers | None = None,
        prefetch: bool | None = None,
    ):
        """Yield ``(rows, tile)`` with ``tile`` a (m, n_features) tensor of ``dtype`` on ``device``.

        A tile may share memory with a reused buffer: it is valid until the generator is
        resumed (on CUDA, work queued on the current stream before resuming is ordered before
        the buffer's next copy).

        ``buffers``: where the host tiles are read and converted (a fit's
        :class:`~gpuclust._chunks.TileBuffers`, reused by all its passes); new ones for this pass
        by default. Either way no tile allocates memory of its own. ``prefetch``: copy through
        pinned buffers on a side stream, one tile ahead (:class:`_DeviceFeed`); None means on CUDA.
        """
        if device_prefetch(device) if prefetch is None else prefetch:
            for rows, tile in _DeviceFeed(self, tile_rows, device):
                yield rows, tile.to(dtype)
            return
        buffers = TileBuffers() if buffers is None else buffers
        m, d = self._largest_tile(tile_rows), self.n_features
        raw = torch.from_numpy(np.empty(0, dtype=_native(self.dtype))).dtype
        host_buffers = [buffers.get(f"host {i}", (m, d), raw, torch.device("cpu")).numpy() for i in range(2)]
        cpu = torch.device(device).type == "cpu"
        for rows, host in self.host_tiles(tile_rows, host_buffers):
            converted = None if dtype == raw else buffers.get("converted", (m, d), dtype, torch.device("cpu"))
            if host.dtype.byteorder in ("=", "|") and host.flags.writeable:
                tile = torch.from_numpy(host)
                tile = tile if converted is None else converted[: host.shape[0]].copy_(tile)
            else:
                # Rows in another byte order or read-only (a subclass's): numpy copies them into a
                # buffer of the working dtype (torch must not share memory it cannot write).
                tile = buffers.get("converted", (m, d), dtype, torch.device("cpu"))[: host.shape[0]]
                np.copyto(tile.numpy(), host, casting="unsafe")
            yield rows, tile if cpu else tile.to(device)

    def _largest_tile(self, tile_rows: int) -> int:
        """Rows of the largest tile of ``tile_rows``."""
        return tile_rows if self.n_rows is None else max(1, min(tile_rows, self.n_rows))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows at sorted ``indices``, in one pass."""
        out = np.empty((len(indices), self.n_features), dtype=_native(self.dtype))
        lo = 0
        for rows, host in self.host_tiles(SCAN_ROWS):
            hi = int(np.searchsorted(indices, rows.stop, side="left"))
            if hi > lo:
                out[lo:hi] = host[indices[lo:hi] - rows.start]
            lo = hi
        return out

    def _check_block(self, block, where: str):
        """A block must be 2-d, numeric, of the source's width, and finite."""
        if block.ndim != 2:
            raise ValueError(f"{self.name}: {where} has shape {tuple(block.shape)}; every block must be 2-d.")
        if block.dtype.kind not in "biuf":
            raise ValueError(f"{self.name}: {where} has dtype {block.dtype}; blocks must be numeric.")
        if self.n_features is not None and block.shape[1] != self.n_features:
            raise ValueError(
                f"{self.name}: {where} has {block.shape[1]} features, but the blocks before it have "
                f"{self.n_features}; every block must have the same width."
            )
        if block.dtype.kind == "f" and block.size:
            lo, hi = np.min(block), np.max(block)  # NaN propagates through min/max
            if not (np.isfinite(lo) and np.isfinite(hi)):
                bad = int(np.flatnonzero(~np.isfinite(block).all(1))[0])
                raise ValueError(
                    f"{self.name}: {where} contains NaN or infinity (first at row {bad} of the block); "
                    "remove or impute them first."
                )

    def check_count(self, counted: int):
        if self.n_rows is None:
            self.n_rows = counted
        elif counted != self.n_rows:
            raise ValueError(
                f"{self.name} yielded {counted} rows on this pass but {self.n_rows} before: "
                "the source must yield the same rows on every pass."
            )


def with_progress(source, make_bar):
    """``source`` (anything :func:`as_source` takes) reporting each pass: ``make_bar(n_rows)`` is called at
    the start of a pass and must return an object with ``update(rows)`` and ``close()`` (a tqdm bar)."""
    return _ProgressSource(as_source(source), make_bar)


class _ProgressSource(RowSource):
    """A source whose passes report their progress (see :func:`with_progress`)."""

    def __init__(self, inner, make_bar):
        self.inner, self.make_bar, self.name = inner, make_bar, inner.name
        self.n_rows, self.n_features, self.dtype = inner.n_rows, inner.n_features, inner.dtype

    def shares_storage_with(self, out):
        return self.inner.shares_storage_with(out)

    def host_tiles(self, tile_rows, buffers=None):
        bar = self.make_bar(self.inner.n_rows)
        try:
            for rows, host in self.inner.host_tiles(tile_rows, buffers):
                yield rows, host
                bar.update(rows.stop - rows.start)
        finally:
            bar.close()
        self.n_rows = self.inner.n_rows


class _FileSource(RowSource):
    """A C-ordered 2-d region of a file: a .npy file, or the file behind a NumPy memmap."""

    def __init__(self, path, offset, shape, dtype, name):
        self.path, self.offset, self.name = path, int(offset), name
        self.n_rows, self.n_features = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)
        self.mapped = None  # the memmap X came as (from_memmap), for a check by address

    def shares_storage_with(self, out):
        if self.mapped is not None and np.may_share_memory(out, self.mapped):
            return True
        return _same_file(_backing_file(out), self.path) or _file_id(self.path) in _mapped_file_ids(out)

    @classmethod
    def from_path(cls, path):
        if not path.endswith(".npy"):
            raise ValueError(f"{path}: out-of-core input must be a .npy file.")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file.")
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)
                offset = fh.tell()
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc}).") from exc
        if len(shape) != 2:
            raise ValueError(f"{path}: holds an array of shape {shape}; a 2-d (n_samples, n_features) array is needed.")
        if dtype.kind not in "biuf" or dtype.hasobject:
            raise ValueError(f"{path}: holds dtype {dtype}; a numeric (integer or float) array is needed.")
        if fortran and shape[0] > 1 and shape[1] > 1:
            raise ValueError(f"{path}: is stored in Fortran order; rows must be contiguous (save it C-ordered).")
        if shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"{path}: holds an array of shape {shape}, with no samples or no features.")
        needed = offset + shape[0] * shape[1] * dtype.itemsize
        if os.path.getsize(path) < needed:
            raise ValueError(f"{path}: is truncated ({os.path.getsize(path)} bytes, {needed} expected).")
        return cls(path, offset, shape, dtype, path)

    @classmethod
    def from_memmap(cls, mm, name):
        if mm.ndim != 2:
            raise ValueError(f"{name}: a memmap of shape {mm.shape}; a 2-d (n_samples, n_features) array is needed.")
        if mm.dtype.kind not in "biuf":
            raise ValueError(f"{name}: a memmap of dtype {mm.dtype}; a numeric array is needed.")
        if mm.shape[0] < 1 or mm.shape[1] < 1:
            raise ValueError(f"{name}: a memmap of shape {mm.shape}, with no samples or no features.")
        offset = _memmap_file_offset(mm)
        if offset is None:
            # A strided view, or a copy-on-write map whose pages may differ from the file: read through the map.
            return _ArraySource(mm, name)
        source = cls(mm.filename, offset, mm.shape, mm.dtype, f"{name} (memmap of {mm.filename})")
        source.mapped = mm
        return source

    def host_tiles(self, tile_rows, buffers=None):
        row_bytes = self.n_features * self.dtype.itemsize
        if buffers is None:
            m = min(tile_rows, self.n_rows)
            buffers = [np.empty((m, self.n_features), dtype=_native(self.dtype)) for _ in range(2)]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, start in enumerate(range(0, self.n_rows, tile_rows)):
                stop = min(start + tile_rows, self.n_rows)
                host = buffers[i % 2][: stop - start]
                view = memoryview(host.reshape(-1).view(np.uint8))
                done, position = 0, self.offset + start * row_bytes
                while done < view.nbytes:
                    got = os.preadv(fd, [view[done:]], position + done)
                    if got <= 0:
                        raise ValueError(f"{self.name}: ended early, at byte {position + done}.")
                    done += got
                if self.dtype.byteorder not in ("=", "|"):  # the buffers are native: swap the file's bytes in place
                    host.byteswap(inplace=True)
                self._check_block(host, f"rows {start}-{stop - 1}")
                yield slice(start, stop), host
        finally:
            os.close(fd)


def check_fit_out(X, out) -> None:
    """``fit_predict``'s ``out``, before any pass over X: for out-of-core X only, and apart from it."""
    if out is None:
        return
    if not is_out_of_core(X):
        raise ValueError(_OUT_IS_OUT_OF_CORE)
    check_out_apart(as_source(X), out)


def check_out_apart(source: RowSource, out) -> None:
    """ValueError when writing ``out`` could change the rows of ``source`` (see ``shares_storage_with``).

    Results written while later passes still read X would change X: a wrong fit, and the user's
    data rewritten. Cheap (no pass over the data): callers run it before any work too.
    """
    if isinstance(out, np.ndarray) and source.shares_storage_with(out):
        raise ValueError(
            f"out shares memory or its file with {source.name}, which is read while out is written: "
            "pass an array stored elsewhere."
        )


def _backing_file(array) -> str | None:
    """The file an array maps (a memmap, or a view whose base chain reaches one), else None."""
    while array is not None:
        name = getattr(array, "filename", None)
        if isinstance(array, np.memmap) and name:
            return name
        array = getattr(array, "base", None)
    return None


def _block_shares_storage(block: np.ndarray, out: np.ndarray, out_files=None) -> bool:
    """Whether ``out`` overlaps ``block``'s memory, or maps the file ``block`` maps.

    ``out_files``: :func:`_mapped_file_ids` of ``out``, read once by a caller checking many blocks.
    """
    if np.may_share_memory(out, block):
        return True
    name = _backing_file(block)
    if name is None:
        return False
    if _same_file(_backing_file(out), name):
        return True
    return _file_id(name) in (_mapped_file_ids(out) if out_files is None else out_files)


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mapped_file_ids(out: np.ndarray) -> set:
    """(device, inode) of every file this process maps where ``out``'s bytes lie (Linux's
    /proc/self/maps; empty elsewhere). Catches any view of a file mapping, whatever wraps it
    (``np.frombuffer`` over an ``mmap``, a torch tensor's ``numpy()``, ctypes) and whatever path
    or descriptor it was opened by."""
    start = out.__array_interface__["data"][0]
    stop = start + max(out.nbytes, 1)
    found = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) < 6 or fields[4] == "0":  # anonymous memory
                    continue
                low, high = (int(a, 16) for a in fields[0].split("-"))
                if low < stop and start < high:
                    major, minor = (int(v, 16) for v in fields[3].split(":"))
                    found.add((os.makedev(major, minor), int(fields[4])))
    except OSError:
        pass
    return found


def _same_file(a: str | None, b: str | None) -> bool:
    """Whether two paths name one file (also through links); False when either is None or gone."""
    if a is None or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _memmap_file_offset(mm: np.memmap) -> int | None:
    """Byte offset in ``mm.filename`` of ``mm``'s first row, if its rows lie there contiguously; else None."""
    mapping = getattr(mm, "_mmap", None)
    if mapping is None or mm.filename is None or mm.mode == "c" or not mm.flags.c_contiguous:
        return None
    try:
        base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError):
        return None
    start = mm.offset - mm.offset % mmap.ALLOCATIONGRANULARITY
    if mm.mode in ("r+", "w+"):
        mm.flush()  # pread reads the file: write out what the map holds
    return start + (mm.ctypes.data - base)


class _ArraySource(RowSource):
    """Rows read through an array's own indexing (a strided or copy-on-write memmap)."""

    def __init__(self, array, name):
        self.array, self.name = array, name
        self.n_rows, self.n_features = int(array.shape[0]), int(array.shape[1])
        self.dtype = np.dtype(array.dtype).newbyteorder("=")

    def shares_storage_with(self, out):
        return _block_shares_storage(self.array, out)

    def host_tiles(self, tile_rows, buffers=None):
        if buffers is None:
            m = min(tile_rows, self.n_rows)
            buffers = [np.empty((m, self.n_features), dtype=self.dtype) for _ in range(2)]
        for i, start in enumerate(range(0, self.n_rows, tile_rows)):
            stop = min(start + tile_rows, self.n_rows)
            host = buffers[i % 2][: stop - start]
            np.copyto(host, self.array[start:stop], casting="equiv")  # at most the byte order changes
            self._check_block(host, f"rows {start}-{stop - 1}")
            yield slice(start, stop), host


class _BlockSource(RowSource):
    """Blocks from a sequence, or from a callable returning a new iterator each pass, cut into tiles."""

    def __init__(self, make_iter, name, n_blocks=None):
        self.make_iter, self.name, self.static = make_iter, name, n_blocks is not None
        first = True
        for block in self._blocks():
            self.n_features, self.dtype = int(block.shape[1]), block.dtype
            first = False
            break
        if first:
            raise ValueError(f"{name} yielded no blocks; at least one row is needed.")
        if n_blocks is not None:
            self.n_rows = sum(int(b.shape[0]) for b in self._blocks())

    def shares_storage_with(self, out):
        # A sequence's blocks are fixed: each is checked. A callable's may differ from pass to
        # pass (and producing them may be a pass over a file): not checked, as its docs say.
        if not self.static:
            return False
        out_files = _mapped_file_ids(out)
        return any(_block_shares_storage(block, out, out_files) for block in self._blocks())

    def _blocks(self):
        it = self.make_iter()
        if not isinstance(it, Iterator) and hasattr(it, "__iter__"):
            it = iter(it)
        if not isinstance(it, Iterator):
            raise ValueError(
                f"{self.name}: the callable returned a {type(it).__name__}, not an iterator of row blocks."
            )
        for i, block in enumerate(it):
            if isinstance(block, torch.Tensor):
                block = block.detach().cpu().numpy()
            block = np.asarray(block)
            if block.ndim != 2:
                raise ValueError(f"{self.name}: block {i} has shape {block.shape}; every block must be 2-d.")
            yield block

    def host_tiles(self, tile_rows, buffers=None):
        d = self.n_features
        m = tile_rows if self.n_rows is None else min(tile_rows, self.n_rows)
        if buffers is None:
            buffers = [np.empty((m, d), dtype=_native(self.dtype)) for _ in range(2)]
        filled, start, count, tile_no = 0, 0, 0, 0
        for i, block in enumerate(self._blocks()):
            self._check_block(block, f"block {i} (rows {count}-{count + block.shape[0] - 1})")
            if block.dtype != self.dtype:
                raise ValueError(
                    f"{self.name}: block {i} (rows {count}-{count + block.shape[0] - 1}) has dtype {block.dtype}, "
                    f"but block 0 has {self.dtype}; every block must have the same dtype."
                )
            count += block.shape[0]
            at = 0
            while at < block.shape[0]:
                take = min(m - filled, block.shape[0] - at)
                buffers[tile_no % 2][filled : filled + take] = block[at : at + take]
                filled, at = filled + take, at + take
                if filled == m:
                    yield slice(start, start + m), buffers[tile_no % 2]
                    start, filled, tile_no = start + m, 0, tile_no + 1
        if filled:
            yield slice(start, start + filled), buffers[tile_no % 2][:filled]
        self.check_count(count)


class _DeviceFeed:
    """Host -> pinned buffer -> device, double-buffered: tile ``i + 1`` is copied on a side stream
    while tile ``i`` is computed on the current stream.

    Two pinned host buffers and two device buffers alternate. Before a pinned buffer is refilled,
    its previous copy must have finished (its copy event); before a device buffer is overwritten,
    the compute stream must be done with the tile it held (an event recorded when the consumer
    asked for the next tile). The streams and events are CUDA's on a GPU; with ``prefetch=True``
    on the CPU they are stand-ins that run at once, so the buffer rotation is tested without a GPU.
    """

    def __init__(self, source, tile_rows, device):
        self.source, self.device = source, device
        self.m = tile_rows if source.n_rows is None else min(tile_rows, source.n_rows)
        self.cuda = device.type == "cuda"

    def _stream(self):
        return torch.cuda.Stream(self.device) if self.cuda else _ImmediateStream()

    def _on(self, stream):
        """Make ``stream`` the current one inside the block (CUDA only)."""
        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def _event(self):
        return torch.cuda.Event() if self.cuda else _ImmediateEvent()

    def __iter__(self):
        d, raw = self.source.n_features, torch.from_numpy(np.empty(0, dtype=_native(self.source.dtype))).dtype
        pinned = [torch.empty((self.m, d), dtype=raw, pin_memory=self.cuda) for _ in range(2)]
        staged = [torch.empty((self.m, d), dtype=raw, device=self.device) for _ in range(2)]
        buffers = [p.numpy() for p in pinned]
        copied = [self._event(), self._event()]  # the copy into staged[j] has finished
        released = [None, None]  # the compute stream is done with staged[j]
        side = self._stream()
        current = torch.cuda.current_stream(self.device) if self.cuda else _ImmediateStream()
        pending = None
        for i, (rows, host) in enumerate(self.source.host_tiles(self.m, buffers)):
            j, n = i % 2, rows.stop - rows.start
            if not np.shares_memory(host, buffers[j]):
                buffers[j][:n] = host
            with self._on(side):  # issue tile i's copy before handing over tile i - 1
                if released[j] is not None:
                    side.wait_event(released[j])
                staged[j][:n].copy_(pinned[j][:n], non_blocking=True)
                copied[j].record(side)
            if pending is not None:
                yield self._hand_over(pending, staged, copied, current)
                # The consumer has queued its work on that tile: its buffer is free once that has run.
                released[pending[1]] = self._event()
                released[pending[1]].record(current)
            pending = (rows, j, n)
            # host_tiles refills pinned[1 - j] next: the copy out of it must have finished.
            if released[1 - j] is not None:
                copied[1 - j].synchronize()
        if pending is not None:
            yield self._hand_over(pending, staged, copied, current)

    @staticmethod
    def _hand_over(pending, staged, copied, current):
        """Tile ``pending`` for the compute stream, once its copy has landed (in the working dtype)."""
        rows, j, n = pending
        current.wait_event(copied[j])
        return rows, staged[j][:n]


class _ImmediateStream:
    """CPU stand-in for a CUDA stream: work runs when issued, so waiting is a no-op."""

    def wait_event(self, event):
        event.synchronize()


class _ImmediateEvent:
    """CPU stand-in for a CUDA event."""

    recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        if not self.recorded:
            raise RuntimeError("waited on an event that was never recorded")


def scan(source: RowSource, device: torch.device, dtype: torch.dtype):
    """One checked pass: ``(n_rows, column sums, sum of squared norms, largest squared norm)`` in float64.

    Every block is validated (width, dtype, finite values) before anything is fitted.
    """
    d = source.n_features
    col = torch.zeros(d, dtype=torch.float64, device=device)
    total_sq = torch.zeros((), dtype=torch.float64, device=device)
    largest = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    buffers = TileBuffers()
    for rows, tile in source.tiles(SCAN_ROWS, device, dtype, buffers):
        _add_column_sums(col, tile)
        sq = buffers.get("norms", (tile.shape[0],), tile.dtype, tile.device)
        sq = torch.linalg.vector_norm(tile, dim=1, out=sq).square_()
        total_sq += sq.sum(dtype=torch.float64)
        largest = torch.maximum(largest, sq.max().to(torch.float64))
        n = rows.stop
    source.check_count(n)
    return n, col, float(total_sq), float(largest)


def column_sums(X: torch.Tensor) -> torch.Tensor:
    """Column sums of an in-memory X in float64, in the same tiles as :func:`scan`'s (the same bits).

    The one way gpuclust sums columns (data mean, tolerance, centring). A sparse CSR X adds its
    stored values, in float64, into their columns.
    """
    col = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    if X.layout == torch.sparse_csr:
        return col.index_add_(0, X.col_indices(), X.values().to(torch.float64))
    for start in range(0, X.shape[0], SCAN_ROWS):
        _add_column_sums(col, X[start : start + SCAN_ROWS])
    return col


def _add_column_sums(col: torch.Tensor, tile: torch.Tensor) -> None:
    """``col +=`` the column sums of ``tile`` in float64, in blocks of :data:`SUM_BLOCK_BYTES` from its first row."""
    step = max(1, SUM_BLOCK_BYTES // (8 * max(1, tile.shape[1])))
    for start in range(0, tile.shape[0], step):
        col += tile[start : start + step].sum(0, dtype=torch.float64)


def centred_sums(rows, shift: torch.Tensor):
    """Column sums and sum of squared norms (float64) of ``rows`` minus ``shift``, in :func:`scan`'s tiles.

    The same bits as :func:`column_sums` and :func:`squared_norms_total` of the centred rows held
    in memory: one more pass over out-of-core data that sit far from the origin.
    """
    col = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    total_sq = torch.zeros((), dtype=torch.float64, device=rows.device)
    for _, tile in rows.tiles(SCAN_ROWS):
        tile = tile - shift
        _add_column_sums(col, tile)
        total_sq += torch.linalg.vector_norm(tile, dim=1).square_().sum(dtype=torch.float64)
    return col, total_sq


def squared_norms_total(x_sq: torch.Tensor) -> torch.Tensor:
    """Sum in float64 of in-memory rows' squared norms ``x_sq``, in :func:`scan`'s tiles and order (its bits)."""
    total = torch.zeros((), dtype=torch.float64, device=x_sq.device)
    for start in range(0, x_sq.shape[0], SCAN_ROWS):
        total += x_sq[start : start + SCAN_ROWS].sum(dtype=torch.float64)
    return total


def device_prefetch(device: torch.device) -> bool:
    """Whether tiles read from a source go through :class:`_DeviceFeed` by default: on CUDA."""
    return torch.device(device).type == "cuda"


# Seeding out of core or across ranks reads at most this many values (rows x features): 128 MiB in float32.
INIT_SAMPLE_ELEMENTS = 1 << 25


def init_sample(rows, weights, comm, random_state, max_elements=None):
    """The rows seeding draws from, the same on every rank; the one rule of every estimator.

    In memory in one process: all rows, as they are (scikit-learn's seeding, exactly). Out of
    core or under torch.distributed: all rows (in rank order) while every rank's rows fit in
    ``max_elements`` values (:data:`INIT_SAMPLE_ELEMENTS` by default), else a uniform sample
    without replacement from every rank in proportion to its rows, in row order, drawn from
    ``random_state`` (one draw, the same on every rank; a different stream per rank).

    Parameters
    ----------
    rows : TensorRows or SourceRows
        This rank's rows.
    weights : tensor of shape (n_local,) or None
        Sample weights (on the rows' device in memory, on the host out of core); None: ones.

    Returns
    -------
    (X_sample, weights_sample) : tensors on the rows' device, in their dtype.
    """
    n_local, d = rows.shape
    device, dtype = rows.device, rows.dtype
    if not rows.out_of_core and comm.world_size == 1:
        return rows.tensor, torch.ones(n_local, dtype=dtype, device=device) if weights is None else weights
    max_elements = INIT_SAMPLE_ELEMENTS if max_elements is None else max_elements
    n_global = int(comm.sum_float(n_local, "sample count"))
    limit = max(1, max_elements // d)
    if n_global > limit:
        seed = int(random_state.randint(2**31 - 1))
        take = min(n_local, max(1, math.ceil(n_local * limit / n_global)))
        idx = np.sort(np.random.default_rng(seed + comm.rank).choice(n_local, size=take, replace=False))
    else:
        idx = np.arange(n_local)
    if rows.out_of_core:
        X = torch.from_numpy(rows.source.rows(idx)).to(device=device, dtype=dtype)
    else:
        X = rows.tensor[torch.as_tensor(idx, device=device)]
    w = torch.ones(len(idx), dtype=dtype, device=device) if weights is None else weights[idx].to(device, dtype)
    if comm.world_size == 1:
        return X, w
    gathered = comm.gather_rows(torch.cat([X, w.unsqueeze(1)], 1), "init sample")
    return gathered[:, :-1], gathered[:, -1]


def rows_of(X: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows ``rows`` (a slice) of X: a view for dense X, a CSR tensor sharing X's indices and values for sparse."""
    if X.layout != torch.sparse_csr:
        return X[rows]
    crow = X.crow_indices()[rows.start : rows.stop + 1]
    lo, hi = int(crow[0]), int(crow[-1])
    return sparse_csr(crow - lo, X.col_indices()[lo:hi], X.values()[lo:hi], (rows.stop - rows.start, X.shape[1]))


_OUT_IS_OUT_OF_CORE = "out= is for out-of-core X (a memmap, a .npy path or row blocks)."


class TensorRows:
    """In-memory data as the estimators' passes see it: tiles are slices of the tensor (no copy).

    ``buffers``: the :class:`~gpuclust._chunks.TileBuffers` the passes over these rows share.
    """

    out_of_core = False

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.shape, self.device, self.dtype = tensor.shape, tensor.device, tensor.dtype
        self.buffers = TileBuffers()  # what the passes over these rows reuse tile after tile

    def tiles(self, tile_rows: int):
        """Yield ``(rows, X[rows])`` for consecutive slices of ``tile_rows`` rows (:func:`rows_of`)."""
        for start in range(0, self.shape[0], tile_rows):
            rows = slice(start, min(start + tile_rows, self.shape[0]))
            yield rows, rows_of(self.tensor, rows)

    def empty(self, shape, dtype, out=None):
        """A result array on the data's device (``out`` is for out-of-core data only)."""
        if out is not None:
            raise ValueError(_OUT_IS_OUT_OF_CORE)
        return torch.empty(shape, dtype=dtype, device=self.device)

    def result(self, t: torch.Tensor, kind, out=None):
        """A per-sample result in the caller's array type (:func:`gpuclust._arrays.to_output`)."""
        return to_output(t, kind)


class SourceRows:
    """Out-of-core data as the estimators' passes see it: tiles read from a :class:`RowSource`.

    Per-sample results go to host memory (a NumPy array, or the caller's ``out``), never to one
    device array of n_samples rows. Every pass reads into the same host buffers (``buffers``, made
    on the first pass and kept while this object lives: one fit, or one inference call).
    """

    out_of_core = True

    def __init__(self, source: RowSource, device: torch.device, dtype: torch.dtype, prefetch: bool | None = None):
        self.source, self.device, self.dtype = source, device, dtype
        self.prefetch = device_prefetch(device) if prefetch is None else bool(prefetch)
        self.shape = (source.n_rows, source.n_features)
        self.buffers = TileBuffers()

    def tiles(self, tile_rows: int):
        """Yield ``(rows, tile)`` with the tile on the compute device (``prefetch``: see :meth:`RowSource.tiles`)."""
        yield from self.source.tiles(tile_rows, self.device, self.dtype, self.buffers, self.prefetch)

    def empty(self, shape, dtype, out=None):
        """A host tensor sharing memory with a new NumPy array, or with ``out`` (checked)."""
        if out is None:
            return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
        if not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(shape):
            raise ValueError(
                f"out must be a NumPy array (or memmap) of shape {tuple(shape)}, got "
                f"{type(out).__name__} of shape {getattr(out, 'shape', None)}."
            )
        want = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        # Labels fit in any native integer of 32 bits or more (a narrower one would wrap them
        # silently); other results need their own dtype.
        fits = out.dtype == want or (
            want.kind == "i" and out.dtype.kind in "iu" and out.dtype.itemsize >= 4 and out.dtype.isnative
        )
        if not out.flags.writeable or not out.flags.c_contiguous or not fits:
            what = "an integer dtype of 32 bits or more" if want.kind == "i" else f"dtype {want}"
            raise ValueError(
                f"out must be a writable, C-contiguous array of {what} (native byte order); "
                f"got dtype {out.dtype}{'' if out.flags.writeable else ', read-only'}."
            )
        check_out_apart(self.source, out)
        return torch.from_numpy(out)

    def result(self, t: torch.Tensor, kind=None, out=None):
        """A per-sample result: the NumPy array behind ``t``, or the caller's ``out`` it was written into."""
        return t.numpy() if out is None else out
