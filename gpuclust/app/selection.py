"""``gpuclust select``: a BIC/AIC sweep over the number of components and covariance types."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ..gaussian_mixture import GaussianMixture
from ._atomic import atomic_write, atomic_write_json


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def run_selection(args, say, load_array):
    """``gpuclust select``: load features (or PCA of pixels), sweep, write select.json and select.png.

    Returns the chosen row and the output folder.
    """
    from pathlib import Path

    if args.features:
        X = np.asarray(load_array(args.features), dtype=np.float64)
    else:
        from sklearn.decomposition import PCA

        from ..datasets import flatten_pixels, load_fashion_mnist

        images, _ = load_fashion_mnist("train", args.data_dir, args.download)
        X = PCA(args.pca, random_state=args.seed).fit_transform(flatten_pixels(images[: args.n_samples]))
    X = X[: args.n_samples]
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--k must list positive integers, got {args.k!r}")
    rows, best = sweep(
        X,
        ks,
        args.covariance_types,
        criterion=args.criterion,
        seed=args.seed,
        device=args.device,
        on_fit=lambda r: say(
            f"{r['covariance_type']:>9} K={r['n_components']:<3} {args.criterion}={r[args.criterion]:.1f}"
        ),
    )
    out = Path(args.out)
    atomic_write_json(
        out / "select.json",
        {
            "criterion": args.criterion,
            "best": best,
            "rows": rows,
            "n_samples": int(X.shape[0]),
            "n_features": int(X.shape[1]),
        },
    )
    plot_sweep(rows, args.criterion, best, out / "select.png")
    return best, out
