"""What the service benchmarks share: a stack of their own on free ports, and worker processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def own_stack(tmp: Path, data: Path, checkpoints: Path | None = None) -> Iterator[tuple[Any, dict[str, str]]]:
    """An empty broker + Redis on free ports with the feature repo applied; yields (settings, env)."""
    from streamrec import load_settings
    from streamrec import stack as _stack
    from streamrec.features import FeatureClient

    settings = load_settings(stack_dir=tmp / "stack", embedded_kafka_port=free_port(),
                             embedded_redis_port=free_port(), data_dir=data,
                             checkpoint_dir=checkpoints or tmp / "checkpoints",
                             kafka_bootstrap_servers=None, redis_url=None)
    _stack.up(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_"))}
    env.update(STREAMREC_STACK_DIR=str(settings.stack_dir), STREAMREC_DATA_DIR=str(data),
               STREAMREC_KAFKA_PORT=str(settings.embedded_kafka_port),
               STREAMREC_REDIS_PORT=str(settings.embedded_redis_port),
               STREAMREC_CHECKPOINT_DIR=str(settings.checkpoint_dir))
    try:
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
    proc.kill()
    raise RuntimeError(f"{app} worker not ready in 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
