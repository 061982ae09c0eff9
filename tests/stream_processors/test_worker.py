"""The stream worker end to end on a real broker, Redis, Feast and Faust: ground truth, DLQ, kill -9."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.oracle import ground_truth
from producers.replay import replay
from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.schemas import HISTORY_LENGTH, DLQRecord
from streamrec.topics import INTERACTIONS, ITEM_UPDATES, dlq
from tests.helpers import (
    FRESHNESS_BACK_WITHIN_MS,
    N_EVENTS,
    ROOT,
    Worker,
    first_events,
    fresh_burst_lag_ms,
    online_state,
    wait_caught_up,
    wait_until,
)


@pytest.mark.smoke
def test_replayed_events_equal_the_ground_truth(env_stack: Settings,
                                                 worker_factory: Callable[..., Worker]) -> None:
    worker = worker_factory(env_stack)
    before = worker.figures()
    stats = replay(env_stack, env_stack.data_dir / "recommendation_interactions.parquet", limit=N_EVENTS)
    assert stats.delivered == N_EVENTS and stats.failed == 0
    truth = ground_truth(first_events(env_stack))
    wait_until(lambda: worker.figures()["events"] >= N_EVENTS, 60, "the worker to consume the replay")
    assert online_state(env_stack, list(truth)) == truth
    after = worker.figures()
    # the freshness figures move, and are plausible
    assert after["events"] - before["events"] == N_EVENTS and after["applied"] == N_EVENTS
    assert after["rows_pushed"] > before["rows_pushed"] and after["samples"] > 0
    assert 0 < after["freshness_ms"]["p50"] <= after["freshness_ms"]["p99"] <= after["freshness_ms"]["max"]
    assert after["dlq_total"] == 0
    metrics = worker.metrics()
    assert 'streamrec_freshness_ms{quantile="0.99"}' in metrics
    assert f"streamrec_events_applied_total {N_EVENTS}" in metrics


def _bad_messages() -> list[tuple[bytes | None, bytes, str]]:
    ok = {"event_id": "x", "user_id": "U000001", "item_id": "I000001", "interaction_type": "cart",
          "timestamp": "2026-11-01T00:00:00+00:00"}

    def mk(**change: object) -> bytes:
        return json.dumps({**ok, **change}).encode()

    missing = dict(ok)
    del missing["item_id"]
    return [
        (b"U000001", b"{not json", "not valid JSON"),
        (b"U000001", json.dumps(missing).encode(), "item_id"),
        (b"U000001", mk(event_id="b3", interaction_type="like"), "interaction_type"),
        (b"U000001", mk(event_id="b4", item_id="x" * 100_000), "bytes"),
        (b"U000001", mk(event_id="b5", quantity="three"), "quantity"),
        (b"U000001", mk(event_id="b6", timestamp="2026-11-01T00:00:00"), "timestamp"),
        (b"U000002", mk(event_id="b7"), "key"),  # keyed by someone else
        (None, mk(event_id="b8"), "key"),
        (b"U000001", b"\xff\xfe\x00", "JSON"),
    ]


def test_malformed_events_go_to_the_dlq_and_the_rest_applies(env_stack: Settings,
                                                             worker_factory: Callable[..., Worker]) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    worker = worker_factory(env_stack)
    events = first_events(env_stack).head(1000)
    bad = _bad_messages()
    producer = KafkaProducer(acks="all", max_request_size=2_000_000, **kafka_clients.python_config(env_stack))
    path = env_stack.data_dir / "first.parquet"
    events.to_parquet(path)
    # valid events with the bad ones spread among them, all through one producer
    stride = len(events) // len(bad)
    for i, (key, value, _) in enumerate(bad):
        replay(env_stack, path, start_at=i * stride, limit=stride, producer=producer)
        producer.send(INTERACTIONS, key=key, value=value)
    replay(env_stack, path, start_at=len(bad) * stride, producer=producer)
    producer.flush()
    producer.close()

    wait_until(lambda: worker.figures()["events"] >= len(events) + len(bad), 60, "all events")
    figures = worker.figures()
    assert figures["dlq_total"] == len(bad) and figures["applied"] == len(events)
    assert online_state(env_stack, list(ground_truth(events))) == ground_truth(events)

    consumer = KafkaConsumer(consumer_timeout_ms=3000, **kafka_clients.python_config(env_stack))
    consumer.assign([TopicPartition(dlq(INTERACTIONS), p) for p in range(env_stack.topic_partitions)])
    consumer.seek_to_beginning()
    records = [DLQRecord.model_validate_json(r.value) for r in consumer]  # raw may exceed the input cap
    consumer.close()
    assert len(records) == len(bad)
    by_raw = {r.raw[:40]: r for r in records}
    for _, value, reason in bad:
        record = by_raw[value.decode("utf-8", "backslashreplace")[:40]]
        assert reason in record.reason and record.topic == INTERACTIONS and record.offset >= 0


def test_late_events_and_old_purchases_reach_the_row_and_a_restart_carries_on_from_it(
        env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    """Events older than the user's newest (late arrivals) change the row too (Feast skips a write whose
    event timestamp is not newer than the stored one), purchases stay remembered beyond the recent
    history, and a new worker carries on from the row: the state lives there, not in the process."""
    from kafka import KafkaProducer

    user = "U-late-1"
    worker = worker_factory(env_stack)
    producer = KafkaProducer(acks="all", **kafka_clients.python_config(env_stack))
    base = pd.Timestamp("2026-11-20T12:00:00Z")
    sent: list[tuple[str, str, int]] = []  # (item, type, seconds after base), in arrival order

    def send(item: str, kind: str, seconds: int) -> None:
        applied = worker.figures()["applied"]
        event = {"event_id": f"late-{len(sent)}", "user_id": user, "item_id": item, "interaction_type": kind,
                 "timestamp": (base + pd.Timedelta(seconds=seconds)).isoformat()}
        producer.send(INTERACTIONS, key=user.encode(), value=json.dumps(event).encode()).get(30)
        sent.append((item, kind, seconds))
        # one event per batch: each is its own write of the row
        wait_until(lambda: worker.figures()["applied"] > applied, 30, f"event {len(sent)} to apply")

    send("A", "purchase", 100)
    send("B", "positive_view", 300)
    send("C", "purchase", 200)  # late: older than B
    send("D", "cart", 50)  # late again
    row = online_state(env_stack, [user])[user]
    assert row["recent_item_ids"] == ["B", "C", "A", "D"], row
    assert (row["count_purchase"], row["count_cart"], row["count_positive_view"]) == (2, 1, 1)
    worker.stop()

    restarted = worker_factory(env_stack)  # nothing of the first worker's memory survives
    n_new = HISTORY_LENGTH + 1
    for i in range(n_new):  # push A and C out of the recent events
        event = {"event_id": f"new-{i}", "user_id": user, "item_id": f"V{i}", "interaction_type": "positive_view",
                 "timestamp": (base + pd.Timedelta(seconds=400 + i)).isoformat()}
        producer.send(INTERACTIONS, key=user.encode(), value=json.dumps(event).encode())
    producer.flush()
    wait_until(lambda: restarted.figures()["applied"] >= n_new, 30, "the restarted worker to apply the new events")
    client = FeatureClient(env_stack)
    try:
        got = client.user_features(user)
    finally:
        client.close()
    assert got["count_positive_view"] == n_new + 1 and got["count_purchase"] == 2
    assert len(got["recent_item_ids"]) == HISTORY_LENGTH and "A" not in got["recent_item_ids"]
    assert got["purchased_item_ids"] == ["C", "A"]  # newest purchase first
    figures = restarted.figures()
    assert figures["applied"] == n_new
    assert figures["state_cache"]["misses"] >= 1 and figures["state_cache"]["held"] >= 1  # it read the row
    producer.close()


def test_kill_9_mid_replay_still_equals_the_ground_truth(env_stack: Settings,
                                                         worker_factory: Callable[..., Worker]) -> None:
    # Commits an hour apart: the kill lands with every applied event still uncommitted, so the restarted
    # worker is surely handed events the rows already hold (with 1 s commits a kill right after a commit
    # could leave none, and the test would not exercise the dedupe it is about).
    worker = worker_factory(env_stack, STREAMREC_COMMIT_INTERVAL_S="3600")
    sender = threading.Thread(target=replay, args=(env_stack, env_stack.data_dir /
                                                   "recommendation_interactions.parquet"),
                              kwargs={"limit": N_EVENTS, "rate": 2500})
    sender.start()
    wait_until(lambda: worker.figures()["applied"] > 500, 30, "the worker to be mid-replay")
    worker.kill9()
    sender.join(30)
    assert not sender.is_alive()
    restarted = worker_factory(env_stack)
    truth = ground_truth(first_events(env_stack))
    wait_caught_up(env_stack, restarted, 120)
    figures = restarted.figures()
    got = online_state(env_stack, list(truth))
    wrong = {u: (truth[u], got[u]) for u in truth if truth[u] != got[u]}
    assert not wrong, f"{len(wrong)} users differ, e.g. {next(iter(wrong.items()))}; worker {figures}"
    # the restarted worker was handed events the first had applied, and skipped them
    assert figures["duplicates_skipped"] > 0
    lag = fresh_burst_lag_ms(env_stack, restarted, next(iter(truth)))
    assert lag <= FRESHNESS_BACK_WITHIN_MS, f"fresh events after the restart took {lag:.0f} ms"


def test_item_updates_keep_stock_fresh(env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    from producers.item_updates import send_updates

    worker_factory(env_stack)
    items_path = env_stack.data_dir / "recommendation_items.parquet"
    stats = send_updates(env_stack, items_path, 300, seed=3)
    assert stats.delivered == 300
    from producers.item_updates import make_updates

    updates = make_updates(pd.read_parquet(items_path), 300, seed=3)
    final_stock = {u["item_id"]: u["stock"] for u in updates if "stock" in u}
    ids = sorted(final_stock)

    def stocks() -> dict[str, int]:
        client = FeatureClient(env_stack)
        try:
            frame = client.item_features(ids)
        finally:
            client.close()
        return {i: int(frame.loc[i, "stock"]) for i in ids}

    wait_until(lambda: stocks() == final_stock, 60, "stock to match the last update of each item")
    assert any(v == 0 for v in final_stock.values())  # sell-outs are part of the stream


def test_an_unknown_item_update_is_dead_lettered(env_stack: Settings,
                                                 worker_factory: Callable[..., Worker]) -> None:
    from kafka import KafkaProducer

    worker = worker_factory(env_stack)
    producer = KafkaProducer(acks="all", **kafka_clients.python_config(env_stack))
    value = json.dumps({"item_id": "NOPE", "stock": 3, "timestamp": "2026-11-01T00:00:00Z"}).encode()
    producer.send(ITEM_UPDATES, key=b"NOPE", value=value)
    producer.send(ITEM_UPDATES, key=b"I000001", value=b"[]")
    producer.flush()
    producer.close()
    wait_until(lambda: worker.figures()["dlq_total"] == 2, 30, "two item updates in the DLQ")


def test_freshness_cli_reads_the_worker_and_plots(env_stack: Settings, worker_factory: Callable[..., Worker],
                                                  tmp_path: Path) -> None:
    import subprocess
    import sys

    from streamrec.shell.workers import settings_env

    worker = worker_factory(env_stack)
    replay(env_stack, env_stack.data_dir / "recommendation_interactions.parquet", limit=500)
    wait_until(lambda: worker.figures()["events"] >= 500, 30, "the replay")
    env = settings_env(env_stack)
    user = str(first_events(env_stack)["user_id"].iloc[0])  # someone with replayed events
    shown = subprocess.run([sys.executable, "-m", "streamrec", "freshness", "--user", user], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "freshness p99" in shown.stdout and "feature age (ms)" in shown.stdout
    nobody = subprocess.run([sys.executable, "-m", "streamrec", "freshness", "--user", "NOPE"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert nobody.returncode == 1 and nobody.stderr.startswith("error: user 'NOPE' is not in the feature store")
    assert len(nobody.stderr.strip().splitlines()) == 1
    png = tmp_path / "fresh.png"
    plotted = subprocess.run([sys.executable, "-m", "streamrec", "freshness", "--plot", str(png)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    worker.stop()
    gone = subprocess.run([sys.executable, "-m", "streamrec", "freshness"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stderr.startswith("error: no stream worker answers")
