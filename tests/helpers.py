"""What the tests share beside their fixtures (those are in conftest.py): worker processes and their pages,
waits on the group's commits and the worker's figures, freshness, the online state and how it differs
from the ground truth, a Redis stop, the Apache Kafka jar cache; and the models tests' dataset adapter.

Test modules import from here, never from each other or from a conftest.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from streamrec import StreamrecError, kafka_clients
from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.schemas import INTERACTION_TYPES
from streamrec.shell import apache_kafka as ak
from streamrec.shell import stack as _stack
from streamrec.shell.workers import WorkerProcess

if TYPE_CHECKING:
    from generation.dataset_gen_amazon import Dataset
    from models.data import RawData

ROOT = Path(__file__).resolve().parents[1]


# ---- the embedded stack and its workers -----------------------------------------------------------------
def fresh_topics(settings: Settings) -> None:
    """Delete the contract's topics on a shared broker and create them empty again."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    from streamrec.topics import ALL_TOPICS, ensure_topics

    admin = KafkaAdminClient(client_id="streamrec-tests", **kafka_clients.python_config(settings))
    try:
        present = [t for t in ALL_TOPICS if t in set(admin.list_topics())]
        if present:
            admin.delete_topics(present, timeout_ms=30_000)
        deadline = time.monotonic() + 30
        while set(present) & set(admin.list_topics()):  # deletion finishes in the background
            assert time.monotonic() < deadline, "topics were not deleted within 30 s"
            time.sleep(0.1)
    finally:
        admin.close()
    deadline = time.monotonic() + 30
    while True:  # a name may be refused for a moment while its deletion settles
        try:
            ensure_topics(settings)
            return
        except (KafkaError, StreamrecError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Worker(WorkerProcess):
    """A worker the test started, with its pages at hand."""

    def figures(self) -> dict[str, Any]:
        return self.page("/freshness")

    def status(self) -> dict[str, Any]:
        return self.page("/status")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def committed_and_end(settings: Settings, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset and the true end offset of every partition of ``topic``."""
    from kafka import KafkaAdminClient, TopicPartition

    parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    admin = KafkaAdminClient(**kafka_clients.python_config(settings))
    try:
        offsets = admin.list_group_offsets({group: parts})[group]  # kafka-python 3: list_consumer_group_offsets
        committed = {tp.partition: meta.offset for tp, meta in offsets.items()}
    finally:
        admin.close()
    end = {tp.partition: offset for tp, offset in kafka_clients.end_offsets_sync(settings, parts).items()}
    return committed, end


def wait_committed_to_end(settings: Settings, group: str, topic: str, timeout: float = 30.0) -> None:
    """Until ``group`` has committed every partition of ``topic`` up to its end (past every bad record)."""
    seen: list[tuple[dict[int, int], dict[int, int]]] = []

    def at_end() -> bool:
        committed, end = committed_and_end(settings, group, topic)
        seen.append((committed, end))
        return all(committed.get(p, -1) == offset for p, offset in end.items() if offset > 0)

    try:
        wait_until(at_end, timeout, f"group {group} to commit {topic} to its end")
    except BaseException:
        committed, end = seen[-1] if seen else ({}, {})
        print(f"committed {committed}, end {end}")
        raise


def wait_caught_up(settings: Settings, worker: Worker, timeout: float) -> None:
    """Until the features worker has committed every interaction to the end of its partitions, and
    applied what it committed (figures still for 1 s). "Nothing new for a few seconds" is no proof: a
    worker may sit out a rebalance with records waiting."""
    wait_committed_to_end(settings, settings.worker_app_id, "interactions", timeout)
    seen: list[int] = []

    def still() -> bool:
        seen.append(worker.figures()["events"])
        return len(seen) > 4 and seen[-1] == seen[-5]

    wait_until(still, 30, "the worker's figures to settle")


def stop_redis(settings: Settings) -> None:
    """A graceful Redis stop: SHUTDOWN SAVE writes the data set to disk and exits (no data lost)."""
    import redis

    client = redis.Redis.from_url(settings.redis)
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closed the connection on its way out
    finally:
        client.close()
    wait_until(lambda: not _stack.redis_ready(settings.redis), 20, "Redis to stop")


# ---- freshness -------------------------------------------------------------------------------------------
FRESHNESS_BACK_WITHIN_MS = 5000  # issue #8: after a failure, freshness is back under its goal within 5 s


def newest_lag_ms(worker: Worker) -> float:
    """The worker's own freshness figure (event in Kafka → row in Redis) of the newest row it pushed."""
    with urllib.request.urlopen(f"{worker.url}/freshness?samples=1", timeout=5) as r:
        return float(json.loads(r.read())["lags_ms"][-1])


def fresh_burst_lag_ms(settings: Settings, worker: Worker, user: str, n: int = 5) -> float:
    """Send ``n`` events for ``user`` to an idle worker; once it has applied them, their freshness (ms)."""
    from kafka import KafkaProducer

    base = worker.figures()["applied"]
    producer = KafkaProducer(acks="all", **kafka_clients.python_config(settings))
    tag = uuid.uuid4().hex[:6]
    for i in range(n):
        event = {"event_id": f"fresh-{tag}-{i}", "user_id": user, "item_id": f"fresh-{i}",
                 "interaction_type": "cart", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
        producer.send("interactions", key=user.encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()
    wait_until(lambda: worker.figures()["applied"] >= base + n, 30, "a fresh burst to be applied")
    return newest_lag_ms(worker)


# ---- the online state against the ground truth -----------------------------------------------------------
N_EVENTS = 5000


def replay_to_ground_truth(settings: Settings, worker: Worker) -> dict[str, dict]:
    """Replay the first N_EVENTS interactions to a running features worker, wait until it has applied them,
    and assert the online rows equal the ground truth; returns it (user → row)."""
    from benchmarks.oracle import ground_truth
    from producers.replay import replay

    stats = replay(settings, settings.data_dir / "recommendation_interactions.parquet", limit=N_EVENTS)
    assert stats.delivered == N_EVENTS and stats.failed == 0
    wait_caught_up(settings, worker, 120)
    truth = ground_truth(first_events(settings))
    assert online_state(settings, list(truth)) == truth
    return truth


def ask(settings: Settings, users: list[str], k: int, tag: str) -> list[Any]:
    """One recommendation request per user through `request`'s client; the answers in that order."""
    from producers.requests import RequestClient
    from streamrec.schemas import RecommendationRequest

    client = RequestClient(settings)
    try:
        return [client.ask(RecommendationRequest(request_id=f"{tag}-{u}", user_id=u, k=k))[0] for u in users]
    finally:
        client.close()


def first_events(settings: Settings) -> pd.DataFrame:
    """The first N_EVENTS interactions by time: what a replay with ``limit=N_EVENTS`` sends."""
    frame = pd.read_parquet(settings.data_dir / "recommendation_interactions.parquet")
    return frame.sort_values("timestamp", kind="stable").head(N_EVENTS)


def online_state(settings: Settings, users: list[str]) -> dict[str, dict]:
    client = FeatureClient(settings)
    try:
        rows = client.users_features(users)
    finally:
        client.close()
    keys = ["recent_item_ids", "recent_interaction_types", *(f"count_{t}" for t in INTERACTION_TYPES)]
    return {u: {k: row[k] for k in keys} for u, row in zip(users, rows, strict=True)}


def differences(settings: Settings, truth: dict[str, dict]) -> dict[str, tuple[dict, dict]]:
    got = online_state(settings, list(truth))
    return {u: (truth[u], got[u]) for u in truth if truth[u] != got[u]}


def explain(settings: Settings, wrong: dict[str, tuple[dict, dict]], *workers: Worker) -> str:
    """Which users differ and by how much, to tell lost events from double counts."""
    from kafka.partitioner.default import murmur2

    def partition(user: str) -> int:  # kafka-python's default partitioner, as the replay used it
        return (murmur2(user.encode()) & 0x7FFFFFFF) % n_partitions

    n_partitions = settings.topic_partitions
    by_partition: dict[int, int] = {}
    for user in wrong:
        by_partition[partition(user)] = by_partition.get(partition(user), 0) + 1
    lines = [f"{len(wrong)} users differ from the ground truth; by partition {dict(sorted(by_partition.items()))}"]
    for user, (want, got) in list(wrong.items())[:5]:
        counts = {k: (want[k], got[k]) for k in want if k.startswith("count_") and want[k] != got[k]}
        lines.append(f"  {user} (p{partition(user)}): counts (truth, online) {counts}; newest truth "
                     f"{want['recent_item_ids'][:3]} online {(got['recent_item_ids'] or [])[:3]}")
    for w in workers:
        alive = w.proc.poll() is None
        lines.append(f"--- worker {w.url} {'figures ' + str(w.figures()) if alive else '(dead)'}:\n{w.tail(25)}")
    return "\n".join(lines)


# ---- Apache Kafka ------------------------------------------------------------------------------------
KAFKA_CACHE = Path(os.environ.get("STREAMREC_KAFKA_CACHE") or ROOT / ".stack" / f"kafka-{ak.VERSION}")


def kafka_missing() -> str | None:
    if shutil.which("java") is None:
        return "no `java` on PATH (Apache Kafka needs Java 17+)"
    if shutil.which("mvn") is None and not (KAFKA_CACHE / "libs" / ".complete").exists():
        return f"no `mvn` on PATH and no jars in {KAFKA_CACHE}"
    return None


needs_kafka = pytest.mark.skipif(kafka_missing() is not None, reason=kafka_missing() or "")


def sourced(env_file: Path) -> dict[str, str]:
    """The variables a shell has after `set -a; . env_file` (what `stack up --secure` tells users to run)."""
    import subprocess

    script = f"set -a; . {shlex.quote(str(env_file))}; set +a; env -0"
    out = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True,
                         check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def client_fields(stack_dir: Path) -> dict[str, Any]:
    """A client's settings of the secured stack in ``stack_dir``, as Settings fields, from its client.env."""
    env = sourced(stack_dir / "secure" / "client.env")
    by_alias = {field.validation_alias: name for name, field in Settings.model_fields.items()}
    return {by_alias[k]: v for k, v in env.items() if k.startswith(("KAFKA_", "REDIS_"))}


# ---- models ----------------------------------------------------------------------------------------------
def raw_of(ds: Dataset) -> RawData:
    from models.data import RawData

    return RawData(ds.users, ds.items, ds.interactions, ds.affinities)


def read_all(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` from the start of each partition (up to ~4 MB a partition fetch: DLQ
    copies of oversized records)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(consumer_timeout_ms=5000, max_partition_fetch_bytes=4_000_000,
                             **kafka_clients.python_config(settings))
    consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
    consumer.seek_to_beginning()
    records = list(consumer)
    consumer.close()
    return records
