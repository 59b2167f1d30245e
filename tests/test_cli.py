import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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
    ]  # the quick profile has no self-labelling
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


def _fake_run(n_test=4):
    from conftest import fake_run

    return fake_run(n_test=n_test)


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


def test_a_rerun_replaces_only_what_gpuclust_wrote(tmp_path):
    from gpuclust.app.report import foreign_files, write_run_folder

    write_run_folder(_fake_run(), tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    assert foreign_files(tmp_path) == []  # our own earlier run: a rerun goes ahead
    write_run_folder(_fake_run(), tmp_path)
    assert (tmp_path / "notes.md").read_text() == "mine"
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.md").write_text("mine too")  # gone from the folder and back: still ours by name
    (tmp_path / "confusion_task9.png").write_bytes(b"mine")  # a name a run could write, never written by one
    assert foreign_files(tmp_path) == ["confusion_task9.png"]
    with pytest.raises(FileExistsError, match="confusion_task9.png"):
        write_run_folder(_fake_run(), tmp_path)
    assert (tmp_path / "confusion_task9.png").read_bytes() == b"mine"
    write_run_folder(_fake_run(), tmp_path, overwrite=True)
    assert (tmp_path / "confusion_task9.png").read_bytes() == b"mine"  # replaced only if this run writes it


def test_the_report_names_the_test_images_it_scored():
    from gpuclust.app.report import render_report

    report = render_report(_fake_run(n_test=50), {})
    assert "All scores on 50 held-out test images only" in report and "10,000-image" not in report
    assert "the held-out 10,000-image test set" in render_report(_fake_run(n_test=10000), {})


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


def test_a_new_file_gets_the_mode_open_would_give(tmp_path):
    from gpuclust.app._atomic import atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


# A child that loads _atomic.py alone (standard library only: starts in milliseconds, no torch).
_ATOMIC_CHILD = """
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("_atomic", {module!r})
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
target, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
real_unlink = os.unlink

def unlink(path, *args, **kwargs):
    if second != "none" and str(path).endswith(".tmp"):
        os.kill(os.getpid(), getattr(signal, second))  # the second signal arrives inside the cleanup
    return real_unlink(path, *args, **kwargs)

os.unlink = unlink

def slow(fh):
    fh.write(b"partial")
    fh.flush()
    print("writing", flush=True)
    if first != "none":
        os.kill(os.getpid(), getattr(signal, first))
    time.sleep(30)

try:
    atomic.atomic_write(target, slow)
except KeyboardInterrupt:
    sys.exit(130)  # as gpuclust's main does (after its one line)
"""


def _atomic_child(tmp_path, first, second, **kwargs):
    script = _ATOMIC_CHILD.format(module=str(ROOT / "gpuclust" / "app" / "_atomic.py"))
    return subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.bin"), first, second],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    "first,second,returncode",
    [("SIGTERM", "SIGTERM", -signal.SIGTERM), ("SIGINT", "SIGTERM", 130), ("SIGINT", "SIGINT", 130)],
)
def test_a_second_signal_during_the_cleanup_leaves_no_temporary_file(tmp_path, first, second, returncode):
    (tmp_path / "out.bin").write_bytes(b"old")
    proc = _atomic_child(tmp_path, first, second)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == returncode, err
    assert err == b""  # quiet: no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"old"


def test_a_process_group_killed_twice_during_a_write_leaves_no_temporary_file(tmp_path):
    for delay in (0.0, 0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01):
        proc = _atomic_child(tmp_path, "none", "none", start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == b"writing"
            for pause in (delay, 0):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(pause)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGTERM and err == b"", (delay, err)
        assert list(tmp_path.iterdir()) == [], delay


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
