"""Write files atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
from pathlib import Path


class _Terminated(BaseException):
    """Raised inside an atomic write when SIGTERM arrives, so the temporary file is removed."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """While the block runs, SIGTERM raises :class:`_Terminated` instead of killing the process at once.

    Only where SIGTERM has its default action (a program's own handler is left alone) and only
    on the main thread (the only one that may install a handler).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half of one; SIGINT and SIGTERM
    during the write remove the temporary file. The file gets the permissions of any newly
    created file (0666 less the umask), not the temporary file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with _sigterm_unwinds():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode) as fh:
                write_fn(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except _Terminated:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        os.kill(os.getpid(), signal.SIGTERM)  # the default action again: end as SIGTERM would have
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
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
