"""Markdown tables of the scale grid, from its stored rows: the floor, "x of floor", and every peer's ratio."""

from __future__ import annotations

GPUCLUST = "gpuclust"


def _ms(seconds):
    return "" if seconds is None else f"{1e3 * seconds:.3f}"


def _quality_cell(r):
    if r["algorithm"] == "kmeans":
        v = r.get("inertia_per_row_f64")
        return "" if v is None else f"inertia/row {v:.6g}"
    v = r.get("mean_log_likelihood_f64", r.get("mean_log_likelihood_own"))
    return "" if v is None else f"mean log-lik. {v:.6g}"


def _ratio_cell(r, ours):
    """How many times gpuclust's time this row's is (>1: gpuclust faster), same case and mode."""
    if r["library"] == GPUCLUST or ours is None:
        return ""
    return f"{r['seconds_median'] / ours['seconds_median']:.2f}x"


def _relative_cell(r, ours):
    """This row's quality relative to gpuclust's float32 row (objective or log-likelihood)."""
    key = "inertia_per_row_f64" if r["algorithm"] == "kmeans" else "mean_log_likelihood_f64"
    if ours is None or r is ours or r.get(key) is None or not ours.get(key):
        return ""
    return f"{(r[key] - ours[key]) / abs(ours[key]):+.2e}"


def _agreement_cell(r):
    a = r.get("label_agreement", r.get("exact_label_agreement"))
    ari = r.get("ari_vs_gpuclust")
    return ("" if a is None else f"{a:.4f}") + ("" if ari is None else f" (ARI {ari:.3f})")


def scale_table(rows) -> list:
    """The markdown lines: one table per case, gpuclust first, then each peer with its ratio."""
    env = next((r["environment"] for r in rows if r.get("environment")), {}) or {}
    lines = [
        f"Device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}, scikit-learn "
        f"{env.get('sklearn', '?')}; commit {env.get('git_commit', '?')}. Floor: max(X read once at HBM bandwidth, "
        "GEMM FLOPs at the precision's dense datasheet peak); unfused: plus the N x K traffic a fused kernel avoids. "
        "'peer / gpuclust' > 1: gpuclust is faster. Label agreement: with gpuclust's float32 labels (gpuclust's "
        "own row: with the float64 nearest centre or most probable component) on the float64 subsample; ARI "
        "where the starts differ.",
    ]
    for name in dict.fromkeys(r["name"] for r in rows):
        case_rows = [r for r in rows if r["name"] == name]
        first = case_rows[0]
        floor = first.get("floor_s")
        lines += ["", f"### {name} (floor at {first['floor_precision']}: "
                  + (f"{_ms(floor)} ms/iter, unfused {_ms(first.get('floor_unfused_s'))} ms; {first['floor_card']})"
                     if floor else f"{first.get('floor_note', 'no floor')})"), ""]  # fmt: skip
        lines += [
            "| library | mode | ms (median) | spread | floor ms | x of floor | peer / gpuclust | iterations | "
            "peak GiB | quality (float64) | vs gpuclust | label agreement | note |",
            "|" + "---|" * 13,
        ]
        for r in case_rows:
            lines.append(_line(r, case_rows, floor))
    return lines


def _line(r, case_rows, floor):
    if r["status"] != "ok":
        return f"| {r['library']} | {r['mode']} | {r['status']}: {r['reason'][:140]} |" + " |" * 10
    ours = next((o for o in case_rows if o["library"] == GPUCLUST and o["mode"] == r["mode"] and o["status"] == "ok"),
                None)  # fmt: skip
    per = r["mode"] == "per_iter"
    peak = r.get("peak_memory_bytes")
    x_floor = f"{r['seconds_median'] / floor:.1f}" if per and floor else ""
    return (
        f"| {r['library']} | {'per iteration' if per else 'converged'} | {_ms(r['seconds_median'])} | "
        f"{_ms(r['seconds_min'])}-{_ms(r['seconds_max'])} | {_ms(floor) if per else ''} | "
        f"{x_floor} | {_ratio_cell(r, ours)} | "
        f"{r.get('n_iter') if r.get('n_iter') is not None else 'not reported'} | "
        f"{'' if peak is None else f'{peak / 2**30:.2f}'} | {_quality_cell(r)} | {_relative_cell(r, ours)} | "
        f"{_agreement_cell(r)} | {r.get('note', '')} |"
    )
