"""A client for the recommender over Kafka: publish requests, read the answers.

Answers are read on assigned partitions of `recommendations` from their end offsets taken before
anything is sent (a consumer-group join takes seconds on the embedded broker, assignment none).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from streamrec import kafka_clients
from streamrec._exceptions import StreamrecError
from streamrec.config import Settings
from streamrec.schemas import RecommendationRequest, RecommendationResponse, encode
from streamrec.stats import percentiles
from streamrec.topics import RECOMMENDATIONS, REQUESTS

__all__ = ["RequestClient", "LoadResult", "run_load"]


class RequestTimeout(StreamrecError):
    """No answer came in time."""


class RequestClient:
    """Publishes requests and collects responses by request_id."""

    def __init__(self, settings: Settings) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        kafka_clients.require_reachable(settings)
        try:
            self.producer = kafka_clients.producer(settings, acks="all", linger_ms=0)
            self.consumer = kafka_clients.consumer(settings, enable_auto_commit=False, fetch_max_wait_ms=3)
        except KafkaError as exc:
            raise StreamrecError(f"cannot use the Kafka broker at {settings.bootstrap_servers}: {exc}") from exc
        partitions = self.consumer.partitions_for_topic(RECOMMENDATIONS) or set()
        if not partitions:
            raise StreamrecError(f"topic {RECOMMENDATIONS!r} does not exist: run `streamrec stack up`")
        tps = [TopicPartition(RECOMMENDATIONS, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)  # resolve now, before any request can be answered

    def send(self, request: RecommendationRequest) -> float:
        """Publish; returns the send time (perf_counter)."""
        sent = time.perf_counter()
        self.producer.send(REQUESTS, key=request.user_id.encode(), value=encode(request))
        return sent

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        self.producer.send(REQUESTS, key=key, value=value)

    def poll(self, timeout_ms: int = 100) -> list[tuple[RecommendationResponse, float]]:
        got = []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            now = time.perf_counter()
            for r in records:
                try:  # anyone may write to the topic: what is not a response is not ours
                    got.append((RecommendationResponse.model_validate_json(r.value), now))
                except (ValidationError, TypeError):
                    continue
        return got

    def ask(self, request: RecommendationRequest, timeout: float = 30.0) -> tuple[RecommendationResponse, float]:
        """Send one request and wait for its response; returns (response, round trip ms)."""
        sent = self.send(request)
        self.producer.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for response, at in self.poll():
                if response.request_id == request.request_id:
                    return response, (at - sent) * 1000
        raise RequestTimeout(f"no response to {request.request_id} within {timeout:.0f}s — is "
                             "`streamrec worker --app recommender` running?")

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.consumer.close()


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    errors: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    round_trip_ms: list[float] = field(default_factory=list)
    server_latency_ms: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # perf_counter at send, aligned with round_trip_ms
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "errors": self.errors,
                "missing": self.sent - self.answered, "fallbacks": self.fallbacks,
                "round_trip_ms": percentiles(self.round_trip_ms),
                "server_latency_ms": percentiles(self.server_latency_ms),
                "requests_per_s": self.sent / self.seconds if self.seconds else 0.0}


def run_load(settings: Settings, users: Sequence[str], n: int, rate: float, k: int = 10,
             timeout: float = 30.0, seed: int = 0) -> LoadResult:
    """Send ``n`` requests at ``rate``/s for random ``users``; wait for every answer (or timeout)."""
    rng = np.random.default_rng(seed)
    client = RequestClient(settings)
    result = LoadResult()
    sent_at: dict[str, float] = {}
    done = threading.Event()

    def receive() -> None:
        while not done.is_set() or len(sent_at) > 0:
            for response, at in client.poll(50):
                started = sent_at.pop(response.request_id, None)
                if started is None:
                    continue
                result.answered += 1
                result.round_trip_ms.append((at - started) * 1000)
                result.sent_at.append(started)
                if response.latency_ms is not None:
                    result.server_latency_ms.append(response.latency_ms)
                if response.error is not None:
                    result.errors += 1
                if response.fallback:
                    result.fallbacks[response.fallback] = result.fallbacks.get(response.fallback, 0) + 1
            if done.is_set() and time.monotonic() > deadline[0]:
                return

    deadline = [float("inf")]
    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    started = time.perf_counter()
    try:
        for i in range(n):
            wait = started + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            request = RecommendationRequest(request_id=f"load-{uuid.uuid4().hex[:12]}",
                                            user_id=str(users[int(rng.integers(len(users)))]), k=k)
            sent_at[request.request_id] = client.send(request)
            result.sent += 1
        client.producer.flush()
        result.seconds = time.perf_counter() - started
    finally:
        deadline[0] = time.monotonic() + timeout
        done.set()
        receiver.join(timeout + 5)
        client.close()
    return result


def parse_context(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StreamrecError(f"--context is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StreamrecError("--context must be a JSON object, e.g. '{\"device\": \"mobile\"}'")
    return value
