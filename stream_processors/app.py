"""The stream worker, a Faust app: `faust -A stream_processors.app worker` or `streamrec worker`.

- history agent on `interactions`: validates each event (bad ones go to `interactions.dlq`), updates the
  user's state and pushes every changed user to Feast's push source `user_recent_history_push` once per
  micro-batch (one row per user). The row holds the whole state (history.py): it is the durable copy, read
  back by whichever worker owns the user's partition next; in memory only a bounded cache (states.py);
- item agent on `item-updates`: keeps stock and price current in the online store;
- web: `/freshness` (JSON) and `/metrics` (Prometheus text) on STREAMREC_WORKER_PORT.

The commit protocol, in order: a micro-batch (batching.py: formed by load, in offset order) → apply
(history.py) → the Feast write (sink.py, retried while Redis is away) and the DLQ records → ack
(``batching.ack_all``) → Faust commits acked offsets every STREAMREC_COMMIT_INTERVAL_S. Applying an event
twice changes nothing (see history.py): effectively once. A failing batch follows the workers' one error
policy (streamrec/retry.py): the infrastructure's failures are retried, a record that fails on its own is
dead-lettered and the rest of its batch applies.

Settings are read when this module is imported: `faust -A stream_processors.app` needs the app at module
level. `streamrec worker` builds and checks the Feast client first and hands it over (:func:`use_features`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from streamrec._exceptions import is_infrastructure
from streamrec.config import get_settings
from streamrec.faust_app import create_app
from streamrec.features import FeatureClient
from streamrec.health import StallWatch
from streamrec.retry import isolated
from streamrec.schemas import Interaction, ItemUpdate, SchemaError, bounded_key, dead_letter, decode, encode
from streamrec.topics import INTERACTIONS, ITEM_UPDATES, dlq

from .batching import Guard, ack_all, guard_acks
from .freshness import FreshnessTracker
from .history import State, apply_event
from .sink import FeastSink
from .states import UNKNOWN, StateCache

__all__ = ["app", "tracker", "use_features"]

log = logging.getLogger("streamrec.worker")


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
    _rebalances[0] += 1
    log.info("assigned %d partitions (assignment %d)", len(assigned), _rebalances[0])


sink = FeastSink(settings, tracker)  # every read and write of the online store, with its retries


def use_features(client: FeatureClient) -> None:
    """Use ``client`` (built and checked by `streamrec worker` before the app starts) as the app's."""
    sink.use(client)


async def _dead_letter(event: Any, reason: str) -> Any:
    """Send the DLQ record (bounded, whatever the event); returns its delivery future, to await before the
    source offset is acked."""
    message = event.message
    record = dead_letter(event.value, reason, message.topic, message.partition, message.offset,
                         settings.dlq_max_raw_bytes)
    fut = await dlq_topics[message.topic].send(key=bounded_key(event.key), value=encode(record))
    tracker.record_dlq(reason)
    return fut


async def _reject(event: Any, reason: str) -> None:
    """Dead-letter one event that failed on its own and move past it (the rest of its batch went on)."""
    await (await _dead_letter(event, reason))
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


async def _states(user_ids: list[str]) -> dict[str, State | None]:
    """Each user's current state: held, else read from their online row (None: no row yet)."""
    states = {u: held.get(u) for u in user_ids}
    missing = [u for u, state in states.items() if state is UNKNOWN]
    if missing:
        states.update(await sink.states(missing))
    return states


def _owned(events: Sequence[Any]) -> Sequence[Any]:
    """The events of partitions this worker still owns. One read before a rebalance moved its partition
    elsewhere is left alone (unacked): its new owner reads it again, and this worker must not write a
    row over the rows that owner writes."""
    if app.consumer is None:
        return events
    owned = app.consumer.assignment()
    return [e for e in events if e.message.tp in owned]


async def process_history_batch(events: Sequence[Any]) -> None:
    """Apply a micro-batch of interaction events, push changed users once, then ack.

    What must be durable before the ack: the Feast row of every user the batch changed (it carries the
    state, offset included) and the DLQ records of the events that could not be used. A state is held in
    memory only once its row is written, so a state no row has never becomes anyone's base.
    """
    t_start = time.perf_counter()
    generation = held.generation
    events = _owned(events)
    dead: list[Any] = []  # DLQ deliveries, awaited before the ack
    valid: list[tuple[Any, Interaction]] = []
    for event in events:
        try:
            valid.append((event, _decode(Interaction, event)))
        except SchemaError as exc:
            dead.append(await _dead_letter(event, str(exc)))
    states = await _states(list(dict.fromkeys(i.user_id for _, i in valid))) if valid else {}
    newest_record_ts: dict[str, float] = {}  # changed user → Kafka timestamp (s) of their newest event here
    applied = 0
    for event, interaction in valid:
        user_id = interaction.user_id
        state, changed = apply_event(states[user_id], interaction, event.message.offset, event.message.partition,
                                     settings.purchase_memory)
        if changed:
            states[user_id] = state
            applied += 1
            newest_record_ts[user_id] = max(newest_record_ts.get(user_id, 0.0), event.message.timestamp)
    lags = await sink.push(states, newest_record_ts) if newest_record_ts else []
    await asyncio.gather(*dead)
    held.put_all(generation, states.items())
    tracker.record_batch(len(valid), applied, lags)
    log.debug("batch of %d events, %d users in %.1f ms", len(events), len(newest_record_ts),
              (time.perf_counter() - t_start) * 1000)
    ack_all(events)


async def process_item_batch(events: Sequence[Any]) -> None:
    """Apply a micro-batch of item updates to the online store (read, merge, write), then ack."""
    updates: list[ItemUpdate] = []
    dead: list[Any] = []  # DLQ deliveries, awaited before the ack
    for event in events:
        try:
            updates.append(_decode(ItemUpdate, event))
        except SchemaError as exc:
            dead.append(await _dead_letter(event, str(exc)))
    if updates:
        unknown = await sink.merge_items(updates)
        for event in events:
            key = event.key.decode("utf-8", "replace") if event.key else ""
            if key in unknown:
                dead.append(await _dead_letter(event, f"item_id: unknown item {key!r}"))
    await asyncio.gather(*dead)
    ack_all(events)


guard = Guard(app, GUARDED_TOPICS)
# A batch that fails for its data is halved until the record that fails alone is found and dead-lettered.
history_batches = guard.batcher(isolated(process_history_batch, _reject, is_infrastructure),
                                settings.push_batch, settings.push_max_wait_ms / 1000.0)
item_batches = guard.batcher(isolated(process_item_batch, _reject, is_infrastructure),
                             settings.push_batch, settings.push_max_wait_ms / 1000.0)


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
    snap["assigned_partitions"] = len(app.consumer.assignment()) if app.consumer else 0
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
