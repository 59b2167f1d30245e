"""Issue 13: hostile or careless input is refused before any work, with one line and nothing written.

CLI cases run ``python -m gpuclust`` in a subprocess and check the exit code, the one-line
message and that nothing was written.
"""

import gzip
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gpuclust.app.datasets as ds
from gpuclust.app import _atomic

ROOT = Path(__file__).resolve().parents[1]


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


def assert_one_line_exit_2(out, *needles):
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


# --- say what you use: an explicit data location is the only one --------------------------------


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
    assert_one_line_exit_2(out, given, needle)
    assert list(workdir.iterdir()) == []


@pytest.mark.realdata
def test_cli_prints_where_the_data_came_from(workdir, fashion_train):
    real = Path("/usr/share/datasets/fashion-mnist")
    if not real.is_dir():
        pytest.skip("needs Debian's Fashion-MNIST")
    out = cli("cluster", "--n-clusters", "2", "--max-iter", "1", "--data-dir", real, "--device", "cpu", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert f"Fashion-MNIST train split from {real}" in out.stderr


# --- sizes are validated by the parser ------------------------------------------------------------


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
    assert_one_line_exit_2(out, needle)
    assert list(workdir.iterdir()) == []


# --- check before working: outputs, suffixes, labels ----------------------------------------------


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
        assert_one_line_exit_2(cli(*argv), *needles)
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
    assert_one_line_exit_2(out, "y.npy", needle)
    assert "iterations" not in out.stdout  # no fit ran
    assert list(workdir.iterdir()) == []


def test_cli_select_reports_the_real_error_once(workdir, tmp_path):
    X = np.random.RandomState(0).randn(50, 3)
    X[7, 1] = np.nan
    np.save(tmp_path / "x.npy", X)
    out = cli("select", "--features", tmp_path / "x.npy", "--k", "1,2", "--out", workdir / "sel")
    assert_one_line_exit_2(out, "x.npy", "NaN or infinity")
    assert "reg_covar" not in out.stderr and list(workdir.iterdir()) == []


def test_select_json_has_null_not_nan(tmp_path, monkeypatch):
    from gpuclust.app import selection

    X = np.random.RandomState(0).randn(60, 2)
    real = selection.GaussianMixture

    def failing_for_k3(k, **kw):
        if k == 3:
            raise ValueError("ill-defined empirical covariance")
        return real(k, **kw)

    monkeypatch.setattr(selection, "GaussianMixture", failing_for_k3)
    best, paths = selection.run_selection(X, [1, 2, 3], ["diag"], tmp_path, device="cpu")
    text = paths["json"].read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]
    assert rows[2]["bic"] is None and "ill-defined" in rows[2]["error"]
    assert best["n_components"] in (1, 2)


def test_json_writer_never_writes_bare_nan(tmp_path):
    _atomic.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float64(2)})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2.0}


# --- resume and checkpoints through the CLI ---------------------------------------------------------


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
    assert_one_line_exit_2(out, "ae.pt", "not a readable gpuclust checkpoint")
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
    assert_one_line_exit_2(
        out, "cannot resume", "seed 0 in the checkpoint, 4 now", "batch_size 16", "data 32 training", "--allow-changed"
    )
    assert ckpt.read_bytes() == before


# --- stale plots ------------------------------------------------------------------------------------


def test_rerun_into_the_same_folder_leaves_no_stale_plots(tmp_path):
    from conftest import fake_run

    from gpuclust.app.report import write_run_folder

    write_run_folder(fake_run(["task1_kmeans_pixels", "task3_ae_gmm_diag"], gmm=True), tmp_path)
    assert (tmp_path / "confusion_task3_ae_gmm_diag.png").is_file() and (tmp_path / "covariance_types.png").is_file()
    (tmp_path / "notes.png").write_bytes(b"mine")
    write_run_folder(fake_run(["task1_kmeans_pixels"], gmm=False), tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["confusion_task1_kmeans_pixels.png", "loss_curve.png", "notes.png"]
    assert "covariance_types" not in (tmp_path / "report.md").read_text()


# --- files: umask and signals ------------------------------------------------------------------------


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_users_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        _atomic.atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r.txt").stat().st_mode) == expected


@pytest.mark.parametrize("sig,returncode", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_signal_during_an_atomic_write_removes_the_temporary_file(tmp_path, sig, returncode):
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from gpuclust.app._atomic import atomic_write

        # A shell that starts jobs in the background (nohup ... &) passes SIGINT on ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def slow(fh):
            fh.write(b"partial")
            fh.flush()
            print("writing", flush=True)
            time.sleep(30)

        atomic_write({str(tmp_path / "out.bin")!r}, slow)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == b"writing"
        assert len(list(tmp_path.glob(".out.bin.*.tmp"))) == 1
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == returncode
    assert list(tmp_path.iterdir()) == []


# --- distributed start-up ---------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"RANK": "2"}, "RANK=2 must be less than WORLD_SIZE=2"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 must be between 1 and 65535"),
        ({"MASTER_ADDR": "no-such-host.invalid"}, "MASTER_ADDR='no-such-host.invalid' cannot be resolved"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR not set"),
    ],
)
def test_init_from_env_validates_the_environment_first(monkeypatch, change, match):
    from gpuclust.distributed import init_from_env

    for key, value in {**TORCHRUN_ENV, **change}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        init_from_env(backend="gloo", startup_timeout_seconds=1)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_init_from_env_bounds_the_wait_for_a_world_that_never_assembles(monkeypatch, rank):
    from gpuclust.distributed import init_from_env

    for key, value in {**TORCHRUN_ENV, "RANK": rank, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="the 2 ranks did not assemble"):
        init_from_env(backend="gloo", startup_timeout_seconds=1)
    assert time.perf_counter() - started < 20
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    "env,needles",
    [
        ({"RANK": "3"}, ["RANK=3 must be less than WORLD_SIZE=2"]),
        ({"MASTER_ADDR": "no-such-host.invalid"}, ["cannot be resolved"]),
        ({"RANK": "1"}, ["did not assemble", "within 2 s"]),
    ],
)
def test_cli_distributed_start_up_errors_are_one_line(features, env, needles):
    full = {**TORCHRUN_ENV, "MASTER_PORT": str(_free_port()), **env}
    started = time.perf_counter()
    out = cli("cluster", "--distributed", "--features", features, "--startup-timeout", "2", "--device", "cpu",
              env=full, timeout=60)  # fmt: skip
    assert_one_line_exit_2(out, *needles)
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
