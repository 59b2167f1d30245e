"""gpuclust.app._atomic: files written whole or not at all, with the user's umask, through signals."""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gpuclust.app import _atomic

ROOT = Path(__file__).resolve().parents[1]


def test_json_writer_never_writes_bare_nan(tmp_path):
    _atomic.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float64(2)})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2.0}


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
