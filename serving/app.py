"""The recommender, a Faust app: `streamrec worker --app recommender`
(or `faust -A serving.app worker`).

- a consumer group on `recommendation-requests` (:class:`RequestGroup`; instances share the
  load): micro-batches of requests → one online read of their users (profile + the history the stream
  worker just pushed) → towers + FAISS + rule filters → responses on `recommendations`, keyed by
  request_id. A malformed request gets an `error` response (and a DLQ record); nothing stops the group.
- every instance follows `item-updates` (stock, price) and `model-updates` on assigned partitions —
  each needs all of them — and checks LATEST every few seconds. A new model is loaded and indexed off
  the event loop and swapped in one assignment; one that fails to load is refused and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoints import CheckpointError, latest_version, version_folder
from streamrec import kafka_clients
from streamrec._exceptions import is_infrastructure
from streamrec.config import get_settings
from streamrec.faust_app import create_app
from streamrec.features import SERVING_FEATURES, FeatureClient
from streamrec.health import StallWatch, dlq_reason_kind
from streamrec.retry import retry
from streamrec.schemas import (
    DLQRecord,
    ErrorInfo,
    ItemUpdate,
    ModelUpdate,
    RecommendationRequest,
    RecommendationResponse,
    SchemaError,
    bounded_key,
    dead_letter,
    decode,
    encode,
    recover_ids,
)
from streamrec.topics import ITEM_UPDATES, MODEL_UPDATES, RECOMMENDATIONS, REQUESTS, dlq

from .filtering import load_filter_config
from .live import register_live_pages
from .model import load_checkpoint
from .recommend import Recommender, ServingBundle, load_catalog
from .stages import StageTimes

__all__ = ["app", "serving"]

log = logging.getLogger("streamrec.recommender")
settings = get_settings()
WINDOW = settings.time_window()
# The Faust app hosts the web pages, timers and tasks; requests go through RequestGroup's own consumer
# and producer (an idle fetch waits STREAMREC_REQUEST_MAX_WAIT_MS, 100 ms, for requests: a request that comes
# ends the wait at once; answers linger 1 ms).
app = create_app(settings, settings.recommender_app_id, settings.recommender_port)


class Serving:
    """What the recommender serves with; `bundle` is replaced whole on a hot swap."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.features: FeatureClient | None = None
        self.recommender: Recommender | None = None
        self.bundle: ServingBundle | None = None
        self.swaps = 0
        self.refused: Counter[str] = Counter()  # model updates refused, by reason (never their paths)
        self._refused_versions: set[str] = set()  # versions that failed to load: LATEST is not retried
        self.requests = 0
        self.errors = 0
        self.expired = 0
        self.stalled: list[str] = []
        # where a request's time goes: Kafka → request group, feature read, model + filters, response delivery
        self.stages = StageTimes()

    def refuse(self, reason: str, detail: str) -> None:
        self.refused[dlq_reason_kind(reason, self.refused)] += 1
        log.warning("refused a model update (%s): %s; still serving %s", reason, detail[:300], self.version)

    def failed_before(self, version: str) -> bool:
        return version in self._refused_versions

    async def swap_to(self, version: str) -> bool:
        """Load, index and swap in checkpoint ``version`` of STREAMREC_CHECKPOINT_DIR; False (old model
        kept) if it is not there or fails to load."""
        loop = asyncio.get_running_loop()
        try:
            folder = version_folder(settings.checkpoint_dir, version)
            bundle = await loop.run_in_executor(None, lambda: ServingBundle.build(load_checkpoint(folder)))
            if bundle.version != version:
                raise CheckpointError(f"its meta.json names version {str(bundle.version)[:40]!r}")
        except CheckpointError as exc:
            if len(self._refused_versions) < 1000:
                self._refused_versions.add(version[:40])
            self.refuse("unloadable", f"{version[:40]}: {exc}")
            return False
        self.bundle = bundle  # one assignment: a batch in flight keeps the bundle it started with
        self.swaps += 1
        log.info("serving model %s (%d items)", bundle.version, len(bundle.item_ids))
        return True

    @property
    def version(self) -> str | None:
        return self.bundle.version if self.bundle else None


serving = Serving()


FOLLOW_RETRY_S = 10.0  # a followed record failing on the infrastructure is tried this long, then passed over


async def _follow(consumer: Any, handle: Any, dlq_producer: Any = None) -> None:
    """Apply every record from where the consumer stands, forever (each instance sees them all).

    A record that cannot be used is logged and skipped (with ``dlq_producer``, also dead-lettered: the
    features worker already dead-letters bad item updates, nobody else reads model-updates); nothing a
    record holds stops the follower (:func:`apply_followed`).
    """

    async def send_dead_letter(topic: str, value: bytes, key: bytes | None) -> None:
        await dlq_producer.send_and_wait(topic, value, key=key)

    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    await apply_followed(record, handle, send_dead_letter if dlq_producer is not None else None)
    finally:
        await consumer.stop()
        if dlq_producer is not None:
            await dlq_producer.stop()


async def apply_followed(record: Any, handle: Callable[[bytes | None], Awaitable[None]],
                         send_dead_letter: Callable[[str, bytes, bytes | None], Awaitable[None]] | None = None
                         ) -> None:
    """``handle`` one followed record under the workers' error policy (streamrec/retry.py); never raises
    for the record. The infrastructure's failures are retried for FOLLOW_RETRY_S, then the record is passed
    over (LATEST, watched every few seconds, still brings a model announced meanwhile); the data's are
    logged and, with ``send_dead_letter``, dead-lettered, that send retried until the broker takes it."""
    try:
        await retry(functools.partial(handle, record.value), deadline=time.monotonic() + FOLLOW_RETRY_S)
        return
    except Exception as exc:  # noqa: BLE001 - a record's content never stops the follower
        if is_infrastructure(exc):
            log.warning("applying a record of %s failed for %.0f s (%r): passed over", record.topic,
                        FOLLOW_RETRY_S, exc)
            return
        reason = str(exc)
    log.warning("ignored a bad record on %s (partition %d, offset %d): %s", record.topic, record.partition,
                record.offset, reason[:300])
    if send_dead_letter is not None:
        dead = dead_letter(record.value, reason, record.topic, record.partition, record.offset,
                           settings.dlq_max_raw_bytes)
        await retry(functools.partial(send_dead_letter, dlq(record.topic), encode(dead), bounded_key(record.key)))


async def _apply_item_update(value: bytes | None) -> None:
    update = decode(ItemUpdate, value, WINDOW)
    if serving.recommender is not None:
        serving.recommender.catalog.update(update.item_id, stock=update.stock, price=update.price)


def _number(version: str | None) -> int:
    return int(version[1:]) if version and version[1:].isdigit() else -1


class RefusedUpdate(SchemaError):
    """A well-formed model update that is not trusted (dead-lettered, logged at WARNING)."""


async def _apply_model_update(value: bytes | None) -> None:
    """Trusted only inside STREAMREC_CHECKPOINT_DIR: the version names the folder, and a ``path`` that
    resolves anywhere else is refused. Announcements are keyed by version, so partitions may deliver v1
    after v2: only a newer version is taken (a rollback is done through LATEST, which _watch_latest
    follows either way)."""
    try:
        update = decode(ModelUpdate, value, WINDOW)
    except SchemaError as exc:
        serving.refuse("malformed", str(exc))
        raise
    try:
        folder = version_folder(settings.checkpoint_dir, update.version)
    except CheckpointError as exc:
        serving.refuse("bad_version", str(exc))
        raise RefusedUpdate(f"version: {exc}") from None
    if Path(update.path).resolve() != folder:
        serving.refuse("outside_checkpoint_dir", f"{update.version}: path does not name its folder")
        raise RefusedUpdate(f"path: must be the folder of {update.version} inside STREAMREC_CHECKPOINT_DIR")
    if _number(update.version) <= _number(serving.version):
        serving.refuse("not_newer", f"{update.version} is not newer than {serving.version}")
        raise RefusedUpdate(f"version: {update.version} is not newer than the model serving ({serving.version})")
    if not await serving.swap_to(update.version):
        raise RefusedUpdate(f"version: {update.version} could not be loaded")


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


@app.task
async def _start_serving() -> None:
    _one_compute_thread()
    loop = asyncio.get_running_loop()
    # before the catalog read: no update is missed
    item_consumer = await kafka_clients.consumer_at_end(settings, ITEM_UPDATES, fetch_max_wait_ms=50)
    model_consumer = await kafka_clients.consumer_at_end(settings, MODEL_UPDATES, fetch_max_wait_ms=50)
    serving.features = await loop.run_in_executor(None, FeatureClient, settings)
    catalog = await loop.run_in_executor(None, load_catalog, serving.features)
    rules = load_filter_config(settings.filters_config, categories=catalog.categories)
    serving.recommender = Recommender(catalog, rules)
    version = latest_version(settings.checkpoint_dir)
    if version is not None:
        await serving.swap_to(version)
    else:
        log.warning("no model in %s yet: answering with popularity", settings.checkpoint_dir)
    serving.ready.set()
    log.info("recommender ready: %d items, model %s", len(catalog), serving.version)
    app.add_future(_follow(item_consumer, _apply_item_update))
    dlq_producer = kafka_clients.aio_producer(settings, acks="all")
    await dlq_producer.start()
    app.add_future(_follow(model_consumer, _apply_model_update, dlq_producer=dlq_producer))


@app.timer(1.0)
async def _watch_stalls() -> None:
    stalled = request_group.watch_stalls()
    if stalled and not serving.stalled:
        log.error("stalled: committed offsets of %s have not moved for %.0f s while requests wait", stalled,
                  settings.stall_after_s)
    serving.stalled = stalled


@app.timer(3.0)
async def _watch_latest() -> None:
    """LATEST is the source of truth: a missed model-updates message still reaches every instance."""
    if not serving.ready.is_set():
        return
    try:
        version = latest_version(settings.checkpoint_dir)
    except CheckpointError as exc:
        log.warning("LATEST unreadable, still serving %s: %s", serving.version, exc)
        return
    if version is not None and version != serving.version and not serving.failed_before(version):
        await serving.swap_to(version)


def _error_response(record: Any, reason: str, code: str = "bad_request") -> RecommendationResponse:
    ids = recover_ids(record.value)
    return RecommendationResponse(request_id=ids.get("request_id", ""), user_id=ids.get("user_id"), items=[],
                                  error=ErrorInfo(code=code, message=reason.encode("utf-8", "replace")
                                                  .decode("utf-8")[:1024]))


class RequestGroup:
    """The request path on `recommendation-requests`: an aiokafka group member on the app's event loop,
    not a Faust agent. Measured on Apache Kafka at 500 req/s (`streamrec bench`, recommend), a bare Faust
    agent echo answers at round trip p50 72 / p99 346 ms where the same echo from an aiokafka group
    member answers at 34 / 115 ms: the Faust agent alone would spend the whole latency budget.

    Faust hands an agent its events one by one through its consumer thread; on 2 cores that path alone
    saturated below 400 requests/s (requests queued for seconds before the agent saw them, while the
    agent itself was idle half the time). A plain group consumer's ``getmany`` gives every request
    already fetched in one call: that is the micro-batch, with no extra wait. Offsets are committed only
    after a batch's responses and DLQ records are delivered (at most every COMMIT_EVERY_S, and whenever the
    group settles); a rebalance waits for the batch in hand and commits.

    Batches are pipelined: while batch N's answers travel to the broker and its offsets are committed (a
    task, :meth:`_complete`), batch N+1 is read from Feast, ranked and its answers sent. Each batch commits
    only after the one before it (offsets move in order), and at most MAX_IN_FLIGHT batches are
    unacknowledged. (Sending N+1's answers only once N was complete held every batch for a produce round
    trip the loop could not serve while it ranked: delivery p50 7 ms, for a produce that takes ~2.)

    Records are taken from the consumer by a task of their own (:meth:`_fetch`) into a queue, as soon as
    they come, and each batch is what the queue holds. aiokafka fetches no partition of a node while any
    of its records wait to be taken: with the batch loop taking them, a request that came while a batch
    was worked was fetched only when the next batch was taken, and served one batch later still (Kafka →
    request group p50 21 ms at 500/s, for ~8 ms of work a batch). Only memory moves ahead of the commits:
    a revoked partition's queued records are dropped (its new owner reads them from the committed offset),
    and the queue holds at most QUEUE_BATCHES batches (then the fetching waits: back-pressure).
    """

    def __init__(self) -> None:
        self.consumer: Any = None
        self.producer: Any = None
        self.busy = asyncio.Lock()  # held while a batch is in hand; a rebalance waits for it
        self.in_flight: collections.deque[asyncio.Future[None]] = collections.deque()  # batches' delivery + commit
        self.queue: collections.deque[Any] = collections.deque()  # records fetched, not yet taken
        self.arrived = asyncio.Event()  # set when the queue gains records
        self.room = asyncio.Event()  # set when the queue has room
        self.committed: dict[Any, int] = {}  # what this member committed, for the stall watch
        self.to_commit: dict[Any, int] = {}  # offsets whose answers are durable, not yet committed
        self.last_commit = 0.0  # time.monotonic() of the last commit
        self.stall_watch = StallWatch(settings.stall_after_s)

    def watch_stalls(self) -> list[str]:
        """Partitions whose committed offset stood still for STREAMREC_STALL_AFTER_S while requests wait."""
        if self.consumer is None:
            return []
        positions = {tp: (self.committed.get(tp), self.consumer.highwater(tp)) for tp in self.consumer.assignment()}
        return sorted(f"{tp.topic}/{tp.partition}" for tp in self.stall_watch.update(positions, time.monotonic()))

    def assigned(self) -> int:
        return len(self.consumer.assignment()) if self.consumer is not None else 0

    async def run(self) -> None:
        from aiokafka.abc import ConsumerRebalanceListener

        group = self

        class WaitForBatch(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                async with group.busy:  # the batch in hand finishes and commits first
                    await group.settle()
                    group.drop_queued()

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("requests: assigned %s", sorted(tp.partition for tp in assigned))

        self.producer = kafka_clients.aio_producer(settings, acks="all", linger_ms=1)
        # Faust's settings for the same reasons (streamrec/faust_app.py): seconds, not a minute, to join
        self.consumer = kafka_clients.aio_consumer(
            settings, group_id=f"{settings.recommender_app_id}-requests", enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=settings.request_max_wait_ms,
            max_poll_records=settings.request_batch,
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000, rebalance_timeout_ms=6_000)
        await serving.ready.wait()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([REQUESTS], listener=WaitForBatch())
        fetcher = asyncio.ensure_future(self._fetch())
        try:
            while True:
                records = await self._take(fetcher, 0.5)
                if not records:
                    await self.settle()
                    continue
                async with self.busy:
                    delivery = None  # none: _complete answers the batch the careful way
                    try:
                        answers = await prepare_answers(records)  # overlaps the last batches' delivery
                    except Exception as exc:  # noqa: BLE001 - the request path never dies on a batch
                        log.warning("answering %d requests failed (%r): answering them again", len(records), exc)
                        answers = None
                    if answers is not None:
                        try:
                            delivery = await send_answers(answers, self.producer)
                        except Exception as exc:  # noqa: BLE001
                            log.warning("sending %d answers failed (%r): answering them again", len(records), exc)
                    await self._room_in_flight()
                    # each batch commits after the one before it: offsets move in order
                    self.in_flight.append(asyncio.ensure_future(
                        self._complete(records, delivery, self.in_flight[-1] if self.in_flight else None)))
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
            await self.settle()
            await asyncio.sleep(0)  # see streamrec/offsets.py: aiokafka's stop() right after start()
            await self.consumer.stop()
            await self.producer.stop()

    async def _fetch(self) -> None:
        """Move records from the consumer to the queue as they come, while there is room (forever)."""
        limit = settings.request_batch * QUEUE_BATCHES
        while True:
            while len(self.queue) >= limit:
                self.room.clear()
                await self.room.wait()
            batches = await self.consumer.getmany(timeout_ms=500, max_records=limit - len(self.queue))
            assigned = self.consumer.assignment()  # a rebalance may have run between the fetch and now
            for tp, records in batches.items():
                if tp in assigned:
                    self.queue.extend(records)
            if self.queue:
                self.arrived.set()

    async def _take(self, fetcher: asyncio.Future[None], timeout_s: float) -> list[Any]:
        """Up to STREAMREC_REQUEST_BATCH queued records, in the order they came; waits up to ``timeout_s``
        for one, and returns [] if none came. Raises what stopped ``fetcher``."""
        if not self.queue:
            self.arrived.clear()
            waiter = asyncio.ensure_future(self.arrived.wait())
            await asyncio.wait({waiter, fetcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if fetcher.done():
                fetcher.result()  # its failure, as if the loop had fetched itself
                raise RuntimeError("the request fetcher stopped")
        records = [self.queue.popleft() for _ in range(min(len(self.queue), settings.request_batch))]
        self.room.set()
        return records

    def drop_queued(self) -> None:
        """Forget records fetched but not taken (their partitions are being revoked: after the rebalance,
        whoever owns them reads from the committed offset)."""
        self.queue.clear()
        self.room.set()

    async def settle(self) -> None:
        """Wait until every batch sent is delivered and committed (never raises)."""
        if self.in_flight:
            await asyncio.shield(self.in_flight[-1])  # it waited for the ones before it
            self.in_flight.clear()
        try:
            await self._flush_commits()
        except Exception as exc:  # noqa: BLE001 - the broker's: the next flush commits these offsets or later ones
            log.warning("requests: committing offsets failed (%r)", exc)

    async def _room_in_flight(self) -> None:
        """Forget the completed batches; wait while MAX_IN_FLIGHT are not."""
        while self.in_flight and self.in_flight[0].done():
            self.in_flight.popleft()
        while len(self.in_flight) >= MAX_IN_FLIGHT:
            await asyncio.shield(self.in_flight.popleft())

    async def _complete(self, records: Sequence[Any], delivery: Delivery | None,
                        before: asyncio.Future[None] | None) -> None:
        """The batch's answers delivered (or, if that failed, answered again), then, once the batch ``before``
        it is complete, its offsets committed. Never raises: a batch's failure is handled here, not by
        whoever awaits it."""
        try:
            if delivery is not None:
                try:
                    await delivery.wait()
                except Exception as exc:  # noqa: BLE001 - the broker: answered again below, at least once
                    log.warning("delivering %d answers failed (%r): answering them again", len(records), exc)
                    delivery = None
            if delivery is None:
                await self._answer(records)
            if before is not None:
                await asyncio.shield(before)
            await self._commit(records)
        except Exception as exc:  # noqa: BLE001 - the request path never dies on a batch
            log.error("completing a batch of %d requests failed: %r", len(records), exc)

    async def _answer(self, records: Sequence[Any]) -> None:
        """Every request answered before the offsets move, the careful way (a batch whose pipelined send
        failed). Only a failed delivery (the broker) repeats the batch, which may answer a request twice
        (at-least-once), never zero times; a failure of any other kind is narrowed to its request, which
        gets an `internal` answer (or, if even that cannot be sent, is logged and passed over: no record
        holds the partition)."""
        def note(exc: BaseException, delay: float) -> None:
            log.warning("answering a batch of %d requests failed (%r): trying again in %.1f s", len(records), exc,
                        delay)

        try:
            await retry(functools.partial(process_requests, records, self.producer), on_retry=note, first_s=0.5)
            return
        except Exception:  # noqa: BLE001, S110 - the data's: each request is answered on its own below
            pass
        for record in records:
            try:
                await process_requests([record], self.producer)
            except Exception as exc:  # noqa: BLE001
                log.error("request at %s/%d offset %d failed on its own: %r", record.topic, record.partition,
                          record.offset, exc)
                try:
                    answer = _error_response(record, f"the recommender could not answer: {exc!r}", "internal")
                    await self.producer.send_and_wait(RECOMMENDATIONS, encode(answer),
                                                      key=answer.request_id.encode())
                except Exception as again:  # noqa: BLE001 - passed over, never retried for its content
                    log.error("could not even answer it with an error (%r): passing over it", again)

    async def _commit(self, records: Sequence[Any]) -> None:
        """Mark the batch's offsets committable (its answers are durable, and so are the batches' before it);
        commit what is marked once COMMIT_EVERY_S has passed since the last commit."""
        from aiokafka import TopicPartition

        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self.to_commit[tp] = max(self.to_commit.get(tp, -1), r.offset + 1)
        if time.monotonic() - self.last_commit >= COMMIT_EVERY_S:
            await self._flush_commits()

    async def _flush_commits(self) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError

        if not self.to_commit:
            return
        offsets, self.to_commit = self.to_commit, {}
        self.last_commit = time.monotonic()
        try:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # the partition moved on: its new owner answers
            log.warning("requests: commit after a rebalance failed (%s); those may be answered twice", exc)


def _dlq_record(record: Any, reason: str) -> DLQRecord:
    return dead_letter(record.value, reason, record.topic, record.partition, record.offset, settings.dlq_max_raw_bytes)


QUEUE_BATCHES = 4  # records fetched ahead of the batch loop, in batches of STREAMREC_REQUEST_BATCH
MAX_IN_FLIGHT = 4  # batches whose answers are sent and not yet acknowledged and committed
# Offsets are committed at most this often (and whenever the group settles: idle, a rebalance, a stop): a
# commit per batch was ~170 OffsetCommit requests a second at 500 requests/s. What a crash can repeat grows by
# as much: requests answered in the last COMMIT_EVERY_S are answered again by the partition's next owner.
COMMIT_EVERY_S = 0.1

SERVE_WITHIN_S = 5.0  # a batch that cannot be served by then (Redis down...) is answered with errors
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 2.0  # its retries: 0.5, 1, 2, 2... s apart, within SERVE_WITHIN_S


async def _serve(good: Sequence[tuple[Any, RecommendationRequest]]) -> list[RecommendationResponse]:
    """Features → model → filters for the well-formed requests of a batch. A failure of the
    infrastructure (Redis) is tried again until ``SERVE_WITHIN_S`` is spent (a failing Feast read can
    itself take seconds: redis-py's own retries); any other failure is raised at once."""
    requests = [r for _, r in good]
    received = [record.timestamp / 1000 for record, _ in good]
    bundle = serving.bundle  # this batch finishes on this model whatever happens meanwhile
    users = list(dict.fromkeys(r.user_id for r in requests))

    async def once() -> list[RecommendationResponse]:
        t1 = time.perf_counter()
        rows = await serving.features.users_features_async(users, SERVING_FEATURES)
        t2 = time.perf_counter()
        serving.stages.record("feature_read_per_batch", (t2 - t1) * 1000)
        by_user = dict(zip(users, rows, strict=True))
        # on the loop, not in a thread: a few ms of numpy that would hold the GIL anyway, and a thread hop
        # made every batch wait for the GIL to come back (up to the 5 ms switch interval, twice)
        responses = serving.recommender.recommend(requests, [by_user[r.user_id] for r in requests], bundle,
                                                  received=received)
        serving.stages.record("model_and_filters_per_batch", (time.perf_counter() - t2) * 1000)
        serving.stages.record("batch_size", len(requests))
        return responses

    deadline = time.monotonic() + SERVE_WITHIN_S

    async def attempt() -> list[RecommendationResponse]:
        return await asyncio.wait_for(once(), max(0.1, deadline - time.monotonic()))  # a timeout: retried

    def note(exc: BaseException, delay: float) -> None:
        log.warning("serving %d requests failed (%r): retrying in %.1f s", len(requests), exc, delay)

    return await retry(attempt, on_retry=note, first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S, deadline=deadline)


async def _serve_isolated(good: Sequence[tuple[Any, RecommendationRequest]]
                          ) -> list[tuple[RecommendationResponse, Any]]:
    """Answers for ``good``: (response, record to dead-letter or None). A batch that fails for a reason
    other than the infrastructure is served request by request, so one request that cannot be served
    gets its own `internal` answer and the others theirs."""
    try:
        return [(response, None) for response in await _serve(good)]
    except Exception as exc:  # noqa: BLE001 - answered, not dropped
        if len(good) > 1 and not is_infrastructure(exc):  # a timeout is an OSError: the infrastructure's
            log.warning("a batch of %d requests failed (%r): serving them one by one", len(good), exc)
            answers = []
            for one in good:
                answers += await _serve_isolated([one])
            return answers
        reason = f"the recommender could not serve this request: {exc!r}"
        log.error("answering %d requests with errors: %s", len(good), reason[:300])
        return [(_error_response(record, reason, "internal"), record) for record, _ in good]


async def prepare_answers(records: Sequence[Any]) -> list[tuple[RecommendationResponse, Any]]:
    """One answer per record, in order: (response, the record to dead-letter or None). Never raises for a
    record's content.

    A malformed request gets a `bad_request` answer, one older than STREAMREC_REQUEST_DEADLINE_S when
    read an `expired` answer (no work done: under a flood, stale requests are shed), one that cannot be
    served an `internal` answer; malformed and unservable ones also a DLQ record.
    """
    t0 = time.time()
    deadline_ms = settings.request_deadline_s * 1000
    for record in records:
        serving.stages.record("kafka_to_agent", t0 * 1000 - record.timestamp)
    good: list[tuple[Any, RecommendationRequest]] = []
    answers: list[tuple[RecommendationResponse, Any]] = []
    for record in records:
        try:
            request = decode(RecommendationRequest, record.value, WINDOW)
        except SchemaError as exc:
            answers.append((_error_response(record, str(exc)), record))
            continue
        age_ms = t0 * 1000 - record.timestamp
        if age_ms > deadline_ms:
            serving.expired += 1
            answers.append((RecommendationResponse(
                request_id=request.request_id, user_id=request.user_id, items=[],
                error=ErrorInfo(code="expired", message=f"the request waited {age_ms:.0f} ms, more than the "
                                f"{deadline_ms:.0f} ms deadline (STREAMREC_REQUEST_DEADLINE_S)")), None))
            continue
        good.append((record, request))
    if good:
        answers += await _serve_isolated(good)
    return answers


@dataclass
class Delivery:
    """Answers handed to the producer; :meth:`wait` returns once the broker has them all."""

    sends: list[Any]
    answers: int
    errors: int  # answers that came with a DLQ record

    async def wait(self) -> None:
        t0 = time.perf_counter()
        await asyncio.gather(*self.sends)
        serving.stages.record("response_delivery_per_batch", (time.perf_counter() - t0) * 1000)
        serving.errors += self.errors
        serving.requests += self.answers


async def send_answers(answers: Sequence[tuple[RecommendationResponse, Any]], producer: Any) -> Delivery:
    """Hand the answers (and their DLQ records) to the producer, without waiting for the broker."""
    sends = []
    for response, dead in answers:
        sends.append(await producer.send(RECOMMENDATIONS, encode(response), key=response.request_id.encode()))
        if dead is not None:
            record = _dlq_record(dead, response.error.message if response.error else "")
            sends.append(await producer.send(dlq(REQUESTS), encode(record), key=bounded_key(dead.key)))
    return Delivery(sends, len(answers), sum(1 for _, dead in answers if dead is not None))


async def process_requests(records: Sequence[Any], producer: Any) -> None:
    """Answer a micro-batch of requests (:func:`prepare_answers`); every record gets exactly one response,
    delivered (answers and DLQ records durable) on return."""
    await (await send_answers(await prepare_answers(records), producer)).wait()


request_group = RequestGroup()


@app.task
async def _answer_requests() -> None:
    await request_group.run()


@app.page("/status")
async def status_page(web: Any, request: Any) -> Any:
    return web.json({
        "ready": serving.ready.is_set() and not serving.stalled, "stalled": serving.stalled,
        "model_version": serving.version, "swaps": serving.swaps,
        "refused": sum(serving.refused.values()), "refused_by_reason": dict(serving.refused),
        "requests": serving.requests, "errors": serving.errors, "expired": serving.expired,
        "assigned_partitions": request_group.assigned(),
        "stages_ms": serving.stages.snapshot(), "time": time.time(),
        "log_level": logging.getLevelName(logging.root.level),  # see streamrec/faust_app.py _restore_root_log_level
        "compute_threads": _compute_threads(),  # see _one_compute_thread
    })


register_live_pages(app, serving, settings)  # /live: figures over time and a user lookup
