"""``gpuclust select``: a BIC/AIC sweep over the number of components and covariance types."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from sklearn.exceptions import ConvergenceWarning

from ..gaussian_mixture import GaussianMixture
from ._atomic import atomic_write_json
from ._plots import pyplot, save_png


def sweep(X, ks, covariance_types, *, criterion="bic", seed=0, device="auto", on_fit=None):
    """Fit a GaussianMixture for every (covariance type, K); return one row per fit and the best row.

    A fit that fails (ill-defined covariance) is recorded with its error instead of a score.
    """
    rows = []
    for cov in covariance_types:
        for k in ks:
            row = {"covariance_type": cov, "n_components": int(k)}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    gmm = GaussianMixture(int(k), covariance_type=cov, random_state=seed, device=device).fit(X)
                row.update(bic=gmm.bic(X), aic=gmm.aic(X), converged=bool(gmm.converged_), n_iter=gmm.n_iter_)
            except ValueError as exc:
                row.update(bic=math.nan, aic=math.nan, error=str(exc))
            rows.append(row)
            if on_fit:
                on_fit(row)
    scored = [r for r in rows if not math.isnan(r[criterion])]
    if not scored:
        raise ValueError("every fit in the sweep failed; try a larger reg_covar or fewer components.")
    return rows, min(scored, key=lambda r: r[criterion])


def plot_sweep(rows, criterion, best, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for cov in dict.fromkeys(r["covariance_type"] for r in rows):
        pts = [(r["n_components"], r[criterion]) for r in rows if r["covariance_type"] == cov]
        ax.plot(*zip(*pts), marker="o", label=cov)
    ax.scatter(
        [best["n_components"]],
        [best[criterion]],
        s=200,
        facecolors="none",
        edgecolors="black",
        label=f"chosen: {best['covariance_type']}, K={best['n_components']}",
    )
    ax.set_xlabel("number of components K")
    ax.set_ylabel(criterion.upper() + " (lower is better)")
    ax.set_title(f"Gaussian mixture model selection by {criterion.upper()}")
    ax.legend()
    save_png(fig, path)


def run_selection(X, ks, covariance_types, out_dir, *, criterion="bic", seed=0, device="auto", say=None):
    """Sweep, then write ``select.json`` and ``select.png`` into ``out_dir``.

    Returns
    -------
    best : dict
        The chosen row (lowest ``criterion``).
    paths : dict
        ``{"json": ..., "plot": ...}``.
    """
    say = say or (lambda msg: None)
    rows, best = sweep(
        X,
        ks,
        covariance_types,
        criterion=criterion,
        seed=seed,
        device=device,
        on_fit=lambda r: say(f"{r['covariance_type']:>9} K={r['n_components']:<3} {criterion}={r[criterion]:.1f}"),
    )
    out = Path(out_dir)
    summary = {"criterion": criterion, "best": best, "rows": rows, "n_samples": int(X.shape[0]),
               "n_features": int(X.shape[1])}  # fmt: skip
    paths = {"json": out / "select.json", "plot": out / "select.png"}
    atomic_write_json(paths["json"], summary)
    plot_sweep(rows, criterion, best, paths["plot"])
    return best, paths
