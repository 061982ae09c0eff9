"""A client for the recommender over Kafka: publish requests, read the answers.

Answers are read on assigned partitions of `recommendations` from their end offsets taken before
anything is sent (a consumer-group join takes seconds on the embedded broker, assignment none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamrec import kafka_clients
from streamrec._exceptions import StreamrecError
from streamrec.config import Settings, settings_env
from streamrec.schemas import RecommendationRequest, RecommendationResponse, encode
from streamrec.stats import CpuClock, percentiles
from streamrec.topics import RECOMMENDATIONS, REQUESTS

__all__ = ["RequestClient", "LoadResult", "LoadError", "run_load"]

ROOT = Path(__file__).resolve().parents[1]


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
    error_codes: dict[str, int] = field(default_factory=dict)  # answers with an `error`, by code
    fallbacks: dict[str, int] = field(default_factory=dict)
    round_trip_ms: list[float] = field(default_factory=list)
    server_latency_ms: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # time.monotonic at send, aligned with round_trip_ms
    seconds: float = 0.0  # the span the requests were sent over
    requests_per_s: float = 0.0  # the rate actually sent
    failed_sends: int = 0
    generator_cpu_cores: float = 0.0  # the load generator's own CPU over the measured span
    cpu_cores: dict[str, float] = field(default_factory=dict)  # of the processes watched (``run_load(watch=)``)
    warmup: list[dict[str, Any]] = field(default_factory=list)  # the warm-up windows: sent, answered, p99_ms

    @property
    def errors(self) -> int:
        """Answers with an `error`, every code."""
        return sum(self.error_codes.values())

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "errors": self.errors,
                "error_codes": self.error_codes, "expired": self.error_codes.get("expired", 0),
                "missing": self.sent - self.answered, "failed_sends": self.failed_sends,
                "fallbacks": self.fallbacks,
                "round_trip_ms": percentiles(self.round_trip_ms),
                "server_latency_ms": percentiles(self.server_latency_ms),
                "requests_per_s": self.requests_per_s, "seconds": self.seconds,
                "cpu_cores": {"load_generator": self.generator_cpu_cores, **self.cpu_cores},
                "warmup_p99_ms": [w["p99_ms"] for w in self.warmup]}


class LoadError(StreamrecError):
    """The load generator could not run."""


def run_load(settings: Settings, users: Sequence[str], n: int, rate: float, k: int = 10,
             timeout: float = 30.0, seed: int = 0, warmup_max_s: float = 0.0, watch: Mapping[str, int] | None = None,
             requests_topic: str = REQUESTS, responses_topic: str = RECOMMENDATIONS,
             tick_ms: float | None = None) -> LoadResult:
    """Send ``n`` requests at ``rate``/s for random ``users`` from the load generator (producers/load.py, a
    process of its own, on librdkafka) and wait for every answer (or ``timeout`` after the last send).

    ``warmup_max_s``: warm the broker and the service first, for at most that long (see producers/load.py).
    ``watch``: {name: pid} of processes whose CPU (cores) over the measured span the result reports beside
    the generator's own (the broker's JVM, the service, Redis). ``tick_ms``: requests due within one tick
    leave together (default: the generator's, 2 ms; at least 1 ms)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".users", encoding="utf-8", delete=False) as f:
        f.write("\n".join(str(u).replace("\n", " ") for u in users) + "\n")
        users_file = f.name
    command = [sys.executable, "-m", "producers.load", "--users", users_file, "--n", str(n), "--rate", str(rate),
               "--k", str(k), "--timeout", str(timeout), "--warmup-max-s", str(warmup_max_s), "--seed", str(seed),
               "--requests-topic", requests_topic, "--responses-topic", responses_topic,
               *(["--tick-ms", str(tick_ms)] if tick_ms is not None else [])]
    clock = CpuClock(watch or {})
    try:
        proc = subprocess.Popen(command, cwd=ROOT, env=settings_env(settings), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "measuring":
                clock.start()
            else:
                lines.append(line)
        cores = clock.stop()
        _, err = proc.communicate()
    finally:
        Path(users_file).unlink(missing_ok=True)
    if proc.returncode != 0 or not lines:
        last = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise LoadError(f"the load generator failed (exit {proc.returncode}): {last[0][:300]}")
    out = json.loads(lines[-1])
    samples = out["samples"]
    return LoadResult(sent=out["sent"], answered=out["answered"], error_codes=out["errors"], fallbacks=out["fallbacks"],
                      round_trip_ms=[s[1] for s in samples], sent_at=[s[0] for s in samples],
                      server_latency_ms=[s[2] for s in samples if s[2] is not None], seconds=out["seconds"],
                      requests_per_s=out["requests_per_s"], failed_sends=out["failed_sends"],
                      generator_cpu_cores=out["cpu_cores"], cpu_cores=cores, warmup=out["warmup"])


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
