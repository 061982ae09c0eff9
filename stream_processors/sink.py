"""The stream worker's online store: every read and write it makes to Feast's Redis, one attempt each.

Nothing here retries, decides or remembers: the commit (``app.process_history_batch``) says when to read
and write, retries a failed attempt and checks before every attempt that the worker still owns the batch.
Feast and redis-py block, so each call runs on the executor; a call that neither answers nor fails fails
within REDIS_SOCKET_TIMEOUT_S (streamrec/config.py), closing its connection, so an attempt never outlives
its check by more than that.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.schemas import ItemUpdate

from .items import merge_item_updates

__all__ = ["FeastSink", "client_name"]

T = TypeVar("T")


def client_name(settings: Settings) -> str:
    """This worker process's Redis client name: its group and pid (``CLIENT LIST`` tells workers apart)."""
    return f"{settings.worker_app_id}-{os.getpid()}"


class FeastSink:
    """The online store as the worker sees it: history rows in and out, item rows merged."""

    def __init__(self, settings: Settings, client_name: str | None = None) -> None:
        self.settings = settings
        self.client_name = client_name  # how this worker's Redis connections are named (CLIENT LIST)
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
                self._client = await self._blocking(FeatureClient, self.settings, "streamrec", self.client_name)
        return self._client

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def read_rows(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """Each user's whole `user_recent_history` row (all None: no row yet), in one read."""
        return await self._blocking((await self.client()).history_rows, user_ids)

    async def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """History rows (``history.feature_row``) in one batch write."""
        await self._blocking((await self.client()).write_history, rows)

    async def merge_items(self, updates: Sequence[ItemUpdate]) -> list[str]:
        """Apply item updates to their online rows (read, merge, write); returns the ids of unknown items."""
        client = await self.client()
        ids = sorted({u.item_id for u in updates})
        current = await self._blocking(client.item_features, ids)
        merged, unknown = merge_item_updates(current, updates)
        if not merged.empty:
            await self._blocking(client.write_items, merged)
        return unknown
