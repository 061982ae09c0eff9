"""Model freshness: how long from an event on the interactions topic to the first served model trained on it.

Measured on a stack of its own, in the production shape: events are produced at a steady rate while
`streamrec trainer` (its own process, niced, one torch thread) logs them, retrains, gates and announces,
and the recommender (`streamrec worker --app recommender`, beside the features worker) swaps the model in.
Each checkpoint names the offsets its run had logged (``data_window.logged_through``), and the
recommender's ``/status`` says since when it serves its model (``model_since``), so every event gets

    freshness = (swap time of the first served model whose logged offsets pass the event's offset)
                − (the event's Kafka time)

The wait splits into: waiting for a run to start (the schedule, here: as soon as an event is pending),
the run (read the log, train, evaluate, gate, save), and announce → swap (model-updates, load, index).
Production stops at ``seconds``; the measurement ends once a served model has seen every event sent.
"""

from __future__ import annotations

import bisect
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    from ._harness import ROOT, broker_kind, own_stack, service_pids, start_worker, stop
except ImportError:  # run as a script
    from _harness import ROOT, broker_kind, own_stack, service_pids, start_worker, stop

__all__ = ["Swap", "event_freshness", "run"]


@dataclass(frozen=True)
class Swap:
    """A model the recommender started serving at ``at`` (epoch s), trained on the log up to ``logged``
    (partition → next offset not in its data)."""

    version: str
    at: float
    logged: dict[int, int]


def event_freshness(sent: list[tuple[int, int, float]], swaps: list[Swap]) -> tuple[list[float], int]:
    """Seconds from each sent event ``(partition, offset, sent_at)`` to the first swap (in serving order)
    whose model was trained on it, and how many events no swap covered. A later swap to a model that saw
    less (a rollback) does not count as covering what it did not see."""
    swaps = sorted(swaps, key=lambda s: s.at)
    covered: dict[int, list[int]] = {}  # partition → for each swap, the highest offset covered so far
    for partition in {p for p, _, _ in sent}:
        best, marks = -1, []
        for s in swaps:
            best = max(best, s.logged.get(partition, 0) - 1)
            marks.append(best)
        covered[partition] = marks
    out, missed = [], 0
    for partition, offset, sent_at in sent:
        i = bisect.bisect_left(covered[partition], offset)  # marks never fall: first swap that covers it
        if i == len(swaps):
            missed += 1
        else:
            out.append(swaps[i].at - sent_at)
    return out, missed


class _StatusWatch(threading.Thread):
    """Polls the recommender's /status and keeps (version, model_since) of every model it served."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.seen: dict[str, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        from streamrec.shell.workers import get_json

        while not self._done.wait(self.every_s):
            try:
                status = get_json(self.url + "/status", timeout=5)
            except Exception:  # noqa: BLE001 - a slow answer: ask again
                continue
            version, since = status.get("model_version"), status.get("model_since")
            if version and since and version not in self.seen:
                self.seen[version] = float(since)

    def close(self) -> None:
        self._done.set()
        self.join(10)


def _event(users: list[str], items: list[str], i: int) -> Any:
    from datetime import UTC

    from streamrec.schemas import Interaction

    return Interaction(event_id=f"mf-{i}", user_id=users[i * 7919 % len(users)],
                       item_id=items[i * 104729 % len(items)], interaction_type="positive_view",
                       timestamp=datetime.now(UTC))


def _produce(settings: Any, users: list[str], items: list[str], rate: float, seconds: float
             ) -> list[tuple[int, int, float]]:
    """Send ``rate`` events a second for ``seconds``; (partition, offset, Kafka time in epoch s) of each."""
    from streamrec import kafka_clients
    from streamrec.schemas import encode
    from streamrec.topics import INTERACTIONS

    producer = kafka_clients.producer(settings, acks="all", linger_ms=0)
    pending: list[tuple[Any, float]] = []
    t0, n = time.monotonic(), int(rate * seconds)
    try:
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ev = _event(users, items, i)
            pending.append((producer.send(INTERACTIONS, key=ev.user_id.encode(), value=encode(ev)), time.time()))
        producer.flush(30)
        out = []
        for future, sent_at in pending:
            meta = future.get(timeout=30)
            # the record's Kafka time (CreateTime, set by this producer), as the contract defines model freshness
            kafka_time = meta.timestamp / 1000 if meta.timestamp and meta.timestamp > 0 else sent_at
            out.append((meta.partition, meta.offset, kafka_time))
        return out
    finally:
        producer.close(timeout=10)


class _Checkpoints:
    """The meta.json of each served version, read once (the wait for the last event asks every 0.5 s)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._meta: dict[str, dict[str, Any]] = {}

    def meta(self, version: str) -> dict[str, Any]:
        import json

        from models.checkpoints import META

        if version not in self._meta:
            self._meta[version] = json.loads((self.root / version / META).read_text(encoding="utf-8"))
        return self._meta[version]

    def swaps(self, seen: dict[str, float]) -> list[Swap]:
        from streamrec.topics import INTERACTIONS

        out = []
        for version, at in seen.items():
            logged = self.meta(version).get("data_window", {}).get("logged_through", {}).get(INTERACTIONS, {})
            out.append(Swap(version, at, {int(p): int(o) for p, o in logged.items()}))
        return out

    def runs(self, swaps: list[Swap]) -> list[dict[str, float]]:
        """Per model the stream trained: how long its run took (to the save), and save → swap."""
        runs = []
        for s in swaps:
            meta = self.meta(s.version)
            if "logged_through" not in meta.get("data_window", {}):  # the initial model, trained before the stream
                continue
            started = datetime.fromisoformat(meta["train"]["run_started_at"]).timestamp()
            saved = datetime.fromisoformat(meta["created_at"]).timestamp()
            runs.append({"run_s": saved - started, "save_to_swap_s": s.at - saved})
        return runs


def run(seconds: float = 120.0, rate: float = 20.0, epochs: int = 5, users: int = 1000, items: int = 5000,
        interactions: int = 20_000, broker: str | None = None, tail_timeout_s: float = 600.0,
        progress: Any = print) -> dict[str, Any]:
    """Produce for ``seconds`` at ``rate`` with the trainer retraining as soon as events are pending
    (``--after-events 1``, ``epochs`` a run); the figures as a dict."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from models.train import TrainConfig
    from models.trainer import TrainerOptions, run_once
    from streamrec.stats import CpuClock, percentiles

    with tempfile.TemporaryDirectory(prefix="streamrec-model-freshness-") as tmp_name:
        tmp = Path(tmp_name)
        data, checkpoints = tmp / "data", tmp / "checkpoints"
        ds = generate(GeneratorConfig(n_users=users, n_items=items, n_interactions=interactions, seed=3))
        write(ds, data)
        kind = broker_kind(broker)
        with own_stack(tmp / "stack", data, checkpoints, broker=kind) as (settings, env):
            # the model serving when the stream starts (no announcement: the recommender reads LATEST)
            run_once(settings, TrainerOptions(train=TrainConfig(epochs=epochs), publish=False))
            served = _Checkpoints(checkpoints)
            with ExitStack() as running:  # each started process stopped, whatever fails after it
                features, _ = start_worker(env, tmp / "features.log")
                running.callback(stop, features)
                recommender, url = start_worker(env, tmp / "recommender.log", app="recommender")
                running.callback(stop, recommender)
                trainer_log = running.enter_context((tmp / "trainer.log").open("w"))
                trainer = subprocess.Popen(
                    [sys.executable, "-m", "streamrec", "trainer", "--after-events", "1", "--epochs", str(epochs),
                     "--data-dir", str(data), "--out", str(checkpoints)],
                    cwd=ROOT, env=env, stdout=trainer_log, stderr=subprocess.STDOUT)
                running.callback(stop, trainer)
                watch = _StatusWatch(url)
                watch.start()
                running.callback(watch.close)
                clock = CpuClock({"trainer": trainer.pid, "recommender": recommender.pid,
                                  "features worker": features.pid, **service_pids(settings)})
                clock.start()
                progress(f"model freshness: {rate:g} events/s for {seconds:g} s on {kind}, "
                         f"trainer --after-events 1 --epochs {epochs}")
                sent = _produce(settings, ds.users.user_id.tolist(), ds.items.item_id.tolist(), rate, seconds)
                produced_s = time.monotonic()
                last: dict[int, int] = {}
                for partition, offset, _ in sent:
                    last[partition] = max(last.get(partition, -1), offset)
                deadline = time.monotonic() + tail_timeout_s
                while time.monotonic() < deadline:  # until a served model has seen the last event of each partition
                    if trainer.poll() is not None:
                        raise RuntimeError(f"the trainer exited ({trainer.returncode}): see {tmp / 'trainer.log'}")
                    if event_freshness([(p, o, 0.0) for p, o in last.items()],
                                       served.swaps(dict(watch.seen)))[1] == 0:
                        break
                    time.sleep(0.5)
                cpu = clock.stop()
                tail_s = time.monotonic() - produced_s
            swaps = served.swaps(dict(watch.seen))
            ages, missed = event_freshness(sent, swaps)
            runs = served.runs(swaps)
            trainer_lines = (tmp / "trainer.log").read_text(encoding="utf-8", errors="replace").splitlines()
    refused = sum("kept the current model" in line for line in trainer_lines)
    failed = sum("run failed" in line for line in trainer_lines)
    return {
        "broker": kind, "rate": rate, "seconds": seconds, "epochs": epochs, "events": len(sent),
        "data": {"users": users, "items": items, "interactions": interactions},
        "freshness_s": percentiles(ages, (50, 99), with_max=True, digits=1),
        "not_covered": missed, "tail_s": round(tail_s, 1),
        "models_served": len(runs), "runs_refused": refused, "runs_failed": failed,
        "run_s": percentiles([r["run_s"] for r in runs], (50, 99), with_max=True, digits=1),
        "save_to_swap_s": percentiles([r["save_to_swap_s"] for r in runs], (50, 99), with_max=True, digits=2),
        "cpu_cores": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="how long events are produced")
    ap.add_argument("--rate", type=float, default=20.0, help="events a second")
    ap.add_argument("--epochs", type=int, default=5, help="the trainer's --epochs")
    ap.add_argument("--interactions", type=int, default=20_000,
                    help="size of the base data (users = interactions / 20, items = interactions / 4)")
    ap.add_argument("--broker", choices=("kafka", "tansu"), default=None)
    args = ap.parse_args(argv)
    n = args.interactions
    print(json.dumps(run(args.seconds, args.rate, args.epochs, users=max(10, n // 20), items=max(12, n // 4),
                         interactions=n, broker=args.broker), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
