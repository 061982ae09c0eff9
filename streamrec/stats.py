"""Percentiles, as every figure streamrec reports them (the worker's /freshness, the recommender's
stage times, the live page, the request load, the demo and the benchmarks)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["percentiles", "cpu_seconds", "CpuClock"]


def percentiles(values: Iterable[float], qs: Sequence[int] = (50, 95, 99), with_max: bool = False,
                digits: int | None = None) -> dict[str, float | None]:
    """``{"p50": …, "p95": …, "p99": …}`` (numpy's linear interpolation) of ``values``, plus ``"max"`` with
    ``with_max``; every figure None when there are no values. ``digits``: rounded to that many."""
    a = np.fromiter(values, dtype=np.float64)
    keys = [f"p{q:g}" for q in qs] + (["max"] if with_max else [])
    if not a.size:
        return dict.fromkeys(keys)
    figures = [float(v) for v in np.percentile(a, list(qs))] + ([float(a.max())] if with_max else [])
    if digits is not None:
        figures = [round(v, digits) for v in figures]
    return dict(zip(keys, figures, strict=True))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` has used so far (Linux /proc), None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuClock:
    """The CPU (in cores: CPU seconds per second) of named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._started: dict[str, float | None] = {}
        self._at = 0.0

    def start(self) -> None:
        self._started = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._at = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores per process since :meth:`start` (a process that could not be read is left out)."""
        if not self._started:
            return {}
        wall = time.monotonic() - self._at
        cores = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), self._started.get(name)
            if now is not None and then is not None and wall > 0:
                cores[name] = round((now - then) / wall, 3)
        return cores
