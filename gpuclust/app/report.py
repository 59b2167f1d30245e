"""Turn the main job's results into results.json, report.md and PNG plots in a run folder."""

from __future__ import annotations

import fnmatch
import io
import json
from pathlib import Path

import numpy as np

from ._atomic import atomic_write, atomic_write_json, atomic_write_text
from ._plots import pyplot, save_png


def plot_loss_curve(training, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(training["train_loss"]) + 1)
    ax.plot(epochs, training["train_loss"], label="training")
    ax.plot(epochs, training["val_loss"], label="validation")
    if training.get("best_epoch"):
        ax.axvline(training["best_epoch"], color="grey", ls=":", label=f"best (epoch {training['best_epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared reconstruction error")
    ax.set_title("Autoencoder training and validation loss")
    ax.legend()
    save_png(fig, path)


def matched_confusion(y_true, y_pred):
    """Contingency matrix with columns reordered so cluster j sits under the class it is matched to."""
    from ..metrics import match_clusters

    mapping, counts, classes, clusters = match_clusters(np.asarray(y_true), np.asarray(y_pred))
    counts = counts.cpu().numpy()
    cls, clu = classes.cpu().tolist(), clusters.cpu().tolist()
    matched = [clu.index(c) for c in sorted(mapping, key=lambda c: cls.index(mapping[c]))]
    order = matched + [j for j in range(len(clu)) if j not in matched]
    return counts[:, order], [clu[j] for j in order], cls


def plot_confusion(y_true, y_pred, class_names, title, path):
    plt = pyplot()
    matrix, cluster_ids, classes = matched_confusion(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cluster_ids)), [f"c{c}" for c in cluster_ids], rotation=0)
    ax.set_yticks(range(len(classes)), [class_names[c] for c in classes])
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_xlabel("cluster (matched to the class on its row by the Hungarian method)")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_png(fig, path)


def plot_covariance_tradeoff(rows, path):
    """Fit time and completeness per GMM covariance type; returns False (nothing written) without GMM rows."""
    plt = pyplot()
    gmm = [r for r in rows if r.get("covariance_type") and "skipped" not in r]
    if not gmm:
        return False
    names = [r["covariance_type"] for r in gmm]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.bar(names, [r["fit_seconds"] for r in gmm], color="tab:orange")
    a.set_yscale("log")
    a.set_ylabel("fit time (s, log scale)")
    a.set_title("GMM fit time by covariance type")
    b.bar(names, [100 * r["completeness"] for r in gmm], color="tab:blue")
    b.set_ylabel("test completeness (%)")
    b.set_title("GMM completeness by covariance type")
    for ax in (a, b):
        ax.set_xlabel("covariance type")
    save_png(fig, path)
    return True


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def results_table(rows, seed_report) -> str:
    head = (
        "| task | features | completeness | seed report | homogeneity | V-measure | NMI | ARI | "
        "cluster acc. | fit s | device | backend |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['task']} | {r['skipped']} |" + " |" * 10)
            continue
        ref = seed_report.get(r["task"])
        lines.append(
            f"| {r['task']} | {r.get('features', '')} | {100 * r['completeness']:.2f}% | "
            f"{'' if ref is None else f'{100 * ref:.2f}%'} | {_fmt(r['homogeneity'])} | {_fmt(r['v_measure'])} | "
            f"{_fmt(r['nmi'])} | {_fmt(r['ari'])} | {_fmt(r['cluster_accuracy'])} | {r['fit_seconds']:.2f} | "
            f"{r['device']} | {r['backend']} |"
        )
    return "\n".join(lines)


def experiment_table(rows) -> str:
    """Every variant's completeness, NMI, ACC and time, with its protocol (inductive or transductive)."""
    lines = [
        "| variant | protocol | points clustered | completeness | NMI | cluster acc. | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            continue
        protocol = r.get("protocol", "inductive")
        points = r.get("n_embedded")
        lines.append(
            f"| {r['task']} | {'**transductive**' if protocol == 'transductive' else protocol} | "
            f"{'training split' if points is None else points} | {100 * r['completeness']:.2f}% | "
            f"{_fmt(r['nmi'])} | {_fmt(r['cluster_accuracy'])} | {r['fit_seconds']:.2f} |"
        )
    return "\n".join(lines)


def _write_npz(path, arrays, save):
    # The archive is built in memory, then written atomically in one go.
    buf = io.BytesIO()
    save(buf, **arrays)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


# What a run writes into its folder (names and patterns), and the list it keeps of what it wrote there.
RUN_FILES = (
    "results.json",
    "report.md",
    "predictions.npz",
    "codes.npz",
    "loss_curve.png",
    "covariance_types.png",
    "confusion_task*.png",
)
MANIFEST = ".gpuclust-run.json"


def _is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def _written_before(out: Path) -> set[str]:
    """The files earlier runs wrote into ``out``: its manifest's list (none without one)."""
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and _is_run_file(f)}


def foreign_files(out_dir) -> list[str]:
    """Files in ``out_dir`` that a run could replace but no gpuclust run wrote there (the user's own)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    ours = _written_before(out)
    return sorted(p.name for p in out.iterdir() if _is_run_file(p.name) and p.name not in ours)


def _write_manifest(out: Path, names):
    atomic_write_json(out / MANIFEST, {"written_by": "gpuclust run", "files": sorted(names)})


def write_run_folder(run: dict, out_dir, overwrite: bool = False) -> dict:
    """Write results.json, report.md, predictions.npz and the plots; return the paths written.

    Only files that earlier runs wrote into the folder (listed in its ``.gpuclust-run.json``) are
    replaced, or removed when this run does not write them again. A file named like one a run
    writes that gpuclust did not write raises FileExistsError before anything is written, unless
    ``overwrite``; any other file is left alone.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    foreign = foreign_files(out)
    if foreign and not overwrite:
        raise FileExistsError(
            f"{out} holds {', '.join(foreign)}, which gpuclust did not write there; "
            "pass overwrite=True (--overwrite) to replace them"
        )
    before = _written_before(out)
    predictions = run["predictions"]
    summary = {k: v for k, v in run.items() if k not in ("predictions", "test_labels", "codes")}
    paths = {
        "results": out / "results.json",
        "report": out / "report.md",
        "loss_curve": out / "loss_curve.png",
        "covariance_types": out / "covariance_types.png",
        "predictions": out / "predictions.npz",
        **({"codes": out / "codes.npz"} if run.get("codes") else {}),  # --save-codes: for clustering elsewhere
        **{f"confusion_{task}": out / f"confusion_{task}.png" for task in predictions},
    }
    _write_manifest(out, before | {p.name for p in paths.values()})  # first: a run cut short knows its files
    atomic_write_json(paths["results"], summary)
    arrays = {"test_labels": np.asarray(run["test_labels"]), **{k: np.asarray(v) for k, v in predictions.items()}}
    _write_npz(paths["predictions"], arrays, np.savez_compressed)
    if "codes" in paths:
        _write_npz(paths["codes"], run["codes"], np.savez)
    plot_loss_curve(run["training"], paths["loss_curve"])
    if not plot_covariance_tradeoff(run["results"], paths["covariance_types"]):
        del paths["covariance_types"]
    for task, pred in predictions.items():
        score = next(r["completeness"] for r in run["results"] if r["task"] == task)
        plot_confusion(
            run["test_labels"],
            pred,
            run["class_names"],
            f"{task} (completeness {100 * score:.2f}%)",
            paths[f"confusion_{task}"],
        )
    atomic_write_text(paths["report"], render_report(run, paths))
    written = {p.name for p in paths.values()}
    for name in before - written:  # an earlier run's plots (or codes) that this run did not make again
        (out / name).unlink(missing_ok=True)
    _write_manifest(out, written)
    return paths


def render_report(run: dict, paths: dict) -> str:
    """report.md: the profile, the environment, the results table, the experiment table and the plots."""
    cfg, env, tr = run["config"], run["environment"], run["training"]
    best = max(
        (r for r in run["results"] if r["task"].startswith("task3") and "skipped" not in r),
        key=lambda r: r["completeness"],
        default=None,
    )
    lines = [
        "# gpuclust run report",
        "",
        _profile_note(cfg, tr),
        "",
        f"Device: {env['device']} ({env['device_name']}); torch {env['torch']}, gpuclust {env['gpuclust']}, "
        f"commit {env.get('git_commit') or 'unknown'}. Autoencoder preset `{cfg['preset']}` "
        f"(latent {tr['latent_dim']}-d), trained in {tr['seconds']:.1f} s, best epoch {tr['best_epoch']}.",
        "",
        f"{_scored_on(run)} *Seed report* is the seed's completeness (called accuracy there).",
        "",
        results_table(run["results"], run["seed_report"]),
        "",
    ]
    if best is not None:
        beat = best["completeness"] > run["seed_report"]["task3_ae_gmm_diag"]
        lines += [
            f"Best Gaussian mixture: **{best['covariance_type']}**, completeness "
            f"{100 * best['completeness']:.2f}% ({'above' if beat else 'below'} the seed report's best, 56.26%).",
            "",
        ]
    if any("protocol" in r for r in run["results"]):
        lines += _experiment_section(run["results"])
    lines += ["## Plots", ""]
    for key, path in paths.items():
        if path.suffix == ".png":
            lines.append(f"![{key}]({path.name})")
    return "\n".join(lines) + "\n"


def _profile_note(cfg: dict, tr: dict) -> str:
    """What the run trained on: the quick or full profile, and a smoke run's limit."""
    note = {
        "quick": (
            f"**Quick profile** (CPU): the autoencoder trained on {tr['n_train_images']} of the 48,000 "
            f"training-split images for {len(tr['train_loss'])} epoch(s) (limit {cfg['epochs']}). "
            "`--profile full` (the default on a GPU) follows the seed's protocol."
        ),
        "full": (
            f"**Full profile**: the seed's protocol, {tr['n_train_images']} training images, up to "
            f"{cfg['epochs']} epochs with early stopping (patience {cfg['patience']}), batch {cfg['batch_size']}."
        ),
    }[cfg["profile"]]
    if cfg.get("limit"):
        note += f" **Smoke run**: only the first {cfg['limit']} training and test images."
    return note


def _experiment_section(results) -> list:
    """The experiment table of tasks 4 and 5 (rows with a protocol), with what each step does."""
    return [
        "## Experiment table",
        "",
        "What each step buys. *Inductive*: cluster models fitted on training images only, test labels "
        "predicted for the unseen test set (the seed's protocol). *Transductive*: training and test "
        "codes embedded and clustered together, labels used only to score (as N2D reports); not "
        "comparable with the seed's protocol. Times exclude the shared autoencoder training; task 4 "
        "includes the kNN graph, the embedding, the mixture and (inductive) the neighbour vote. "
        "task5_merged: task 4's embedding (reused, so its time is the mixture and the vote only), a "
        "mixture of two components a cluster, the components merged two at a time by the neighbour "
        "graph's normalized weight between them, so that a class the mixture "
        "splits but the graph holds together ends up whole."
        + (
            " task5_selflabel: a classifier started from the autoencoder's encoder, trained on the more "
            "confident half of every cluster of task5_merged's inductive clustering (shifted images, no "
            "test image), labels the test set."
            if any(r["task"] == "task5_selflabel_inductive" for r in results)
            else ""
        )
        + (
            " task6_scan: ten small heads on the training codes of task 4, each trained so that a code and "
            "one of its 20 nearest neighbours in task 4's embedding get the same cluster (SCAN-style, with an "
            "entropy term against collapse); the five with the lowest consistency loss over the whole "
            "neighbour graph (no labels) are aligned and averaged, and label the test codes directly."
            if any(r["task"] == "task6_scan_inductive" for r in results)
            else ""
        ),
        "",
        experiment_table(results),
        "",
        *_label_free_choice(results),
    ]


def _label_free_choice(results) -> list:
    """The variant the report calls best: the highest modularity of its training clustering (no labels)."""
    scored = [r for r in results if r.get("modularity") is not None]
    if not scored:
        return []
    best = max(scored, key=lambda r: r["modularity"])
    listed = ", ".join(f"{r['task']} {r['modularity']:.4f}" for r in scored)
    return [
        "**Label-free choice** (rule fixed before the run, issue 27): among the inductive variants that cluster "
        "the same embedded training codes, the one whose training clustering has the highest modularity on the "
        "codes' 20-nearest-neighbour graph (share of neighbour pairs inside a cluster, less the share the "
        f"cluster sizes alone give). Modularity: {listed}. Chosen: **{best['task']}**: cluster accuracy "
        f"{best['cluster_accuracy']:.4f}, NMI {best['nmi']:.4f}, ARI {best['ari']:.4f}, completeness "
        f"{100 * best['completeness']:.2f}% on the test set.",
        "",
    ]


def _scored_on(run: dict) -> str:
    """What the scores were computed on: the whole test set, or the images a smoke run kept."""
    n = len(run["test_labels"])
    if n == 10_000:
        return "All scores on the held-out 10,000-image test set."
    return f"All scores on {n:,} held-out test images only (the first {n:,} of the test set's 10,000)."
