"""``gpuclust`` command line: run, train-ae, cluster, select, bench.

Errors a user can fix (a wrong flag, missing data, a bad file) print one line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _add_common(p, data=True):
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if data:
        p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX files (looked in first)")
        p.add_argument("--download", action="store_true", help="download Fashion-MNIST into the user cache if missing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress lines")
    p.add_argument("-v", "--verbose", action="store_true", help="log what gpuclust decides (device, backend, ...)")


def _covariance_list(text):
    from ..gaussian_mixture import COVARIANCE_TYPES

    types = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in types if t not in COVARIANCE_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(f"covariance types must be among {','.join(COVARIANCE_TYPES)}; got {text!r}")
    return types


def build_parser() -> argparse.ArgumentParser:
    from ..gaussian_mixture import COVARIANCE_TYPES
    from .autoencoder import DEFAULT_PRESET, PRESETS

    parser = _Parser(prog="gpuclust", description="KMeans and Gaussian mixtures on a GPU (or CPU), measured.")
    parser.add_argument("--version", action="version", version=f"gpuclust {__import__('gpuclust').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="the seed's three experiments on Fashion-MNIST, with a report and plots",
        description="Task 1: KMeans on pixels. Task 2: autoencoder features + KMeans. Task 3: "
        "autoencoder features + GaussianMixture per covariance type. Scored on the "
        "10k test set; writes report.md, results.json and PNG plots to the run folder.",
    )
    run.add_argument(
        "--profile",
        choices=("quick", "full"),
        help="full: the seed's protocol (default on a GPU); quick: fits in ~10 minutes on a 2-core CPU "
        "(default on a CPU)",
    )
    run.add_argument("--epochs", type=int, help="maximum autoencoder epochs (profile default: full 200, quick 10)")
    run.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"autoencoder architecture (default {DEFAULT_PRESET}; 'seed' is the report's)",
    )
    run.add_argument(
        "--covariance-types",
        type=_covariance_list,
        default=None,
        metavar="LIST",
        help="comma-separated GMM covariance types (default: all four, except on a CPU those that "
        "would take hours on the seed preset's 6272-d latent)",
    )
    run.add_argument(
        "--backend", choices=("auto", "torch", "sklearn", "cuml"), default="auto", help="KMeans backend (default auto)"
    )
    run.add_argument("--train-subset", type=int, metavar="N", help="train the autoencoder on N training images")
    run.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N training and N test images (a smoke run)"
    )
    run.add_argument("--out", metavar="DIR", help="run folder (default runs/run-DATE-TIME)")
    _add_common(run)

    tr = sub.add_parser(
        "train-ae",
        help="train the autoencoder and checkpoint it every epoch",
        description="Train a ConvAutoencoder on the 80:20 split of the training set.",
    )
    tr.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    tr.add_argument("--epochs", type=int, default=200)
    tr.add_argument("--batch-size", type=int, default=480)
    tr.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs")
    tr.add_argument("--train-subset", type=int, metavar="N")
    tr.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint path (written atomically)")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--features", metavar="FILE", help="also save test-set features (.npy or .pt)")
    _add_common(tr)

    cl = sub.add_parser(
        "cluster",
        help="fit KMeans or GaussianMixture on pixels or saved features",
        description="Fit on the training pixels or on a features file (.npy or .pt); with labels "
        "(pixels, or --labels FILE) print the scores.",
    )
    cl.add_argument("--algorithm", choices=("kmeans", "gmm"), default="kmeans")
    cl.add_argument("--n-clusters", type=int, default=10)
    cl.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="diag")
    cl.add_argument("--features", metavar="FILE", help=".npy or .pt array of shape (n, d); default: training pixels")
    cl.add_argument("--labels", metavar="FILE", help=".npy labels for the features, to score the clustering")
    cl.add_argument("--backend", choices=("auto", "torch", "sklearn", "cuml"), default="auto")
    cl.add_argument("--max-iter", type=int)
    cl.add_argument("--save-labels", metavar="FILE", help="write the cluster labels (.npy)")
    cl.add_argument(
        "--distributed", action="store_true", help="fit data-parallel across torchrun processes (see README)"
    )
    _add_common(cl)

    se = sub.add_parser(
        "select",
        help="BIC/AIC sweep over K and covariance types, with a plot",
        description="Fit GaussianMixture for every K and covariance type; pick the lowest BIC.",
    )
    se.add_argument("--features", metavar="FILE", help=".npy or .pt features; default: PCA of the training pixels")
    se.add_argument("--pca", type=int, default=30, help="PCA dimensions when using pixels (default 30)")
    se.add_argument("--n-samples", type=int, default=10000, help="rows used for the sweep (default 10000)")
    se.add_argument("--k", default="2,4,6,8,10,12,15,20", metavar="LIST", help="comma-separated K values")
    se.add_argument("--covariance-types", type=_covariance_list, default=COVARIANCE_TYPES, metavar="LIST")
    se.add_argument("--criterion", choices=("bic", "aic"), default="bic")
    se.add_argument("--out", metavar="DIR", default="runs/select")
    _add_common(se)

    be = sub.add_parser(
        "bench",
        help="benchmark grid: speed, memory and quality against scikit-learn",
        description="Run a benchmark grid (see benchmarks/README.md) and write JSON lines, a "
        "markdown summary and plots.",
    )
    be.add_argument("--grid", default="cpu-small", help="grid name from gpuclust.app.bench.GRIDS (default cpu-small)")
    be.add_argument("--out", metavar="DIR", default="benchmarks/results")
    be.add_argument("--repeats", type=int, default=3)
    be.add_argument("--tag", help="label for the results file (default: the grid name)")
    _add_common(be)
    return parser


def _load_array(path):
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".pt":
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise UsageError(f"{p}: expected a single tensor, found {type(obj).__name__}")
            return obj
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{p}: cannot be read ({exc.__class__.__name__}: {exc})") from exc
    raise UsageError(f"{p}: unsupported file type {p.suffix!r} (use .npy or .pt)")


def _save_array(path, array):
    import numpy as np

    from ._atomic import atomic_write

    p = Path(path)
    if p.suffix == ".pt":
        import torch

        atomic_write(p, lambda fh: torch.save(torch.as_tensor(array).cpu(), fh))
    else:
        atomic_write(p.with_suffix(".npy") if p.suffix != ".npy" else p, lambda fh: np.save(fh, np.asarray(array)))


def cmd_run(args, say):
    from .pipeline import RunConfig, default_run_dir, run_experiments
    from .report import results_table, write_run_folder

    config = RunConfig(
        profile=args.profile,
        epochs=args.epochs,
        preset=args.preset,
        covariance_types=args.covariance_types,
        backend=args.backend,
        device=args.device,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.seed,
        train_subset=args.train_subset,
        limit=args.limit,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else default_run_dir()
    run = run_experiments(config, on_progress=say)
    paths = write_run_folder(run, out)
    print(results_table(run["results"], run["seed_report"]))
    print(f"\nreport: {paths['report']}\nresults: {paths['results']}")
    return 0


def cmd_train_ae(args, say):
    import numpy as np

    from ..datasets import load_fashion_mnist, train_validation_split
    from .training import encode, train_autoencoder

    images, _ = load_fashion_mnist("train", args.data_dir, args.download)
    train_idx, val_idx = train_validation_split(len(images), 0.2, seed=args.seed)
    if args.train_subset:
        train_idx = train_idx[: args.train_subset]
    say(f"training '{args.preset}' on {len(train_idx)} images, validating on {len(val_idx)}")
    model, history = train_autoencoder(
        images[train_idx],
        images[val_idx],
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
        resume=args.resume,
        progress=not args.quiet,
    )
    print(
        f"best epoch {history.best_epoch}: validation loss {min(history.val_loss):.5f}; "
        f"{np.median(history.images_per_second):.0f} images/s; checkpoint {args.checkpoint}"
    )
    if args.features:
        test_images, _ = load_fashion_mnist("test", args.data_dir, args.download)
        _save_array(args.features, encode(model, test_images).cpu())
        print(f"test-set features: {args.features}")
    return 0


def cmd_cluster(args, say):
    from ..datasets import flatten_pixels, load_fashion_mnist

    if args.features:
        X = _load_array(args.features)
        y = _load_array(args.labels) if args.labels else None
    else:
        images, y = load_fashion_mnist("train", args.data_dir, args.download)
        X = flatten_pixels(images)
    if args.distributed:
        return _cluster_distributed(args, X, y)
    est = make_cluster_estimator(args, args.device)
    labels = est.fit_predict(X)
    report_clustering(args, labels, y, est.n_iter_)
    return 0


def _cluster_distributed(args, X, y):
    """Under torchrun: every rank loads X, fits on its block of rows; rank 0 reports."""
    import os

    import torch.distributed as dist

    from ..distributed import DistributedFitError, fit_on_shards, init_from_env

    device = init_from_env()
    est = make_cluster_estimator(args, device, distributed=True)
    try:
        labels = fit_on_shards(est, X)
    except DistributedFitError as exc:
        print(f"gpuclust: error: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_USAGE)  # the process group is broken; tearing it down can abort the interpreter
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    if rank == 0:
        report_clustering(args, labels, y, est.n_iter_, where=f" (distributed over {world} ranks)")
    return 0


def make_cluster_estimator(args, device, distributed=False):
    """The estimator ``gpuclust cluster`` asked for."""
    common = dict(
        random_state=args.seed,
        device=device,
        distributed=distributed,
        **({"max_iter": args.max_iter} if args.max_iter else {}),
    )
    if args.algorithm == "kmeans":
        from ..kmeans import KMeans

        return KMeans(args.n_clusters, backend="torch" if distributed else args.backend, **common)
    from ..gaussian_mixture import GaussianMixture

    return GaussianMixture(args.n_clusters, covariance_type=args.covariance_type, **common)


def report_clustering(args, labels, y, n_iter, where=""):
    """Print the clustering's size and, given true labels, its scores; save the labels if asked."""
    import numpy as np

    from ..metrics import all_scores

    labels = labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels)
    print(f"{args.algorithm}{where}: {len(labels)} samples in {len(np.unique(labels))} clusters ({n_iter} iterations)")
    if y is not None:
        for name, value in all_scores(np.asarray(y), labels).items():
            print(f"  {name}: {value:.4f}")
    if args.save_labels:
        _save_array(args.save_labels, labels)


def cmd_select(args, say):
    import numpy as np

    from .selection import run_selection

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--k must list positive integers, got {args.k!r}")
    if args.features:
        X = np.asarray(_load_array(args.features), dtype=np.float64)[: args.n_samples]
    else:
        from sklearn.decomposition import PCA

        from ..datasets import flatten_pixels, load_fashion_mnist

        images, _ = load_fashion_mnist("train", args.data_dir, args.download)
        X = PCA(args.pca, random_state=args.seed).fit_transform(flatten_pixels(images[: args.n_samples]))
    best, paths = run_selection(X, ks, args.covariance_types, args.out, criterion=args.criterion, seed=args.seed,
                                device=args.device, say=say)  # fmt: skip
    print(
        f"chosen by {args.criterion.upper()}: covariance_type={best['covariance_type']}, "
        f"n_components={best['n_components']} ({args.criterion}={best[args.criterion]:.1f})"
    )
    print(f"sweep: {paths['json']}, plot: {paths['plot']}")
    return 0


def cmd_bench(args, say):
    from .bench import GRIDS, run_named_grid

    if args.grid not in GRIDS:
        raise UsageError(f"--grid {args.grid!r} is not one of {sorted(GRIDS)}")
    rows, path = run_named_grid(args.grid, args.out, tag=args.tag, repeats=args.repeats, seed=args.seed,
                                device=args.device, say=say)  # fmt: skip
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} cases measured; results in {path}")
    return 0


COMMANDS = {"run": cmd_run, "train-ae": cmd_train_ae, "cluster": cmd_cluster, "select": cmd_select, "bench": cmd_bench}


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[gpuclust] {msg}", file=sys.stderr))
        return COMMANDS[args.command](args, say)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"gpuclust: error: {message or exc.__class__.__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gpuclust: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
