"""Round trips through the session's real broker and Redis, with each client the project uses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.schemas import Interaction, decode, encode, utc_now


def _event(i: int) -> Interaction:
    return Interaction(event_id=f"e{i}", user_id=f"U{i % 3}", item_id=f"I{i}", interaction_type="cart",
                       quantity=1 + i % 4, timestamp=utc_now())


@pytest.mark.smoke
def test_kafka_python_round_trip(stack: Settings, topic_factory: Callable[..., str]) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = topic_factory(partitions=1)
    producer = KafkaProducer(acks="all", **kafka_clients.python_config(stack))
    sent = [_event(i) for i in range(20)]
    for event in sent:
        producer.send(topic, key=event.user_id.encode(), value=encode(event))
    producer.flush(10)
    producer.close()

    consumer = KafkaConsumer(consumer_timeout_ms=5000, **kafka_clients.python_config(stack))
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    received = [(r.key.decode(), decode(Interaction, r.value)) for r in consumer]
    consumer.close()
    assert received == [(e.user_id, e) for e in sent]


@pytest.mark.smoke
def test_aiokafka_round_trip(stack: Settings, topic_factory: Callable[..., str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = topic_factory(partitions=2)

    async def main() -> list[tuple[int, Interaction]]:
        producer = AIOKafkaProducer(acks="all", **kafka_clients.aio_config(stack))
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, encode(_event(i)), key=b"same-key")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**kafka_clients.aio_config(stack), auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
            got: list[tuple[int, Interaction]] = []
            while len(got) < 10:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=10)
                got += [(r.partition, decode(Interaction, r.value)) for rs in batch.values() for r in rs]
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(main())
    assert [e.event_id for _, e in got] == [f"e{i}" for i in range(10)]  # one key: one partition, in order
    assert len({p for p, _ in got}) == 1


def test_redis_round_trip(stack: Settings) -> None:
    import redis

    client = redis.Redis.from_url(stack.redis)
    key = f"streamrec-test:{uuid.uuid4().hex}"
    try:
        with client.pipeline() as pipe:
            pipe.hset(key, mapping={"a": "1", "b": "two"}).expire(key, 60)
            pipe.execute()
        assert client.hgetall(key) == {b"a": b"1", b"b": b"two"}
        assert 0 < client.ttl(key) <= 60
    finally:
        client.delete(key)
        client.close()
