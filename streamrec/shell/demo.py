"""`streamrec demo`: the whole system end to end on a fresh machine, then a summary.

embedded stack → generate (seed size) → apply the feature repo → train v1 → stream worker and
recommender → replay interactions at a steady rate while the trainer produces v2 → requests →
summary table and PNG plots → stop everything it started (also on failure or Ctrl-C).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streamrec._exceptions import StreamrecError
from streamrec.config import Settings
from streamrec.stats import percentiles

from .workers import ROOT, get_json, start_worker

__all__ = ["run_demo", "DemoSize"]

REPLAY_RATE = 1000.0
REQUEST_RATE = 50.0
TRAINING_FRESHNESS_P99_MS = 500.0  # issue 14: a retrain on the same 2 cores must not cost seconds of freshness


@dataclass(frozen=True)
class DemoSize:
    """How much the demo generates and asks; the defaults are the seed's size."""

    users: int = 1000
    items: int = 5000
    events: int = 20000
    requests: int = 300


@dataclass
class DemoRun:
    settings: Settings
    console: Console
    out_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    size: DemoSize = field(default_factory=DemoSize)

    def stage(self, name: str, fn: Any) -> Any:
        self.console.rule(name)
        started = time.perf_counter()
        result, line = fn()
        self.rows.append((name, line, f"{time.perf_counter() - started:.1f}"))
        return result

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _pushed_since(figures: dict[str, Any], rows_before: int) -> list[float]:
    """The lags of the rows the worker pushed after it had pushed ``rows_before``, from one /freshness
    answer with samples (its newest ``lags_ms``, one per row, the last being row ``rows_pushed``)."""
    lags, pushed = figures.get("lags_ms") or [], int(figures["rows_pushed"])
    n = max(0, pushed - rows_before)
    return list(lags[-n:]) if n else []


def _recall(settings: Settings, version: str | None, key: str = "recall@10") -> str:
    if version is None:
        return "-"
    meta = json.loads((settings.checkpoint_dir / version / "meta.json").read_text())
    value = meta.get("metrics", {}).get(key)
    return f"{value:.3f}" if value is not None else "-"


def _steps(run: DemoRun) -> None:
    from generation.dataset_gen_amazon import main as generate_main
    from models.checkpoints import latest_version
    from producers.replay import replay
    from producers.requests import run_load
    from streamrec.features import FeatureClient

    from . import stack

    s = run.settings

    def up() -> tuple[None, str]:
        return None, "; ".join(f"{x.name} {x.address}" for x in stack.up(s))

    def generate() -> tuple[None, str]:
        size = run.size
        code = generate_main(["--n_users", str(size.users), "--n_items", str(size.items), "--n_interactions",
                              str(size.events), "--out", str(s.data_dir), "--dynamics", "--quiet"])
        if code:
            raise StreamrecError(f"the generator exited with code {code}")
        return None, f"{size.users} users, {size.items} items, {size.events} interactions, session dynamics on"

    def apply() -> tuple[None, str]:
        client = FeatureClient(s)
        views = client.apply()
        client.materialize()
        client.close()
        return None, f"{len(views)} feature views; profiles and items in Redis"

    def train() -> tuple[None, str]:
        proc = subprocess.run([sys.executable, "-m", "streamrec", "train", "--epochs", "5", "--no-plot"],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise StreamrecError(f"training failed: {proc.stderr.strip().splitlines()[-1:]}")
        run.console.print(proc.stdout)
        version = latest_version(s.checkpoint_dir)
        run.figures["v1"] = version
        return None, f"{version}, Recall@10 {_recall(s, version)}"

    def workers() -> tuple[None, str]:
        for app, port in (("features", s.worker_port), ("recommender", s.recommender_port)):
            started = start_worker(os.environ.copy(), run.out_dir / f"worker-{app}.log", app, port=port)
            run.procs.append(started.proc)
        return None, f"features worker and recommender ready; live page http://127.0.0.1:{s.recommender_port}/live"

    def stream() -> tuple[None, str]:
        trainer_done: dict[str, Any] = {}
        freshness = f"http://127.0.0.1:{s.worker_port}/freshness"

        def retrain() -> None:
            time.sleep(5)  # mid-stream: some new events are already in the topic
            before = get_json(freshness)["rows_pushed"]
            trainer_done["proc"] = subprocess.run(
                [sys.executable, "-m", "streamrec", "trainer", "--once", "--epochs", "3"],
                cwd=ROOT, capture_output=True, text=True)
            trainer_done["lags_ms"] = _pushed_since(get_json(f"{freshness}?samples=1&last=20000"), before)

        retrainer = threading.Thread(target=retrain)
        retrainer.start()
        stats = replay(s, s.data_dir / "recommendation_interactions.parquet", rate=REPLAY_RATE)
        retrainer.join()
        time.sleep(2)  # let the last micro-batches land
        fig = get_json(f"{freshness}?samples=1&last=20000")
        run.figures["stream"] = fig
        run.figures["while_training_ms"] = trainer_done.get("lags_ms") or []
        proc = trainer_done["proc"]
        run.figures["v2"] = latest_version(s.checkpoint_dir)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise StreamrecError(f"the trainer failed (exit {proc.returncode}): {last[:300]}")
        return None, (f"{stats.delivered:,} events at {REPLAY_RATE:.0f}/s; trainer → {run.figures['v2']}")

    def requests() -> tuple[None, str]:
        import pandas as pd

        users = list(pd.read_parquet(s.data_dir / "recommendation_users.parquet")["user_id"])
        result = run_load(s, users + ["unknown-user"], run.size.requests, REQUEST_RATE)
        run.figures["requests"] = result
        served = get_json(f"http://127.0.0.1:{s.recommender_port}/status")["model_version"]
        line = f"{result.answered}/{result.sent} answered, {result.errors} errors, model {served}"
        if result.answered != result.sent or result.errors:
            raise StreamrecError(f"not every request was answered without error: {line}")
        return None, line

    run.stage("start the embedded stack", up)
    run.stage("generate synthetic data", generate)
    run.stage("apply the feature repository", apply)
    run.stage("train the two-tower model (v1)", train)
    run.stage("start the stream worker and recommender", workers)
    run.stage("replay interactions; trainer produces v2", stream)
    run.stage("publish recommendation requests", requests)


def _summary(run: DemoRun) -> Table:
    import numpy as np

    from stream_processors.cli import plot_histogram

    s, f = run.settings, run.figures
    table = Table(title="streamrec demo — summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    stream = f.get("stream")
    if stream:
        fr = stream["freshness_ms"]
        table.add_row("events applied / DLQ", f"{stream['applied']:,} / {stream['dlq_total']}")
        table.add_row("freshness p50 / p99 (ms)", f"{fr['p50']:.1f} / {fr['p99']:.1f}")
        during = f.get("while_training_ms")
        if during:
            while_training = percentiles(during, (50, 99))
            table.add_row(f"freshness p50 / p99 while the trainer ran (ms, {len(during):,} rows; goal p99 ≤ "
                          f"{TRAINING_FRESHNESS_P99_MS:.0f})", "{p50:.1f} / {p99:.1f}".format(**while_training))
        plot_histogram(stream.get("lags_ms", []), run.out_dir / "freshness.png")
    result = f.get("requests")
    if result:
        summary = result.summary()
        rt, sv = summary["round_trip_ms"], summary["server_latency_ms"]
        table.add_row("request round trip p50 / p99 (ms)", f"{rt['p50']:.1f} / {rt['p99']:.1f}")
        table.add_row("request server latency p50 / p99 (ms)", f"{sv['p50']:.1f} / {sv['p99']:.1f}")
        table.add_row("fallbacks", ", ".join(f"{k} {v}" for k, v in summary["fallbacks"].items()) or "none")
        if result.round_trip_ms:
            plot_histogram(list(np.asarray(result.round_trip_ms)), run.out_dir / "latency.png",
                           title="request round trip")
    table.add_row("Recall@10 v1 / latest", f"{_recall(s, f.get('v1'))} ({f.get('v1')}) / "
                  f"{_recall(s, f.get('v2'))} ({f.get('v2')})")
    table.add_row("Recall@10 v1, history as of the request / as of the day's start (freshness lift)",
                  f"{_recall(s, f.get('v1'))} / {_recall(s, f.get('v1'), 'day_start_recall@10')}")
    table.add_row("plots", f"{run.out_dir / 'freshness.png'}, {run.out_dir / 'latency.png'}")
    return table


def _busy(settings: Settings) -> list[str]:
    """What the demo would share with something already running: it refuses rather than mix its data
    into another run (or stop a stack it did not start)."""
    import socket

    from . import stack

    busy = [f"the embedded {x.name} at {x.address}" for x in stack.status(settings)
            if x.mode == "embedded" and x.running]
    ports = {"STREAMREC_WORKER_PORT": settings.worker_port, "STREAMREC_RECOMMENDER_PORT": settings.recommender_port}
    if settings.embedded_kafka:
        ports["STREAMREC_KAFKA_PORT"] = settings.embedded_kafka_port
    if settings.embedded_redis:
        ports["STREAMREC_REDIS_PORT"] = settings.embedded_redis_port
    for variable, port in ports.items():
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(f"127.0.0.1:{port} ({variable})")
    return list(dict.fromkeys(busy))


def run_demo(settings: Settings, keep_stack: bool = False, console: Console | None = None,
             size: DemoSize | None = None) -> None:
    """Run every stage in order; stop at the first failure (raised: a non-zero exit); always stop what the
    demo started, and nothing else. Refuses to start next to a running stack or workers."""
    from . import stack

    busy = _busy(settings)
    if busy:
        raise StreamrecError(f"the demo runs on a stack of its own, but {busy[0]} is in use"
                             f"{f' (and {len(busy) - 1} more)' if len(busy) > 1 else ''}: stop it "
                             "(`streamrec stack down`) or pick free ports with STREAMREC_KAFKA_PORT, "
                             "STREAMREC_REDIS_PORT, STREAMREC_WORKER_PORT, STREAMREC_RECOMMENDER_PORT")
    console = console or Console()
    out_dir = settings.demo_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    run = DemoRun(settings, console, out_dir, size=size or DemoSize())
    stages = Table(title="streamrec demo — stages")
    for column in ("stage", "result", "seconds"):
        stages.add_column(column)
    try:
        _steps(run)
    finally:
        run.stop_all()
        for row in run.rows:
            stages.add_row(*row)
        console.print(stages)
        try:
            console.print(_summary(run))
        finally:
            if not keep_stack:
                stack.down(settings)
