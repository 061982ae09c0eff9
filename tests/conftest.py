"""Shared fixtures: the real embedded stack, once per session, and factories on top of it; a fresh stack per
test with real `streamrec worker` processes for the stream and serving tests; generated data and trained
models, made once per session (training is the slow part).

`make test` starts the stack before pytest; run pytest alone and the `stack` fixture starts it
(and stops it afterwards). Nothing here fakes Kafka, Redis or Feast.

The per-test stack (`env_stack`), so tests never see each other's events:
- On Tansu (`STREAMREC_BROKER=tansu`, the default) each test gets an empty broker of its own: one starts in
  well under a second.
- On Apache Kafka (`STREAMREC_BROKER=kafka`, what `make test` uses where Java and Maven exist) a JVM node
  takes seconds to start, so the session shares one broker: each test gets the contract's topics deleted
  and created anew, consumer groups (app ids) of its own, and a Redis of its own. Tests that kill or stop
  the broker start one of their own.

Helpers that are not fixtures live in tests/helpers.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from generation.dataset_gen_amazon import GeneratorConfig, generate, write
from streamrec import StreamrecError
from streamrec.config import Settings, get_settings, load_settings
from streamrec.features import FeatureClient
from streamrec.shell import stack as _stack
from streamrec.shell.stack import free_cluster_ports, free_port, free_ports
from streamrec.shell.workers import settings_env, start_worker
from streamrec.topics import ensure_topics
from tests.helpers import Worker, client_fields, fresh_topics, kafka_missing, raw_of

if TYPE_CHECKING:
    from generation.dataset_gen_amazon import Dataset
    from models.compare import Report


def pytest_report_header(config: pytest.Config) -> str:
    settings = load_settings()
    where = settings.kafka_bootstrap_servers or f"embedded, {settings.kafka_brokers} node(s)"
    return f"streamrec broker: {settings.broker if settings.embedded_kafka else 'external'} ({where})"


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    """Each test reads the environment anew (tests that set variables must not leak)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Settings for a running stack (embedded unless KAFKA_BOOTSTRAP_SERVERS/REDIS_URL are set)."""
    settings = load_settings()
    was_running = all(s.running for s in _stack.status(settings))
    _stack.up(settings)
    yield settings
    if not was_running:
        _stack.down(settings)


@pytest.fixture
def topic_factory(stack: Settings) -> Callable[..., str]:
    """Create a fresh, uniquely named topic: ``topic_factory(partitions=1) -> name``."""

    def make(prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        ensure_topics(stack, [name], partitions=partitions)
        return name

    return make


# ---- a stack per test, and workers on it (tests/stream_processors, tests/serving) -------------------------
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


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated dataset (parquet files only) for the stream tests."""
    out = tmp_path_factory.mktemp("generated")
    write(generate(GeneratorConfig(n_users=300, n_items=1000, n_interactions=5000, seed=11)), out)
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-tower model trained briefly on the generated data: v1 in a checkpoint folder."""
    from models.compare import train_and_evaluate
    from models.data import load_data
    from models.train import TrainConfig

    report = train_and_evaluate(load_data(generated), TrainConfig(epochs=4, seed=0))
    root = tmp_path_factory.mktemp("checkpoints")
    _save_promoted(report, root, n_interactions=5000)
    return root


def _save_promoted(report: Report, root: Path, n_interactions: int) -> Path:
    """``report``'s model saved in ``root`` as its next version and promoted; returns the version's folder."""
    from models.checkpoints import promote, save_checkpoint
    from models.features import popularity_ranking

    path = save_checkpoint(root, report.fit.model, report.prepared.enc.schema,
                           metrics=report.test["two-tower"], data_window={"n_interactions": n_interactions},
                           popularity=popularity_ranking(report.prepared.raw.interactions))
    promote(root, path.name)
    return path


@pytest.fixture
def env_stack(request: pytest.FixtureRequest, tmp_path: Path, generated: Path,
              shared_kafka: str | None) -> Iterator[Settings]:
    """Empty topics on a broker + a Redis of this test's own, the feature repo applied and materialized.

    Indirect parametrization picks the broker for one test: ``"tansu"`` (a Tansu broker of its own, on any
    machine) or ``"kafka"`` (the shared Apache Kafka node; skipped where the suite runs on Tansu); or, with
    ``"redis-cluster"``, the suite's broker and a Redis Cluster of 3 primaries, each with a replica; or, with
    ``"secure"``, a secured stack of its own (`stack up --secure`: Apache Kafka on SASL_SSL, Redis on TLS with
    a password), the settings yielded being a client's made from the exports it wrote (its ``client.env``).
    """
    wanted = getattr(request, "param", None)
    cluster, secure = wanted == "redis-cluster", wanted == "secure"
    if secure and kafka_missing():
        pytest.skip(f"the secured stack runs on Apache Kafka: {kafka_missing()}")
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
    if secure:
        own = {"kafka_bootstrap_servers": None, "embedded_kafka_port": free_ports(2), "broker": "kafka",
               "kafka_brokers": 1, "stack_secure": True}
    redis = {"embedded_redis_port": free_cluster_ports(6), "redis_nodes": 3} if cluster else \
        {"embedded_redis_port": free_port(), "redis_nodes": 1}
    settings = load_settings(stack_dir=tmp_path / "stack", data_dir=data, worker_port=free_port(),
                             checkpoint_dir=tmp_path / "checkpoints", redis_url=None, **redis, **own)
    if shared_kafka and not secure:
        fresh_topics(settings)
    _stack.up(settings)
    embedded = settings
    if secure:  # from here on a client's settings, exactly what sourcing client.env gives a shell
        settings = load_settings(stack_dir=embedded.stack_dir, data_dir=data, worker_port=embedded.worker_port,
                                 checkpoint_dir=embedded.checkpoint_dir, **client_fields(embedded.stack_dir))
    try:
        client = FeatureClient(settings)
        client.apply()
        client.materialize()
        client.close()
        yield settings
    finally:
        _stack.down(embedded)


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


# ---- data and a trained model, once per session (tests/models, tests/serving) -------------------------------
# torch and the models are imported inside the fixtures: a run of the stack tests alone never loads them.
@pytest.fixture(scope="session")
def medium() -> Dataset:
    """2k users: big enough for the model-vs-popularity comparison to be far outside noise."""
    return generate(GeneratorConfig(n_users=2000, n_items=3000, n_interactions=40_000, seed=7))


@pytest.fixture(scope="session")
def trained(medium: Dataset) -> Report:
    from models.compare import train_and_evaluate
    from models.train import TrainConfig

    return train_and_evaluate(raw_of(medium), TrainConfig(epochs=4, seed=0))


@pytest.fixture(scope="session")
def checkpoint(trained: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model saved as v1 and promoted (treat as read-only)."""
    return _save_promoted(trained, tmp_path_factory.mktemp("checkpoints"), n_interactions=40_000)
