"""The floor of a scale case: the least time any implementation could take on a given card.

A case's floor is written into its row before anything is measured. Per iteration it is the larger of

- the bytes of X read once (one pass: a kernel that assigns and accumulates in the same read) at the
  card's HBM bandwidth, and
- the GEMM floating-point operations at the card's peak for the precision the case uses
  (tensor cores for tf32/bf16/fp16, the FP32 units for "highest");

and the row also says how many bytes of N x K matrices an unfused iteration writes and reads back
(what a fused kernel, holding its tile in registers, avoids), and the floor that traffic would set.

GEMM FLOPs per iteration (2 per multiply-add):

- KMeans: the assignment product X @ C^T, ``2 N D K`` (the centre sums are N D additions, not counted);
- diag: E-step ``X^2 @ (1/var)^T`` and ``X @ (mu/var)^T``, M-step ``R^T X`` and ``R^T X^2``: ``8 N D K``;
- spherical: E-step ``X @ mu^T``, M-step ``R^T X``: ``4 N D K`` (the N K norm terms are not GEMMs);
- full: E-step ``(X - mu_k) @ L_k`` for every k, M-step the K weighted ``D x D`` scatter matrices:
  ``4 N K D^2``.

Unfused N x K traffic per iteration, float32: KMeans writes the distances and reads them back for the
argmin (``2 x 4 N K`` bytes); a mixture writes the log-probabilities, reads them for the logsumexp,
writes the responsibilities and reads them for the M-step (``4 x 4 N K``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CardPeaks:
    """A card's datasheet peaks: HBM bytes/s and dense FLOP/s per precision (no 2:4 sparsity)."""

    name: str
    hbm_bytes_per_s: float
    flops_per_s: dict  # precision ("highest", "tf32", "bf16", "fp16") -> dense FLOP/s
    source: str


# NVIDIA's H100 and H200 datasheets (nvidia.com/en-us/data-center/h100/ and /h200/). The H100 SXM
# table, as mirrored at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html: 3,350 GB/s HBM3,
# FP32 67 TFLOPS, TF32 Tensor Core 989 TFLOPS*, BF16/FP16 Tensor Core 1,979 TFLOPS*, "* shown with
# sparsity; specifications 1/2 lower without sparsity" (dense: TF32 494.7, BF16/FP16 989.4, per
# https://glennklockwood.com/garden/processors/h100). The H200 SXM: the same GH100 compute (same
# Tensor Core rows in its datasheet), 141 GB HBM3e at 4.8 TB/s (https://aiwiki.ai/wiki/nvidia_h200,
# citing NVIDIA's H200 page). Measured on this workplace's cards (KINDS.md): an 8192^3 bf16 product
# at about 790 TFLOP/s, a device-to-device copy at 3.0 (H100) and 4.3 (H200) TB/s.
_HOPPER_FLOPS = {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}
CARD_PEAKS = {
    "h100-sxm": CardPeaks("NVIDIA H100 SXM 80GB", 3.35e12, _HOPPER_FLOPS, "NVIDIA H100 datasheet (SXM column)"),
    "h200": CardPeaks("NVIDIA H200 141GB", 4.8e12, _HOPPER_FLOPS, "NVIDIA H200 datasheet (SXM column)"),
}


def card_peaks(device_name: str | None) -> CardPeaks | None:
    """The peaks of the card ``torch.cuda.get_device_name()`` names, or None for a card not in the table.

    "NVIDIA H200" -> H200; "NVIDIA H100 80GB HBM3" (the SXM part's name) -> H100 SXM. The H100 PCIe
    (HBM2e, 2.0 TB/s) and NVL are other cards: None, and their rows say the floor is unknown.
    """
    name = (device_name or "").upper()
    if "H200" in name:
        return CARD_PEAKS["h200"]
    if "H100" in name and ("SXM" in name or "HBM3" in name) and "PCIE" not in name and "NVL" not in name:
        return CARD_PEAKS["h100-sxm"]
    return None


def gemm_flops(algorithm, covariance_type, n, d, k) -> int:
    """GEMM floating-point operations of one iteration (module docstring)."""
    if algorithm == "kmeans":
        return 2 * n * d * k
    per = {"diag": 8 * n * d * k, "spherical": 4 * n * d * k, "full": 4 * n * k * d * d, "tied": 4 * n * k * d}
    return per[covariance_type]


def unfused_nk_bytes(algorithm, n, k, itemsize=4) -> int:
    """Bytes of N x K matrices an unfused iteration writes and reads back (module docstring)."""
    return (2 if algorithm == "kmeans" else 4) * n * k * itemsize


def floor_fields(algorithm, covariance_type, n, d, k, precision, peaks: CardPeaks | None, itemsize=4) -> dict:
    """The floor columns of a row, written before it is measured (None where the card is unknown)."""
    flops = gemm_flops(algorithm, covariance_type, n, d, k)
    x_bytes = n * d * itemsize
    nk = unfused_nk_bytes(algorithm, n, k)
    row = {
        "x_bytes_per_pass": x_bytes,
        "gemm_flops_per_iter": flops,
        "nk_bytes_avoided_per_iter": nk,
        "floor_precision": precision,
        "floor_card": None if peaks is None else peaks.name,
        "floor_source": None if peaks is None else peaks.source,
    }
    if peaks is None:
        row.update(floor_hbm_s=None, floor_gemm_s=None, floor_s=None, floor_unfused_s=None,
                   floor_note="card not in the peaks table: no floor")  # fmt: skip
        return row
    hbm = x_bytes / peaks.hbm_bytes_per_s
    gemm = flops / peaks.flops_per_s[precision]
    row.update(
        floor_hbm_s=hbm,
        floor_gemm_s=gemm,
        floor_s=max(hbm, gemm),
        floor_unfused_s=max(hbm + nk / peaks.hbm_bytes_per_s, gemm),
        floor_note="max(X once at HBM bandwidth, GEMM FLOPs at the precision's dense peak)",
    )
    return row
