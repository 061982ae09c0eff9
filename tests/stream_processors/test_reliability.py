"""Reliability: real workers on a real broker and Redis under the failures production will have.

Each test checks ground truth, not figures: nothing lost, nothing counted twice, no worker crashed.
- two features workers in one group, one killed with SIGKILL mid-replay: the survivor takes over;
- Redis down for 10 s under load: the worker retries, catches up, and fresh events flow again;
- 10,000 fuzzed malformed events interleaved with valid ones (among them tombstones, far-dated, 10,000-level
  nested and ~900 KB ones): each one dead-lettered once, in a bounded DLQ record; every valid one applied;
(2,000 fuzzed malformed recommendation requests: tests/serving/test_reliability_requests.py.)
A corrupt checkpoint announced on `model-updates` is covered in tests/serving/test_recommender.py (hot swap test).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from benchmarks.oracle import ground_truth
from producers.replay import build_messages, load_events, replay
from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.schemas import INTERACTION_TYPES, DLQRecord
from streamrec.shell import stack as _stack
from streamrec.shell.stack import free_port
from streamrec.topics import INTERACTIONS, dlq
from tests.helpers import (
    FRESHNESS_BACK_WITHIN_MS,
    N_EVENTS,
    Worker,
    differences,
    explain,
    first_events,
    fresh_burst_lag_ms,
    online_state,
    read_all,
    stop_redis,
    wait_caught_up,
    wait_until,
)
from tests.hostile import (
    DEEP,
    DLQ_RECORD_MAX_BYTES,
    OVERSIZED,
    bad_id,
    far_dated,
    json_values,
    naive_time,
    not_a_string,
    scalars,
    spread,
)

INTERACTIONS_PATH = "recommendation_interactions.parquet"


# ---- 1. rebalance ------------------------------------------------------------------------------
# On the suite's broker. On Apache Kafka this lost the killed worker's users in 5 of 9 runs while the
# state lived in a Faust table recovered from its changelog (issue #13); the state now lives in the rows.
def test_two_workers_one_killed_the_survivor_takes_over_without_loss(
        env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    first = worker_factory(env_stack)
    every_partition = first.figures()["assigned_partitions"]
    second = worker_factory(env_stack, port=free_port())
    wait_until(lambda: first.figures()["assigned_partitions"] < every_partition, 60,
               "the group to split the partitions between both workers")
    sender = threading.Thread(target=replay, args=(env_stack, env_stack.data_dir / INTERACTIONS_PATH),
                              kwargs={"limit": N_EVENTS, "rate": 2500})
    sender.start()
    wait_until(lambda: first.figures()["applied"] > 300 and second.figures()["applied"] > 300, 60,
               "both workers to be mid-replay")
    first.kill9()
    sender.join(60)
    assert not sender.is_alive()
    wait_until(lambda: second.figures()["assigned_partitions"] == every_partition, 90,
               "the survivor to own every partition")
    wait_caught_up(env_stack, second, 120)
    wrong = differences(env_stack, ground_truth(first_events(env_stack)))
    assert not wrong, explain(env_stack, wrong, second, first)
    assert second.proc.poll() is None and second.figures()["dlq_total"] == 0
    lag = fresh_burst_lag_ms(env_stack, second, str(first_events(env_stack)["user_id"].iloc[0]))
    assert lag <= FRESHNESS_BACK_WITHIN_MS, f"fresh events after the takeover took {lag:.0f} ms"


# ---- 2. Redis down ----------------------------------------------------------------------------
def test_redis_down_10s_under_load_then_the_worker_catches_up(
        env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    worker = worker_factory(env_stack)
    path, before = env_stack.data_dir / INTERACTIONS_PATH, N_EVENTS // 3

    def send(start_at: int, limit: int) -> threading.Thread:
        sender = threading.Thread(target=replay, args=(env_stack, path),
                                  kwargs={"start_at": start_at, "limit": limit, "rate": 250})
        sender.start()
        return sender

    first = send(0, before)
    wait_until(lambda: worker.figures()["applied"] > 500, 60, "the worker to be under load")
    stop_redis(env_stack)
    # The rest is sent while Redis is down, whatever the worker had caught up with before: on a loaded
    # machine the first part could all be pushed before the stop, and then nothing would test the outage.
    rest = send(before, N_EVENTS - before)  # ~13 s of load
    time.sleep(10)
    during = worker.figures()
    _stack.up(env_stack)  # the same port, the data set loaded back from the dump
    assert worker.proc.poll() is None, worker.tail()
    assert during["push_retries"] > 0, f"no push was retried while Redis was down: {during}"
    for sender in (first, rest):
        sender.join(60)
        assert not sender.is_alive()
    wait_caught_up(env_stack, worker, 120)
    wrong = differences(env_stack, ground_truth(first_events(env_stack)))
    assert not wrong, explain(env_stack, wrong, worker)
    assert "retrying" in worker.log.read_text(errors="replace")

    # fresh events flow again: a new burst is in the online store, and the worker's own freshness
    # figure for it (event in Kafka -> row in Redis) is the "back under its goal within 5 s"
    user = str(first_events(env_stack)["user_id"].iloc[0])
    lag = fresh_burst_lag_ms(env_stack, worker, user)
    burst = [f"fresh-{n}" for n in range(5)]
    wait_until(lambda: online_state(env_stack, [user])[user]["recent_item_ids"][:5] == burst[::-1], 30,
               "a burst after the outage to reach the online store")
    assert lag <= FRESHNESS_BACK_WITHIN_MS, f"the first fresh events after the outage took {lag:.0f} ms"


# ---- 3. fuzzed malformed events ----------------------------------------------------------------
N_MALFORMED = 10_000
ALLOWED = {"event_id", "user_id", "item_id", "interaction_type", "timestamp", "rating", "quantity", "context"}
REQUIRED = ("event_id", "user_id", "item_id", "interaction_type", "timestamp")

_bad_value = {
    "event_id": bad_id, "user_id": bad_id, "item_id": bad_id,
    "interaction_type": st.text(max_size=30).filter(lambda t: t not in INTERACTION_TYPES) | not_a_string,
    "timestamp": naive_time | st.text(alphabet="abcxyz :", max_size=20) | st.none() | st.integers(),
    "rating": st.floats(allow_nan=False).filter(lambda r: not 1 <= r <= 5) | st.text(max_size=5) |
    st.booleans() | st.lists(st.integers(), max_size=2),
    "quantity": st.integers().filter(lambda q: not 1 <= q <= 1000) | st.floats(allow_nan=False) |
    st.text(max_size=5) | st.booleans(),
    "context": st.lists(st.integers(), max_size=3) | st.text(max_size=10) | st.integers() |
    st.dictionaries(st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                    min_size=1, max_size=3).filter(lambda d: any(isinstance(v, dict) for v in d.values())) |
    st.dictionaries(st.text(min_size=65, max_size=70), st.integers(), min_size=1, max_size=1) |
    st.just({f"k{i}": i for i in range(33)}),
}


# "huge" (over the 64 KiB cap) is one draw in ~50: enough of them, without sending hundreds of MB. The
# poison kinds of issue 17 (a tombstone, a date outside the window, 10,000 levels of nesting) are keyed by
# a user with valid events in the same micro-batches; the ~900 KB ones are added by _with_oversized.
_EVENT_KINDS = ["random_bytes", "truncated", "not_an_object", "missing", "extra", "wrong_value", "wrong_value",
                "wrong_value", "key_mismatch"]
EVENT_KINDS = _EVENT_KINDS * 3 + ["huge", "tombstone", "far_dated", "deep"] + _EVENT_KINDS * 3


def _malformed_event(data: Any, base: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """One interaction message that the contract says must be dead-lettered: (key, value)."""
    key = base["user_id"].encode()
    kind = data.draw(st.sampled_from(EVENT_KINDS))
    if kind == "tombstone":
        return key, None
    if kind == "far_dated":
        return key, json.dumps({**base, "timestamp": data.draw(far_dated)}).encode()
    if kind == "deep":
        inner = "[" * DEEP + "]" * DEEP if data.draw(st.booleans()) else '{"a":' * DEEP + "1" + "}" * DEEP
        return key, (json.dumps(base)[:-1] + f', "context": {{"x": {inner}}}}}').encode()
    if kind == "random_bytes":  # a leading 0xff is never UTF-8, so never JSON
        return key, b"\xff" + data.draw(st.binary(max_size=300))
    if kind == "truncated":
        text = json.dumps(base)
        return key, text[:data.draw(st.integers(0, len(text) - 1))].encode()
    if kind == "not_an_object":
        return key, json.dumps(data.draw(json_values.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "missing":
        gone = data.draw(st.sets(st.sampled_from(REQUIRED), min_size=1))
        return key, json.dumps({k: v for k, v in base.items() if k not in gone}).encode()
    if kind == "extra":
        name = data.draw(st.text(min_size=1, max_size=30).filter(lambda n: n not in ALLOWED))
        return key, json.dumps({**base, name: data.draw(scalars)}).encode()
    if kind == "wrong_value":
        field = data.draw(st.sampled_from(sorted(_bad_value)))
        event = {**base, field: data.draw(_bad_value[field])}
        other = event["user_id"].encode() if isinstance(event["user_id"], str) else key
        return other, json.dumps(event).encode()
    if kind == "key_mismatch":
        other = data.draw(st.none() | st.binary(max_size=20) | st.text(max_size=12).map(str.encode))
        return (None if other == key else other), json.dumps(base).encode()
    # huge: a valid-looking event over the 64 KiB cap
    return key, json.dumps({**base, "context": {"pad": "x" * data.draw(st.integers(66_000, 70_000))}}).encode()


def _draw_malformed(n: int, bases: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None]]:
    """``n`` malformed messages drawn by Hypothesis (seeded: the same list every run).

    One message per example: drawing several per example was faster but gave ~3x fewer distinct ones.
    """
    out: list[tuple[bytes | None, bytes | None]] = []

    @seed(20261101)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data: Any) -> None:
        base = data.draw(st.sampled_from(bases))
        out.append(_malformed_event(data, base))

    collect()
    return out[:n]


def _with_oversized(malformed: list[tuple[bytes | None, bytes | None]], bases: list[dict[str, Any]]
                    ) -> list[tuple[bytes | None, bytes | None]]:
    """``malformed`` with four ~900 KB events spread among them (too few and too big for Hypothesis to draw
    them): invalid UTF-8, and nothing but ``"`` (JSON escapes double it)."""
    users = [b["user_id"].encode() for b in bases[:4]]
    oversized = [(users[0], b'{"event_id": "' + b"\xff\xfe" * (OVERSIZED // 2) + b'"}'),
                 (users[1], b'"' * OVERSIZED),
                 (users[2], b"\xc3" + b"\x80\xff" * (OVERSIZED // 2)),
                 # JSON escapes double the quotes: half as many keep it ~900 KB, under Apache Kafka's 1 MiB
                 (users[3], json.dumps({**bases[3], "context": {"q": '"' * (OVERSIZED // 2)}}).encode())]
    return spread(oversized, malformed)


def _dlq_records(settings: Settings, topic: str) -> list[DLQRecord]:
    messages = read_all(settings, dlq(topic))
    too_big = [len(m.value) for m in messages if len(m.value) > DLQ_RECORD_MAX_BYTES]
    assert not too_big, f"{len(too_big)} DLQ records over {DLQ_RECORD_MAX_BYTES} bytes: {too_big[:5]}"
    return [DLQRecord.model_validate_json(m.value) for m in messages]


def test_10k_fuzzed_malformed_events_are_dead_lettered_and_the_valid_ones_apply(
        env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    from kafka import KafkaProducer

    events = load_events(env_stack.data_dir / INTERACTIONS_PATH, limit=N_EVENTS)
    valid = build_messages(events)  # exactly what `streamrec replay` sends
    bases = [json.loads(v) for _, v in valid[:500]]
    drawn: list[list[tuple[bytes | None, bytes | None]]] = []
    drawing = threading.Thread(target=lambda: drawn.append(_draw_malformed(N_MALFORMED, bases)))
    drawing.start()  # ~15-30 s of Hypothesis, while the worker starts
    worker = worker_factory(env_stack)
    drawing.join(120)
    malformed = _with_oversized(drawn[0], bases)
    n_bad = len(malformed)
    assert n_bad == N_MALFORMED + 4 and sum(v is None for _, v in malformed) > 50  # tombstones among them
    producer = KafkaProducer(acks="all", linger_ms=5, max_request_size=2_000_000,
                             max_in_flight_requests_per_connection=1, **kafka_clients.python_config(env_stack))
    futures = []
    per_valid = n_bad // len(valid)  # every valid event has malformed ones on either side
    for i, (key, value) in enumerate(valid):
        producer.send(INTERACTIONS, key=key, value=value)
        futures += [producer.send(INTERACTIONS, key=k, value=v)
                    for k, v in malformed[i * per_valid:(i + 1) * per_valid]]
    futures += [producer.send(INTERACTIONS, key=k, value=v) for k, v in malformed[len(valid) * per_valid:]]
    producer.flush()
    producer.close()
    sent_bad = {(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)}
    assert len(sent_bad) == n_bad

    total = len(valid) + n_bad
    wait_until(lambda: worker.figures()["events"] >= total, 150,
               "the worker to read every message")
    wait_caught_up(env_stack, worker, 60)
    assert worker.proc.poll() is None, worker.tail()
    figures = worker.figures()
    wrong = differences(env_stack, ground_truth(first_events(env_stack)))
    assert not wrong, explain(env_stack, wrong, worker)
    records = _dlq_records(env_stack, INTERACTIONS)
    assert all(r.topic == INTERACTIONS and r.reason for r in records)
    got = [(r.partition, r.offset) for r in records]
    assert len(got) == len(set(got)), "a malformed event was dead-lettered twice"
    assert set(got) == sent_bad, (f"missing from the DLQ: {sorted(sent_bad - set(got))[:10]}, "
                                  f"dead-lettered but valid: {sorted(set(got) - sent_bad)[:10]}")
    assert figures["dlq_total"] == n_bad and figures["applied"] == len(valid), figures
    assert worker.proc.poll() is None and figures["ready"] and not figures["stalled"], figures
