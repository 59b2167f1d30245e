"""``gpuclust select``: a BIC/AIC sweep over the number of components and covariance types."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ..gaussian_mixture import GaussianMixture
from ._atomic import atomic_write_json
from ._plots import pyplot, save_png


def validate_features(X, *, source="X"):
    """``X`` as a float64 array, checked once: 2-d, non-empty, finite. ValueError naming ``source`` otherwise."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: not a numeric array ({exc})") from None
    if X.ndim != 2:
        raise ValueError(f"{source}: features must be 2-d (n_samples, n_features), got shape {X.shape}")
    if X.size == 0:
        raise ValueError(f"{source}: no data (shape {X.shape})")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"{source}: {bad} row(s) hold NaN or infinity; remove or impute them first")
    return X


def sweep(X, ks, covariance_types, *, criterion="bic", seed=0, device="auto", on_fit=None):
    """Fit a GaussianMixture for every (covariance type, K); return one row per fit and the best row.

    X is validated once, up front (ValueError naming the problem). A fit that fails
    (ill-defined covariance) is recorded with its error and ``None`` scores.
    """
    X = validate_features(X)
    too_many = [k for k in ks if int(k) > X.shape[0]]
    if too_many:
        raise ValueError(f"K={max(too_many)} is more than the {X.shape[0]} samples.")
    rows = []
    for cov in covariance_types:
        for k in ks:
            row = {"covariance_type": cov, "n_components": int(k)}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    gmm = GaussianMixture(int(k), covariance_type=cov, random_state=seed, device=device).fit(X)
                row.update(bic=_finite_or_none(gmm.bic(X)), aic=_finite_or_none(gmm.aic(X)),
                           converged=bool(gmm.converged_), n_iter=gmm.n_iter_)  # fmt: skip
            except ValueError as exc:
                row.update(bic=None, aic=None, error=str(exc))
            rows.append(row)
            if on_fit:
                on_fit(row)
    scored = [r for r in rows if r[criterion] is not None]
    if not scored:
        errors = list(dict.fromkeys(r.get("error", f"{criterion} is not finite") for r in rows))
        raise ValueError(f"every fit in the sweep failed: {errors[0]}" + (f" (and {len(errors) - 1} other error(s))"
                         if len(errors) > 1 else ""))  # fmt: skip
    return rows, min(scored, key=lambda r: r[criterion])


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _score_text(criterion, row):
    value = row[criterion]
    return f"{criterion}=" + ("failed" if value is None else f"{value:.1f}")


def plot_sweep(rows, criterion, best, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for cov in dict.fromkeys(r["covariance_type"] for r in rows):
        mine = [r for r in rows if r["covariance_type"] == cov and r[criterion] is not None]
        pts = [(r["n_components"], r[criterion]) for r in mine]
        if pts:
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
        on_fit=lambda r: say(f"{r['covariance_type']:>9} K={r['n_components']:<3} {_score_text(criterion, r)}"),
    )
    out = Path(out_dir)
    summary = {"criterion": criterion, "best": best, "rows": rows, "n_samples": int(X.shape[0]),
               "n_features": int(X.shape[1])}  # fmt: skip
    paths = {"json": out / "select.json", "plot": out / "select.png"}
    atomic_write_json(paths["json"], summary)
    plot_sweep(rows, criterion, best, paths["plot"])
    return best, paths
