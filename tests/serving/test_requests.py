"""The request path's one failure path (serving/requests.py), as pure logic: the feature read, the ranking
and the producer are plain objects and coroutines here (the same path over a real broker and Redis:
test_reliability_requests.py, test_poison.py).

- a batch that fails for a request's content is served once more request by request: only that request
  gets an `internal` answer (and a DLQ record), each request is computed at most twice;
- the infrastructure's failures are retried within the deadline, then answered with errors;
- a failed delivery sends the answers already prepared again, it never serves the batch again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from serving import requests
from serving.updates import Serving
from streamrec import load_settings
from streamrec.schemas import RecommendationRequest, RecommendationResponse, encode


@dataclass(frozen=True)
class Record:
    value: bytes
    offset: int
    topic: str = "recommendation-requests"
    partition: int = 0
    key: bytes | None = None
    timestamp: float = 0.0


class Features:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.reads: list[list[str]] = []

    async def users_features_async(self, users: list[str], only: Any = None) -> list[dict[str, Any]]:
        self.reads.append(users)
        if self.failures:
            raise self.failures.pop(0)
        return [{"user_id": u} for u in users]


class Ranker:
    """Answers each request with one item; fails for the users in ``poison``."""

    def __init__(self, poison: set[str]) -> None:
        self.poison = poison
        self.batches: list[list[str]] = []

    def recommend(self, reqs: Any, rows: Any, bundle: Any, received: Any = None) -> list[RecommendationResponse]:
        self.batches.append([r.request_id for r in reqs])
        if self.poison & {r.user_id for r in reqs}:
            raise ValueError("a row this ranking cannot read")
        return [RecommendationResponse(request_id=r.request_id, user_id=r.user_id, items=[]) for r in reqs]


def _serving(poison: set[str] = frozenset(), failures: list[BaseException] | None = None) -> Serving:
    serving = Serving(load_settings(request_deadline_s=3600))
    serving.features = Features(failures or [])
    serving.recommender = Ranker(set(poison))
    return serving


def _records(users: list[str]) -> list[Record]:
    import time

    return [Record(encode(RecommendationRequest(request_id=f"r{i}", user_id=u)), i, timestamp=time.time() * 1000)
            for i, u in enumerate(users)]


def test_a_poison_request_gets_its_own_error_and_the_rest_of_its_batch_is_answered() -> None:
    serving = _serving(poison={"bad"})
    answers = asyncio.run(requests.prepare_answers(serving, _records(["a", "bad", "c"])))
    assert [(r.request_id, r.error.code if r.error else None) for r, _ in answers] == \
        [("r0", None), ("r1", "internal"), ("r2", None)]
    dead = [record.offset for _, record in answers if record is not None]
    assert dead == [1]  # the unservable request is dead-lettered, the others are not
    # the batch once, then each request once on its own: never a third time
    assert serving.recommender.batches == [["r0", "r1", "r2"], ["r0"], ["r1"], ["r2"]]


def test_the_infrastructure_is_retried_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests, "RETRY_FIRST_S", 0.01)
    serving = _serving(failures=[ConnectionError("redis away"), ConnectionError("redis away")])
    answers = asyncio.run(requests.prepare_answers(serving, _records(["a", "b"])))
    assert all(r.error is None for r, _ in answers) and len(serving.features.reads) == 3


def test_an_outage_past_the_deadline_is_answered_with_errors_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests, "SERVE_WITHIN_S", 0.2)
    monkeypatch.setattr(requests, "RETRY_FIRST_S", 0.02)
    serving = _serving(failures=[ConnectionError("redis away")] * 1000)
    answers = asyncio.run(requests.prepare_answers(serving, _records(["a", "b"])))
    assert [r.error.code for r, _ in answers] == ["internal", "internal"]
    assert serving.recommender.batches == []  # nothing was ranked on rows never read


class Producer:
    """A producer whose first ``fail`` sends are refused by the broker."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail > 0:
            self.fail -= 1
            future.set_exception(ConnectionError("broker away"))
        else:
            self.sent.append((topic, value))
            future.set_result(None)
        return future


def test_a_failed_delivery_sends_the_same_answers_again_without_serving_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests, "RETRY_FIRST_S", 0.01)
    serving = _serving()
    group = requests.RequestGroup(serving)
    group.producer = Producer(fail=1)
    group.consumer = None
    records = _records(["a", "b"])

    async def run() -> None:
        group._commit = _no_commit  # type: ignore[method-assign] - no consumer here: the commit is not the point
        answers = await requests.prepare_answers(serving, records)
        delivery = await requests.send_answers(serving, answers, group.producer)
        await group._complete(records, answers, delivery, None)

    asyncio.run(run())
    assert serving.recommender.batches == [["r0", "r1"]]  # computed once
    ids = [json.loads(value)["request_id"] for topic, value in group.producer.sent if topic == "recommendations"]
    # r0's send was refused, r1's went through; both sent again: every request answered, at least once
    assert ids == ["r1", "r0", "r1"]
    assert serving.requests == 2


async def _no_commit(records: Any) -> None:
    return None
