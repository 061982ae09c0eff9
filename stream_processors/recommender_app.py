"""The recommender, a Faust app: `streamrec worker --app recommender`
(or `faust -A stream_processors.recommender_app worker`).

- agent on `recommendation-requests` (:class:`RequestAgent`, a consumer group: instances share the
  load): micro-batches of requests → one online read of their users (profile + the history the stream
  worker just pushed) → towers + FAISS + rule filters → responses on `recommendations`, keyed by
  request_id. A malformed request gets an `error` response (and a DLQ record); nothing stops the agent.
- every instance follows `item-updates` (stock, price) and `model-updates` on assigned partitions —
  each needs all of them — and checks LATEST every few seconds. A new model is loaded and indexed off
  the event loop and swapped in one assignment; one that fails to load is refused and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from models.checkpoints import CheckpointError, latest_version
from models.filtering import load_filter_config
from models.serving import load_checkpoint
from streamrec.config import get_settings
from streamrec.features import FeatureClient
from streamrec.offsets import consumer_at_end
from streamrec.schemas import (
    DLQRecord,
    ErrorInfo,
    ItemUpdate,
    ModelUpdate,
    RecommendationRequest,
    RecommendationResponse,
    SchemaError,
    decode,
    encode,
    loads_any,
)
from streamrec.topics import ITEM_UPDATES, MODEL_UPDATES, RECOMMENDATIONS, REQUESTS, dlq

from .faust_app import create_app
from .live import register_live_pages
from .metrics import StageTimes
from .recommend import Catalog, Recommender, ServingBundle

__all__ = ["app", "serving"]

log = logging.getLogger("streamrec.recommender")
settings = get_settings()
# The Faust app hosts the web pages, timers and tasks; requests go through RequestAgent's own consumer
# and producer (a fetch waits STREAMREC_REQUEST_MAX_WAIT_MS, 3 ms, for requests; answers linger 1 ms).
app = create_app(settings, settings.recommender_app_id, settings.recommender_port)


class Serving:
    """What the agent serves with; `bundle` is replaced whole on a hot swap."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.features: FeatureClient | None = None
        self.recommender: Recommender | None = None
        self.bundle: ServingBundle | None = None
        self.swaps = 0
        self.refused: list[str] = []
        self.requests = 0
        self.errors = 0
        # where a request's time goes: Kafka → agent, feature read, model + filters, response delivery
        self.stages = StageTimes()

    async def swap_to(self, path: str) -> bool:
        """Load, index and swap in the checkpoint at ``path``; False (old model kept) if it fails."""
        loop = asyncio.get_running_loop()
        try:
            bundle = await loop.run_in_executor(None, lambda: ServingBundle.build(load_checkpoint(path)))
        except CheckpointError as exc:
            self.refused.append(str(path))
            log.error("refused checkpoint %s, still serving %s: %s", path, self.version, exc)
            return False
        self.bundle = bundle  # one assignment: a batch in flight keeps the bundle it started with
        self.swaps += 1
        log.info("serving model %s (%d items)", bundle.version, len(bundle.item_ids))
        return True

    @property
    def version(self) -> str | None:
        return self.bundle.version if self.bundle else None


serving = Serving()


async def _follow(consumer: Any, handle: Any) -> None:
    """Apply every record from where the consumer stands, forever (each instance sees them all)."""
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        await handle(record.value)
                    except SchemaError as exc:
                        log.warning("ignored a bad record on %s: %s", record.topic, exc)
    finally:
        await consumer.stop()


async def _apply_item_update(value: bytes) -> None:
    update = decode(ItemUpdate, value)
    if serving.recommender is not None:
        serving.recommender.catalog.update(update.item_id, stock=update.stock, price=update.price)


def _number(version: str | None) -> int:
    return int(version[1:]) if version and version[1:].isdigit() else -1


async def _apply_model_update(value: bytes) -> None:
    # Announcements are keyed by version, so partitions may deliver v1 after v2: only move forward.
    # (A rollback is done through LATEST, which _watch_latest follows either way.)
    update = decode(ModelUpdate, value)
    if _number(update.version) > _number(serving.version):
        await serving.swap_to(update.path)


def _load_catalog(client: FeatureClient) -> Catalog:
    """Items from the online store (fresh stock), popularity from the offline interactions."""
    items = pd.read_parquet(settings.data_dir / "recommendation_items.parquet", columns=["item_id"])
    ids = list(items["item_id"])
    frames = [client.item_features(ids[i:i + 2000]) for i in range(0, len(ids), 2000)]
    online = pd.concat(frames).dropna(subset=["top_category"])
    interactions = pd.read_parquet(settings.data_dir / "recommendation_interactions.parquet",
                                   columns=["item_id", "interaction_type"])
    weights = interactions["interaction_type"].map({"purchase": 3, "cart": 2, "rate": 2, "positive_view": 1}
                                                   ).fillna(0)
    popularity = list(weights.groupby(interactions["item_id"]).sum().sort_values(ascending=False).index)
    return Catalog(online, popularity)


@app.task
async def _start_serving() -> None:
    import torch

    torch.set_num_threads(1)  # one request batch at a time: threads only spin against each other
    loop = asyncio.get_running_loop()
    # before the catalog read: no update is missed
    item_consumer = await consumer_at_end(settings.aiokafka_config(), ITEM_UPDATES, fetch_max_wait_ms=50)
    model_consumer = await consumer_at_end(settings.aiokafka_config(), MODEL_UPDATES, fetch_max_wait_ms=50)
    serving.features = await loop.run_in_executor(None, FeatureClient, settings)
    catalog = await loop.run_in_executor(None, _load_catalog, serving.features)
    serving.recommender = Recommender(catalog, load_filter_config(categories=set(catalog._columns["top_category"])))
    version = latest_version(settings.checkpoint_dir)
    if version is not None:
        await serving.swap_to(str(settings.checkpoint_dir / version))
    else:
        log.warning("no model in %s yet: answering with popularity", settings.checkpoint_dir)
    serving.ready.set()
    log.info("recommender ready: %d items, model %s", len(catalog), serving.version)
    app.add_future(_follow(item_consumer, _apply_item_update))
    app.add_future(_follow(model_consumer, _apply_model_update))


@app.timer(3.0)
async def _watch_latest() -> None:
    """LATEST is the source of truth: a missed model-updates message still reaches every instance."""
    if not serving.ready.is_set():
        return
    version = latest_version(settings.checkpoint_dir)
    if version is not None and version != serving.version and str(settings.checkpoint_dir / version) not in \
            serving.refused:
        await serving.swap_to(str(settings.checkpoint_dir / version))


def _error_response(record: Any, reason: str, code: str = "bad_request") -> RecommendationResponse:
    body = loads_any(record.value or b"")
    request_id = body.get("request_id") if isinstance(body, dict) else None
    user_id = body.get("user_id") if isinstance(body, dict) else None
    return RecommendationResponse(
        request_id=_printable(request_id) if request_id is not None else "",
        user_id=_printable(user_id) if user_id is not None else None,
        items=[], error=ErrorInfo(code=code, message=_printable(reason, 1024)))


def _printable(value: Any, limit: int = 128) -> str:
    """Text that any UTF-8 response can carry: json.loads accepts lone surrogates ("\\ud800"), which
    then failed the response model and took the whole batch's answers with them."""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


class RequestAgent:
    """The agent on `recommendation-requests`: an aiokafka group member on the app's event loop.

    Faust hands an agent its events one by one through its consumer thread; on 2 cores that path alone
    saturated below 400 requests/s (requests queued for seconds before the agent saw them, while the
    agent itself was idle half the time). A plain group consumer's ``getmany`` gives every request
    already fetched in one call: that is the micro-batch, with no extra wait. Offsets are committed only
    after a batch's responses and DLQ records are delivered; a rebalance waits for the batch in hand.
    """

    def __init__(self) -> None:
        self.consumer: Any = None
        self.producer: Any = None
        self.busy = asyncio.Lock()  # held while a batch is in hand; a rebalance waits for it

    def assigned(self) -> int:
        return len(self.consumer.assignment()) if self.consumer is not None else 0

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.abc import ConsumerRebalanceListener

        agent = self

        class WaitForBatch(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                async with agent.busy:  # the batch in hand finishes and commits first
                    pass

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("requests: assigned %s", sorted(tp.partition for tp in assigned))

        config = settings.aiokafka_config()
        self.producer = AIOKafkaProducer(**config, acks="all", linger_ms=1)
        # Faust's settings for the same reasons (faust_app.create_app): seconds, not a minute, to join
        self.consumer = AIOKafkaConsumer(
            **config, group_id=f"{settings.recommender_app_id}-requests", enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=settings.request_max_wait_ms,
            max_poll_records=settings.request_batch,
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000, rebalance_timeout_ms=6_000)
        await serving.ready.wait()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([REQUESTS], listener=WaitForBatch())
        try:
            while True:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=settings.request_batch)
                records = [r for part in batches.values() for r in part]
                if not records:
                    continue
                async with self.busy:
                    await self._answer(records)
                    await self._commit(records)
        finally:
            await asyncio.sleep(0)  # see streamrec/offsets.py: aiokafka's stop() right after start()
            await self.consumer.stop()
            await self.producer.stop()

    async def _answer(self, records: Sequence[Any]) -> None:
        """Every request answered before the offsets move; only a failed delivery (the broker) repeats
        the batch, which may answer a request twice (at-least-once), never zero times."""
        while True:
            try:
                await process_requests(records, self.producer)
                return
            except Exception as exc:  # noqa: BLE001 - the agent never dies on a batch
                log.warning("answering a batch of %d requests failed (%r): trying again in 1 s", len(records), exc)
                await asyncio.sleep(1.0)

    async def _commit(self, records: Sequence[Any]) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError

        offsets: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # the partition moved on: its new owner answers
            log.warning("requests: commit after a rebalance failed (%s); those may be answered twice", exc)


def _dlq_record(record: Any, reason: str) -> DLQRecord:
    return DLQRecord(reason=reason[:2048], topic=record.topic, partition=record.partition, offset=record.offset,
                     raw=(record.value or b"").decode("utf-8", "backslashreplace"))


SERVE_WITHIN_S = 5.0  # a batch that cannot be served by then (Redis down...) is answered with errors
RETRY_DELAYS_S = (0.5, 1.0, 2.0)


async def _serve(good: Sequence[tuple[Any, RecommendationRequest]]) -> list[RecommendationResponse]:
    """Features → model → filters for the well-formed requests of a batch, tried again on failure until
    ``SERVE_WITHIN_S`` is spent (a failing Feast read can itself take seconds: redis-py's own retries)."""
    loop = asyncio.get_running_loop()
    requests = [r for _, r in good]
    received = [record.timestamp / 1000 for record, _ in good]
    bundle = serving.bundle  # this batch finishes on this model whatever happens meanwhile
    users = list(dict.fromkeys(r.user_id for r in requests))

    async def once() -> list[RecommendationResponse]:
        t1 = time.perf_counter()
        rows = await loop.run_in_executor(None, serving.features.users_features, users)
        t2 = time.perf_counter()
        serving.stages.record("feature_read_per_batch", (t2 - t1) * 1000)
        by_user = dict(zip(users, rows, strict=True))
        responses = await loop.run_in_executor(
            None, lambda: serving.recommender.recommend(requests, [by_user[r.user_id] for r in requests], bundle,
                                                        received=received))
        serving.stages.record("model_and_filters_per_batch", (time.perf_counter() - t2) * 1000)
        serving.stages.record("batch_size", len(requests))
        return responses

    deadline = time.monotonic() + SERVE_WITHIN_S
    delays = iter(RETRY_DELAYS_S)
    while True:
        try:
            return await asyncio.wait_for(once(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - decided below: retry or answer with errors
            delay = next(delays, None)
            if delay is None or time.monotonic() + delay >= deadline:
                raise
            log.warning("serving %d requests failed (%r): retrying in %.1f s", len(requests), exc, delay)
            await asyncio.sleep(delay)


async def process_requests(records: Sequence[Any], producer: Any) -> None:
    """Answer a micro-batch of requests; every record gets exactly one response, delivered on return.

    A malformed request gets a `bad_request` answer; one that cannot be served within ``SERVE_WITHIN_S``
    an `internal` answer; both also a DLQ record.
    """
    t0 = time.time()
    for record in records:
        serving.stages.record("kafka_to_agent", t0 * 1000 - record.timestamp)
    good: list[tuple[Any, RecommendationRequest]] = []
    answers: list[tuple[RecommendationResponse, Any]] = []  # (answer, the record to dead-letter or None)
    for record in records:
        try:
            good.append((record, decode(RecommendationRequest, record.value or b"")))
        except SchemaError as exc:
            answers.append((_error_response(record, str(exc)), record))
    if good:
        try:
            answers += [(response, None) for response in await _serve(good)]
        except Exception as exc:  # noqa: BLE001 - answered, not dropped
            reason = f"the recommender could not serve this request: {exc!r}"
            log.error("answering %d requests with errors: %s", len(good), reason)
            answers += [(_error_response(record, reason, "internal"), record) for record, _ in good]
    sends = []
    for response, dead in answers:
        sends.append(await producer.send(RECOMMENDATIONS, encode(response), key=response.request_id.encode()))
        if dead is not None:
            record = _dlq_record(dead, response.error.message if response.error else "")
            sends.append(await producer.send(dlq(REQUESTS), encode(record), key=dead.key))
    t3 = time.perf_counter()
    await asyncio.gather(*sends)  # answers and DLQ records durable before the offsets are committed
    serving.stages.record("response_delivery_per_batch", (time.perf_counter() - t3) * 1000)
    serving.errors += sum(1 for _, dead in answers if dead is not None)
    serving.requests += len(records)


request_agent = RequestAgent()


@app.task
async def _answer_requests() -> None:
    await request_agent.run()


@app.page("/status")
async def status_page(web: Any, request: Any) -> Any:
    return web.json({
        "ready": serving.ready.is_set(), "model_version": serving.version, "swaps": serving.swaps,
        "refused": serving.refused, "requests": serving.requests, "errors": serving.errors,
        "assigned_partitions": request_agent.assigned(),
        "stages_ms": serving.stages.snapshot(), "time": time.time(),
    })


register_live_pages(app, serving, settings)  # /live: figures over time and a user lookup
