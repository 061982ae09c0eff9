"""The stream worker, a Faust app: `faust -A stream_processors.app worker` or `streamrec worker`.

- history agent on `interactions`: validates each event (bad ones go to `interactions.dlq`), updates the
  user's state and pushes every changed user to Feast's push source `user_recent_history_push` once per
  micro-batch (one row per user). The row holds the whole state (history.py): it is the durable copy, read
  back by whichever worker owns the user's partition next; in memory only a bounded cache (states.py);
- item agent on `item-updates`: keeps stock and price current in the online store;
- web: `/freshness` (JSON) and `/metrics` (Prometheus text) on STREAMREC_WORKER_PORT.

The commit is one function, :func:`process_history_batch` (read it top to bottom): a micro-batch
(batching.py: formed by load, in offset order) → decode → load states → apply (history.py, pure) → save
(sink.py, one write, fenced: never after this worker lost the batch's partitions) → dead letters durable →
cache → ack; Faust commits acked offsets every STREAMREC_COMMIT_INTERVAL_S. Applying an event twice changes
nothing (history.py): effectively once. Errors follow the workers' one policy (streamrec/retry.py): the
infrastructure's are retried by :func:`_durably`, the one retry layer; a record that fails on its own is
found by :func:`streamrec.retry.isolated`, dead-lettered, and the rest of its batch applies.

Settings are read when this module is imported: `faust -A stream_processors.app` needs the app at module
level. `streamrec worker` builds and checks the Feast client first and hands it over (:func:`use_features`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from streamrec.config import get_settings
from streamrec.faust_app import create_app
from streamrec.features import FeatureClient
from streamrec.health import StallWatch
from streamrec.retry import isolated, retry
from streamrec.schemas import Interaction, ItemUpdate, SchemaError, bounded_key, dead_letter, decode, encode
from streamrec.topics import INTERACTIONS, ITEM_UPDATES, dlq

from .batching import Guard, ack_all, guard_acks, release
from .freshness import FreshnessTracker
from .history import State, apply_event, feature_row, stamped, state_from_row
from .sink import FeastSink, client_name
from .states import UNKNOWN, StateCache

__all__ = ["app", "tracker", "use_features"]

log = logging.getLogger("streamrec.worker")
T = TypeVar("T")


GUARDED_TOPICS = frozenset({INTERACTIONS, ITEM_UPDATES})  # what the agents read: acked by them only
guard_acks(GUARDED_TOPICS)  # Faust's own bugs (batching.py): on every broker

settings = get_settings()
app = create_app(settings, settings.worker_app_id, settings.worker_port)
tracker = FreshnessTracker()
WINDOW = settings.time_window()

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
interactions_topic = app.topic(INTERACTIONS, **raw)
item_updates_topic = app.topic(ITEM_UPDATES, **raw)
dlq_topics = {t: app.topic(dlq(t), **raw) for t in (INTERACTIONS, ITEM_UPDATES)}
held = StateCache(settings.state_cache_users)
_rebalances = [0]  # assignments after the first: shown on /freshness, a rebalance is where redelivery starts


@app.on_partitions_revoked.connect
async def _revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
    held.drop_all()  # whoever owns these partitions next writes their users' rows


@app.on_partitions_assigned.connect
async def _assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
    held.drop_all()  # rows of partitions owned elsewhere meanwhile may have moved on
    _assigned_in[0] = app.rebalancing_count
    _rebalances[0] += 1
    log.info("assigned %d partitions (assignment %d)", len(assigned), _rebalances[0])


_assigned_in = [0]  # Faust's rebalance count when this worker was last assigned partitions
sink = FeastSink(settings, client_name(settings))  # every read and write of the online store, one attempt each


def use_features(client: FeatureClient) -> None:
    """Use ``client`` (built and checked by `streamrec worker` before the app starts) as the app's."""
    sink.use(client)


class Fenced(Exception):  # noqa: N818 - a verdict, not a failure
    """This worker no longer owns the partitions of the batch in hand: it writes nothing more for it."""


def _owns(events: Sequence[Any], generation: int) -> Callable[[], bool]:
    """Whether this worker still owns the partitions of ``events`` as it did at ``generation``.

    Faust counts a rebalance the moment it starts, on the consumer thread (``app.rebalancing_count``), while
    the revoke itself first waits for the batches in hand: "rebalancing, and not yet assigned in this
    rebalance" is the earliest sign that a partition may go elsewhere. Then the generation (bumped on revoke
    and assign) and the assignment itself."""
    tps = {e.message.tp for e in events}

    def owns() -> bool:
        if held.generation != generation or (app.rebalancing and _assigned_in[0] != app.rebalancing_count):
            return False
        return app.consumer is None or tps <= app.consumer.assignment()

    return owns


async def _durably(what: str, call: Callable[[], Awaitable[T]], owns: Callable[[], bool] | None = None) -> T:
    """The worker's one retry layer: ``await call()`` until it succeeds, again after each failure of the
    infrastructure (Redis or the broker away; capped backoff, counted and logged); an error of the data's is
    raised at once. With ``owns``, checked before every attempt: :class:`Fenced` once it says no. An
    attempt stuck on a silent Redis fails within REDIS_SOCKET_TIMEOUT_S (5 s, below the group's 6 s
    rebalance timeout) and closes its connection (Redis then drops what it had not run), so no attempt
    begun while the worker owned the batch lands after the group has given its partitions to another."""
    def note(exc: BaseException, delay: float) -> None:
        tracker.push_retries += 1
        log.warning("%s failed, retrying in %.1fs: %s", what, delay, (str(exc) or repr(exc)).splitlines()[0][:200])

    async def attempt() -> T:
        if owns is not None and not owns():
            raise Fenced(what)
        return await call()

    return await retry(attempt, on_retry=note)


def _dead_letter(event: Any, reason: str) -> asyncio.Future[None]:
    """Send the DLQ record of ``event`` (bounded, whatever the event), retried until the broker has it: a
    task, to await before the source offset is acked."""
    message = event.message
    record = dead_letter(event.value, reason, message.topic, message.partition, message.offset,
                         settings.dlq_max_raw_bytes)
    tracker.record_dlq(reason)

    async def send() -> None:
        await (await dlq_topics[message.topic].send(key=bounded_key(event.key), value=encode(record)))

    return asyncio.ensure_future(_durably("dead letter", send))


async def _reject(event: Any, reason: str) -> None:
    """Dead-letter one event that failed on its own and move past it (the rest of its batch went on)."""
    await _dead_letter(event, reason)
    ack_all([event])


def _decode(model: type, event: Any) -> Any:
    value = decode(model, event.value, WINDOW)
    key = event.key.decode("utf-8", "replace") if event.key is not None else None
    entity = value.user_id if model is Interaction else value.item_id
    if key != entity:
        # Keying decides the partition, and one partition's owner writes the user's row.
        field = "user_id" if model is Interaction else "item_id"
        raise SchemaError(f"key: must equal {field} ({entity!r}), got {key!r}", fields=("key",))
    return value


def _decoded(model: type, events: Sequence[Any]) -> tuple[list[tuple[Any, Any]], list[asyncio.Future[None]]]:
    """(event, value) of each event that decodes; the dead letters of those that do not, under way."""
    valid, dead = [], []
    for event in events:
        try:
            valid.append((event, _decode(model, event)))
        except SchemaError as exc:
            dead.append(_dead_letter(event, str(exc)))
    return valid, dead


def _owned(events: Sequence[Any]) -> Sequence[Any]:
    """The events of partitions this worker still owns. One read before a rebalance moved its partition
    elsewhere is left alone (unacked): its new owner reads it again."""
    if app.consumer is None:
        return events
    owned = app.consumer.assignment()
    return [e for e in events if e.message.tp in owned]


async def _load_states(user_ids: list[str], owns: Callable[[], bool]) -> dict[str, State | None]:
    """Each user's current state: held in memory, else read from their online row (None: no row yet)."""
    states = {u: held.get(u) for u in user_ids}
    missing = [u for u, state in states.items() if state is UNKNOWN]
    if missing:
        rows = await _durably("feast read", functools.partial(sink.read_rows, missing), owns)
        states.update((u, state_from_row(row)) for u, row in zip(missing, rows, strict=True))
    return states


async def _save(changed: dict[str, State], owns: Callable[[], bool]) -> tuple[dict[str, State], float]:
    """Write the rows of ``changed`` in one batch write; returns the states as written (each stamped with its
    write time, ``history.stamped``) and when the write returned (epoch s). ``changed`` is left as it was."""
    async def attempt() -> tuple[dict[str, State], float]:
        now_ms = int(time.time() * 1000)
        written = {u: stamped(state, now_ms) for u, state in changed.items()}
        await sink.write_rows([feature_row(u, state) for u, state in written.items()])
        return written, time.time()

    return await _durably("feast push", attempt, owns)


async def _drop(events: Sequence[Any], dead: list[asyncio.Future[None]]) -> None:
    """A fenced batch: nothing written, nothing acked; the rebalance that took its partitions goes on."""
    tracker.fenced_batches += 1
    log.warning("dropped a batch of %d events unacked: its partitions were being taken away", len(events))
    await asyncio.gather(*dead)
    release(events)


async def process_history_batch(events: Sequence[Any]) -> None:
    """Apply a micro-batch of interaction events and ack it once its effects are durable.

    1. Own: keep the events of partitions this worker owns now, under ownership ``generation``; the others
       stay unacked (their new owner reads them again).
    2. Decode: each event that does not decode gets its dead letter sent (awaited in 6).
    3. Load: each user's state, held in memory or read from their row (retried while Redis is away).
    4. Apply: the events, in offset order, to new states (history.apply_event: a replayed or duplicate
       event changes nothing); nothing is written yet.
    5. Save: one write of the changed users' rows, each stamped with its write time. Retried while Redis is
       away, and **before every attempt (the reads' too) the worker checks it still owns the batch's
       partitions** (:func:`_owns`): once it does not, the batch is dropped here, unacked, with nothing
       written; its partitions' next owner reads the events again from the committed offset.
    6. Await the dead letters.
    7. Cache the written states (only while ``generation`` holds: a rebalance drops every held state).
    8. Ack: Faust commits acked offsets every STREAMREC_COMMIT_INTERVAL_S.
    """
    t_start = time.perf_counter()
    generation = held.generation  # 1
    events = _owned(events)
    owns = _owns(events, generation)
    valid, dead = _decoded(Interaction, events)  # 2
    try:
        states = await _load_states(list(dict.fromkeys(i.user_id for _, i in valid)), owns)  # 3
        changed: dict[str, State] = {}  # 4
        newest_record_ts: dict[str, float] = {}  # changed user → Kafka timestamp (s) of their newest event
        applied = 0
        for event, interaction in valid:
            user_id = interaction.user_id
            state, took = apply_event(changed.get(user_id, states[user_id]), interaction, event.message.offset,
                                      event.message.partition, settings.purchase_memory)
            if took:
                changed[user_id] = state
                applied += 1
                newest_record_ts[user_id] = max(newest_record_ts.get(user_id, 0.0), event.message.timestamp)
        written, written_at = await _save(changed, owns) if changed else ({}, time.time())  # 5
    except Fenced:
        await _drop(events, dead)
        return
    await asyncio.gather(*dead)  # 6
    held.put_all(generation, {**states, **written}.items())  # 7
    tracker.record_batch(len(valid), applied, [(written_at - ts) * 1000.0 for ts in newest_record_ts.values()])
    log.debug("batch of %d events, %d users in %.1f ms", len(events), len(written),
              (time.perf_counter() - t_start) * 1000)
    ack_all(events)  # 8


async def process_item_batch(events: Sequence[Any]) -> None:
    """Apply a micro-batch of item updates to the online store (read, merge, write; fenced as history
    batches are), then ack."""
    generation = held.generation
    events = _owned(events)
    valid, dead = _decoded(ItemUpdate, events)
    if valid:
        try:
            unknown = await _durably("item write", functools.partial(sink.merge_items, [u for _, u in valid]),
                                     _owns(events, generation))
        except Fenced:
            await _drop(events, dead)
            return
        dead += [_dead_letter(event, f"item_id: unknown item {update.item_id!r}")
                 for event, update in valid if update.item_id in unknown]
    await asyncio.gather(*dead)
    ack_all(events)


guard = Guard(app, GUARDED_TOPICS)
# A batch that fails for its data is halved until the record that fails alone is found and dead-lettered.
history_batches = guard.batcher(isolated(process_history_batch, _reject), settings.push_batch,
                                settings.push_max_wait_ms / 1000.0)
item_batches = guard.batcher(isolated(process_item_batch, _reject), settings.push_batch,
                             settings.push_max_wait_ms / 1000.0)


@app.agent(interactions_topic)
async def history_agent(stream: Any) -> None:
    await guard.run(history_batches, stream)


@app.agent(item_updates_topic)
async def item_agent(stream: Any) -> None:
    await guard.run(item_batches, stream)


@app.task
async def _warm_up() -> None:
    await sink.client()
    log.info("feature store ready (data %s, redis %s)", settings.data_dir, settings.redis_display())


@app.timer(5.0)
async def _log_figures() -> None:
    snap = tracker.snapshot()
    f = snap["freshness_ms"]
    if snap["events"]:
        log.info("events %d (%.0f/s) applied %d dup %d dlq %d | freshness ms p50 %s p99 %s max %s",
                 snap["events"], snap["events_per_s"], snap["applied"], snap["duplicates_skipped"],
                 snap["dlq_total"], _ms(f["p50"]), _ms(f["p99"]), _ms(f["max"]))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


stall_watch = StallWatch(settings.stall_after_s)
_stalled: list[Any] = []


@app.timer(1.0)
async def _watch_stalls() -> None:
    """A partition whose committed offset stands still while the broker holds more is stalled."""
    consumer = app.consumer
    if consumer is None:
        return
    positions = {tp: (consumer._committed_offset.get(tp), consumer.highwater(tp))
                 for tp in consumer.assignment() if tp.topic in GUARDED_TOPICS}
    stalled = stall_watch.update(positions, time.monotonic())
    if stalled and not _stalled:
        log.error("stalled: committed offsets of %s have not moved for %.0f s while records wait",
                  sorted(f"{tp.topic}/{tp.partition}" for tp in stalled), settings.stall_after_s)
    _stalled[:] = stalled


@app.page("/freshness")
async def freshness_page(web: Any, request: Any) -> Any:
    snap = tracker.snapshot()
    assignment = app.consumer.assignment() if app.consumer else set()
    snap["assigned_partitions"] = len(assignment)
    snap["assigned"] = sorted(f"{tp.topic}/{tp.partition}" for tp in assignment if tp.topic in GUARDED_TOPICS)
    # Ready: Feast loaded (batches are not held up by start-up) and no partition stalled.
    snap["stalled"] = sorted(f"{tp.topic}/{tp.partition}" for tp in _stalled)
    snap["ready"] = sink.ready and not _stalled
    snap["rewinds"] = guard.order.rewinds  # holes the consumer left that were read again
    snap["rebalances"] = max(0, _rebalances[0] - 1)  # assignments after the first
    # users' states held in memory; a miss is an online read of the user's row
    snap["state_cache"] = {"held": len(held), "hits": held.hits, "misses": held.misses}
    if request.query.get("samples"):  # the newest lags, oldest first (``last``: how many, default 5,000)
        try:
            last = max(1, int(request.query.get("last", 5000)))
        except ValueError:
            last = 5000
        snap["lags_ms"] = tracker.samples(last)
    return web.json(snap)


@app.page("/metrics")
async def metrics_page(web: Any, request: Any) -> Any:
    return web.text(tracker.prometheus(), content_type="text/plain; version=0.0.4")
