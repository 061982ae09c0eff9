"""What the service benchmarks share: a stack of their own on free ports, and worker processes.

The broker is Tansu or Apache Kafka (``broker=``, else ``STREAMREC_BROKER``, else Tansu). Apache Kafka's
jars come from the shared cache (``STREAMREC_KAFKA_CACHE``, else the default stack's), never fetched anew
into a temporary folder; its node needs a client port and a controller port after it, so its ports are
taken as a free consecutive block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamrec.stack import free_port, free_ports

ROOT = Path(__file__).resolve().parents[1]
BROKERS = ("kafka", "tansu")




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
    from streamrec.apache_kafka import cache_dir

    return cache_dir(load_settings(broker="tansu", kafka_brokers=1))


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def own_stack(tmp: Path, data: Path, checkpoints: Path | None = None, broker: str | None = None,
              feature_repo: bool = True) -> Iterator[tuple[Any, dict[str, str]]]:
    """An empty broker + Redis on free ports (with the feature repo applied unless ``feature_repo`` is
    False); yields (settings, env), env being what worker processes on this stack need."""
    from streamrec import load_settings
    from streamrec import stack as _stack
    from streamrec.features import FeatureClient

    kind = broker_kind(broker)
    nodes = int(os.environ.get("STREAMREC_KAFKA_BROKERS") or 1) if kind == "kafka" else 1
    cache = kafka_cache() if kind == "kafka" else None
    redis_port = free_port()
    # Apache Kafka node i listens on port + i and its controller on port + nodes + i
    kafka_port = free_ports(2 * nodes if kind == "kafka" else 1, frozenset({redis_port}))
    settings = load_settings(stack_dir=tmp / "stack", broker=kind, kafka_brokers=nodes, kafka_cache_dir=cache,
                             embedded_kafka_port=kafka_port, embedded_redis_port=redis_port, data_dir=data,
                             checkpoint_dir=checkpoints or tmp / "checkpoints",
                             kafka_bootstrap_servers=None, redis_url=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_"))}
    env.update(STREAMREC_STACK_DIR=str(settings.stack_dir), STREAMREC_DATA_DIR=str(data),
               STREAMREC_BROKER=kind, STREAMREC_KAFKA_BROKERS=str(nodes),
               STREAMREC_KAFKA_PORT=str(settings.embedded_kafka_port),
               STREAMREC_REDIS_PORT=str(settings.embedded_redis_port),
               STREAMREC_CHECKPOINT_DIR=str(settings.checkpoint_dir))
    if cache is not None:
        env["STREAMREC_KAFKA_CACHE"] = str(cache)
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
    """Start `streamrec worker --app APP`; return once it owns partitions (and, for the recommender, is ready)."""
    port = free_port()
    port_var = "STREAMREC_WORKER_PORT" if app == "features" else "STREAMREC_RECOMMENDER_PORT"
    env = {**env, port_var: str(port)}
    if app_id:
        env["STREAMREC_WORKER_APP_ID" if app == "features" else "STREAMREC_RECOMMENDER_APP_ID"] = app_id
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamrec", "worker", "--app", app], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    path = "/freshness" if app == "features" else "/status"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        try:
            state = get_json(url + path)
            if state["assigned_partitions"] > 0 and state.get("ready", True):
                return proc, url
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{app} worker not ready in 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
