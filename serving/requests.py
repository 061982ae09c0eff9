"""The request path on `recommendation-requests`: a consumer group member that answers micro-batches of
requests on `recommendations`, keyed by request_id (:class:`RequestGroup`; instances share the load).

A batch: one online read of its users (profile + the history the stream worker just pushed) → towers +
index + rule filters → one answer per request, sent at once → delivered → offsets committed.

**One failure path.** :func:`prepare_answers` never fails a record: a malformed request gets a
`bad_request` answer, a stale one `expired`; the rest are served with the infrastructure's failures
retried until SERVE_WITHIN_S (Redis away), and a batch that still fails is served once more request by
request, each alone, so that only the request that cannot be served gets an `internal` answer (malformed
and unservable ones also a DLQ record). Answers are prepared once: a delivery that fails sends the same
answers again (at least once), it never serves the batch again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamrec import kafka_clients
from streamrec._exceptions import is_infrastructure
from streamrec.config import Settings
from streamrec.features import SERVING_FEATURES
from streamrec.health import StallWatch
from streamrec.retry import retry
from streamrec.schemas import (
    DLQRecord,
    ErrorInfo,
    RecommendationRequest,
    RecommendationResponse,
    SchemaError,
    bounded_key,
    dead_letter,
    decode,
    encode,
    recover_ids,
)
from streamrec.topics import RECOMMENDATIONS, REQUESTS, dlq

from .updates import Serving

__all__ = ["RequestGroup", "prepare_answers", "send_answers", "Delivery", "SERVE_WITHIN_S"]

log = logging.getLogger("streamrec.recommender")

QUEUE_BATCHES = 4  # records fetched ahead of the batch loop, in batches of STREAMREC_REQUEST_BATCH
MAX_IN_FLIGHT = 4  # batches whose answers are sent and not yet acknowledged and committed
# Offsets are committed at most this often (and whenever the group settles: idle, a rebalance, a stop): a
# commit per batch was ~170 OffsetCommit requests a second at 500 requests/s. What a crash can repeat grows by
# as much: requests answered in the last COMMIT_EVERY_S are answered again by the partition's next owner.
COMMIT_EVERY_S = 0.1
SERVE_WITHIN_S = 5.0  # a batch that cannot be served by then (Redis down...) is answered with errors
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 2.0  # its retries: 0.5, 1, 2, 2... s apart, within SERVE_WITHIN_S

Answer = tuple[RecommendationResponse, Any]  # the response, and the record to dead-letter with it (or None)


def error_response(record: Any, reason: str, code: str = "bad_request") -> RecommendationResponse:
    ids = recover_ids(record.value)
    return RecommendationResponse(request_id=ids.get("request_id", ""), user_id=ids.get("user_id"), items=[],
                                  error=ErrorInfo(code=code, message=reason.encode("utf-8", "replace")
                                                  .decode("utf-8")[:1024]))


def internal_errors(records: Sequence[Any], exc: BaseException) -> list[Answer]:
    reason = f"the recommender could not serve this request: {exc!r}"
    return [(error_response(record, reason, "internal"), record) for record in records]


async def _serve(serving: Serving, good: Sequence[tuple[Any, RecommendationRequest]]) -> list[RecommendationResponse]:
    """Features → model → filters for well-formed requests, once."""
    requests = [r for _, r in good]
    received = [record.timestamp / 1000 for record, _ in good]
    bundle = serving.bundle  # this batch finishes on this model whatever happens meanwhile
    users = list(dict.fromkeys(r.user_id for r in requests))
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


async def _served(serving: Serving, good: Sequence[tuple[Any, RecommendationRequest]]) -> list[Answer]:
    """Answers for well-formed requests: the batch, its infrastructure's failures retried within
    SERVE_WITHIN_S; if it still fails, each request once on its own (errors only for those that fail)."""
    deadline = time.monotonic() + SERVE_WITHIN_S

    async def attempt() -> list[RecommendationResponse]:  # a timeout is an OSError: retried
        return await asyncio.wait_for(_serve(serving, good), max(0.1, deadline - time.monotonic()))

    def note(exc: BaseException, delay: float) -> None:
        log.warning("serving %d requests failed (%r): retrying in %.1f s", len(good), exc, delay)

    try:
        return [(r, None) for r in await retry(attempt, on_retry=note, first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S,
                                              deadline=deadline)]
    except Exception as exc:  # noqa: BLE001 - answered, never dropped
        if is_infrastructure(exc) or len(good) == 1:  # nothing one request alone would change
            log.error("answering %d requests with errors: %r", len(good), exc)
            return internal_errors([record for record, _ in good], exc)
        log.warning("a batch of %d requests failed (%r): serving each once on its own", len(good), exc)
    answers: list[Answer] = []
    for one in good:
        try:
            answers += [(r, None) for r in await asyncio.wait_for(_serve(serving, [one]), SERVE_WITHIN_S)]
        except Exception as exc:  # noqa: BLE001
            log.error("request at %s/%d offset %d failed on its own: %r", one[0].topic, one[0].partition,
                      one[0].offset, exc)
            answers += internal_errors([one[0]], exc)
    return answers


async def prepare_answers(serving: Serving, records: Sequence[Any]) -> list[Answer]:
    """One answer per record, in order; never raises for a record's content (see the module's text).
    A request older than STREAMREC_REQUEST_DEADLINE_S when read is answered `expired` with no work done:
    under a flood, stale requests are shed."""
    t0 = time.time()
    deadline_ms = serving.settings.request_deadline_s * 1000
    good: list[tuple[Any, RecommendationRequest]] = []
    answers: list[Answer] = []
    for record in records:
        serving.stages.record("kafka_to_agent", t0 * 1000 - record.timestamp)
        try:
            request = decode(RecommendationRequest, record.value, serving.window)
        except SchemaError as exc:
            answers.append((error_response(record, str(exc)), record))
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
        answers += await _served(serving, good)
    return answers


@dataclass
class Delivery:
    """Answers handed to the producer; :meth:`wait` returns once the broker has them all."""

    serving: Serving
    sends: list[Any]
    answers: int
    errors: int  # answers that came with a DLQ record

    async def wait(self) -> None:
        t0 = time.perf_counter()
        await asyncio.gather(*self.sends)
        self.serving.stages.record("response_delivery_per_batch", (time.perf_counter() - t0) * 1000)
        self.serving.errors += self.errors
        self.serving.requests += self.answers


async def send_answers(serving: Serving, answers: Sequence[Answer], producer: Any) -> Delivery:
    """Hand the answers (and their DLQ records) to the producer, without waiting for the broker."""
    sends = []
    for response, dead in answers:
        sends.append(await producer.send(RECOMMENDATIONS, encode(response), key=response.request_id.encode()))
        if dead is not None:
            record = _dlq_record(serving.settings, dead, response.error.message if response.error else "")
            sends.append(await producer.send(dlq(REQUESTS), encode(record), key=bounded_key(dead.key)))
    return Delivery(serving, sends, len(answers), sum(1 for _, dead in answers if dead is not None))


def _dlq_record(settings: Settings, record: Any, reason: str) -> DLQRecord:
    return dead_letter(record.value, reason, record.topic, record.partition, record.offset, settings.dlq_max_raw_bytes)


class RequestGroup:
    """An aiokafka group member on the app's event loop, not a Faust agent. Measured on Apache Kafka at 500
    req/s (`streamrec bench`, recommend), a bare Faust agent echo answers at round trip p50 72 / p99 346 ms
    where the same echo from an aiokafka group member answers at 34 / 115 ms; Faust hands an agent its
    events one by one through its consumer thread, and on 2 cores that path alone saturated below 400/s.

    Records are taken from the consumer by a task of their own (:meth:`_fetch`) into a queue as soon as they
    come, and each batch is what the queue holds (up to STREAMREC_REQUEST_BATCH). aiokafka fetches no
    partition of a node while any of its records wait to be taken: with the batch loop taking them, a
    request that came while a batch was worked was served one batch later still. Only memory moves ahead of
    the commits: a revoked partition's queued records are dropped (its new owner reads them from the
    committed offset), and the queue holds at most QUEUE_BATCHES batches (then fetching waits).

    Batches are pipelined: while batch N's answers travel to the broker and its offsets are committed (a
    task, :meth:`_complete`), batch N+1 is read, ranked and its answers sent. Each batch commits only after
    the one before it (offsets move in order), at most MAX_IN_FLIGHT batches are unacknowledged, and offsets
    are committed at most every COMMIT_EVERY_S and whenever the group settles; a rebalance waits for the
    batch in hand and commits.
    """

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.settings = serving.settings
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
        self.stall_watch = StallWatch(self.settings.stall_after_s)

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

        group, settings = self, self.settings

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
        await self.serving.ready.wait()
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
                    await self._hand_over(records)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
            await self.settle()
            await asyncio.sleep(0)  # see streamrec/offsets.py: aiokafka's stop() right after start()
            await self.consumer.stop()
            await self.producer.stop()
            if self.serving.features is not None:  # the asyncio Redis client the feature reads opened, on its loop
                await self.serving.features.aclose()

    async def _hand_over(self, records: Sequence[Any]) -> None:
        """Prepare a batch's answers and send them; its delivery and commit go on in a task."""
        try:
            answers = await prepare_answers(self.serving, records)  # overlaps the last batches' delivery
        except Exception as exc:  # noqa: BLE001 - a bug outside any one request: every request still answered
            log.error("preparing %d answers failed: %r", len(records), exc, exc_info=exc)
            answers = internal_errors(records, exc)
        delivery = None  # none: _complete sends these same answers again
        try:
            delivery = await send_answers(self.serving, answers, self.producer)
        except Exception as exc:  # noqa: BLE001
            log.warning("sending %d answers failed (%r): sending them again", len(answers), exc)
        await self._room_in_flight()
        # each batch commits after the one before it: offsets move in order
        self.in_flight.append(asyncio.ensure_future(
            self._complete(records, answers, delivery, self.in_flight[-1] if self.in_flight else None)))

    async def _fetch(self) -> None:
        """Move records from the consumer to the queue as they come, while there is room (forever)."""
        limit = self.settings.request_batch * QUEUE_BATCHES
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
        records = [self.queue.popleft() for _ in range(min(len(self.queue), self.settings.request_batch))]
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

    async def _complete(self, records: Sequence[Any], answers: Sequence[Answer], delivery: Delivery | None,
                        before: asyncio.Future[None] | None) -> None:
        """The batch's answers delivered (if that failed, the same answers sent again), then, once the batch
        ``before`` it is complete, its offsets committed. Never raises: a batch's failure is handled here."""
        try:
            if delivery is not None:
                try:
                    await delivery.wait()
                except Exception as exc:  # noqa: BLE001 - the broker: sent again below, at least once
                    log.warning("delivering %d answers failed (%r): sending them again", len(answers), exc)
                    delivery = None
            if delivery is None:
                await self._deliver_again(answers)
            if before is not None:
                await asyncio.shield(before)
            await self._commit(records)
        except Exception as exc:  # noqa: BLE001 - the request path never dies on a batch
            log.error("completing a batch of %d requests failed: %r", len(records), exc)

    async def _deliver_again(self, answers: Sequence[Answer]) -> None:
        """Send prepared answers until the broker has them (the broker's failures retried: a request may be
        answered twice, never zero times). An answer the broker refuses for itself is replaced by an
        `internal` one; if even that is refused, it is logged and passed over: no record holds the partition."""
        async def deliver(some: Sequence[Answer]) -> None:
            await (await send_answers(self.serving, some, self.producer)).wait()

        def note(exc: BaseException, delay: float) -> None:
            log.warning("sending %d answers failed (%r): again in %.1f s", len(answers), exc, delay)

        try:
            await retry(lambda: deliver(answers), on_retry=note, first_s=RETRY_FIRST_S)
            return
        except Exception:  # noqa: BLE001, S110 - refused for its content: each answer alone below
            pass
        for response, dead in answers:
            try:
                await deliver([(response, dead)])
                continue
            except Exception as exc:  # noqa: BLE001 - never retried for its content
                log.error("the broker refused the answer to %r (%r): answering with an error", response.request_id,
                          exc)
                reason = f"the recommender could not deliver its answer: {exc!r}"
            try:
                error = ErrorInfo(code="internal", message=reason[:1024])
                await deliver([(RecommendationResponse(request_id=response.request_id, user_id=response.user_id,
                                                       items=[], error=error), None)])
            except Exception as again:  # noqa: BLE001 - passed over
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
