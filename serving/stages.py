"""Where a request's time goes: recent durations of the recommender's stages (Kafka → request group,
feature read, model and filters, response delivery), as `/status` reports them."""

from __future__ import annotations

from collections import deque

from streamrec.stats import percentiles

__all__ = ["StageTimes"]


class StageTimes:
    """Recent durations (ms) of named stages, e.g. where a request's latency goes."""

    def __init__(self, window: int = 5_000) -> None:
        self._samples: dict[str, deque[float]] = {}
        self._window = window

    def record(self, stage: str, ms: float, n: int = 1) -> None:
        ring = self._samples.setdefault(stage, deque(maxlen=self._window))
        ring.extend([ms] * n)

    def snapshot(self) -> dict[str, dict[str, float]]:
        # Copies first: a garbage collection may start at any allocation below (or in a compute thread) and
        # its gc.callbacks hook records here (serving/app.py). dict.copy() and list(deque) run in C without
        # allocating tracked objects mid-copy, so no collection, and no other thread, lands inside them.
        out = {}
        for stage, ring in self._samples.copy().items():
            values = list(ring)
            if values:
                out[stage] = {**percentiles(values, (50, 99)), "samples": len(values)}
        return out
