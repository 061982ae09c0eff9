"""A fresh stack per test and real `streamrec worker` processes on it, so tests never see each other's events.

- On Tansu (`STREAMREC_BROKER=tansu`, the default) each test gets an empty broker of its own: one starts in
  well under a second.
- On Apache Kafka (`STREAMREC_BROKER=kafka`, what `make test` uses where Java and Maven exist) a JVM node
  takes seconds to start, so the session shares one broker: each test gets the contract's topics deleted
  and created anew, consumer groups (app ids) of its own, and a Redis of its own. Tests that kill or stop
  the broker start one of their own.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generation.dataset_gen_amazon import GeneratorConfig, generate, write
from streamrec import StreamrecError, kafka_clients, load_settings
from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.shell import stack as _stack
from streamrec.shell.stack import free_port, free_ports
from streamrec.shell.workers import WorkerProcess, settings_env, start_worker

ROOT = Path(__file__).resolve().parents[2]




BROKER = os.environ.get("STREAMREC_BROKER", "tansu")


@pytest.fixture(scope="session")
def shared_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """On Apache Kafka, the bootstrap address of one node shared by the session's stream tests; None on Tansu."""
    if BROKER != "kafka":
        yield None
        return
    settings = load_settings(stack_dir=tmp_path_factory.mktemp("kafka"), embedded_kafka_port=free_ports(2),
                             embedded_redis_port=free_port(), broker="kafka", kafka_brokers=1,
                             kafka_bootstrap_servers=None, redis_url=None)
    _stack.up(settings)
    try:
        yield settings.bootstrap_servers
    finally:
        _stack.down(settings)


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


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated dataset (parquet files only) for the stream tests."""
    out = tmp_path_factory.mktemp("generated")
    write(generate(GeneratorConfig(n_users=300, n_items=1000, n_interactions=5000, seed=11)), out)
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-tower model trained briefly on the generated data: v1 in a checkpoint folder."""
    from models.checkpoints import promote, save_checkpoint
    from models.compare import train_and_evaluate
    from models.data import load_data
    from models.features import popularity_ranking
    from models.train import TrainConfig

    report = train_and_evaluate(load_data(generated), TrainConfig(epochs=4, seed=0))
    root = tmp_path_factory.mktemp("checkpoints")
    path = save_checkpoint(root, report.fit.model, report.prepared.enc.schema,
                           metrics=report.test["two-tower"], data_window={"n_interactions": 5000},
                           popularity=popularity_ranking(report.prepared.raw.interactions))
    promote(root, path.name)
    return root


@pytest.fixture
def env_stack(request: pytest.FixtureRequest, tmp_path: Path, generated: Path,
              shared_kafka: str | None) -> Iterator[Settings]:
    """Empty topics on a broker + a Redis of this test's own, the feature repo applied and materialized.

    Indirect parametrization picks the broker for one test: ``"tansu"`` (a Tansu broker of its own, on any
    machine) or ``"kafka"`` (the shared Apache Kafka node; skipped where the suite runs on Tansu).
    """
    wanted = getattr(request, "param", None)
    if wanted == "tansu":
        shared_kafka = None
    elif wanted == "kafka" and shared_kafka is None:
        pytest.skip("this suite runs on Tansu (no java/mvn): there is no Apache Kafka node")
    data = tmp_path / "data"
    data.mkdir()
    for f in generated.glob("*.parquet"):
        (data / f.name).write_bytes(f.read_bytes())
    tag = uuid.uuid4().hex[:8]
    own = {"kafka_bootstrap_servers": shared_kafka, "worker_app_id": f"features-{tag}",
           "recommender_app_id": f"recommender-{tag}"} if shared_kafka else \
        {"kafka_bootstrap_servers": None, "embedded_kafka_port": free_port(), "broker": "tansu"}
    settings = load_settings(stack_dir=tmp_path / "stack", embedded_redis_port=free_port(), data_dir=data,
                             worker_port=free_port(), checkpoint_dir=tmp_path / "checkpoints", redis_url=None, **own)
    if shared_kafka:
        fresh_topics(settings)
    _stack.up(settings)
    client = FeatureClient(settings)
    client.apply()
    client.materialize()
    client.close()
    yield settings
    _stack.down(settings)


class Worker(WorkerProcess):
    """A worker the test started, with its pages at hand."""

    def figures(self) -> dict[str, Any]:
        return self.page("/freshness")

    def status(self) -> dict[str, Any]:
        return self.page("/status")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start `streamrec worker` processes; wait until each owns partitions; stop them all at the end."""
    started: list[Worker] = []

    def start(settings: Settings, port: int | None = None, timeout: float = 90.0, app: str = "features",
              **env: str) -> Worker:
        port = port or (settings.worker_port if app == "features" else free_port())
        log = tmp_path / f"{app}-{uuid.uuid4().hex[:6]}.log"
        try:
            one = start_worker(settings_env(settings, **env), log, app, port=port, timeout=timeout)
        except StreamrecError as exc:
            pytest.fail(f"{exc}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        worker = Worker(one.proc, one.url, one.log, one.app)
        started.append(worker)
        return worker

    yield start
    for w in started:
        w.stop()


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
