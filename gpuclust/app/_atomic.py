"""Write files atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import stat
import threading
from pathlib import Path

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # restored in this order: SIGINT's KeyboardInterrupt comes last
# Each signal's handler when nobody has set one: only then does an atomic write take it over.
_UNSET = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class _TempFile:
    """The temporary file of one atomic write; its name is known before the file exists."""

    def __init__(self, path: Path):
        self.path = path
        self.name = None

    def create(self) -> int:
        """Create the file as ``open()`` would (0666 less the umask) and return its descriptor."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):
            self.name = self.path.parent / f".{self.path.name}.{secrets.token_hex(4)}.tmp"
            try:
                return os.open(self.name, flags, 0o666)
            except FileExistsError:
                self.name = None
        raise FileExistsError(f"no free temporary name next to {self.path}")

    def remove(self):
        # The name is forgotten only once the file is gone: a signal handler that interrupts this
        # removal (and never returns to it) removes the file itself.
        name = self.name
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            self.name = None


@contextlib.contextmanager
def _signals_remove(tmp: _TempFile):
    """While the block runs, SIGINT and SIGTERM remove ``tmp`` before they act.

    The first signal removes the file with both signals ignored, so a second one (a process-group
    kill, a second Ctrl-C) cannot interrupt the removal; then SIGTERM ends the process as its
    default action would (quietly, status 128 + 15), while SIGINT restores the handlers and
    raises KeyboardInterrupt.
    Only signals whose handler is unset are taken over (a program's own handler is left alone),
    and only on the main thread (the only one that may set a handler).
    """
    ours = [s for s in _STOP_SIGNALS if signal.getsignal(s) is _UNSET[s]]
    if not ours or threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if stopping:  # a second signal, arrived before the first one's handler ignored them
            return
        stopping.append(signum)
        for s in ours:
            signal.signal(s, signal.SIG_IGN)
        tmp.remove()
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            os._exit(128 + signal.SIGTERM)  # not reached: SIGTERM's default action ends the process
        _restore(ours)
        raise KeyboardInterrupt

    for s in ours:
        signal.signal(s, handler)
    try:
        yield
    finally:
        _restore(ours)


def _restore(signals):
    for s in signals:
        signal.signal(s, _UNSET[s])


def _mode_to_keep(path: Path):
    """The permission bits of the file ``path`` replaces, or None for a new file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half of one; SIGINT and SIGTERM
    during the write remove the temporary file, however many arrive. A file that is replaced
    keeps its permissions; a new file gets those ``open()`` would give it (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = _mode_to_keep(path)
    tmp = _TempFile(path)
    with _signals_remove(tmp):
        try:
            fd = tmp.create()
            if keep is not None:
                os.fchmod(fd, keep)
            with os.fdopen(fd, mode) as fh:
                write_fn(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp.name, path)
            tmp.name = None
        except BaseException:
            tmp.remove()
            raise


def atomic_write_text(path, text: str):
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None, so the JSON is standard (null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON; NaN and infinities become null (never bare ``NaN``)."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")
