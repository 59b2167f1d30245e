"""The nearest centre of each row of a CPU score block, faster than ``torch.min(dim=1)``.

On the CPU ``torch.min(scores, dim=1)`` (value and index) does not vectorize over a row: on 2
Xeon cores it took 90 ms for a million rows against 256 centres, twice the GEMM that made the
scores. ``torch.amin`` (the value alone) vectorizes and took 6 ms. So the index is found in
vectorized passes: the row minimum, a 0/1 mask of the entries equal to it, the mask times
descending weights ``k, k-1, ..., 1``, and the row maximum of that, which is the weight of the
first entry equal to the minimum. Exact: the same value, and the same first index on ties,
as ``torch.min``. Measured on that machine (million rows, 4 MB blocks): k=32 22 ms -> 8 ms,
k=256 90 -> 35 ms, k=1024 289 -> 132 ms; below 32 columns ``torch.min`` was as fast or faster.
"""

from __future__ import annotations

import torch

# Fewer columns than this: torch.min(dim=1) (measured even or faster at k <= 24, slower at k >= 32).
MASKED_ARGMIN_FROM = 32


def first_min(scores: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None):
    """Row minima and the first column attaining each: ``torch.min(scores, dim=1, out=out)``.

    Parameters
    ----------
    scores : (m, k) float tensor on the CPU, C-contiguous, finite
    out : (values (m,), indices (m,) int64)
        Where the result is written.
    mask : (m, k) tensor of ``scores``' dtype, optional
        Scratch for the mask (reused across blocks); a new one if None.

    Returns
    -------
    out
    """
    values, indices = out
    m, k = scores.shape
    # The weights must be exact in the scores' dtype: float32 or float64, k <= 2**24 (bf16 and
    # float16 hold integers exactly only to 256 and 2048).
    wide = scores.dtype in (torch.float32, torch.float64)
    if not wide or not MASKED_ARGMIN_FROM <= k <= 2**24 or scores.device.type != "cpu" or m == 0:
        return torch.min(scores, dim=1, out=out)
    if mask is None:
        mask = torch.empty_like(scores)
    torch.amin(scores, dim=1, out=values)
    torch.eq(scores, values.unsqueeze(1), out=mask)
    mask.mul_(torch.arange(k, 0, -1, dtype=scores.dtype))
    first = torch.amax(mask, dim=1)  # k - (first index), or 0 where no entry equals the minimum
    if bool((first == 0).any()):
        # A NaN row (no entry equals its minimum): torch.min's own answer, whatever it is.
        return torch.min(scores, dim=1, out=out)
    indices.copy_(first.neg_().add_(k))
    # The value at that index, as torch.min gives it: amin may return -0.0 where the first minimum is +0.0.
    torch.gather(scores, 1, indices.unsqueeze(1), out=values.unsqueeze(1))
    return out
