"""The recommender's followers (item-updates, model-updates) under the workers' one error policy: a
record's failure never stops the follower, a broker blip neither loses the dead letter nor kills it.
Pure: the record is plain data and the handler and the dead-letter send are plain coroutines."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from streamrec.schemas import SchemaError


@dataclass(frozen=True)
class Record:
    topic: str = "model-updates"
    partition: int = 0
    offset: int = 7
    key: bytes | None = b"v9"
    value: bytes | None = b'{"version": "v9"}'


@pytest.fixture(scope="module")
def follow() -> Any:
    from serving import updates

    return updates


def _failing(times: int, exc: BaseException, calls: list[Any]) -> Any:
    async def call(*args: Any) -> None:
        calls.append(args)
        if len(calls) <= times:
            raise exc

    return call


def test_the_infrastructure_is_retried_and_the_record_applies(follow: Any) -> None:
    applied: list[Any] = []
    sent: list[Any] = []
    asyncio.run(follow.apply_followed(Record(), _failing(2, ConnectionError("redis away"), applied),
                                      _failing(0, ConnectionError(), sent)))
    assert len(applied) == 3 and sent == []


def test_a_bad_record_is_dead_lettered_once_even_when_the_broker_blips(follow: Any) -> None:
    """Before, a failed DLQ send escaped the follower and stopped it for good."""
    applied: list[Any] = []
    sent: list[Any] = []
    asyncio.run(follow.apply_followed(Record(), _failing(99, SchemaError("version: not v<N>"), applied),
                                      _failing(2, ConnectionError("broker away"), sent)))
    assert len(applied) == 1  # the data's error: never retried
    assert len(sent) == 3 and sent[0] == sent[-1]  # the same dead letter, sent until the broker took it
    topic, value, key = sent[-1]
    assert topic == "model-updates.dlq" and key == b"v9"
    assert json.loads(value)["reason"].startswith("version") and json.loads(value)["offset"] == 7


def test_an_infrastructure_failure_that_lasts_is_passed_over(follow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "FOLLOW_RETRY_S", 0.3)
    applied: list[Any] = []
    sent: list[Any] = []
    asyncio.run(follow.apply_followed(Record(), _failing(10_000, ConnectionError("redis away"), applied),
                                      _failing(0, ConnectionError(), sent)))
    assert len(applied) >= 2 and sent == []  # retried, then passed over: no dead letter, no exception
