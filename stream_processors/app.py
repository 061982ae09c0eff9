"""The stream worker, a Faust app: `faust -A stream_processors.app worker` or `streamrec worker`.

- history agent on `interactions`: validates each event (bad ones go to `interactions.dlq`), updates the
  user's state in a changelog-backed table, and pushes every changed user to Feast's push source
  `user_recent_history_push` once per micro-batch (one row per user);
- item agent on `item-updates`: keeps stock and price current in the online store;
- web: `/freshness` (JSON) and `/metrics` (Prometheus text) on STREAMREC_WORKER_PORT.

Offsets are acked only after the batch's effects are durable (Feast push done, changelog and DLQ writes
flushed), and applying an event twice changes nothing (see history.py): effectively once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from streamrec._exceptions import is_infrastructure
from streamrec.config import get_settings
from streamrec.features import FeatureClient, history_frame
from streamrec.schemas import Interaction, ItemUpdate, SchemaError, bounded_key, dead_letter, decode, encode
from streamrec.topics import INTERACTIONS, ITEM_UPDATES, dlq

from .batching import Guard, ack_all, isolated, retry_infrastructure
from .faust_app import GUARDED_TOPICS, create_app
from .history import apply_event, feature_row
from .items import merge_item_updates
from .metrics import FreshnessTracker, StallWatch

__all__ = ["app", "tracker", "create_app"]

log = logging.getLogger("streamrec.worker")


settings = get_settings()
app = create_app(settings, settings.worker_app_id, settings.worker_port)
tracker = FreshnessTracker()
WINDOW = settings.time_window()

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
interactions_topic = app.topic(INTERACTIONS, **raw)
item_updates_topic = app.topic(ITEM_UPDATES, **raw)
dlq_topics = {t: app.topic(dlq(t), **raw) for t in (INTERACTIONS, ITEM_UPDATES)}
history_table = app.Table("user_history", default=None, partitions=settings.topic_partitions,
                          schema=faust.Schema(key_serializer="json", value_serializer="json"))

_features: FeatureClient | None = None
_features_lock = asyncio.Lock()


async def features() -> FeatureClient:
    """The Feast client, built once off the event loop (importing Feast takes seconds)."""
    global _features
    async with _features_lock:
        if _features is None:
            _features = await asyncio.get_running_loop().run_in_executor(None, FeatureClient, settings)
    return _features


async def _with_retry(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call``, retried while Redis or the broker fails; an error of the data's is raised at once, for
    :func:`batching.isolated` to narrow down to its record."""

    def note(exc: BaseException, delay: float) -> None:
        tracker.push_retries += 1
        log.warning("%s failed, retrying in %.1fs: %s", what, delay, (str(exc) or repr(exc)).splitlines()[0][:200])

    return await retry_infrastructure(call, is_infrastructure, note)


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
        # Keying decides the partition, and the table's state lives on that partition.
        field = "user_id" if model is Interaction else "item_id"
        raise SchemaError(f"key: must equal {field} ({entity!r}), got {key!r}", fields=("key",))
    return value


async def _write_changelog(pending: dict[str, tuple[dict[str, Any], Any]]) -> list[Any]:
    """Set each user's state and send its changelog record, on the partition of its events.

    Returns the delivery futures; a batch may be acked only once all of them are done. Not through
    ``table[key] = state``: that queues the record in Faust's producer buffer, whose flush returns while
    a record it has already taken off the queue is not yet in the Kafka producer, so offsets could be
    committed for a changelog record that a kill -9 then lost.
    """
    changelog = history_table.changelog_topic
    sends = []
    for user_id, (state, event) in pending.items():
        history_table.data[user_id] = state
        sends.append(await changelog.send(key=user_id, value=state, partition=event.message.partition,
                                          key_serializer="json", value_serializer="json"))
    return sends


async def _push_users(states: dict[str, dict[str, Any]], newest_record_ts: dict[str, float]) -> list[float]:
    """One Feast push with a row per user; returns each row's freshness lag in ms."""
    client = await features()
    loop = asyncio.get_running_loop()

    async def push() -> float:
        pushed_ms = int(time.time() * 1000)
        frame = history_frame([feature_row(u, states[u], pushed_ms) for u in newest_record_ts])
        await loop.run_in_executor(None, client.push_history, frame)
        return time.time()

    written = await _with_retry("feast push", push)
    return [(written - ts) * 1000.0 for ts in newest_record_ts.values()]


async def process_history_batch(events: Sequence[Any]) -> None:
    """Apply a micro-batch of interaction events, push changed users once, then ack.

    What must be durable before the ack, in order: the Feast row of every user the batch touched, then
    (together) their changelog records and the DLQ records of the events that could not be used. A
    user's new state enters the table only once its row is in Feast, so an event whose row cannot be
    written never becomes part of anyone's state.
    """
    t_start = time.perf_counter()
    newest_record_ts: dict[str, float] = {}  # user → Kafka timestamp (s) of their newest event here
    pending: dict[str, tuple[dict[str, Any], Any]] = {}  # user → (state, last event that changed it)
    states: dict[str, dict[str, Any]] = {}  # user → state to push (changed or not)
    applied = valid = 0
    dead: list[Any] = []  # DLQ deliveries, awaited with the changelog before the ack
    for event in events:
        try:
            interaction = _decode(Interaction, event)
        except SchemaError as exc:
            dead.append(await _dead_letter(event, str(exc)))
            continue
        valid += 1
        user_id = interaction.user_id
        before = states[user_id] if user_id in states else history_table.get(user_id)
        state, changed = apply_event(before, interaction, event.message.offset)
        states[user_id] = state
        if changed:
            pending[user_id] = (state, event)
            applied += 1
        # Pushed even when the event was a replay: its push may not have happened before a crash.
        newest_record_ts[user_id] = max(newest_record_ts.get(user_id, 0.0), event.message.timestamp)
    lags = await _push_users(states, newest_record_ts) if newest_record_ts else []
    changelog = await _write_changelog(pending)
    await asyncio.gather(*changelog, *dead)
    tracker.record_batch(valid, applied, lags)
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
        client = await features()
        loop = asyncio.get_running_loop()
        ids = sorted({u.item_id for u in updates})

        async def write() -> list[str]:
            current = await loop.run_in_executor(None, client.item_features, ids)
            merged, unknown = merge_item_updates(current, updates)
            if not merged.empty:
                await loop.run_in_executor(None, client.write_items, merged)
            return unknown

        unknown = await _with_retry("item write", write)
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
    await features()
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
    snap["ready"] = _features is not None and not _stalled
    snap["rewinds"] = guard.order.rewinds  # holes the consumer left that were read again
    if request.query.get("samples"):
        snap["lags_ms"] = tracker.samples()
    return web.json(snap)


@app.page("/metrics")
async def metrics_page(web: Any, request: Any) -> Any:
    return web.text(tracker.prometheus(), content_type="text/plain; version=0.0.4")
