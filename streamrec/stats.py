"""Percentiles, as every figure streamrec reports them (the worker's /freshness, the recommender's
stage times, the live page, the request load, the demo and the benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["percentiles"]


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
