"""Peak memory of a fit on the CPU: the kernel's restartable high-water mark, else a sampler thread."""

from __future__ import annotations

import os
import threading


def _status_bytes(field):
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak resident set size (``VmHWM``) at the current one (Linux 4.0+).

    True only where the restart took: right after it the peak is the current size. It is the
    whole process's peak that restarts, so ``getrusage``'s ``ru_maxrss`` (and ``/usr/bin/time``'s
    maximum resident set size) of a benchmark process cover its last fit only.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    peak, now = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    # A write that was accepted and ignored (an emulated /proc) leaves the old, higher peak.
    return peak is not None and now is not None and peak <= now + (4 << 20)


class PeakRss:
    """Peak resident set size of this process over a block.

    The kernel's own peak (``VmHWM``, restarted on entry through ``/proc/self/clear_refs``)
    where it can be restarted: counted by the kernel, not sampled, and nothing runs beside the
    fit. Elsewhere, with ``/proc/self/statm`` readable, a thread samples the resident set size
    every 2 ms; that thread takes the interpreter lock every time it wakes, which slowed a torch
    fit of many small calls (KMeans on 60000x50, a development A/B: 56 -> 61 ms) and not
    scikit-learn's compiled loop, so it is only the fallback. Without either (no ``/proc``),
    nothing is measured and ``peak`` is None. ``method`` says which: "high-water mark",
    "sampled" or "unavailable".
    """

    def __init__(self):
        self.peak = self.start = None
        self.method = None
        self._thread = None
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        self.peak = self.start = self._rss()
        if self.start is None:
            self.method = "unavailable"
        elif _reset_peak_rss():
            self.method = "high-water mark"
        else:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() or 0)

    def __exit__(self, *exc):
        if self.method == "unavailable":
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = max(self.peak, _status_bytes("VmHWM") or 0)
        self.peak = max(self.peak, self._rss() or 0)


def mib(nbytes):
    """A peak-memory figure for the tables: MiB, or "n/a" where it could not be measured."""
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"
