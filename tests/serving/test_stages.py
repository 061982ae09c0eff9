"""`/status`'s stage figures (serving/stages.py) stay readable while garbage collections record into them.

The recommender records each collection's pause from a ``gc.callbacks`` hook (serving/app.py): a collection
can run in the middle of ``snapshot()`` (any allocation may start one) or in a compute thread, and its first
pause of a generation adds a stage. The CI run of 2026-12-07 failed on exactly that: ``/status`` answered
500 right after a recommender started (a new ``gc_gen<N>`` key while the page iterated the stages).
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator

import pytest

from serving.stages import StageTimes


@pytest.fixture
def collections_every_allocation() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # a young collection on (almost) every allocation of a tracked object
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def test_a_collection_recording_a_new_stage_mid_snapshot_does_not_break_it(collections_every_allocation: None) -> None:
    stages = StageTimes(window=100)
    for name in ("kafka_to_agent", "feature_read_per_batch", "model_and_filters_per_batch", "batch_size"):
        stages.record(name, 1.0, n=10)
    fresh = itertools.count()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            stages.record("kafka_to_agent", 2.0)  # a ring mutated while it may be read
            n = next(fresh)
            if n < 100:  # and a key added while the stages may be iterated (bounded: each new stage adds work)
                stages.record(f"gc_new_{n}", 0.3)

    gc.callbacks.append(on_gc)
    try:
        snapshots = [stages.snapshot() for _ in range(200)]
    finally:
        gc.callbacks.remove(on_gc)
    assert next(fresh) > 0, "no collection ran during the snapshots: the test tested nothing"
    assert all(s["batch_size"] == {"p50": 1.0, "p99": 1.0, "samples": 10} for s in snapshots)
    assert all(s["kafka_to_agent"]["samples"] >= 10 for s in snapshots)
