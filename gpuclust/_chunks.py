"""Row tiles: how many samples to process at once under a memory budget, and the buffers tiles reuse."""

from __future__ import annotations

import math

import torch

# Tiles only bound temporary memory (X itself is sliced, never copied); larger tiles
# mean fewer kernel launches, so the defaults are generous.
DEFAULT_BUDGET_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}


def tile_rows_for(
    n_samples: int,
    bytes_per_row: int,
    device: torch.device,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> int:
    """Rows per tile: ``chunk_size`` if given, else at most ``memory_budget // bytes_per_row``, in equal tiles.

    ``bytes_per_row`` is the temporary memory one sample needs in the tiled
    computation (for example ``(n_clusters + n_features) * itemsize``). ``chunk_size`` and
    ``memory_budget`` are the estimators' parameters, already validated by ``_fit_context``.
    """
    if chunk_size is not None:
        return max(1, min(int(chunk_size), n_samples))
    budget = budget_bytes(device, memory_budget)
    return balanced_tile_rows(n_samples, max(1, min(n_samples, int(budget) // max(1, int(bytes_per_row)))))


def budget_bytes(device: torch.device, memory_budget: int | None = None) -> int:
    """``memory_budget``, or the device's default budget for temporaries when it is None."""
    return memory_budget if memory_budget is not None else DEFAULT_BUDGET_BYTES.get(device.type, 64 << 20)


def tile_slices(n_samples: int, tile_rows: int):
    """Yield ``slice`` objects covering ``range(n_samples)`` in steps of ``tile_rows``."""
    for start in range(0, n_samples, tile_rows):
        yield slice(start, min(start + tile_rows, n_samples))


def balanced_tile_rows(n_samples: int, tile_rows: int) -> int:
    """At most ``tile_rows`` rows per tile, in as few tiles as that allows, all but the last of equal size.

    The last tile is shorter by less than the number of tiles (10 rows at most 3 per tile: 3, 3, 3, 1).

    60000 rows in tiles of 20815 (the last 18370 long) took 12.5 ms per assignment pass on the
    CPU, in tiles of 20000 11.1 ms: equal tiles keep both threads busy to the end of every tile.
    """
    n_tiles = -(-n_samples // max(1, tile_rows))
    return max(1, -(-n_samples // max(1, n_tiles)))


class TileBuffers:
    """Named buffers that a fit's passes reuse from tile to tile, instead of new tensors per tile.

    ``get(name, shape, ...)`` hands out a contiguous tensor of ``shape`` at the start of ``name``'s
    storage, made on the first use at that size (the first tile is the largest) and made again
    only when a larger one is asked for. Every buffer starts where a new tensor would (torch's
    allocator aligns them alike), so a product gives the same bits in a buffer as in a new tensor.
    A pass that made new (rows, k) tensors per tile let glibc keep their freed pages in per-thread
    arenas (its mmap threshold rises with every large free): with two threads a streamed fit's
    resident memory grew through every pass. ``allocations`` counts the buffers made.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0

    def get(self, name: str, shape, dtype: torch.dtype, device: torch.device, fill=None) -> torch.Tensor:
        """A tensor of ``shape`` in ``name``'s buffer; ``fill``: the value a new buffer is filled with.

        The contents are what the buffer's last user left (``fill``'s value where no user writes it).
        """
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or not _same_device(buf.device, device) or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            if fill is not None:
                buf.fill_(fill)
            self._buffers[name] = buf
            self.allocations += 1
        return buf[:numel].view(shape)

    def grown(self, name: str, size: int, dtype: torch.dtype, device: torch.device, used: int) -> torch.Tensor:
        """``name``'s 1-d buffer with room for ``size`` values, its first ``used`` kept (it at least doubles)."""
        buf = self._buffers.get(name)
        if buf is not None and buf.numel() >= size:
            return buf
        grown = torch.empty(max(int(size), 2 * (0 if buf is None else buf.numel())), dtype=dtype, device=device)
        if used:
            grown[:used].copy_(buf[:used])
        self._buffers[name] = grown
        self.allocations += 1
        return grown


def _same_device(have: torch.device, want) -> bool:
    """Whether a tensor on ``have`` is on ``want`` (``"cuda"`` means the current GPU's index, whichever)."""
    want = torch.device(want)
    return have.type == want.type and (want.index is None or have.index == want.index)


# Bytes of one block of a tile's (rows, k) products where the product returns a new tensor
# (oneDNN's linear on the CPU, which takes no ``out=``): the tile is multiplied in blocks of
# rows so that this, not a whole tile's (rows, k), is what each product allocates.
PRODUCT_BLOCK_BYTES = 4 << 20


def row_blocks(n_rows: int, bytes_per_row: int, block_bytes: int = PRODUCT_BLOCK_BYTES):
    """Yield slices covering ``range(n_rows)`` of at most ``block_bytes`` each (at least 2 rows).

    No block has one row unless ``n_rows`` is 1 (a one-row remainder joins the block before):
    oneDNN gives a row the same bits in any block except a one-row one (a matrix-vector kernel).
    """
    step = max(2, int(block_bytes) // max(1, int(bytes_per_row)))
    start = 0
    while start < n_rows:
        stop = min(start + step, n_rows)
        if n_rows - stop == 1:
            stop = n_rows
        yield slice(start, stop)
        start = stop


def linear_into(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`gpuclust._linear.linear` ``(X, W, b)`` written into ``out`` (m, k), with its bits.

    oneDNN's float32 CPU product returns a new tensor: it runs in blocks of rows
    (:func:`row_blocks`) copied into ``out``, so that a block's products, not the tile's, are
    allocated at a time. Elsewhere ``linear`` is ``addmm``, which writes into ``out`` itself.
    """
    from ._linear import linear

    if X.device.type == "cpu" and X.dtype == torch.float32:
        for block in row_blocks(X.shape[0], W.shape[0] * X.element_size()):
            out[block].copy_(linear(X[block], W, b))
        return out
    return torch.addmm(b, X, W.T, out=out)
