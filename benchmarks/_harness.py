"""What the service benchmarks share: a stack of their own on free ports, and worker processes.

The broker is Tansu or Apache Kafka (``broker=``, else ``STREAMREC_BROKER``, else Tansu). Apache Kafka's
jars come from the shared cache (``STREAMREC_KAFKA_CACHE``, else the default stack's), never fetched anew
into a temporary folder; its node needs a client port and a controller port after it, so its ports are
taken as a free consecutive block.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamrec.shell import workers
from streamrec.shell.stack import free_cluster_ports, free_port, free_ports
from streamrec.shell.workers import APP_ID_VARIABLE
from streamrec.stats import percentiles

ROOT = Path(__file__).resolve().parents[1]
BROKERS = ("kafka", "tansu")




def latency_ms(samples_s: list[float]) -> dict[str, float | None]:
    """p50 and p99, in milliseconds, of durations in seconds: ``{"p50_ms": …, "p99_ms": …}``."""
    return {f"{k}_ms": v for k, v in percentiles((s * 1000.0 for s in samples_s), (50, 99)).items()}


def broker_kind(broker: str | None = None) -> str:
    """``broker``, else STREAMREC_BROKER, else tansu; ValueError for anything else."""
    kind = broker or os.environ.get("STREAMREC_BROKER") or "tansu"
    if kind not in BROKERS:
        raise ValueError(f"unknown broker {kind!r}; choose from {', '.join(BROKERS)}")
    return kind


def kafka_cache() -> Path:
    """Apache Kafka's jar folder: STREAMREC_KAFKA_CACHE, else the default stack's (fetched there once)."""
    override = os.environ.get("STREAMREC_KAFKA_CACHE")
    if override:
        return Path(override).resolve()
    from streamrec import load_settings
    from streamrec.shell.apache_kafka import cache_dir

    return cache_dir(load_settings(broker="tansu", kafka_brokers=1))


@contextmanager
def own_stack(tmp: Path, data: Path, checkpoints: Path | None = None, broker: str | None = None,
              feature_repo: bool = True, redis_nodes: int = 1) -> Iterator[tuple[Any, dict[str, str]]]:
    """An empty broker + Redis on free ports (with the feature repo applied unless ``feature_repo`` is
    False; ``redis_nodes`` ≥ 3: a Redis Cluster of that many primaries, a replica each); yields (settings,
    env), env being what worker processes on this stack need."""
    from streamrec import load_settings
    from streamrec.features import FeatureClient
    from streamrec.shell import stack as _stack

    kind = broker_kind(broker)
    nodes = int(os.environ.get("STREAMREC_KAFKA_BROKERS") or 1) if kind == "kafka" else 1
    cache = kafka_cache() if kind == "kafka" else None
    redis_port = free_port() if redis_nodes == 1 else free_cluster_ports(2 * redis_nodes)
    redis_ports = frozenset(range(redis_port, redis_port + (1 if redis_nodes == 1 else 2 * redis_nodes)))
    # Apache Kafka node i listens on port + i and its controller on port + nodes + i
    kafka_port = free_ports(2 * nodes if kind == "kafka" else 1, redis_ports)
    settings = load_settings(stack_dir=tmp / "stack", broker=kind, kafka_brokers=nodes, kafka_cache_dir=cache,
                             embedded_kafka_port=kafka_port, embedded_redis_port=redis_port, data_dir=data,
                             redis_nodes=redis_nodes,
                             checkpoint_dir=checkpoints or tmp / "checkpoints",
                             kafka_bootstrap_servers=None, redis_url=None)
    env = workers.settings_env(settings)
    try:
        _stack.up(settings)
        if feature_repo:
            client = FeatureClient(settings)
            client.apply()
            client.materialize()
            client.close()
        yield settings, env
    finally:
        _stack.down(settings)


def start_worker(env: dict[str, str], log: Path, app: str = "features",
                 app_id: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start `streamrec worker --app APP` on a free port; return once it owns partitions (and, for the
    recommender, is ready): its process and its pages' URL."""
    extra = {APP_ID_VARIABLE[app]: app_id} if app_id else {}
    started = workers.start_worker({**env, **extra}, log, app, port=free_port())
    return started.proc, started.url


def service_pids(settings: Any) -> dict[str, int]:
    """The pid of each running service of the stack (a Kafka node as "broker", the others by name), for
    :class:`streamrec.stats.CpuClock`."""
    from streamrec.shell import stack as _stack

    return {"broker" if service.name.startswith("kafka") else service.name: service.pid
            for service in _stack.status(settings) if service.pid and service.running}


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
