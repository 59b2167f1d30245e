"""gpuclust.app.cli: the command line, in process (main) and as ``python -m gpuclust`` in a subprocess.

Errors are one line with exit code 2, found before any work, with nothing written; files a user
must never lose are refused as outputs."""

import gzip
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCHRUN_ENV, free_port

import gpuclust.app.datasets as ds
from gpuclust.app.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUCLUST_DATA", raising=False)
    monkeypatch.setattr(ds, "DEBIAN_DIR", tmp_path / "no-debian")


@pytest.mark.realdata
@pytest.mark.slow
def test_run_end_to_end_on_a_slice(fashion_train, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "run", "--limit", "600", "--epochs", "2", "--covariance-types", "diag,full",
                              "--out", str(out), "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 0
    assert "task1_kmeans_pixels" in stdout and "completeness" in stdout
    results = json.loads((out / "results.json").read_text())
    tasks = [r["task"] for r in results["results"]]
    assert tasks == [
        "task1_kmeans_pixels",
        "task2_ae_kmeans",
        "task3_ae_gmm_diag",
        "task3_ae_gmm_full",
        "task4_umap_gmm_inductive",
        "task4_umap_gmm_transductive",
        "task5_merged_inductive",
        "task5_merged_transductive",
        "task6_scan_inductive",
    ]  # the quick profile has no self-labelling
    inductive = [r for r in results["results"] if r.get("protocol") == "inductive"]
    assert [r["task"] for r in inductive if "modularity" in r] == [r["task"] for r in inductive]
    for row in results["results"]:
        for key in ("completeness", "homogeneity", "v_measure", "nmi", "ari", "cluster_accuracy", "fit_seconds",
                    "device", "backend"):  # fmt: skip
            assert key in row, key
        assert 0.0 <= row["completeness"] <= 1.0
    assert results["seed_report"] == {
        "task1_kmeans_pixels": 0.5247,
        "task2_ae_kmeans": 0.5187,
        "task3_ae_gmm_diag": 0.5626,
    }
    assert results["config"]["profile"] == "quick" and results["config"]["limit"] == 600
    assert len(results["training"]["train_loss"]) == 2
    report = (out / "report.md").read_text()
    assert "52.47%" in report and "56.26%" in report and "Smoke run" in report
    assert "**Label-free choice**" in report
    for png in (
        "loss_curve.png",
        "covariance_types.png",
        "confusion_task1_kmeans_pixels.png",
        "confusion_task3_ae_gmm_full.png",
    ):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    preds = np.load(out / "predictions.npz")
    assert preds["task2_ae_kmeans"].shape == (600,)


@pytest.mark.realdata
def test_train_ae_then_cluster_saved_features(fashion_train, tmp_path, capsys):
    ckpt, feats = tmp_path / "ae.pt", tmp_path / "feats.npy"
    code, stdout, _ = run_cli(
        capsys,
        "train-ae",
        "--train-subset",
        "200",
        "--epochs",
        "1",
        "--checkpoint",
        str(ckpt),
        "--features",
        str(feats),
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0 and ckpt.is_file() and np.load(feats).shape == (10000, 10)
    labels = tmp_path / "y.npy"
    np.save(labels, ds.load_fashion_mnist("test")[1])
    code, stdout, _ = run_cli(
        capsys,
        "cluster",
        "--algorithm",
        "gmm",
        "--features",
        str(feats),
        "--labels",
        str(labels),
        "--save-labels",
        str(tmp_path / "pred.npy"),
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0 and "completeness" in stdout
    assert np.load(tmp_path / "pred.npy").shape == (10000,)


def test_cluster_on_pt_features(tmp_path, capsys):
    import torch

    X = torch.cat([torch.randn(100, 3), torch.randn(100, 3) + 8])
    torch.save(X, tmp_path / "x.pt")
    code, stdout, _ = run_cli(capsys, "cluster", "--n-clusters", "2", "--features", str(tmp_path / "x.pt"), "-q")
    assert code == 0 and "200 samples in 2 clusters" in stdout


def test_select_sweep_writes_choice_and_plot(tmp_path, capsys):
    rng = np.random.RandomState(0)
    X = np.vstack([rng.randn(150, 2), rng.randn(150, 2) * 0.5 + 6, rng.randn(150, 2) + [0, 9]])
    np.save(tmp_path / "x.npy", X)
    code, stdout, _ = run_cli(
        capsys,
        "select",
        "--features",
        str(tmp_path / "x.npy"),
        "--k",
        "1,2,3,5",
        "--covariance-types",
        "full,spherical",
        "--out",
        str(tmp_path / "sel"),
        "-q",
    )
    assert code == 0
    chosen = json.loads((tmp_path / "sel" / "select.json").read_text())["best"]
    assert chosen["n_components"] == 3
    assert (tmp_path / "sel" / "select.png").is_file()


def test_bench_tiny_grid(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "bench", "--grid", "cpu-small", "--out", str(tmp_path), "--repeats", "1", "-q")
    assert code == 0 and "cases measured" in stdout
    rows = [json.loads(line) for line in (tmp_path / "cpu-small.jsonl").read_text().splitlines()]
    for r in rows:  # a time is never negative or zero: a row is measured or says why not
        assert (r["status"] == "ok" and r["seconds_min"] > 0) or "noise" in r["reason"], r
    table = (tmp_path / "cpu-small.md").read_text().splitlines()
    for line in (line for line in table if line.startswith(("| kmeans", "| gmm"))):
        cells = [c.strip() for c in line.split("|")]
        assert not any(cells[i].startswith("-") for i in (3, 10, 11)), line  # time, GB/s, GFLOP/s


@pytest.mark.parametrize(
    "argv,match",
    [
        (["run", "--no-such-flag"], "unrecognized arguments"),
        (["run", "--covariance-types", "full,banded"], "covariance types"),
        (["run", "--profile", "medium"], "invalid choice"),
        (["cluster", "--features", "/nonexistent/x.npy"], "no such file"),
        (["bench", "--grid", "nope"], "--grid"),
        (["bench", "--grid", "cpu-small", "--tag", "../outside"], "--tag"),
        (["bench", "--grid", "cpu-small", "--tag", "/tmp/abs"], "--tag"),
        (["bench", "--grid", "cpu-small", "--tag", "a/b"], "--tag"),
        (["select", "--features", "/nonexistent.npy"], "no such file"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv, match):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err


def test_bad_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"not numpy")
    code, _, err = run_cli(capsys, "cluster", "--features", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be read" in err


def test_missing_data_is_one_line_exit_2(no_data_anywhere, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--out", str(tmp_path / "out"), "--quiet")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "Fashion-MNIST (train split) was not found" in line and "apt-get install dataset-fashion-mnist" in line
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code_and_help():
    out = subprocess.run([sys.executable, "-m", "gpuclust", "run", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    for command in ("run", "train-ae", "cluster", "select", "bench"):
        help_text = subprocess.run(
            [sys.executable, "-m", "gpuclust", command, "--help"], capture_output=True, text=True
        )
        assert help_text.returncode == 0 and "--device" in help_text.stdout


def test_default_run_skips_hours_long_fits_on_cpu_only():
    import torch

    from gpuclust.app.pipeline import cpu_skip_reason

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert "skipped on the CPU" in cpu_skip_reason("full", 48000, 6272, 10, cpu)
    assert "skipped on the CPU" in cpu_skip_reason("tied", 48000, 6272, 10, cpu)
    assert cpu_skip_reason("diag", 48000, 6272, 10, cpu) is None
    assert cpu_skip_reason("full", 48000, 10, 10, cpu) is None
    assert cpu_skip_reason("full", 48000, 6272, 10, gpu) is None


@pytest.mark.realdata
def test_run_with_the_seed_preset(fashion_train, tmp_path, capsys):
    code, stdout, _ = run_cli(
        capsys,
        "run",
        "--preset",
        "seed",
        "--limit",
        "300",
        "--epochs",
        "1",
        "--covariance-types",
        "spherical",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["training"]["latent_dim"] == 6272


# --- files a user must never lose (issue 24) ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def assert_one_line_exit_2(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), err
    assert "Traceback" not in err


def _same_file_variants(tmp_path, original):
    """Other names for ``original``: itself, a detour through a folder, a symbolic link, a hard link."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    symlink, hardlink = tmp_path / f"sym{original.suffix}", tmp_path / f"hard{original.suffix}"
    symlink.symlink_to(original)
    os.link(original, hardlink)
    return {"same": original, "detour": tmp_path / "sub" / ".." / original.name, "symlink": symlink, "hard": hardlink}


@pytest.mark.parametrize("variant", ["same", "detour", "symlink", "hard"])
def test_train_ae_refuses_features_that_would_overwrite_the_checkpoint(no_data_anywhere, tmp_path, capsys, variant):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"weeks of training")
    features = _same_file_variants(tmp_path, ck)[variant]
    for resume in ([], ["--resume"]):
        code, _, err = run_cli(capsys, "train-ae", "--checkpoint", str(ck), "--features", str(features), *resume, "-q")
        # Refused before the data is even looked for (no_data_anywhere would be the error otherwise).
        assert_one_line_exit_2(code, err, "--features", "--checkpoint", "same file")
        assert ck.read_bytes() == b"weeks of training"


@pytest.mark.parametrize("variant", ["same", "detour", "symlink", "hard"])
@pytest.mark.parametrize("input_flag", ["--features", "--labels"])
def test_cluster_refuses_labels_written_over_an_input(tmp_path, capsys, variant, input_flag):
    X = np.random.RandomState(0).rand(40, 3)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.arange(40) % 2)
    original = tmp_path / ("x.npy" if input_flag == "--features" else "y.npy")
    before = original.read_bytes()
    target = _same_file_variants(tmp_path, original)[variant]
    argv = ["cluster", "--features", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    code, _, err = run_cli(capsys, *argv, "--save-labels", str(target), "--n-clusters", "2", "-q")
    assert_one_line_exit_2(code, err, "--save-labels", input_flag, "same file")
    assert original.read_bytes() == before


def test_run_refuses_an_out_folder_holding_files_it_did_not_write(no_data_anywhere, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    code, _, err = run_cli(capsys, "run", "--out", str(out), "-q")
    # Refused before any work: without the check the missing data would be the error.
    assert_one_line_exit_2(code, err, "--out", "report.md", "--overwrite")
    assert (out / "report.md").read_text() == "my own notes"
    # --overwrite lets it go on (to the next problem here: no data).
    code, _, err = run_cli(capsys, "run", "--out", str(out), "--overwrite", "-q")
    assert_one_line_exit_2(code, err, "Fashion-MNIST")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_save_labels_keeps_the_mode_of_the_file_it_replaces(tmp_path, capsys, mode):
    np.save(tmp_path / "x.npy", np.random.RandomState(0).rand(30, 2))
    labels = tmp_path / "labels.npy"
    labels.write_bytes(b"old")
    os.chmod(labels, mode)
    code, _, err = run_cli(capsys, "cluster", "--features", str(tmp_path / "x.npy"), "--n-clusters", "2",
                           "--save-labels", str(labels), "-q")  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(labels.stat().st_mode) == mode
    assert np.load(labels).shape == (30,)


# --- one clear line, true words (issue 24) ------------------------------------------------------------


def test_a_features_file_torch_will_not_load_safely_is_one_line_without_advice(tmp_path, capsys):
    import argparse

    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(3), "namespace": argparse.Namespace(a=1)}, evil)
    code, _, err = run_cli(capsys, "cluster", "--features", str(evil))
    assert_one_line_exit_2(code, err, "evil.pt is not a features file gpuclust can read safely", "argparse.Namespace")
    assert "weights_only" not in err and "trust" not in err and "\x1b" not in err


@pytest.mark.parametrize(
    "grid,device", [("cpu-small", "cuda"), ("cpu-small", "cuda:0"), ("gpu-toy", "cuda"), ("gpu", "auto")]
)
def test_bench_on_a_device_that_is_not_there_is_one_line_exit_2(tmp_path, capsys, monkeypatch, grid, device):
    import torch

    from gpuclust.app import bench

    def must_not_run(*args, **kwargs):
        raise AssertionError("the grid ran")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "run_named_grid", must_not_run)
    code, _, err = run_cli(capsys, "bench", "--grid", grid, "--device", device, "--out", str(tmp_path / "b"), "-q")
    assert_one_line_exit_2(code, err, "no CUDA GPU")
    assert not (tmp_path / "b").exists()


# --- checked before any work, seen from a subprocess (issue 13) -----------------------------------


def cli(*argv, env=None, cwd=None, timeout=120):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpuclust", *map(str, argv)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def assert_process_one_line_exit_2(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def idx_bytes(array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_split(directory, split="train", n=60):
    rng = np.random.RandomState(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (rng.randint(0, 256, size=(n, 28, 28)), rng.randint(0, 10, size=n))
    for stem, array in zip(ds._SPLIT_STEMS[split], arrays):
        (directory / (stem + ".gz")).write_bytes(gzip.compress(idx_bytes(array)))


@pytest.fixture
def workdir(tmp_path):
    """An empty working folder whose contents after the run show what was written."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def _remove_labels(d):
    write_split(d)
    (d / "train-labels-idx1-ubyte.gz").unlink()


def _fifo_labels(d):
    _remove_labels(d)
    os.mkfifo(d / "train-labels-idx1-ubyte.gz")


@pytest.mark.parametrize(
    "setup,needle",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "is empty"),
        (_remove_labels, "has no train-labels-idx1-ubyte"),
        (_fifo_labels, "is a FIFO"),
    ],
)
@pytest.mark.parametrize("via", ["--data-dir", "GPUCLUST_DATA"])
def test_cli_explicit_data_location_never_falls_back(workdir, tmp_path, setup, needle, via):
    given = tmp_path / "given"
    setup(given)
    args, env = (["--data-dir", given], {}) if via == "--data-dir" else ([], {"GPUCLUST_DATA": str(given)})
    # Good data in the user cache, which a fall-back would have used.
    write_split(tmp_path / "cache" / "gpuclust" / "fashion-mnist")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = cli("cluster", "--save-labels", workdir / "y.npy", *args, env=env)
    assert_process_one_line_exit_2(out, given, needle)
    assert list(workdir.iterdir()) == []


@pytest.mark.realdata
def test_cli_prints_where_the_data_came_from(workdir, fashion_train):
    real = Path("/usr/share/datasets/fashion-mnist")
    if not real.is_dir():
        pytest.skip("needs Debian's Fashion-MNIST")
    out = cli("cluster", "--n-clusters", "2", "--max-iter", "1", "--data-dir", real, "--device", "cpu", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert f"Fashion-MNIST train split from {real}" in out.stderr


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--epochs", "0"], "--epochs: 0 is not a positive integer"),
        (["run", "--train-subset", "0"], "--train-subset: 0 is not a positive integer"),
        (["run", "--limit", "0"], "--limit: 0 is not an integer >= 50"),
        (["cluster", "--max-iter", "0"], "--max-iter: 0 is not a positive integer"),
        (["select", "--n-samples", "-5"], "--n-samples: -5 is not a positive integer"),
        (["train-ae", "--checkpoint", "c.pt", "--batch-size", "x"], "--batch-size: 'x' is not an integer"),
        (["cluster", "--seed", "-1"], "--seed: -1 is not a non-negative integer"),
    ],
)
def test_cli_sizes_must_be_positive_integers(workdir, argv, needle):
    out = cli(*argv, cwd=workdir)
    assert_process_one_line_exit_2(out, needle)
    assert list(workdir.iterdir()) == []


@pytest.fixture
def features(tmp_path):
    rng = np.random.RandomState(0)
    X = np.vstack([rng.randn(40, 2), rng.randn(40, 2) + 6])
    np.save(tmp_path / "x.npy", X)
    return tmp_path / "x.npy"


def test_cli_checks_outputs_before_any_work(workdir, features):
    (workdir / "a-file").write_text("x")
    before = sorted(p.name for p in workdir.iterdir())
    cases = [
        (["run", "--out", workdir / "a-file"], "--out", "is not a directory"),
        (["select", "--features", features, "--out", workdir / "a-file"], "--out", "is not a directory"),
        (["train-ae", "--checkpoint", workdir / "a-file" / "ae.pt"], "--checkpoint", "is not a directory"),
        (["cluster", "--features", features, "--save-labels", workdir], "--save-labels", "unsupported file type"),
        (["cluster", "--features", features, "--save-labels", workdir / "y.txt"], "unsupported file type '.txt'"),
        (["train-ae", "--checkpoint", workdir / "c.pt", "--features", workdir / "f.csv"], "--features", "'.csv'"),
    ]
    for argv, *needles in cases:
        started = time.perf_counter()
        assert_process_one_line_exit_2(cli(*argv), *needles)
        assert time.perf_counter() - started < 60
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_cli_save_labels_writes_exactly_the_name_given(workdir, features):
    out = cli("cluster", "--n-clusters", "2", "--features", features, "--save-labels", workdir / "y.pt", "-q")
    assert out.returncode == 0, out.stderr
    assert [p.name for p in workdir.iterdir()] == ["y.pt"]
    assert torch.load(workdir / "y.pt", weights_only=True).shape == (80,)


@pytest.mark.parametrize(
    "labels,needle",
    [
        (np.zeros((80, 2), dtype=np.int64), "must be 1-d"),
        (np.zeros(80, dtype=np.float64), "must be integers"),
        (np.zeros(79, dtype=np.int64), "79 labels for 80 samples"),
    ],
)
def test_cli_labels_checked_before_the_fit(workdir, features, tmp_path, labels, needle):
    np.save(tmp_path / "y.npy", labels)
    out = cli("cluster", "--features", features, "--labels", tmp_path / "y.npy", "--save-labels", workdir / "p.npy")
    assert_process_one_line_exit_2(out, "y.npy", needle)
    assert "iterations" not in out.stdout  # no fit ran
    assert list(workdir.iterdir()) == []


def test_cli_select_reports_the_real_error_once(workdir, tmp_path):
    X = np.random.RandomState(0).randn(50, 3)
    X[7, 1] = np.nan
    np.save(tmp_path / "x.npy", X)
    out = cli("select", "--features", tmp_path / "x.npy", "--k", "1,2", "--out", workdir / "sel")
    assert_process_one_line_exit_2(out, "x.npy", "NaN or infinity")
    assert "reg_covar" not in out.stderr and list(workdir.iterdir()) == []


# --- resume and checkpoints (issue 13) ------------------------------------------------------------


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_resume_refuses_a_checkpoint_carrying_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ae.pt"
    torch.save({"format": "gpuclust-autoencoder-1", "config": _RunsAShellCommand(marker)}, ckpt)
    before = ckpt.read_bytes()
    out = cli("train-ae", "--checkpoint", ckpt, "--resume", "--data-dir", tmp_path / "no-data")
    assert_process_one_line_exit_2(out, "ae.pt", "not a readable gpuclust checkpoint")
    assert not marker.exists() and ckpt.read_bytes() == before


@pytest.mark.realdata
def test_cli_resume_refuses_changed_settings(tmp_path, fashion_train):
    from gpuclust.app.training import train_autoencoder

    real = Path("/usr/share/datasets/fashion-mnist")
    if not real.is_dir():
        pytest.skip("needs Debian's Fashion-MNIST")
    ckpt = tmp_path / "ae.pt"
    images = fashion_train[0][:40]
    train_autoencoder(images[:32], images[32:], preset="dense10", epochs=1, batch_size=16, checkpoint=ckpt,
                      progress=False, device="cpu")  # fmt: skip
    before = ckpt.read_bytes()
    out = cli("train-ae", "--epochs", "2", "--batch-size", "8", "--seed", "4", "--resume", "--checkpoint", ckpt,
              "--train-subset", "64", "--data-dir", real, "--device", "cpu", "-q")  # fmt: skip
    assert_process_one_line_exit_2(
        out, "cannot resume", "seed 0 in the checkpoint, 4 now", "batch_size 16", "data 32 training", "--allow-changed"
    )
    assert ckpt.read_bytes() == before


# --- distributed start-up, other inputs (issue 13) ------------------------------------------------


@pytest.mark.parametrize(
    "env,needles",
    [
        ({"RANK": "3"}, ["RANK=3 must be less than WORLD_SIZE=2"]),
        ({"MASTER_ADDR": "no-such-host.invalid"}, ["cannot be resolved"]),
        ({"RANK": "1"}, ["did not assemble", "within 2 s"]),
    ],
)
def test_cli_distributed_start_up_errors_are_one_line(features, env, needles):
    full = {**TORCHRUN_ENV, "MASTER_PORT": str(free_port()), **env}
    started = time.perf_counter()
    out = cli("cluster", "--distributed", "--features", features, "--startup-timeout", "2", "--device", "cpu",
              env=full, timeout=60)  # fmt: skip
    assert_process_one_line_exit_2(out, *needles)
    assert time.perf_counter() - started < 45


def test_cli_repeated_covariance_types_run_once():
    from gpuclust.app.cli import _covariance_list

    assert _covariance_list("diag,full,diag") == ("diag", "full")


def test_cli_sparse_features_where_dense_are_needed_is_one_line(tmp_path):
    import torch

    X = torch.eye(40, 5).to_sparse_csr()
    torch.save(X, tmp_path / "sp.pt")
    for argv in (
        ["cluster", "--algorithm", "gmm", "--n-clusters", "2"],
        ["select", "--k", "2", "--out", str(tmp_path / "s")],
    ):
        proc = subprocess.run([sys.executable, "-m", "gpuclust", *argv, "--features", str(tmp_path / "sp.pt"), "-q"],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()


def test_cli_save_labels_never_overwrites_an_input(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.RandomState(0).rand(50, 3))
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "gpuclust", "cluster", "--features", str(path), "--save-labels",
                           str(path), "-q"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "one of the inputs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_a_bench_tag_that_is_a_path_touches_no_file_outside_out(tmp_path, capsys):
    # The runner deletes <out>/<tag>.jsonl before a fresh run: with tag "../victim" that was a file
    # outside the folder the user named.
    victim = tmp_path / "victim.jsonl"
    victim.write_text("the user's own file\n")
    code, _, err = run_cli(capsys, "bench", "--grid", "cpu-small", "--out", str(tmp_path / "b"), "--tag", "../victim")
    assert_one_line_exit_2(code, err, "--tag")
    assert victim.read_text() == "the user's own file\n" and not (tmp_path / "b").exists()
    from gpuclust.app.bench import run_named_grid

    with pytest.raises(ValueError, match="plain name"):
        run_named_grid("cpu-small", tmp_path / "b", tag="../victim")
    assert victim.exists()
