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
- :func:`acking` + :func:`guard_acks`' patched ``Consumer.ack``: only our agents ack our topics, after the
  batch is durable; a skipped event stays unacked, so the commit cannot pass it;
- :class:`InOrder`: an agent takes each partition's offsets strictly in order; on a hole it seeks the
  consumer back to the hole and drops what comes before the hole is read again.

A hole can also sit at a partition's end (Faust dropped the last records it fetched during a rebalance and
nothing newer arrives to reveal it), and a seek can be undone by the consumer thread (Faust's
``Consumer.seek`` touches aiokafka from the wrong thread). :class:`Guard` therefore also watches every
partition: when the broker holds offsets the agent has not taken, none has arrived for
``REWIND_AGAIN_S`` and the agents are idle, it seeks back again, on the consumer's own thread.
Faust's gap bookkeeping (it counts offsets it never delivered as done) is turned off for our topics by
:func:`guard_acks` for the same reason.
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

__all__ = ["MicroBatcher", "InOrder", "Guard", "Verdict", "acking", "ack_all", "release", "in_order", "agent_acking",
           "guard_acks", "GUARDED_TOPICS"]

log = logging.getLogger("streamrec.batching")
REWIND_AGAIN_S = 2.0
WATCH_EVERY_S = 0.5
BEHIND_WAIT_S = 0.2  # the longest a batch waits to fill up while the consumer is behind

GUARDED_TOPICS: set[str] = set()  # the topics whose acks only our agents give (guard_acks)

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


def release(events: Iterable[Any]) -> None:
    """Let a rebalance go on without ``events``, which this worker drops unapplied (a fenced batch).

    Faust's revoke waits, with no bound, until every message its streams delivered is acked
    (``Consumer.wait_empty``; robinhood/faust#402): a batch dropped unacked held the revoke, and with it the
    whole group, until the member was thrown out (on Tansu, forever: test_fencing.py). Marked done for that
    wait only (``Message.acked``), never acked: the offsets do not join the consumer's acked list, so the
    commit cannot pass them, and the partition's next owner reads the events again."""
    for event in events:
        event.message.acked = True


class Verdict(enum.Enum):
    TAKE = "take"  # next in order (or a replay of one already taken: the state dedupes it)
    REWIND = "rewind"  # a hole before this one: seek back to ``InOrder.expected[tp]``
    DROP = "drop"  # after a hole that is being read again


class InOrder:
    """Per partition, the next offset an agent must see; pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self.expected: dict[Any, int] = {}
        self.rewound_at: dict[Any, float] = {}
        self.seen_at: dict[Any, float] = {}
        self.reset_at = 0.0
        self.rewinds = 0

    def reset(self, now: float = 0.0) -> None:
        """After a rebalance the consumer starts again from the committed offsets."""
        self.expected.clear()
        self.rewound_at.clear()
        self.seen_at.clear()
        self.reset_at = now

    def check(self, tp: Any, offset: int, committed: int | None, now: float) -> Verdict:
        self.seen_at[tp] = now
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

    def stalled(self, tp: Any, committed: int | None, end: int | None, now: float) -> int | None:
        """The offset to read ``tp`` again from, when the broker has offsets up to ``end`` that the agent
        never took and nothing arrived on ``tp`` for ``REWIND_AGAIN_S``; else None.

        ``committed`` is the group's committed offset (None: nothing committed, so the log's start).
        """
        want = self.expected.get(tp)
        if want is None:
            want = committed if committed is not None and committed >= 0 else 0
        if end is None or end <= want:
            return None
        quiet_since = max(self.seen_at.get(tp, self.reset_at), self.rewound_at.get(tp, self.reset_at))
        if now - quiet_since < REWIND_AGAIN_S:
            return None
        self.rewound_at[tp] = now
        self.rewinds += 1
        return want


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
            await seek(app, message.tp, hole)


async def seek(app: Any, tp: Any, offset: int) -> None:
    """Seek on the consumer's own thread (Faust's ``Consumer.seek`` calls aiokafka from the app's thread,
    where it races the fetcher); ``seek_wait`` also moves the read offset Faust's drainer delivers from."""
    await app.consumer.seek_wait({tp: offset})


class MicroBatcher:
    """Collect events for ``process`` and run it on them one batch at a time, while the next one gathers.

    A batch goes when it has ``size`` events, or when its first event has waited ``max_wait_s`` (for
    company: fewer, larger writes), or at once when the previous batch kept it waiting that long. So at a
    low rate an event waits at most ``max_wait_s`` plus its own write, and under load each batch is what
    arrived while the last one was written (up to ``size``): the batch grows with the load by itself and
    the stream is read on while Redis works. At most one batch waits while one runs: a full one holds the
    agent (backpressure on the consumer) until the running batch is done.
    """

    def __init__(self, process: Callable[[Sequence[Any]], Awaitable[None]], size: int, max_wait_s: float,
                 behind: Callable[[Any], bool] | None = None) -> None:
        self.process = process
        self.size = max(1, size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.behind = behind  # (newest event) -> more records already wait on the broker after it
        self.events: list[Any] = []
        self.started = 0.0  # when the first of ``events`` arrived
        self.lock = asyncio.Lock()  # held while a batch is processed
        self._arrived: asyncio.Event | None = None  # set when ``events`` grew (made in the running loop)
        self._room: asyncio.Event | None = None  # set while ``events`` has room
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, events: AsyncIterable[Any]) -> None:
        """The agent's body: ``await batcher.run(stream.noack().events())``."""
        try:
            async for event in events:
                await self.add(event)
        finally:
            await self.stop()

    async def add(self, event: Any) -> None:
        self._start()
        assert self._room is not None and self._arrived is not None
        while len(self.events) >= self.size:
            self._room.clear()
            await self._room.wait()
        if not self.events:
            self.started = time.monotonic()
        self.events.append(event)
        self._arrived.set()

    async def flush(self) -> None:
        """Process every event added so far, now (after the batch that is running, if any)."""
        async with self.lock:
            while self.events:
                await self.process(self._take())

    async def stop(self) -> None:
        """Stop the flusher; events not processed yet stay unacked (read again by the partition's next owner)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None

    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._arrived, self._room = asyncio.Event(), asyncio.Event()
            self._room.set()
            self._flusher = asyncio.ensure_future(self._flush_forever())

    def _take(self) -> list[Any]:
        events, self.events = self.events, []  # never more than ``size``: ``add`` waits for room
        assert self._room is not None
        self._room.set()
        return events

    async def _flush_forever(self) -> None:
        assert self._arrived is not None
        while True:
            while not self.events:
                self._arrived.clear()
                await self._arrived.wait()
            # wait for company: until full, or the first event has waited max_wait_s; while the consumer
            # is behind (the records after the newest are already fetched or on the broker), until full
            # or BEHIND_WAIT_S: else each batch is what arrived during the last, small one, and a
            # worker behind stays behind on the fixed cost of small batches
            while len(self.events) < self.size:
                waited = time.monotonic() - self.started
                limit = BEHIND_WAIT_S if self.behind is not None and self.behind(self.events[-1]) else self.max_wait_s
                left = max(limit, self.max_wait_s) - waited
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            async with self.lock:
                events = self._take()
                try:
                    await self.process(events)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug of ``process``: its events stay unacked
                    log.error("processing a batch of %d failed; its events stay unacked: %r", len(events), exc,
                              exc_info=exc)


class Guard:
    """Our agents' ordering guard on one Faust app: one :class:`InOrder` for all its agents, reset on
    every assignment, and a watchdog that reads a stalled hole again (see the module's text).

    Usage: ``guard = Guard(app, topics)``, ``batches = guard.batcher(process, size, wait)``, and in the
    agent ``await guard.run(batches, stream)``.
    """

    def __init__(self, app: Any, topics: Iterable[str]) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.order = InOrder()
        self.batchers: list[MicroBatcher] = []
        app.on_partitions_assigned.connect(self._assigned)
        app.timer(WATCH_EVERY_S)(self._watch)

    def batcher(self, process: Callable[[Sequence[Any]], Awaitable[None]], size: int,
                max_wait_s: float) -> MicroBatcher:
        """A :class:`MicroBatcher` whose busy state the watchdog respects."""
        batcher = MicroBatcher(process, size, max_wait_s, behind=self.behind)
        self.batchers.append(batcher)
        return batcher

    def behind(self, event: Any) -> bool:
        """True when ``event``'s partition has records after it that the agent has not taken yet (the
        consumer's highwater, as of its last fetch, lies beyond the next offset the agent expects)."""
        consumer = self.app.consumer
        if consumer is None:
            return False
        tp = event.message.tp
        highwater = consumer.highwater(tp)
        expected = self.order.expected.get(tp)
        return highwater is not None and expected is not None and highwater > expected

    async def run(self, batcher: MicroBatcher, stream: Any) -> None:
        """The agent's body: every event in order, in micro-batches, acked by ``process`` (``ack_all``)."""
        await batcher.run(in_order(stream.noack().events(), self.app, self.order))

    async def _assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self.order.reset(time.monotonic())  # Faust seeks every partition to its committed offset

    def busy(self) -> bool:
        return any(b.lock.locked() or b.events for b in self.batchers)

    async def _watch(self) -> None:
        app, consumer = self.app, self.app.consumer
        if consumer is None or not app.flow_control.is_active() or app.rebalancing or self.busy():
            return
        paused = getattr(consumer, "_paused_partitions", set())
        for tp in consumer.assignment():
            if tp.topic not in self.topics or tp in paused:
                continue
            offset = self.order.stalled(tp, consumer._committed_offset.get(tp), consumer.highwater(tp),
                                        time.monotonic())
            if offset is not None:
                log.warning("%s has offsets from %d that never reached the agent: reading them again",
                            tp, offset)
                await seek(app, tp, offset)


def guard_acks(topics: Iterable[str]) -> None:
    """Only our agents ack ``topics`` (see the module's text); Faust's gap bookkeeping is off for them.
    Process-wide (Faust's Consumer class), applied once; on every broker: these are Faust's own bugs.

    Upstream: a stream acks the events it skips (the ``skipped_value`` of faust-streaming#223, events of an
    older consumer generation; noack offsets lost on a rebalance, robinhood/faust#604), and the consumer
    commits across a gap in acks as if it were done (faust-streaming#312). Still so in 0.15.3;
    ``test_batching.py`` holds the guard to it (it fails without the patch)."""
    from faust.transport.consumer import Consumer

    GUARDED_TOPICS.update(topics)

    ack = Consumer.ack
    if getattr(ack, "_streamrec_guarded", False):
        return

    def guarded_ack(self: Any, message: Any) -> bool:
        if message.topic in GUARDED_TOPICS and not agent_acking():
            return False  # Faust skipped it unprocessed: it must stay uncommitted
        return ack(self, message)

    guarded_ack._streamrec_guarded = True  # type: ignore[attr-defined]
    Consumer.ack = guarded_ack

    # Faust records a jump in a partition's offsets as a "gap" and commits across it as if those offsets
    # were done (meant for compacted topics). On our topics a jump is events the consumer dropped, which
    # InOrder reads again: committing across them would lose them if the worker died before the re-read.
    add_gap = Consumer._add_gap

    async def no_gap_on_guarded_topics(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in GUARDED_TOPICS:
            await add_gap(self, tp, offset_from, offset_to)

    Consumer._add_gap = no_gap_on_guarded_topics
