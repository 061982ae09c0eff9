"""Micro-batches of Faust events, flushed when full or when the oldest event has waited long enough,
and the guards that keep Faust from losing events around them.

Every agent here uses this instead of ``stream.noack_take``: under a backlog (a restart after kill -9)
noack_take's drainer reset its buffer after the next batch had started, ``buffer.clear()`` then dropped
events read in the meantime, and those were never acked, so the worker stalled with state missing
events. Here the agent only appends to a list, and one lock serializes the flushes.

Faust 0.15.3 also acks, unprocessed, every event its stream skips (one read while flow control is
suspended or with an older consumer generation, i.e. around a rebalance or recovery), and the fetcher
does not read those offsets again: the committed offset moved past events no agent applied. Seen after a
kill -9 restart as whole runs of offsets missing per partition. Two guards:
- :func:`acking` + ``faust_app``'s patched ``Consumer.ack``: only our agents ack our topics, after the
  batch is durable; a skipped event stays unacked, so the commit cannot pass it;
- :class:`InOrder`: an agent takes each partition's offsets strictly in order; on a hole it seeks the
  consumer back to the hole and drops what comes before the hole is read again.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["MicroBatcher", "InOrder", "Verdict", "acking", "ack_all", "in_order", "agent_acking"]

log = logging.getLogger("streamrec.batching")
REWIND_AGAIN_S = 2.0

_agent_acking: contextvars.ContextVar[bool] = contextvars.ContextVar("streamrec_agent_acking", default=False)


def agent_acking() -> bool:
    """True while one of our agents acks a batch it has made durable."""
    return _agent_acking.get()


@contextmanager
def acking() -> Iterator[None]:
    token = _agent_acking.set(True)
    try:
        yield
    finally:
        _agent_acking.reset(token)


def ack_all(events: Iterable[Any]) -> None:
    """Ack events whose effects are durable (the only acks the guarded consumer accepts)."""
    with acking():
        for event in events:
            event.ack()


class Verdict(enum.Enum):
    TAKE = "take"  # next in order (or a replay of one already taken: the state dedupes it)
    REWIND = "rewind"  # a hole before this one: seek back to ``InOrder.expected[tp]``
    DROP = "drop"  # after a hole that is being read again


class InOrder:
    """Per partition, the next offset an agent must see; pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self.expected: dict[Any, int] = {}
        self.rewound_at: dict[Any, float] = {}
        self.rewinds = 0

    def reset(self) -> None:
        """After a rebalance the consumer starts again from the committed offsets."""
        self.expected.clear()
        self.rewound_at.clear()

    def check(self, tp: Any, offset: int, committed: int | None, now: float) -> Verdict:
        expected = self.expected.get(tp)
        if expected is None:
            expected = committed if committed is not None and committed >= 0 else offset
        if offset < expected:
            return Verdict.TAKE
        if offset == expected:
            self.expected[tp] = offset + 1
            self.rewound_at.pop(tp, None)
            return Verdict.TAKE
        self.expected[tp] = expected
        last = self.rewound_at.get(tp)
        if last is None or now - last >= REWIND_AGAIN_S:
            self.rewound_at[tp] = now
            self.rewinds += 1
            return Verdict.REWIND
        return Verdict.DROP


async def in_order(events: AsyncIterable[Any], app: Any, order: InOrder) -> AsyncIterator[Any]:
    """``events`` with every partition's offsets in order; holes are read again from the broker."""
    async for event in events:
        message = event.message
        committed = app.consumer._committed_offset.get(message.tp) if app.consumer else None
        verdict = order.check(message.tp, message.offset, committed, time.monotonic())
        if verdict is Verdict.TAKE:
            yield event
        elif verdict is Verdict.REWIND:
            hole = order.expected[message.tp]
            log.warning("offsets %s..%d of %s were skipped by the consumer: reading them again",
                        hole, message.offset - 1, message.tp)
            await app.consumer.seek(message.tp, hole)


class MicroBatcher:
    """Collect events for ``process``; a batch goes when it has ``size`` events or is ``max_wait_s`` old."""

    def __init__(self, process: Callable[[Sequence[Any]], Awaitable[None]], size: int, max_wait_s: float) -> None:
        self.process = process
        self.size = max(1, size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.events: list[Any] = []
        self.started = 0.0
        self.lock = asyncio.Lock()
        self._due: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, events: AsyncIterable[Any]) -> None:
        """The agent's body: ``await batcher.run(stream.noack().events())``."""
        async for event in events:
            await self.add(event)

    async def add(self, event: Any) -> None:
        async with self.lock:
            if not self.events:
                self.started = time.monotonic()
                self._due = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush_due)
            self.events.append(event)
            if len(self.events) >= self.size:
                await self._flush_locked()

    def _flush_due(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("flushing a batch failed: %r", task.exception(), exc_info=task.exception())

    async def flush(self) -> None:
        async with self.lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        events, self.events = self.events, []
        if events:
            await self.process(events)
