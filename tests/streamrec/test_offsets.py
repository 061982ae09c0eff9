"""End offsets on the real embedded broker: records produced as one batch must all count.

The embedded Tansu answers ListOffsets with the last batch's base offset + 1; a table recovery that
trusted it skipped changelog records (issue #4). These tests fail if our end offsets stop short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.offsets import end_offsets, end_offsets_sync

pytestmark = pytest.mark.stack


async def _produce_batches(settings: Settings, topic: str, sizes: list[int]) -> list[int]:
    """Produce each size as one batch (sent together, then flushed); return the last offset of each."""
    producer = AIOKafkaProducer(**kafka_clients.aio_config(settings), acks="all", linger_ms=50)
    await producer.start()
    try:
        last = []
        for size in sizes:
            futures = [await producer.send(topic, b"x", partition=0) for _ in range(size)]
            last.append(max([(await f).offset for f in futures]))
        return last
    finally:
        await producer.stop()


@pytest.mark.parametrize("sizes", [[1], [5], [3, 1, 7]])
def test_end_offsets_count_every_record_of_the_last_batch(stack: Settings, topic_factory: Callable[..., str],
                                                          sizes: list[int]) -> None:
    topic = topic_factory("offsets")
    last = asyncio.run(_produce_batches(stack, topic, sizes))
    tp = TopicPartition(topic, 0)
    assert last[-1] == sum(sizes) - 1
    check = stack.on_tansu  # what the product passes: the fetch check only on Tansu
    assert asyncio.run(end_offsets(kafka_clients.aio_config(stack), [tp], fetch_check=check)) == {tp: sum(sizes)}
    assert end_offsets_sync(kafka_clients.python_config(stack), [tp], fetch_check=check) == {tp: sum(sizes)}


def test_an_empty_partition_ends_at_zero(stack: Settings, topic_factory: Callable[..., str]) -> None:
    tp = TopicPartition(topic_factory("offsets", partitions=2), 1)
    assert asyncio.run(end_offsets(kafka_clients.aio_config(stack), [tp])) == {tp: 0}
    assert end_offsets_sync(kafka_clients.python_config(stack), [tp]) == {tp: 0}


def test_aiokafka_stop_right_after_start_needs_one_loop_turn(stack: Settings) -> None:
    """Why ``end_offsets`` sleeps once before ``stop()``: aiokafka 0.14.0 cancels a task that start()
    created and, cancelled before its first step, that task re-raises CancelledError out of stop() (seen
    on Tansu and on Apache Kafka 4.1.2 alike: a client bug, not a broker's). When this starts failing,
    aiokafka fixed it and the sleep can go."""
    from aiokafka import AIOKafkaConsumer

    async def start_stop(turn: bool) -> bool:
        consumer = AIOKafkaConsumer(**kafka_clients.aio_config(stack), enable_auto_commit=False, group_id=None)
        await consumer.start()
        if turn:
            await asyncio.sleep(0)
        try:
            await consumer.stop()
            return True
        except asyncio.CancelledError:
            return False

    assert asyncio.run(start_stop(turn=False)) is False
    assert asyncio.run(start_stop(turn=True)) is True


def test_consumer_at_end_holds_every_partition_and_reads_only_what_comes_next(
        stack: Settings, topic_factory: Callable[..., str]) -> None:
    """On Apache Kafka it once held no partition at all (aiokafka's topics() fills no metadata cache)."""
    from streamrec.offsets import consumer_at_end

    topic = topic_factory("at-end", partitions=3)

    async def main() -> list[bytes]:
        producer = AIOKafkaProducer(**kafka_clients.aio_config(stack), acks="all")
        await producer.start()
        try:
            for p in range(3):
                await producer.send_and_wait(topic, b"old", partition=p)
            consumer = await consumer_at_end(kafka_clients.aio_config(stack), topic, fetch_check=stack.on_tansu)
            try:
                assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2}
                for p in range(3):
                    await producer.send_and_wait(topic, b"new", partition=p)
                got: list[bytes] = []
                for _ in range(50):
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        got += [r.value for r in records]
                    if len(got) >= 3:
                        break
                return got
            finally:
                await asyncio.sleep(0)
                await consumer.stop()
        finally:
            await producer.stop()

    assert asyncio.run(main()) == [b"new"] * 3
