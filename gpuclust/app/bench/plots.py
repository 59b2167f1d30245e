"""Plots from stored rows: time per iteration, quality against time, and every library's converged fits."""

from __future__ import annotations

from .._plots import pyplot, save_png
from .tables import peer_points


def plot_peers(rows, path):
    """Completeness against seconds to a converged fit, one panel per case, a labelled point per library."""
    plt = pyplot()
    points = peer_points(rows)
    cols = min(3, len(points))
    nrows = -(-len(points) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, (title, pts) in zip(axes.flat, points.items()):
        for i, (lib, seconds, completeness) in enumerate(sorted(pts, key=lambda pt: pt[1])):
            style = (
                {"color": "tab:red", "marker": "o"}
                if lib.startswith("gpuclust")
                else {"color": "tab:blue", "marker": "x"}
            )
            ax.scatter(seconds, completeness, s=45, **style)
            # Neighbours in time alternate above and below: libraries with the same partition share a height.
            offset = (4, 4 if i % 2 == 0 else -10)
            ax.annotate(lib, (seconds, completeness), fontsize=7, xytext=offset, textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("seconds to a converged fit (log)", fontsize=7)
        ax.set_ylabel("completeness", fontsize=7)
        ax.margins(x=0.3, y=0.15)
    for ax in list(axes.flat)[len(points) :]:
        ax.set_visible(False)
    fig.suptitle("Time against quality, each library at its own default stopping rule: up and left is better")
    fig.tight_layout()
    save_png(fig, path)


_COLORS = {"kmeans": "tab:gray", "full": "tab:red", "tied": "tab:purple", "diag": "tab:blue", "spherical": "tab:green"}
_MARKERS = {"torch": "o", "sklearn": "x", "cuml": "s"}


def plot_results(rows, prefix):
    """Time per iteration by covariance type and D (``<prefix>_time_per_iter.png``, GMM per-iteration rows only),
    and completeness against time (Pareto view, ``<prefix>_pareto.png``)."""
    per_iter = [r for r in rows if r["mode"] == "per_iter" and r["algorithm"] == "gmm"]
    if per_iter:
        _plot_time_per_iteration(per_iter, f"{prefix}_time_per_iter.png")
    _plot_pareto(rows, f"{prefix}_pareto.png")


def _kind(r):
    return "kmeans" if r["algorithm"] == "kmeans" else r["covariance_type"]


def _plot_time_per_iteration(per_iter, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for cov, backend, device in sorted({(r["covariance_type"], r["backend"], r["device"]) for r in per_iter}):
        pts = sorted(
            (r["d"], 1e3 * r["seconds_median"])
            for r in per_iter
            if (r["covariance_type"], r["backend"], r["device"]) == (cov, backend, device)
        )
        ax.plot(
            *zip(*pts),
            marker=_MARKERS.get(backend, "o"),
            color=_COLORS[cov],
            ls="-" if backend == "torch" else "--",
            label=f"{cov}, {backend}/{device}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (features, log)")
    ax.set_ylabel("ms per EM iteration (log)")
    ax.set_title("GaussianMixture time per iteration (solid: gpuclust, dashed: scikit-learn)")
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, path)


def _plot_pareto(rows, path):
    plt = pyplot()
    # End-to-end fits where the grid has them (time to a converged model), else per-iteration times.
    mode = "converged" if any(r["mode"] == "converged" for r in rows) else "per_iter"
    chosen = [r for r in rows if r["mode"] == mode]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = set()
    for r in chosen:
        key = (_kind(r), r["backend"])
        ax.scatter(
            r["seconds_median"],
            r["completeness"],
            color=_COLORS[_kind(r)],
            marker=_MARKERS.get(r["backend"], "o"),
            s=50,
            label=None if key in seen else f"{_kind(r)}, {r['backend']}",
        )
        seen.add(key)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per fit (log)" if mode == "converged" else "seconds per iteration (log)")
    ax.set_ylabel("completeness")
    ax.set_title("Quality against time: up and to the left is better")
    ax.legend(fontsize=7, ncol=2)
    save_png(fig, path)
