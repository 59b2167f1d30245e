"""Rebuild the README's results section from the committed results (never typed by hand).

python benchmarks/update_readme.py              # rewrite README.md between the markers
python benchmarks/update_readme.py --check-only # exit 1 if README.md is stale
(--results DIR and --readme PATH point it elsewhere; the tests use them.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _jsonl(name, results=RESULTS):
    path = Path(results) / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _mib(row):
    """A row's peak memory in MiB, "n/a" where it was not measured (``peak_memory_method`` "unavailable")."""
    nbytes = row.get("peak_memory_bytes")
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def _is_bench_rows(rows):
    """True for a file of ``gpuclust bench`` rows (each names its algorithm), not a log kept beside them."""
    return bool(rows) and all("algorithm" in r for r in rows)


def _env_line(rows):
    env = next((r["environment"] for r in rows if r.get("environment")), None)
    if not env:
        return ""
    return (
        f"Measured on {env['device_name']} ({env['device']}, {env['cpu_count']} CPU threads), torch "
        f"{env['torch']}, scikit-learn {env['sklearn']}, commit {env.get('git_commit') or '?'}."
    )


def _ok(rows, **match):
    return [r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def main_job_section(results=RESULTS):
    lines = []
    runs = (
        ("run_full_gpu", "full profile on a GPU"),
        ("run_full30_cpu", "full profile with `--epochs 30` on the CPU"),
        ("run_quick_cpu", "quick profile on the CPU"),
    )
    for folder, title in runs:
        path = Path(results) / folder / "results.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        env, tr, cfg = run["environment"], run["training"], run["config"]
        lines += [
            f"### `gpuclust run`, {title}",
            "",
            f"{env['device_name']} ({env['device']}); preset `{cfg['preset']}` trained on "
            f"{tr['n_train_images']} images for {len(tr['train_loss'])} epochs in {tr['seconds']:.0f} s "
            f"(median {sorted(tr['images_per_second'])[len(tr['images_per_second']) // 2]:.0f} images/s). "
            f"Test-set scores; from `benchmarks/results/{folder}/results.json`.",
            "",
            "| task | completeness | seed report | NMI | ARI | cluster acc. | fit s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in run["results"]:
            if "skipped" in r:
                lines.append(f"| {r['task']} | {r['skipped']} | | | | | |")
                continue
            ref = run["seed_report"].get(r["task"])
            lines.append(
                f"| {r['task']} | {100 * r['completeness']:.2f}% | "
                f"{'' if ref is None else f'{100 * ref:.2f}%'} | {r['nmi']:.3f} | {r['ari']:.3f} | "
                f"{r['cluster_accuracy']:.3f} | {r['fit_seconds']:.2f} |"
            )
        if any("protocol" in r for r in run["results"]):
            lines += [
                "",
                "task4: the codes embedded by a UMAP-style neighbour graph in torch, then a Gaussian "
                "mixture. *inductive*: training codes only, each test image labelled by a vote of its nearest "
                "training codes (the seed's protocol). *transductive*: training and test codes embedded and "
                "clustered together, labels used only to score (N2D's protocol, not comparable with the seed's).",
            ]
        if any(r["task"].startswith("task5") for r in run["results"]):
            lines += [
                "",
                "task5: task 4's embedding clustered by a mixture of two components a cluster, merged along the "
                "neighbour graph (*merged*); then a classifier trained on the confident half of every merged "
                "cluster labels the test set (*selflabel*, inductive).",
            ]
        lines.append("")
    return lines


def kmeans_section(rows, title):
    km = _ok(rows, algorithm="kmeans", mode="per_iter")
    if not km:
        return []
    lines = [
        f"### KMeans per iteration, {title}",
        "",
        _env_line(rows),
        "",
        "| data | backend | algorithm | ms / iteration | vs scikit-learn | GB/s of X | completeness |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in km:
        peer = next(
            (
                p
                for p in km
                if p["backend"] == "sklearn" and p["data"] == r["data"] and p["kmeans_algorithm"] in ("lloyd", "auto")
            ),
            None,
        )
        ratio = (
            "" if peer is None or r["backend"] == "sklearn" else f"{peer['seconds_median'] / r['seconds_median']:.2f}x"
        )
        where = f"{r['backend']}/{r['device']}"
        lines.append(
            f"| {r['data']} {r['n']}x{r['d']}, k={r['k']} | {where} | "
            f"{r['kmeans_algorithm'] if r['kmeans_algorithm'] != 'auto' else 'lloyd'} | "
            f"{1e3 * r['seconds_median']:.2f} | {ratio} | {r['bytes_per_iter'] / r['seconds_median'] / 1e9:.1f} | "
            f"{r['completeness']:.3f} |"
        )
    return lines + [
        "",
        "Ratios are against scikit-learn's lloyd in the same run; above 1 means gpuclust is faster.",
        "",
    ]


def gmm_section(rows, title, mode):
    gmm = _ok(rows, algorithm="gmm", mode=mode)
    ours = [r for r in gmm if r["backend"] == "torch"]
    if not ours:
        return []
    per = mode == "per_iter"
    unit = "ms / iteration" if per else "s / fit"
    scale = 1e3 if per else 1.0
    lines = [
        f"### GaussianMixture {'per iteration' if per else 'converged fits'}, {title}",
        "",
        _env_line(rows),
        "",
        f"| data | covariance | ours ({unit}) | scikit-learn ({unit}) | speed-up | peak memory ours / sklearn | "
        f"completeness ours / sklearn | log-likelihood |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        peer = next(
            (
                p
                for p in gmm
                if p["backend"] == "sklearn"
                and p["data"] == r["data"]
                and p["n"] == r["n"]
                and p["covariance_type"] == r["covariance_type"]
            ),
            None,
        )
        sk_t = f"{scale * peer['seconds_median']:.2f}" if peer else "n/a"
        speed = f"{peer['seconds_median'] / r['seconds_median']:.2f}x" if peer else ""
        mem = f"{_mib(r)} / {_mib(peer)} MiB" if peer else f"{_mib(r)} MiB"
        comp = f"{r['completeness']:.3f} / {peer['completeness']:.3f}" if peer else f"{r['completeness']:.3f}"
        lines.append(
            f"| {r['data']} {r['n']}x{r['d']}, K={r['k']} | {r['covariance_type']} | "
            f"{scale * r['seconds_median']:.2f} | {sk_t} | {speed} | {mem} | {comp} | "
            f"{r['log_likelihood']:.3f} |"
        )
    return lines + [""]


def tradeoff_section(cpu, results=RESULTS):
    """The question users bring: what does full covariance cost over diag, and what does it buy?"""
    lines = []
    ours = _ok(cpu, algorithm="gmm", mode="per_iter", backend="torch")
    for data in dict.fromkeys(r["data"] for r in ours):
        t = {r["covariance_type"]: r for r in ours if r["data"] == data}
        if "full" in t and "diag" in t:
            lines.append(
                f"- {data} ({t['full']['n']}x{t['full']['d']}, K={t['full']['k']}): a full-covariance EM "
                f"iteration costs {t['full']['seconds_median'] / t['diag']['seconds_median']:.1f}x a diag one."
            )
    path = Path(results) / "run_quick_cpu" / "results.json"
    if path.exists():
        rows = {
            r.get("covariance_type"): r
            for r in json.loads(path.read_text())["results"]
            if r["task"].startswith("task3") and "skipped" not in r
        }
        if "full" in rows and "diag" in rows:
            f, d = rows["full"], rows["diag"]
            lines.append(
                f"- On the autoencoder's features (quick run), full buys "
                f"{100 * (f['completeness'] - d['completeness']):+.2f} points of completeness over diag, "
                f"for {f['fit_seconds'] / d['fit_seconds']:.1f}x the fit time."
            )
    return ["### Full against diag covariance", ""] + lines + [""] if lines else []


def peers_section(rows, path, readme_dir):
    """gpuclust against every other library from one ``peers*.jsonl`` file, its plot, and why peers were skipped."""
    if not any(r["status"] == "ok" for r in rows):
        return []
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this tree's gpuclust, installed or not
    from gpuclust.app.bench import peer_table

    table = peer_table(rows)
    if not table:
        return []
    env = next((r["environment"] for r in rows if r.get("environment")), None) or {}
    lines = [
        f"### Against other libraries, {env.get('device_name') or path.stem} (`{path.name}`)",
        "",
        _env_line(rows),
        "",
        *table,
        "",
    ]
    plot = path.with_name(f"{path.stem}_peers.png")
    if plot.exists():
        rel = Path(os.path.relpath(plot, readme_dir)).as_posix()
        lines += [f"![Completeness against seconds to a converged fit, one point per library]({rel})", ""]
    skipped = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped.setdefault(r["backend"], r["reason"])
    lines += [f"- {backend} skipped: {reason}" for backend, reason in skipped.items()]
    return lines + ([""] if skipped else [])


def scale_section(rows, path):
    """The scale grid on one card (``scale_<card>.jsonl``, benchmarks/gpu_scale.py): a table per case."""
    if not any(r["status"] == "ok" for r in rows):
        return []
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from gpuclust.app.bench.scale_tables import scale_table

    env = next((r["environment"] for r in rows if r.get("environment")), None) or {}
    title = f"### At the sizes GPU users bring, {env.get('device_name') or path.stem} (`{path.name}`)"
    return [title, "", *[line.replace("### ", "#### ", 1) for line in scale_table(rows)], ""]


def render(results=RESULTS, readme_dir=ROOT):
    results = Path(results)
    cpu, mem = _jsonl("cpu.jsonl", results), _jsonl("cpu-memory.jsonl", results)
    # The GPU check names its results after the card (gpu_nvidia_h100.jsonl, gpu_nvidia_h200.jsonl, ...);
    # the smoke and step logs kept beside them (gpu_<card>_smoke.jsonl, ..._steps.jsonl) are not bench rows.
    gpu_files = sorted(p.name for p in results.glob("gpu_*.jsonl") if _is_bench_rows(_jsonl(p.name, results)))
    lines = [
        START,
        "## Results",
        "",
        "Generated by `python benchmarks/update_readme.py` from the files in `benchmarks/results/`.",
        "",
    ]
    lines += main_job_section(results)
    lines += kmeans_section(cpu, "this 2-core CPU")
    lines += gmm_section(cpu, "this 2-core CPU", "per_iter")
    lines += gmm_section(cpu, "this 2-core CPU", "converged")
    lines += gmm_section(mem, "memory case on the CPU", "per_iter")
    lines += tradeoff_section(cpu, results)
    # What users could pick instead (gpuclust bench --grid peers): every peers*.jsonl committed.
    for path in sorted(results.glob("peers*.jsonl")):
        lines += peers_section(_jsonl(path.name, results), path, readme_dir)
    for name in gpu_files:
        gpu = _jsonl(name, results)
        card = next((r["environment"].get("device_name") for r in gpu if r.get("environment")), None) or name
        lines += kmeans_section(gpu, card)
        lines += gmm_section(gpu, card, "per_iter")
        lines += peers_section(gpu, results / name, readme_dir)
    # The scale grid (benchmarks/gpu_scale.py; gpu_check.sh --steps env,scale), one file per card.
    for path in sorted(results.glob("scale_*.jsonl")):
        lines += scale_section(_jsonl(path.name, results), path)
    if not gpu_files:
        lines += [
            "No GPU results are committed yet: `benchmarks/gpu_check.sh` is ready for the first session with a GPU.",
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default benchmarks/results)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    if START not in readme or END not in readme:
        print("README.md has no results markers", file=sys.stderr)
        return 1
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = head + render(args.results, args.readme.resolve().parent) + tail
    if args.check_only:
        return 0 if updated == readme else 1
    if updated != readme:
        args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
