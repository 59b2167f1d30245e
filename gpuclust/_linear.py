"""``X @ W.T + b`` for the tall, skinny products of clustering, on the fastest exact path.

The assignment step's GEMM (n rows against k centres, k small) is the cost of a Lloyd
iteration. On the CPU, torch's ``addmm`` calls MKL's sgemm, which on 60000x784 pixels
against 10 centres ran at about twice the time of reading X once (14 ms against 7 ms on
2 Xeon cores); oneDNN's inner-product primitive, which torch exposes as the operator
``torch.ops.mkldnn._linear_pointwise`` (what ``torch.compile`` emits for a CPU linear layer),
ran the same product in 9.7 ms, in full float32, and gives every row the same bits whatever
the thread count and the tile it is in (except one-row tiles, which take a matrix-vector
kernel). The operator is not public API: it is probed once and ``addmm`` is used wherever it
is missing or disagrees.
"""

from __future__ import annotations

import functools

import torch


def _probe_onednn() -> bool:
    """Whether torch's oneDNN linear runs here and agrees with ``addmm`` on a small product."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # float32 on the CPU whatever the caller's default dtype, and outside any autocast region:
        # the answer is cached for the process, so it must not depend on where it was first asked.
        with torch.autocast("cpu", enabled=False):
            g = torch.Generator().manual_seed(0)
            f32 = dict(generator=g, dtype=torch.float32, device="cpu")
            A, W, b = torch.randn(37, 19, **f32), torch.randn(5, 19, **f32), torch.randn(5, **f32)
            got = torch.ops.mkldnn._linear_pointwise(A, W, b, "none", [None], "")
            ref = torch.addmm(b, A, W.T)
        same = got.shape == ref.shape and got.dtype == ref.dtype
        return same and bool(torch.allclose(got, ref, rtol=1e-5, atol=1e-5))
    except Exception:  # a torch without the operator, a build without oneDNN, a CPU it refuses
        return False


@functools.cache
def onednn_available() -> bool:
    """Whether :func:`linear` takes oneDNN's path for float32 CPU inputs (probed once per process).

    A property of this torch build and CPU, not a setting: the same answer for every call.
    """
    return _probe_onednn()


def linear(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``X @ W.T + b``: X (m, d) dense, W (k, d), b (k,); a new (m, k) tensor.

    oneDNN on the CPU for float32 rows stored contiguously (it has no float64 kernel);
    ``addmm`` everywhere else, CUDA included.
    """
    if (
        X.device.type == "cpu"
        and X.dtype == torch.float32
        and X.layout == torch.strided
        and X.dim() == 2
        and X.stride(1) == 1
        and X.shape[0] > 0
        and onednn_available()
    ):
        return torch.ops.mkldnn._linear_pointwise(X, W.contiguous(), b.contiguous(), "none", [None], "")
    return torch.addmm(b, X, W.T)
