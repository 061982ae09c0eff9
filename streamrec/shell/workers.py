"""Worker processes: `streamrec worker`, and the one way the demo, the benchmarks and the tests start a
worker and wait until it serves.

A worker is ready when its page (`/freshness` for the features worker, `/status` for the recommender)
says it owns partitions and is ready (Feast loaded, no partition stalled).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from streamrec._exceptions import StreamrecError
from streamrec.config import get_settings, settings_env

__all__ = ["worker", "WorkerProcess", "start_worker", "settings_env", "get_json", "ROOT", "APPS"]

ROOT = Path(__file__).resolve().parents[2]  # the project's folder: workers run from here
APPS = ("features", "recommender")
READY_PAGE = {"features": "/freshness", "recommender": "/status"}
PORT_VARIABLE = {"features": "STREAMREC_WORKER_PORT", "recommender": "STREAMREC_RECOMMENDER_PORT"}
APP_ID_VARIABLE = {"features": "STREAMREC_WORKER_APP_ID", "recommender": "STREAMREC_RECOMMENDER_APP_ID"}


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--app", "which", type=click.Choice(APPS), default="features", show_default=True,
              help="features: history and item agents; recommender: answers requests.")
@click.option("-l", "--loglevel", type=click.Choice(["crit", "error", "warn", "info", "debug"]), default="warn",
              show_default=True, help="Faust's log level (streamrec's own figures log at info regardless).")
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker(which: str, loglevel: str, faust_args: tuple[str, ...]) -> None:
    """Run a stream worker: `features` (history and item agents; /freshness and /metrics on
    STREAMREC_WORKER_PORT) or `recommender` (answers recommendation-requests; /status and /live on
    STREAMREC_RECOMMENDER_PORT).

    Same as `faust -A stream_processors.app worker` (or `serving.app`); extra arguments go to Faust.
    """
    settings = get_settings()
    from streamrec import kafka_clients
    from streamrec.features import require_redis

    # Faust would retry a refused password or an untrusted certificate forever, silently: one line instead
    kafka_clients.require_reachable(settings)
    require_redis(settings)
    if which == "features":
        from stream_processors.sink import client_name
        from streamrec.features import FeatureClient

        # the state lives in the rows: their schema must be this version's
        client = FeatureClient(settings, client_name=client_name(settings))
        try:
            client.check_history_view()
        except BaseException:
            client.close()
            raise
        from stream_processors import app as features_app

        features_app.use_features(client)  # the app's client: Feast is loaded once per process
        app = features_app.app
        port, logger = settings.worker_port, "streamrec.worker"
    else:
        from serving.app import app

        port, logger = settings.recommender_port, "streamrec.recommender"
    logging.getLogger(logger).setLevel(logging.DEBUG if loglevel == "debug" else logging.INFO)
    sys.argv = ["streamrec worker", "worker", "-l", loglevel, "--web-port", str(port), *faust_args]
    app.main()


def get_json(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


@dataclass
class WorkerProcess:
    """A started `streamrec worker --app APP` and its pages."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    app: str = "features"

    def page(self, path: str | None = None) -> dict[str, Any]:
        """A JSON page (default: the app's own, `/freshness` or `/status`)."""
        return get_json(self.url + (path or READY_PAGE[self.app]), timeout=5)

    def ready(self) -> bool:
        """It owns partitions and says it is ready."""
        state = self.page()
        return state["assigned_partitions"] > 0 and bool(state.get("ready", True))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM (Faust stops its agents and commits what is done), SIGKILL after ``grace_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_worker(env: Mapping[str, str], log: Path, app: str, port: int, timeout: float = 120.0) -> WorkerProcess:
    """Start `streamrec worker --app APP` with ``env``, its page on ``port``, and return once it is ready.
    Raises StreamrecError (one line naming the log) if it exits or is not ready within ``timeout``; it is
    stopped then."""
    env = {**env, PORT_VARIABLE[app]: str(port)}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "streamrec", "worker", "--app", app], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    started = WorkerProcess(proc, url, log, app)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StreamrecError(f"the {app} worker exited with {proc.returncode} at start; see {log}")
        try:
            if started.ready():
                return started
        except OSError:
            pass
        time.sleep(0.3)
    started.stop()
    raise StreamrecError(f"the {app} worker was not ready within {timeout:.0f} s; see {log}")
