import json
import subprocess
import sys

import numpy as np
import pytest

import gpuclust.datasets as ds
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
    code, stdout, _ = run_cli(
        capsys,
        "run",
        "--limit",
        "600",
        "--epochs",
        "2",
        "--covariance-types",
        "diag,full",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    )
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
        for key in (
            "completeness",
            "homogeneity",
            "v_measure",
            "nmi",
            "ari",
            "cluster_accuracy",
            "fit_seconds",
            "device",
            "backend",
        ):
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
