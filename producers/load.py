"""The load generator: recommendation requests at a steady rate, answers matched by request_id, in a
process of its own so its work never shares a GIL (or a figure) with what it measures.

It is built to cost little, because on 2 cores every millisecond it spends is one the service does not
get. It runs on librdkafka (confluent-kafka: the protocol work in C threads, not in Python), requests are
pre-encoded JSON (no model objects), requests due within one tick (``--tick-ms``, 2 ms) leave together,
answers are read on assigned partitions (no group) with a long fetch wait (an answer ends the wait at once;
an idle partition costs nothing), and each answer is parsed once with the standard json module. Measured
here beside a bare echo at 500 requests/s on warm Apache Kafka: ~0.1 core, where the same loop on aiokafka
took 0.15-0.33 (BENCHMARKS.md). Its own CPU time over the measured span is part of the result.

A warm-up comes first when asked (``--warmup-max-s``): windows of WARMUP_WINDOW_S at the same rate until a
window's p99 stops falling (no lower than MIN_FALL of the best so far), at least MIN_WINDOWS of them (15 s).
A freshly started JVM spends a core compiling for its first ~15 s; measuring through that measures the JIT.

    python -m producers.load --users FILE --n N --rate R [--k K] [--timeout S] [--warmup-max-s S]
                             [--tick-ms MS] [--requests-topic T --responses-topic T]

prints "measuring" when the measured span begins, then one JSON line (:func:`generate`'s result). The
broker is the environment's (STREAMREC_*, KAFKA_*), as for every streamrec process.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from streamrec.stats import percentiles
from streamrec.topics import RECOMMENDATIONS, REQUESTS

__all__ = ["generate", "warm_enough", "main"]

WARMUP_WINDOW_S = 3.0
MIN_WINDOWS = 5  # 15 s at least: a fresh JVM compiles for ~15 s, and its p99 can stand still meanwhile
                 # (bench recommend, 2026-12-06: three windows at 104, 105, 123 ms, then rounds at 33)
MIN_FALL = 0.9  # a window whose p99 is not 10% below the best so far: warm
TICK_S = 0.002


def warm_enough(p99s: Sequence[float | None]) -> bool:
    """True once the warm-up windows' p99 (ms, in order) stopped falling: at least MIN_WINDOWS windows and
    the last one not below MIN_FALL × the best of the ones before it (a window that lost answers, None,
    is never warm)."""
    if len(p99s) < MIN_WINDOWS or p99s[-1] is None:
        return False
    before = [p for p in p99s[:-1] if p is not None]
    return bool(before) and p99s[-1] >= MIN_FALL * min(before)


class _Run:
    """One stream of requests and the answers to it, on a librdkafka producer and consumer."""

    def __init__(self, producer: Any, consumer: Any, users: Sequence[str], k: int, requests_topic: str,
                 seed: int, tick_s: float) -> None:
        self.producer, self.consumer = producer, consumer
        self.users = [json.dumps(str(u)) for u in users]  # pre-escaped: a request is one string format
        self.keys = [str(u).encode() for u in users]
        self.k, self.topic = k, requests_topic
        self.tick_s = max(tick_s, 0.001)  # librdkafka's poll waits whole milliseconds: less would spin
        self.rng = random.Random(seed)
        self.tag = uuid.uuid4().hex[:8]
        self.pending: dict[str, float] = {}  # request_id -> monotonic send time
        self.samples: list[tuple[float, float, float | None]] = []  # (sent at, round trip ms, server ms)
        self.errors: dict[str, int] = {}  # error code -> answers
        self.fallbacks: dict[str, int] = {}
        self.failed_sends = 0
        self.sent = 0

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed_sends += 1

    def send(self, n: int, rate: float) -> float:
        """``n`` requests at ``rate``/s, reading answers meanwhile; returns the seconds it took to send them."""
        started = time.monotonic()
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            while i < due:
                u = self.rng.randrange(len(self.users))
                request_id = f"load-{self.tag}-{self.sent}"
                value = f'{{"request_id":"{request_id}","user_id":{self.users[u]},"k":{self.k}}}'.encode()
                self.pending[request_id] = time.monotonic()
                self.producer.produce(self.topic, value, key=self.keys[u], on_delivery=self._delivered)
                self.sent += 1
                i += 1
            self.producer.poll(0)
            if i < n:
                self.read(max(self.tick_s, started + i / rate - time.monotonic()))
        seconds = time.monotonic() - started
        self.producer.flush(30)
        return seconds

    def read(self, wait_s: float) -> None:
        """Take the answers that come within ``wait_s`` (returns at once past the first, having taken every
        one already there)."""
        message = self.consumer.poll(wait_s)
        while message is not None:
            now = time.monotonic()
            if message.error() is None:
                self._answer(message.value(), now)
            message = self.consumer.poll(0)

    def _answer(self, value: bytes | None, now: float) -> None:
        try:  # anyone may write to the topic: what is not an answer to us is not ours
            body = json.loads(value) if value else None
            sent = self.pending.pop(body["request_id"], None) if isinstance(body, dict) else None
        except (ValueError, TypeError, KeyError):
            return
        if sent is None:
            return
        server = body.get("latency_ms")
        self.samples.append((sent, (now - sent) * 1000.0, server if isinstance(server, (int, float)) else None))
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code"))[:64]
            self.errors[code] = self.errors.get(code, 0) + 1
        if body.get("fallback"):
            name = str(body["fallback"])[:64]
            self.fallbacks[name] = self.fallbacks.get(name, 0) + 1

    def answered(self, timeout: float) -> None:
        """Read answers until every request sent is answered, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.read(min(0.1, max(0.0, deadline - time.monotonic())))


def _window(run: _Run, first: int, seconds: float, sent: int) -> dict[str, Any]:
    trips = [s[1] for s in run.samples[first:]]
    return {"sent": sent, "answered": len(trips),
            "p99_ms": percentiles(trips, (99,))["p99"] if len(trips) == sent else None, "seconds": seconds}


def _clients(responses_topic: str) -> tuple[Any, Any]:
    """A producer and a consumer assigned every partition of ``responses_topic`` at its end."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from kafka import TopicPartition as KafkaPartition

    from streamrec import kafka_clients
    from streamrec._exceptions import StreamrecError
    from streamrec.config import get_settings

    settings = get_settings()
    kafka_clients.require_reachable(settings)
    config = {**kafka_clients.rdkafka_config(settings), "socket.nagle.disable": True}
    producer = Producer({**config, "acks": "all", "linger.ms": 0})
    consumer = Consumer({**config, "group.id": f"streamrec-load-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 100})
    topic = consumer.list_topics(responses_topic, timeout=10).topics.get(responses_topic)
    if topic is None or topic.error is not None or not topic.partitions:
        consumer.close()
        raise StreamrecError(f"topic {responses_topic!r} does not exist: run `streamrec stack up`")
    # the true end (on Tansu ListOffsets under-reports it: streamrec/offsets.py)
    ends = kafka_clients.end_offsets_sync(settings, [KafkaPartition(responses_topic, p) for p in topic.partitions])
    consumer.assign([TopicPartition(responses_topic, tp.partition, offset) for tp, offset in ends.items()])
    return producer, consumer


def generate(users: Sequence[str], n: int, rate: float, k: int = 10, timeout: float = 30.0,
             warmup_max_s: float = 0.0, requests_topic: str = REQUESTS, responses_topic: str = RECOMMENDATIONS,
             seed: int = 0, tick_s: float = TICK_S, on_measuring: Callable[[], None] | None = None) -> dict[str, Any]:
    """Send ``n`` requests at ``rate``/s for random ``users`` (after a warm-up of at most ``warmup_max_s``);
    wait up to ``timeout`` s after the last for every answer. Returns counts, per-request samples
    ``[sent_at (time.monotonic), round trip ms, server latency ms or None]``, the warm-up windows, the
    rate actually sent and this process's CPU (cores) over the measured span."""
    if not users:
        raise ValueError("no users to ask for")
    producer, consumer = _clients(responses_topic)
    run = _Run(producer, consumer, users, k, requests_topic, seed, tick_s)
    warmup: list[dict[str, Any]] = []
    try:
        window_n, spent = max(1, int(rate * WARMUP_WINDOW_S)), 0.0
        while warmup_max_s > 0 and spent < warmup_max_s:
            first, sent = len(run.samples), run.sent
            seconds = run.send(window_n, rate)
            run.answered(min(timeout, 5.0))
            spent += seconds
            warmup.append(_window(run, first, seconds, run.sent - sent))
            if warm_enough([w["p99_ms"] for w in warmup]):
                break
        run.pending.clear()  # a warm-up answer still in flight is not part of what is measured
        first_sample, first_sent, failed_before = len(run.samples), run.sent, run.failed_sends
        errors_before, fallbacks_before = dict(run.errors), dict(run.fallbacks)
        if on_measuring is not None:
            on_measuring()
        cpu0, wall0 = time.process_time(), time.monotonic()
        seconds = run.send(n, rate)
        run.answered(timeout)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        consumer.close()
    sent, samples = run.sent - first_sent, run.samples[first_sample:]

    def since(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
        return {c: v - then.get(c, 0) for c, v in now.items() if v > then.get(c, 0)}

    return {"sent": sent, "answered": len(samples), "missing": sent - len(samples),
            "failed_sends": run.failed_sends - failed_before, "errors": since(run.errors, errors_before),
            "fallbacks": since(run.fallbacks, fallbacks_before), "rate": rate, "tick_ms": tick_s * 1000,
            "requests_per_s": sent / seconds if seconds else 0.0, "seconds": seconds,
            "cpu_cores": cpu / wall if wall else 0.0, "warmup": warmup,
            "samples": [[round(a, 6), round(b, 3), None if c is None else round(c, 3)] for a, b, c in samples]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", required=True, help="a file of user ids, one per line")
    parser.add_argument("--n", type=int, required=True, help="requests to send once warm")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for answers after the last")
    parser.add_argument("--warmup-max-s", type=float, default=0.0, help="warm up for at most this long (0: none)")
    parser.add_argument("--requests-topic", default=REQUESTS)
    parser.add_argument("--responses-topic", default=RECOMMENDATIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tick-ms", type=float, default=TICK_S * 1000,
                        help="requests due within one tick leave together (at least 1 ms)")
    args = parser.parse_args(argv)
    with open(args.users, encoding="utf-8") as f:
        users = [line.rstrip("\n") for line in f if line.strip()]
    from streamrec._exceptions import StreamrecError

    try:
        result = generate(users, args.n, args.rate, args.k, args.timeout, args.warmup_max_s, args.requests_topic,
                          args.responses_topic, args.seed, args.tick_ms / 1000,
                          on_measuring=lambda: print("measuring", flush=True))
    except (StreamrecError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
