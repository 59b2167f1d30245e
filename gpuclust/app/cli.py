"""``gpuclust`` command line: run, train-ae, cluster, select, bench.

Errors a user can fix (a wrong flag, missing data, a bad file) print one line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _int_at_least(lowest):
    """An argparse type: an integer >= ``lowest``, else a one-line error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lowest:
            what = {0: "a non-negative integer", 1: "a positive integer"}.get(lowest, f"an integer >= {lowest}")
            raise argparse.ArgumentTypeError(f"{value} is not {what}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = _int_at_least(1)


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _add_common(p, data=True):
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    if data:
        p.add_argument(
            "--data-dir",
            metavar="DIR",
            help="folder with the Fashion-MNIST IDX files; when given (or $GPUCLUST_DATA is set) the only place "
            "looked in, else the user cache, then /usr/share/datasets/fashion-mnist",
        )
        p.add_argument("--download", action="store_true", help="download Fashion-MNIST into the user cache if missing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress lines")
    p.add_argument("-v", "--verbose", action="store_true", help="log what gpuclust decides (device, backend, ...)")


def _covariance_list(text):
    from ..gaussian_mixture import COVARIANCE_TYPES

    types = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))  # each once, in order
    bad = [t for t in types if t not in COVARIANCE_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(f"covariance types must be among {','.join(COVARIANCE_TYPES)}; got {text!r}")
    return types


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuclust", description="KMeans and Gaussian mixtures on a GPU (or CPU), measured.")
    parser.add_argument("--version", action="version", version=f"gpuclust {__import__('gpuclust').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run_parser(sub)
    _add_train_ae_parser(sub)
    _add_cluster_parser(sub)
    _add_select_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_run_parser(sub):
    from .autoencoder import DEFAULT_PRESET, PRESETS

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
    run.add_argument(
        "--epochs", type=positive_int, help="maximum autoencoder epochs (profile default: full 200, quick 10)"
    )
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
    run.add_argument(
        "--train-subset", type=positive_int, metavar="N", help="train the autoencoder on N training images"
    )
    run.add_argument(
        "--limit",
        type=_int_at_least(50),
        metavar="N",
        help="use only the first N training and N test images (a smoke run; N >= 50)",
    )
    run.add_argument(
        "--self-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="task 5: train a classifier on the confident clusters of task 5's inductive clustering and "
        "label the test set with it (profile default: on for full, off for quick)",
    )
    run.add_argument(
        "--scan",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="task 6: neighbour-consistency heads on the codes (SCAN-style), neighbours from task 4's embedding, "
        "label the test codes (profile default: on)",
    )
    _add_run_output_flags(run)
    _add_common(run)


def _add_run_output_flags(run):
    """``gpuclust run``'s flags for what it writes: the codes, the run folder, overwriting."""
    run.add_argument(
        "--save-codes",
        action="store_true",
        help="also write codes.npz: the autoencoder's codes of the training split and the test set "
        "(train_codes, test_codes), the training-split image indices and both sets' labels",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default runs/run-DATE-TIME). A rerun into it replaces the files an earlier run wrote "
        "there (listed in its .gpuclust-run.json) and never touches other files; if it holds a file of the same "
        "name as one a run writes (report.md, results.json, ...) that gpuclust did not write, the run stops "
        "before any work, unless --overwrite",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace such files in --out (yours, or a run's from before gpuclust kept that list)",
    )


def _add_train_ae_parser(sub):
    from .autoencoder import DEFAULT_PRESET, PRESETS

    tr = sub.add_parser(
        "train-ae",
        help="train the autoencoder and checkpoint it every epoch",
        description="Train a ConvAutoencoder on the 80:20 split of the training set.",
    )
    tr.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    tr.add_argument("--epochs", type=positive_int, default=200)
    tr.add_argument("--batch-size", type=positive_int, default=480)
    tr.add_argument("--patience", type=positive_int, default=10, help="early-stopping patience in epochs")
    tr.add_argument("--train-subset", type=positive_int, metavar="N")
    tr.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint path (written atomically)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint (refused if it was trained with another preset, seed, batch size or data)",
    )
    tr.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="with --resume: continue even though those settings differ from the checkpoint's",
    )
    tr.add_argument("--features", metavar="FILE", help="also save test-set features (.npy or .pt)")
    _add_common(tr)


def _add_cluster_parser(sub):
    from ..gaussian_mixture import COVARIANCE_TYPES

    cl = sub.add_parser(
        "cluster",
        help="fit KMeans or GaussianMixture on pixels or saved features",
        description="Fit on the training pixels or on a features file (.npy or .pt); with labels "
        "(pixels, or --labels FILE) print the scores.",
    )
    cl.add_argument("--algorithm", choices=("kmeans", "gmm"), default="kmeans")
    cl.add_argument("--n-clusters", type=positive_int, default=10)
    cl.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="diag")
    cl.add_argument("--features", metavar="FILE", help=".npy or .pt array of shape (n, d); default: training pixels")
    cl.add_argument("--labels", metavar="FILE", help=".npy labels for the features, to score the clustering")
    cl.add_argument(
        "--memory-limit",
        type=positive_float,
        metavar="GIB",
        help="a --features .npy file larger than this is streamed from disk, tile by tile, in every pass "
        "(default: a quarter of the physical memory)",
    )
    cl.add_argument("--backend", choices=("auto", "torch", "sklearn", "cuml"), default="auto")
    cl.add_argument("--max-iter", type=positive_int)
    cl.add_argument("--save-labels", metavar="FILE", help="write the cluster labels (.npy or .pt)")
    cl.add_argument(
        "--distributed", action="store_true", help="fit data-parallel across torchrun processes (see README)"
    )
    cl.add_argument(
        "--startup-timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="with --distributed: how long to wait for every rank to join (default 60)",
    )
    _add_common(cl)


def _add_select_parser(sub):
    from ..gaussian_mixture import COVARIANCE_TYPES

    se = sub.add_parser(
        "select",
        help="BIC/AIC sweep over K and covariance types, with a plot",
        description="Fit GaussianMixture for every K and covariance type; pick the lowest BIC.",
    )
    se.add_argument("--features", metavar="FILE", help=".npy or .pt features; default: PCA of the training pixels")
    se.add_argument("--pca", type=positive_int, default=30, help="PCA dimensions when using pixels (default 30)")
    se.add_argument("--n-samples", type=positive_int, default=10000, help="rows used for the sweep (default 10000)")
    se.add_argument("--k", default="2,4,6,8,10,12,15,20", metavar="LIST", help="comma-separated K values")
    se.add_argument("--covariance-types", type=_covariance_list, default=COVARIANCE_TYPES, metavar="LIST")
    se.add_argument("--criterion", choices=("bic", "aic"), default="bic")
    se.add_argument("--out", metavar="DIR", default="runs/select")
    _add_common(se)


def _add_bench_parser(sub):
    be = sub.add_parser(
        "bench",
        help="benchmark grid: speed, memory and quality against scikit-learn",
        description="Run a benchmark grid (see benchmarks/README.md) and write JSON lines, a "
        "markdown summary and plots. On Linux each CPU fit's peak memory is the kernel's peak "
        "resident set size, restarted per fit for the whole process: /usr/bin/time or ru_maxrss "
        "on this command report its last fit only.",
    )
    be.add_argument("--grid", default="cpu-small", help="grid name from gpuclust.app.bench.GRIDS (default cpu-small)")
    be.add_argument("--out", metavar="DIR", default="benchmarks/results")
    be.add_argument("--repeats", type=positive_int, default=3)
    be.add_argument("--tag", help="label for the results file (default: the grid name)")
    _add_common(be)


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
            from ._torch_load import load_plain, why_refused

            with warnings.catch_warnings():
                # torch's "sparse CSR support is in beta" note is not the user's concern.
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                try:
                    obj = load_plain(p)
                except Exception as exc:
                    reason = why_refused(exc)
                    raise UsageError(f"{p} is not a features file gpuclust can read safely ({reason})") from None
            if not isinstance(obj, torch.Tensor):
                raise UsageError(f"{p}: expected a single tensor, found {type(obj).__name__}")
            return obj
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{p}: cannot be read ({exc.__class__.__name__}: {exc})") from exc
    raise UsageError(f"{p}: unsupported file type {p.suffix!r} (use .npy or .pt)")


ARRAY_SUFFIXES = (".npy", ".pt")


def _save_array(path, array):
    import numpy as np

    from ._atomic import atomic_write

    p = Path(path)
    if p.suffix == ".pt":
        import torch

        atomic_write(p, lambda fh: torch.save(torch.as_tensor(array).cpu(), fh))
    elif p.suffix == ".npy":
        atomic_write(p, lambda fh: np.save(fh, np.asarray(array)))
    else:
        raise UsageError(f"{p}: unsupported file type {p.suffix!r} (use .npy or .pt)")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _check_can_create(path: Path, flag: str, want_dir: bool):
    """UsageError unless ``path`` (a folder or a file) can be written: checked before any work, writing nothing."""
    path = Path(path)
    if os.path.lexists(path):
        if want_dir and not path.is_dir():
            raise UsageError(f"{flag} {path}: exists and is not a directory")
        if not want_dir and path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory, not a file")
        if not want_dir and not path.is_file():
            raise UsageError(f"{flag} {path}: exists and is not a regular file")
        folder = path if want_dir else path.parent
    else:
        existing = _nearest_existing(path.parent)
        if not existing.is_dir():
            raise UsageError(f"{flag} {path}: {existing} is not a directory")
        folder = existing
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {folder} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same file where both exist (links too), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_distinct(outputs, inputs=()):
    """UsageError, before any work, when an output is the same file as another output or as an input.

    ``outputs`` and ``inputs`` are (flag, path) pairs; a None path (a flag not given) is left out.
    """
    outputs = [(flag, Path(p)) for flag, p in outputs if p is not None]
    inputs = [(flag, Path(p)) for flag, p in inputs if p is not None]
    for i, (flag, path) in enumerate(outputs):
        others = [(f, p, "another output") for f, p in outputs[:i]] + [(f, p, "one of the inputs") for f, p in inputs]
        for other_flag, other, what in others:
            if _same_file(path, other):
                raise UsageError(
                    f"{flag} {path} is the same file as {other_flag} {other}, {what}: writing it would destroy "
                    "that one; name another file"
                )


def _check_array_file(path, flag):
    if path is not None:
        suffix = Path(path).suffix
        if suffix not in ARRAY_SUFFIXES:
            raise UsageError(f"{flag} {path}: unsupported file type {suffix!r} (use .npy or .pt)")
        _check_can_create(Path(path), flag, want_dir=False)


def _load_fashion(split, args, say):
    """Fashion-MNIST as the flags say; tells where the files came from."""
    from .datasets import load_fashion_mnist

    return load_fashion_mnist(
        split,
        args.data_dir,
        args.download,
        progress=not args.quiet,
        on_source=lambda folder: say(f"Fashion-MNIST {split} split from {folder}"),
    )


def cmd_run(args, say):
    from .pipeline import RunConfig, default_run_dir, run_experiments
    from .report import foreign_files, results_table, write_run_folder

    out = Path(args.out) if args.out else default_run_dir()
    _check_can_create(out, "--out", want_dir=True)
    foreign = foreign_files(out)
    if foreign and not args.overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(
            f"--out {out} holds {shown}, which gpuclust did not write there; a run would replace "
            f"{'it' if len(foreign) == 1 else 'them'}: choose another folder, or pass --overwrite"
        )
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
        self_label=args.self_label,
        scan=args.scan,
        save_codes=args.save_codes,
    )
    run = run_experiments(config, on_progress=say)
    paths = write_run_folder(run, out, overwrite=args.overwrite)
    print(results_table(run["results"], run["seed_report"]))
    print(f"\nreport: {paths['report']}\nresults: {paths['results']}")
    return 0


def cmd_train_ae(args, say):
    import numpy as np

    from .datasets import train_validation_split
    from .training import encode, load_checkpoint, train_autoencoder

    _check_can_create(Path(args.checkpoint), "--checkpoint", want_dir=False)
    _check_array_file(args.features, "--features")
    _check_distinct([("--checkpoint", args.checkpoint), ("--features", args.features)])
    if args.allow_changed_settings and not args.resume:
        raise UsageError("--allow-changed-settings only applies with --resume")
    if args.resume:
        if Path(args.checkpoint).is_file():
            load_checkpoint(args.checkpoint)  # refuses a file that is not a sound checkpoint before any work
        else:
            say(f"--resume: no checkpoint at {args.checkpoint} yet; training from the start")
    images, _ = _load_fashion("train", args, say)
    train_idx, val_idx = train_validation_split(len(images), 0.2, seed=args.seed)
    if args.train_subset is not None:
        if args.train_subset > len(train_idx):
            raise UsageError(f"--train-subset {args.train_subset} is more than the {len(train_idx)} training images")
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
        allow_changed_settings=args.allow_changed_settings,
    )
    print(
        f"best epoch {history.best_epoch}: validation loss {min(history.val_loss):.5f}; "
        f"{np.median(history.images_per_second):.0f} images/s; checkpoint {args.checkpoint}"
    )
    if args.features:
        test_images, _ = _load_fashion("test", args, say)
        _save_array(args.features, encode(model, test_images).cpu())
        print(f"test-set features: {args.features}")
    return 0


def _check_labels(y, n_samples, source):
    """Labels for scoring: 1-d, integer, one per sample; checked before the fit."""
    import numpy as np
    import torch

    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise UsageError(f"{source}: labels must be 1-d, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise UsageError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if len(y) != n_samples:
        raise UsageError(f"{source}: {len(y)} labels for {n_samples} samples")
    return y


def cmd_cluster(args, say):
    from .datasets import flatten_pixels

    _check_array_file(args.save_labels, "--save-labels")
    _check_distinct([("--save-labels", args.save_labels)], [("--features", args.features), ("--labels", args.labels)])
    if args.labels and not args.features:
        raise UsageError("--labels scores --features; without --features the pixels' own labels are used")
    if args.features and _streams(args):
        return _cluster_streamed(args)
    if args.features:
        X = _load_array(args.features)
        if getattr(X, "ndim", 0) != 2:
            raise UsageError(f"{args.features}: features must be 2-d (n_samples, n_features), got shape {X.shape}")
        y = _check_labels(_load_array(args.labels), X.shape[0], args.labels) if args.labels else None
    else:
        images, y = _load_fashion("train", args, say)
        X = flatten_pixels(images)
    if args.distributed:
        return _cluster_distributed(args, X, y)
    est = make_cluster_estimator(args, args.device)
    labels = est.fit_predict(X)
    report_clustering(args, labels, y, est.n_iter_)
    return 0


def _memory_limit_bytes(args):
    if args.memory_limit is not None:
        return int(args.memory_limit * (1 << 30))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _streams(args):
    """Whether ``cluster --features`` reads the file tile by tile: a .npy file larger than the memory limit."""
    path = Path(args.features)
    return path.suffix == ".npy" and path.is_file() and path.stat().st_size > _memory_limit_bytes(args)


def _cluster_streamed(args):
    """``cluster`` on a .npy file too large for memory: every pass reads it from disk, with a progress bar."""
    import numpy as np

    from ..sources import with_progress

    if args.distributed:
        # Each rank streams its own row range of the memory-mapped file.
        X = np.load(args.features, mmap_mode="r")
        if X.ndim != 2:
            raise UsageError(f"{args.features}: features must be 2-d (n_samples, n_features), got shape {X.shape}")
        y = _check_labels(_load_array(args.labels), X.shape[0], args.labels) if args.labels else None
        return _cluster_distributed(args, X, y)
    passes = []

    def make_bar(n_rows):
        from tqdm.auto import tqdm

        passes.append(n_rows)
        return tqdm(total=n_rows, unit="rows", unit_scale=True, desc=f"pass {len(passes)}", disable=args.quiet)

    X = with_progress(args.features, make_bar)
    y = _check_labels(_load_array(args.labels), X.n_rows, args.labels) if args.labels else None
    est = make_cluster_estimator(args, args.device)
    labels = est.fit_predict(X)
    report_clustering(args, labels, y, est.n_iter_, where=f" (streamed from disk, {len(passes)} passes)")
    return 0


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hold back what torch's C++ side writes to stderr (retry logs, stack frames) while the ranks assemble.

    On success it is written out; on failure the caller's one-line error replaces it.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _cluster_distributed(args, X, y):
    """Under torchrun: every rank loads X, fits on its block of rows; rank 0 reports."""
    import torch.distributed as dist

    from ..distributed import DistributedFitError, fit_on_shards, init_from_env

    with _quiet_native_stderr():
        device = init_from_env(startup_timeout_seconds=args.startup_timeout)
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
        **({"max_iter": args.max_iter} if args.max_iter is not None else {}),
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
        print(f"labels: {args.save_labels}")


def cmd_select(args, say):
    import numpy as np

    from .selection import run_selection, validate_features

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--k must list positive integers, got {args.k!r}")
    _check_can_create(Path(args.out), "--out", want_dir=True)
    if args.features:
        X = _load_array(args.features)
        X = X.cpu().numpy() if hasattr(X, "cpu") else X
        try:
            X = validate_features(X, source=args.features)[: args.n_samples]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        from sklearn.decomposition import PCA

        from .datasets import flatten_pixels

        images, _ = _load_fashion("train", args, say)
        X = PCA(args.pca, random_state=args.seed).fit_transform(flatten_pixels(images[: args.n_samples]))
    if max(ks) > X.shape[0]:
        raise UsageError(f"--k {max(ks)} is more than the {X.shape[0]} samples")
    say(f"sweeping {X.shape[0]} samples x {X.shape[1]} features")
    X = np.asarray(X, dtype=np.float64)
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
    from .bench.runner import check_tag

    if args.grid not in GRIDS:
        raise UsageError(f"--grid {args.grid!r} is not one of {sorted(GRIDS)}")
    if args.tag is not None:
        try:
            check_tag(args.tag)
        except ValueError as err:
            raise UsageError(f"--tag: {err}") from None
    _check_bench_device(args.grid, args.device)
    _check_can_create(Path(args.out), "--out", want_dir=True)
    rows, path = run_named_grid(args.grid, args.out, tag=args.tag, repeats=args.repeats, seed=args.seed,
                                device=args.device, say=say)  # fmt: skip
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} cases measured; results in {path}")
    return 0


def _check_bench_device(grid, device):
    """UsageError, before any case runs, when the device asked for (or the grid's own, under "auto") is not here."""
    import torch

    from ..device import resolve_device
    from .bench import CPU_ONLY_BACKENDS, GRIDS

    if device != "auto":
        try:
            resolve_device(device)
        except ValueError as exc:
            raise UsageError(f"--device {device}: {exc}") from None
    elif not torch.cuda.is_available() and any(
        c.device.startswith("cuda") for c in GRIDS[grid] if c.backend not in CPU_ONLY_BACKENDS + ("cuml",)
    ):
        raise UsageError(
            f"--grid {grid} runs on CUDA and no CUDA GPU is available (torch.cuda.is_available() is False); "
            "--device cpu runs its cases on the CPU"
        )


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
    except (ValueError, TypeError, FileNotFoundError, ImportError, OSError) as exc:
        # TypeError too: the library raises it for input of the wrong kind (sparse data where a
        # dense array is needed, as scikit-learn does).
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"gpuclust: error: {message or exc.__class__.__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gpuclust: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
