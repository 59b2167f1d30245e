"""Markdown tables from stored rows: every row against scikit-learn, and gpuclust against every other library."""

from __future__ import annotations

from .memory import mib


def _peer_key(row):
    return (
        row["algorithm"],
        row.get("covariance_type"),
        row["data"],
        row["n"],
        row["d"],
        row["k"],
        row["dtype"],
        row["mode"],
    )


def results_table(rows) -> list:
    """The markdown lines of a run's summary: every row with its ratio to scikit-learn, then :func:`peer_table`.

    A row that did not run is a line with its status and the start of its reason.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    # The peer is scikit-learn's default algorithm (lloyd for KMeans), measured in the same run.
    sk = {_peer_key(r): r for r in ok if r["backend"] == "sklearn" and r["kmeans_algorithm"] in ("auto", "lloyd")}
    env = next((r["environment"] for r in rows if r.get("environment")), {}) or {}
    lines = [
        f"Device: {env.get('device_name', '?')} ({env.get('device', '?')}), {env.get('cpu_count', '?')} CPU "
        f"threads; torch {env.get('torch', '?')}, scikit-learn {env.get('sklearn', '?')}; commit "
        f"{env.get('git_commit', '?')}.",
        "",
        "| case | mode | time (median) | spread | vs scikit-learn | iterations | inertia / mean log-lik. | "
        "stopping | peak memory | GB/s of X | GFLOP/s | completeness | NMI | ARI |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {r['mode']} | {r['status']}: {r['reason'][:80]} |" + " |" * 11)
        else:
            lines.append(_result_line(r, sk.get(_peer_key(r))))
    peers = peer_table(rows)
    if peers:
        lines += ["", "### gpuclust against every other library in this run", ""] + peers
    return lines


def _result_line(r, peer):
    """A measured row's line of the summary; ``peer`` is scikit-learn's row of the same case (or None)."""
    per = r["mode"] == "per_iter"
    t = r["seconds_median"]
    ratio = "" if peer is None or r["backend"] == "sklearn" else _faster(peer["seconds_median"], t)
    bw = f"{r['bytes_per_iter'] / t / 1e9:.1f}" if per else ""
    gf = f"{r['flops_per_iter'] / t / 1e9:.1f}" if per else ""
    return (
        f"| {r['label']} | {'per iteration' if per else 'converged fit'} | "
        f"{1e3 * t:.2f} ms | {1e3 * r['seconds_min']:.2f}-{1e3 * r['seconds_max']:.2f} | {ratio} | "
        f"{_n_iter(r)} | {_objective(r)} | {_stopping_cell(r)} | "
        f"{mib(r['peak_memory_bytes'])} | {bw} | {gf} | {r['completeness']:.3f} | "
        f"{r['nmi']:.3f} | {r['ari']:.3f} |"
    )


def _faster(peer_seconds, our_seconds):
    """gpuclust against a peer: "2.10x faster" when it takes less time, else "1.30x slower".

    A differential time at or below zero (noise larger than the work, on tiny cases) has no ratio.
    """
    if min(peer_seconds, our_seconds) <= 0:
        return "no ratio: a time <= 0"
    if peer_seconds >= our_seconds:
        return f"{peer_seconds / our_seconds:.2f}x faster"
    return f"{our_seconds / peer_seconds:.2f}x slower"


def _duration(seconds):
    return f"{seconds:.2f} s" if abs(seconds) >= 1 else f"{1e3 * seconds:.2f} ms"


def _n_iter(r):
    return "unknown" if r.get("n_iter") is None else str(r["n_iter"])


def _objective(r):
    if r.get("log_likelihood") is not None:
        return f"{r['log_likelihood']:.4f}"
    return f"{r['inertia']:.6g}" if r.get("inertia") is not None else ""


def _stopping_cell(r):
    """tol=0 per iteration; converged: the library's tolerance (faiss: its iteration count)."""
    if r["mode"] == "per_iter" or r.get("tol") is None:
        return "tol=0" if r["mode"] == "per_iter" else ""
    return f"niter={r['max_iter']}" if r["backend"].startswith("faiss") else f"tol={r['tol']:g}"


def library(r) -> str:
    """What a user would pick, with the device it ran on: "gpuclust/cuda", "sklearn-elkan/cpu", "faiss/cpu"."""
    name = "gpuclust" if r["backend"] == "torch" else r["backend"]
    if r["algorithm"] == "kmeans" and r["kmeans_algorithm"] not in ("auto", "lloyd"):
        name += f"-{r['kmeans_algorithm']}"
    return f"{name}/{r['device']}"


def _case_title(r):
    alg = "KMeans" if r["algorithm"] == "kmeans" else f"GMM {r['covariance_type']}"
    return f"{alg} {r['data']} {r['n']}x{r['d']} K={r['k']} {r['dtype']}"


def _by_case(rows):
    """{case key: {library: row}}, in the rows' order; a case's first row of a library is kept."""
    cases = {}
    for r in rows:
        cases.setdefault(_peer_key(r), {}).setdefault(library(r), r)
    return cases


def _time_cell(r, ours):
    """A peer's time (converged: with its iterations) and gpuclust's ratio to it; its status if it did not run."""
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    t = _duration(r["seconds_median"]) + ("" if r["mode"] == "per_iter" else f", {_n_iter(r)} it.")
    if r["mode"] != "per_iter" and r.get("completeness") is not None:
        # A faster fit is only worth its time at the same quality (faiss samples rows by default).
        t += f", compl. {r['completeness']:.3f}"
    if ours is None or ours["status"] != "ok" or r is ours:
        return t
    ratio = _faster(r["seconds_median"], ours["seconds_median"])
    return f"{t}: {ratio}" if ratio.startswith("no ratio") else f"{t}: ours {ratio}"


def peer_table(rows) -> list:
    """gpuclust against every other library, per algorithm: a line per case and gpuclust variant.

    A case is the same data, n, d, k, dtype, algorithm, covariance type and mode. Each cell is a
    library's median time (converged fits: with its iteration count and completeness) and how much faster or slower
    gpuclust is than it; a library that did not run says "skipped" or "error" (the reason is in the
    rows). Empty when no case has gpuclust and another library.
    """
    lines = []
    for algorithm, title in (("kmeans", "KMeans"), ("gmm", "GaussianMixture")):
        cases = _by_case(r for r in rows if r["algorithm"] == algorithm)
        others = list(dict.fromkeys(lib for v in cases.values() for lib in v if not lib.startswith("gpuclust")))
        if not others or not any(lib.startswith("gpuclust") for v in cases.values() for lib in v):
            continue
        lines += [
            f"| {title} case | mode | gpuclust | " + " | ".join(others) + " |",
            "|" + "---|" * (3 + len(others)),
        ]
        for by_lib in cases.values():
            for ours_lib, ours in ((k, v) for k, v in by_lib.items() if k.startswith("gpuclust")):
                cells = [_time_cell(by_lib.get(lib), ours) for lib in others]
                mode = "per iteration" if ours["mode"] == "per_iter" else "converged fit"
                head = f"| {_case_title(ours)} | {mode} | {ours_lib}: {_time_cell(ours, ours)} | "
                lines.append(head + " | ".join(cells) + " |")
        lines.append("")
    if lines:
        lines.append(
            "Converged fits stop by each library's own default rule (the rows' `tol` and `stopping_rule`): "
            "gpuclust and scikit-learn at tol=1e-4 (KMeans) and 1e-3 (GMM), faiss after its default 25 "
            "iterations (earlier once its objective is unchanged), fast-pytorch-kmeans at its absolute "
            "tol=1e-4, torchgmm at its convergence_tolerance=1e-3."
        )
    return lines


def peer_points(rows) -> dict:
    """{case title: [(library, seconds, completeness)]} for converged cases that two libraries or more ran."""
    points = {}
    for by_lib in _by_case(r for r in rows if r["status"] == "ok" and r["mode"] == "converged").values():
        if len(by_lib) > 1:
            first = next(iter(by_lib.values()))
            points[_case_title(first)] = [(lib, r["seconds_median"], r["completeness"]) for lib, r in by_lib.items()]
    return points
