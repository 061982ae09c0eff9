"""The recommender, a Faust app: `streamrec worker --app recommender` (or `faust -A serving.app worker`).

The Faust app hosts the tasks, timers and web pages; the work is elsewhere:
- requests.py: the request group on `recommendation-requests` (answers on `recommendations`) and its one
  failure path;
- updates.py: what it serves with (model, catalogue, filters), the hot swap, and the followers of
  `item-updates` and `model-updates`;
- live.py: the /live page.

Only ``app`` is module-level (`faust -A serving.app` needs it); :func:`build` makes it from the settings.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import faust

from streamrec.config import Settings, get_settings
from streamrec.faust_app import create_app

from .live import register_live_pages
from .requests import RequestGroup
from .updates import Serving

__all__ = ["app", "build"]

log = logging.getLogger("streamrec.recommender")


def _one_compute_thread() -> None:
    """One thread for torch, numpy's OpenBLAS and FAISS's OpenMP: the recommender computes one request
    batch at a time, and a second thread only spins waiting for work. On 2 cores under 500 req/s, OpenBLAS's
    spinning took ~30% of a core from the broker (the recommender at ~73% of a core instead of ~43%) and
    the round trip p50 was 1.5-7x longer (runs with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 vs the
    default, interleaved). `/status` shows what the libraries report (`compute_threads`)."""
    import faiss  # noqa: F401 - loaded first, so its OpenMP and OpenBLAS are limited too
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # process-wide, for the libraries loaded now (numpy's, FAISS's)


def _compute_threads() -> dict[str, int]:
    """Threads per native library, as threadpoolctl reads them (e.g. {"openblas": 1, "openmp": 1})."""
    import torch
    from threadpoolctl import threadpool_info

    threads = {"torch": torch.get_num_threads()}
    for pool in threadpool_info():
        threads[pool["internal_api"]] = max(threads.get(pool["internal_api"], 0), pool["num_threads"])
    return threads


def _time_collections(serving: Serving) -> None:
    """Each garbage collection's pause, by generation, into the stages `/status` shows (``gc_gen<N>``): a
    pause stops the loop, and every request in hand waits it out (see :func:`_freeze_start_heap`)."""
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            serving.stages.record(f"gc_gen{info['generation']}", (time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(on_gc)


def _freeze_start_heap() -> int:
    """Take what the start built (Feast, torch, the model, the catalogue, Faust: ~340k tracked objects in a
    process that loads the same parts) out of the cyclic collector's reach with ``gc.freeze()``; returns how
    many objects were frozen.

    A full collection walks every tracked object: on this heap one took ~171 ms (123 ms in that process,
    ~0 once frozen), all of it a stopped loop, and it came during serving too (once in ~13 s after a start,
    at 2,000 requests/s, 2026-12-07): the round's p99 went from ~25 to ~130-145 ms. Frozen objects are still
    freed by reference counting; only cycles among them are never collected, and the start's objects live as
    long as the process. A hot swap's new model is not frozen (a few thousand objects: its full collections
    take milliseconds)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def build(settings: Settings) -> faust.App:
    """The recommender's Faust app: requests are answered by a :class:`RequestGroup` with its own consumer
    and producer (an idle fetch waits STREAMREC_REQUEST_MAX_WAIT_MS for requests; a request that comes ends
    the wait at once; answers linger 1 ms)."""
    app = create_app(settings, settings.recommender_app_id, settings.recommender_port)
    serving = Serving(settings)
    requests = RequestGroup(serving)

    @app.task
    async def _start_serving() -> None:
        _one_compute_thread()
        await serving.start(app.add_future)
        serving.gc_frozen = _freeze_start_heap()
        _time_collections(serving)  # from here on: the start's own collections say nothing of serving

    @app.task
    async def _answer_requests() -> None:
        await requests.run()

    @app.timer(1.0)
    async def _watch_stalls() -> None:
        stalled = requests.watch_stalls()
        if stalled and not serving.stalled:
            log.error("stalled: committed offsets of %s have not moved for %.0f s while requests wait", stalled,
                      settings.stall_after_s)
        serving.stalled = stalled

    @app.timer(3.0)
    async def _watch_latest() -> None:
        await serving.watch_latest()

    @app.page("/status")
    async def status_page(web: Any, request: Any) -> Any:
        return web.json({
            "ready": serving.ready.is_set() and not serving.stalled, "stalled": serving.stalled,
            "model_version": serving.version, "model_since": serving.model_since, "swaps": serving.swaps,
            "refused": sum(serving.refused.values()), "refused_by_reason": dict(serving.refused),
            "requests": serving.requests, "errors": serving.errors, "expired": serving.expired,
            "assigned_partitions": requests.assigned(),
            "stages_ms": serving.stages.snapshot(), "time": time.time(),
            "log_level": logging.getLevelName(logging.root.level),  # streamrec/faust_app.py _restore_root_log_level
            "compute_threads": _compute_threads(),  # see _one_compute_thread
            "gc_frozen": serving.gc_frozen,  # objects the start left out of the cyclic collector: _freeze_start_heap
        })

    register_live_pages(app, serving, settings)  # /live: figures over time and a user lookup
    return app


app = build(get_settings())
