"""What the benchmark scripts share: a warmed-up median of wall-clock times."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats):
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
