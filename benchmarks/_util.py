"""Timing helpers: medians of repeated runs, since machines here are noisy."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Measured:
    """Wall time next to CPU time (this process and its finished workers) and the load average, so
    that a figure from a busy machine is seen as one: ``with Measured() as m: ...; print(m)``."""

    def __enter__(self):
        import os

        self.load_before = os.getloadavg()
        self._t = os.times()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import os

        self.wall = time.perf_counter() - self._wall
        t = os.times()
        self.cpu = (t.user - self._t.user) + (t.system - self._t.system) + \
            (t.children_user - self._t.children_user) + (t.children_system - self._t.children_system)
        self.load_after = os.getloadavg()
        return False

    def __str__(self) -> str:
        return (f"wall {self.wall:.2f} s, CPU {self.cpu:.2f} s (user+system, with workers), "
                f"load average {self.load_before[0]:.2f} before / {self.load_after[0]:.2f} after")


def machine() -> str:
    """One line on the machine a figure comes from."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
