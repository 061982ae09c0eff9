"""The stream worker's Feast sink: every read and write the worker makes to the online store.

How a feature reaches Redis: the agents hand micro-batches of events to ``app.process_history_batch``
(batches form by load, ``batching.MicroBatcher``; a full batch holds the agent, which backpressures the
consumer); the batch's changed users become one row each (``history.feature_row``) and
:meth:`FeastSink.push` writes them in one batch write (``FeatureClient.write_history``). The offsets are
acked only after it returns.

Retry is here, once: a call that fails on the infrastructure (Redis away) is tried again with capped
backoff until it succeeds (``streamrec.retry.retry``), counted in ``push_retries`` and logged; an error of
the data's is raised at once, for the batch's isolation (``streamrec.retry.isolated``) to narrow down to
its record. Retrying the call, not the batch, keeps the batch's DLQ records from being sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.retry import retry
from streamrec.schemas import ItemUpdate

from .freshness import FreshnessTracker
from .history import State, feature_row, stamped, state_from_row
from .items import merge_item_updates

__all__ = ["FeastSink"]

log = logging.getLogger("streamrec.worker")
T = TypeVar("T")


class FeastSink:
    """The online store as the worker sees it: users' states in, rows and item updates out."""

    def __init__(self, settings: Settings, tracker: FreshnessTracker) -> None:
        self.settings = settings
        self.tracker = tracker
        self._client: FeatureClient | None = None
        self._lock = asyncio.Lock()

    def use(self, client: FeatureClient) -> None:
        """Use ``client`` (built and checked by `streamrec worker` before the app starts)."""
        self._client = client

    @property
    def ready(self) -> bool:
        """Feast is loaded: batches are not held up by start-up."""
        return self._client is not None

    async def client(self) -> FeatureClient:
        """The Feast client, built once off the event loop (importing Feast takes seconds)."""
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.get_running_loop().run_in_executor(None, FeatureClient, self.settings)
        return self._client

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        def note(exc: BaseException, delay: float) -> None:
            self.tracker.push_retries += 1
            log.warning("%s failed, retrying in %.1fs: %s", what, delay,
                        (str(exc) or repr(exc)).splitlines()[0][:200])

        return await retry(call, on_retry=note)

    async def _blocking(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the executor (Feast and redis-py block), retried as the policy says."""
        loop = asyncio.get_running_loop()

        async def call() -> T:
            return await loop.run_in_executor(None, fn, *args)

        return await self._call(what, call)

    async def states(self, user_ids: list[str]) -> dict[str, State | None]:
        """Each user's state as their online row holds it (None: no row yet), in one read."""
        client = await self.client()
        rows = await self._blocking("feast read", client.history_rows, user_ids)
        return {u: state_from_row(row) for u, row in zip(user_ids, rows, strict=True)}

    async def push(self, states: dict[str, Any], newest_record_ts: dict[str, float]) -> list[float]:
        """One write with a row per user in ``newest_record_ts``; their ``states`` are stamped with the write
        time (history.stamped) once it is done. Returns each row's freshness lag in ms: the write time less
        the Kafka timestamp of the user's newest event in it."""
        client = await self.client()
        loop = asyncio.get_running_loop()

        async def write() -> float:
            now_ms = int(time.time() * 1000)
            written = {u: stamped(states[u], now_ms) for u in newest_record_ts}
            rows = [feature_row(u, state) for u, state in written.items()]
            await loop.run_in_executor(None, client.write_history, rows)
            states.update(written)
            return time.time()

        written_at = await self._call("feast push", write)
        return [(written_at - ts) * 1000.0 for ts in newest_record_ts.values()]

    async def merge_items(self, updates: Sequence[ItemUpdate]) -> list[str]:
        """Apply item updates to their online rows (read, merge, write); returns the ids of unknown items."""
        client = await self.client()
        loop = asyncio.get_running_loop()
        ids = sorted({u.item_id for u in updates})

        async def write() -> list[str]:
            current = await loop.run_in_executor(None, client.item_features, ids)
            merged, unknown = merge_item_updates(current, updates)
            if not merged.empty:
                await loop.run_in_executor(None, client.write_items, merged)
            return unknown

        return await self._call("item write", write)
