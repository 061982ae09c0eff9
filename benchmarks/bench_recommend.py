"""The recommender: in process at 5k and 100k items, and over Kafka, beside a bare echo on the same warm broker.

- in process: ``Recommender.recommend()`` for one request (features given) p50/p99, and the same with
  the Feast online read in front; the baseline is the bare Feast read + tower forward;
- over Kafka, on one broker: the recommender (both workers running) and a bare aiokafka echo
  (``benchmarks/echo.py``, on topics of its own: the broker's two hops and the client, nothing of
  streamrec), each warmed until its p99 stops falling, then measured in interleaved rounds of ``--seconds``
  at ``--rate`` (default 500/s; the median of the rounds is reported, every round is kept);
- ``--sustained-rate`` (default 1,000/s) for ``--sustained-seconds`` (30), both services;
- a hot swap: a new version promoted halfway through a round, p99 during the swap vs outside it;
- saturation: rising rates (8 s each) until a service's p99 passes 100 ms or a request is shed as
  `expired`, twice at one rate; each service's saturation rate is the highest rate that passed. The
  ladder goes on past the recommender's limit until the echo fails too (it passed 12,000/s on 2 cores,
  2026-12-07): an echo that never failed gives only a floor, and the ratio to it only a ceiling.

The load comes from ``producers/load.py`` (librdkafka, a process of its own); every over-Kafka row carries
the CPU (cores) of the load generator, the broker's JVM, Redis, the recommender and the echo over its span.
The broker is ``--broker`` (tansu or kafka; default STREAMREC_BROKER, else tansu). The in-process part
touches no broker: ``--no-in-process`` skips its timings, as `streamrec bench --broker both` does for its
second broker.

    python benchmarks/bench_recommend.py [--items 5000 100000] [--rate 500] [--seconds 10] [--rounds 3]
                                         [--sustained-rate 1000] [--no-saturation] [--broker tansu|kafka]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamrec.shell.workers import get_json

try:
    from ._harness import ROOT, broker_kind, latency_ms, own_stack, service_pids, start_worker, stop
except ImportError:  # run as a script
    from _harness import ROOT, broker_kind, latency_ms, own_stack, service_pids, start_worker, stop


def _train(data: Path, checkpoints: Path, epochs: int) -> None:
    from models.checkpoints import promote, save_checkpoint
    from models.compare import train_and_evaluate
    from models.data import load_data
    from models.features import popularity_ranking
    from models.train import TrainConfig

    report = train_and_evaluate(load_data(data), TrainConfig(epochs=epochs, seed=0))
    path = save_checkpoint(checkpoints, report.fit.model, report.prepared.enc.schema,
                           metrics=report.test["two-tower"], data_window={},
                           popularity=popularity_ranking(report.prepared.raw.interactions))
    promote(checkpoints, path.name)


def _seed_histories(settings: Any, data: Path) -> list[str]:
    """Histories in the online store, as the stream worker would have written them; returns their users."""
    from stream_processors.history import apply_event, feature_row
    from streamrec.features import FeatureClient, history_frame
    from streamrec.schemas import Interaction

    events = pd.read_parquet(data / "recommendation_interactions.parquet")
    states: dict[str, Any] = {}
    recent = events.sort_values("timestamp").tail(20_000)
    for n, r in enumerate(recent.itertuples()):
        ev = Interaction(event_id=str(r.interaction_id), user_id=r.user_id, item_id=r.item_id,
                         interaction_type=r.interaction_type, timestamp=r.timestamp.to_pydatetime())
        states[r.user_id], _ = apply_event(states.get(r.user_id), ev, n)
    now = int(time.time() * 1000)
    client = FeatureClient(settings)
    client.push_history(history_frame([feature_row(u, s, now) for u, s in states.items()]))
    client.close()
    return list(states)


def _in_process(settings: Any, data: Path, rounds: int, users: list[str]) -> dict[str, Any]:
    import torch

    from serving.filtering import load_filter_config
    from serving.model import load_latest
    from serving.recommend import Catalog, Recommender, ServingBundle, user_input
    from streamrec.features import FeatureClient
    from streamrec.schemas import RecommendationRequest

    torch.set_num_threads(1)  # as the recommender worker runs
    items = pd.read_parquet(data / "recommendation_items.parquet").set_index("item_id")
    events = pd.read_parquet(data / "recommendation_interactions.parquet")
    catalog = Catalog(items, list(events["item_id"].value_counts().index))
    bundle = ServingBundle.build(load_latest(settings.checkpoint_dir))
    rec = Recommender(catalog, load_filter_config())
    client = FeatureClient(settings)
    rng = np.random.default_rng(0)
    recommend_only, full, baseline = [], [], []
    for i in range(rounds):
        user = users[int(rng.integers(len(users)))]
        request = RecommendationRequest(request_id=f"b{i}", user_id=user)
        t = time.perf_counter()
        row = client.user_features(user)
        rec.recommend([request], [row], bundle)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        rec.recommend([request], [row], bundle)
        recommend_only.append(time.perf_counter() - t)
        t = time.perf_counter()
        bundle.model.user_embeddings([user_input(client.user_features(user))])
        baseline.append(time.perf_counter() - t)
    client.close()
    warm = slice(20, None)
    r, f, b = latency_ms(recommend_only[warm]), latency_ms(full[warm]), latency_ms(baseline[warm])
    return {"recommend": r, "feast_read_plus_recommend": f, "baseline_feast_read_plus_forward": b,
            "ratio_p99_full_vs_baseline": f["p99_ms"] / b["p99_ms"], "index": type(bundle.index).__name__}


def _swap_under_load(settings: Any, url: str, checkpoints: Path, users: list[str], n: int,
                     rate: float) -> dict[str, Any]:
    """``n`` requests at ``rate`` while, halfway, a new version is promoted (LATEST) and hot-swapped in.

    The new version is a copy of the serving one (the same weights under the next name), so the figure
    is the swap's cost alone: loading, indexing and the switch. "During" is every request sent from the
    promotion until one second after `/status` counts the swap; "outside" the rest."""
    from models.checkpoints import META, latest_version, promote
    from producers.requests import run_load

    current = latest_version(checkpoints)
    if current is None:
        raise RuntimeError("no model to swap from")
    new = f"v{int(current[1:]) + 1}"
    shutil.copytree(checkpoints / current, checkpoints / new)
    meta = json.loads((checkpoints / new / META).read_text(encoding="utf-8"))
    (checkpoints / new / META).write_text(json.dumps({**meta, "version": new}), encoding="utf-8")
    box: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: box.update(load=run_load(settings, users, n, rate)), daemon=True)
    loader.start()
    time.sleep(n / rate / 2)
    swaps = get_json(url + "/status")["swaps"]
    began = time.monotonic()  # the load generator's clock (sent_at)
    promote(checkpoints, new)
    while get_json(url + "/status")["swaps"] == swaps and time.monotonic() - began < 30:
        time.sleep(0.05)
    swapped = time.monotonic()
    loader.join()
    load = box["load"]
    sent, trips = np.asarray(load.sent_at), np.asarray(load.round_trip_ms)
    during = (sent >= began) & (sent <= swapped + 1.0)

    def p99(values: np.ndarray) -> float | None:
        return float(np.percentile(values, 99)) if len(values) else None

    return {"rate": rate, "sent": load.sent, "answered": load.answered, "errors": load.errors,
            "swapped": get_json(url + "/status")["model_version"] == new, "swap_s": swapped - began,
            "during": {"requests": int(during.sum()), "p99_ms": p99(trips[during])},
            "outside": {"requests": int((~during).sum()), "p99_ms": p99(trips[~during])}}


ECHO_TOPICS = ("bench-echo-requests", "bench-echo-responses")  # the echo's own, beside the recommender's
WARMUP_MAX_S = 60.0
SATURATION_P99_MS = 100.0
SATURATION_RATES = (500, 750, 1000, 1250, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000,
                    20000, 24000, 32000)
SATURATION_STEP_S = 8.0


class _Services:
    """The recommender and the echo on one warm broker, and the processes whose CPU every row reports."""

    def __init__(self, settings: Any, env: dict[str, str], recommender: subprocess.Popen, users: list[str],
                 tmp: Path) -> None:
        from streamrec.topics import ensure_topics

        self.settings, self.users = settings, users
        ensure_topics(settings, ECHO_TOPICS)
        self.echo = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo", "--bootstrap", settings.bootstrap_servers,
             "--requests-topic", ECHO_TOPICS[0], "--responses-topic", ECHO_TOPICS[1], "--fetch-max-wait-ms", "100"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=(tmp / "echo.log").open("w"), text=True)
        if not self.echo.stdout or self.echo.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo did not start")
        self.watch = {"recommender": recommender.pid, "echo": self.echo.pid, **service_pids(settings)}

    def measure(self, service: str, rate: float, seconds: float, warmup_max_s: float = 0.0) -> dict[str, Any]:
        """``service`` ("recommender" or "echo") at ``rate`` for ``seconds``: the load's summary, its rate and
        the CPU of every watched process."""
        from producers.requests import run_load

        topics = {} if service == "recommender" else {"requests_topic": ECHO_TOPICS[0],
                                                      "responses_topic": ECHO_TOPICS[1]}
        load = run_load(self.settings, self.users, max(1, int(rate * seconds)), rate, warmup_max_s=warmup_max_s,
                        watch=self.watch, **topics)
        return {"rate": rate, **load.summary()}

    def close(self) -> None:
        stop(self.echo)


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one service folded into one row: the median of each percentile and of each process's CPU,
    the sums of the counts."""
    def med(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    out: dict[str, Any] = {"rate": rounds[0]["rate"], "rounds": len(rounds)}
    for key in ("sent", "answered", "errors", "expired", "missing", "failed_sends"):
        out[key] = sum(r[key] for r in rounds)
    for key in ("round_trip_ms", "server_latency_ms"):
        out[key] = {q: med([r[key][q] for r in rounds]) for q in rounds[0][key]}
    out["requests_per_s"] = med([r["requests_per_s"] for r in rounds])
    out["cpu_cores"] = {name: med([r["cpu_cores"].get(name) for r in rounds]) for name in rounds[0]["cpu_cores"]}
    return out


def _passes(summary: dict[str, Any]) -> bool:
    p99 = summary["round_trip_ms"]["p99"]
    return (summary["missing"] == 0 and summary["expired"] == 0 and p99 is not None
            and p99 <= SATURATION_P99_MS and summary["requests_per_s"] >= 0.97 * summary["rate"])


def _saturation(services: _Services, rates: tuple[float, ...], seconds: float) -> dict[str, Any]:
    """Each service at rising ``rates`` (interleaved) until it fails :func:`_passes` twice at one rate; its
    saturation rate is the last rate that passed."""
    result: dict[str, Any] = {name: {"rate": None, "steps": []} for name in ("echo", "recommender")}
    going = set(result)
    for rate in rates:
        for name in ("echo", "recommender"):
            if name not in going:
                continue
            for _ in range(2):  # a rate that fails is tried once more: one hiccup of a shared machine is not a limit
                step = services.measure(name, rate, seconds)
                ok = _passes(step)
                result[name]["steps"].append({"rate": rate, "passed": ok, "p99_ms": step["round_trip_ms"]["p99"],
                                              "expired": step["expired"], "missing": step["missing"],
                                              "requests_per_s": step["requests_per_s"],
                                              "cpu_cores": step["cpu_cores"]})
                if ok:
                    result[name]["rate"] = rate
                    break
                time.sleep(3)  # what is queued drains before the next step
            else:
                going.discard(name)
    result["ratio"] = (result["recommender"]["rate"] / result["echo"]["rate"]
                       if result["recommender"]["rate"] and result["echo"]["rate"] else None)
    return result


def _over_kafka(services: _Services, url: str, checkpoints: Path, rate: float, seconds: float, rounds: int,
                sustained_rate: float, sustained_seconds: float, saturation: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"warmup_p99_ms": {}}
    for name in ("recommender", "echo"):  # each warmed until its p99 stops falling
        result["warmup_p99_ms"][name] = services.measure(name, rate, 2.0, warmup_max_s=WARMUP_MAX_S)["warmup_p99_ms"]
    measured: dict[str, list[dict[str, Any]]] = {"recommender": [], "echo": []}
    for i in range(rounds):  # interleaved, the order alternating: neither always runs on a broker the other warmed
        for name in (("echo", "recommender") if i % 2 == 0 else ("recommender", "echo")):
            measured[name].append(services.measure(name, rate, seconds))
    result["kafka"] = {**_median(measured["recommender"]), "each_round": measured["recommender"]}
    result["kafka_echo"] = {**_median(measured["echo"]), "each_round": measured["echo"]}
    result["stages_ms"] = get_json(url + "/status").get("stages_ms")  # the last 5,000 requests: the rounds
    if sustained_rate:
        result["kafka_sustained"] = services.measure("recommender", sustained_rate, sustained_seconds)
        result["kafka_sustained_echo"] = services.measure("echo", sustained_rate, sustained_seconds)
    result["kafka_swap"] = _swap_under_load(services.settings, url, checkpoints, services.users, int(rate * seconds),
                                            rate)
    if saturation:
        result["saturation"] = _saturation(services, SATURATION_RATES, SATURATION_STEP_S)
    return result


def run(item_counts: tuple[int, ...] = (5000, 100_000), rate: float = 500.0, seconds: float = 10.0,
        rounds: int = 3, broker: str | None = None, in_process: bool = True, sustained_rate: float = 1000.0,
        sustained_seconds: float = 30.0, saturation: bool = True, in_process_rounds: int = 500) -> dict[str, Any]:
    """In process at each of ``item_counts`` (unless ``in_process`` is False) and, at the first, over
    ``broker``: the recommender beside the echo (see the module's docstring)."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write

    broker = broker_kind(broker)
    result: dict[str, Any] = {"broker": broker, "in_process": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for n_items in item_counts if in_process else item_counts[:1]:
            data = tmp_path / f"data-{n_items}"
            n_events = max(20_000, n_items)
            write(generate(GeneratorConfig(n_users=1000, n_items=n_items, n_interactions=n_events, seed=2)), data)
            checkpoints = tmp_path / f"ckpt-{n_items}"
            _train(data, checkpoints, epochs=3)
            with own_stack(tmp_path / f"s{n_items}", data, checkpoints, broker=broker) as (settings, env):
                seeded = _seed_histories(settings, data)
                if in_process:
                    result["in_process"][n_items] = _in_process(settings, data, in_process_rounds, seeded)
                if n_items != item_counts[0]:
                    continue
                features, _ = start_worker(env, tmp_path / "features.log")
                recommender, url = start_worker(env, tmp_path / "recommender.log", app="recommender")
                users = list(pd.read_parquet(data / "recommendation_users.parquet")["user_id"])
                services = _Services(settings, env, recommender, users, tmp_path)
                try:
                    result.update(_over_kafka(services, url, checkpoints, rate, seconds, rounds, sustained_rate,
                                              sustained_seconds, saturation))
                finally:
                    services.close()
                    stop(recommender)
                    stop(features)
            shutil.rmtree(data, ignore_errors=True)
    return result


def _line(name: str, r: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items() if v is not None)
    return (f"{name} at {r['rate']:.0f} req/s (sent at {r['requests_per_s']:.0f}/s; {r['answered']} of {r['sent']} "
            f"answered, {r['errors']} errors, {r['expired']} expired): round trip p50 "
            f"{r['round_trip_ms']['p50'] or float('nan'):.1f} / p99 {r['round_trip_ms']['p99'] or float('nan'):.1f} ms;"
            f" CPU cores: {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[5000, 100_000])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the echo and the recommender")
    parser.add_argument("--sustained-rate", type=float, default=1000.0,
                        help="requests/s of the sustained-load run over Kafka (0: skip it)")
    parser.add_argument("--sustained-seconds", type=float, default=30.0)
    parser.add_argument("--no-saturation", dest="saturation", action="store_false",
                        help="skip the saturation search")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default=None,
                        help="the broker to run on (default: STREAMREC_BROKER, else tansu)")
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process timings (they touch no broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(tuple(args.items), args.rate, args.seconds, args.rounds, broker=args.broker, in_process=args.in_process,
            sustained_rate=args.sustained_rate, sustained_seconds=args.sustained_seconds, saturation=args.saturation)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"broker: {r['broker']}")
    for n, f in r["in_process"].items():
        print(f"in process, {n:,} items ({f['index']}): recommend p50 {f['recommend']['p50_ms']:.2f} / p99 "
              f"{f['recommend']['p99_ms']:.2f} ms; with Feast read p50 {f['feast_read_plus_recommend']['p50_ms']:.2f}"
              f" / p99 {f['feast_read_plus_recommend']['p99_ms']:.2f} ms; baseline (Feast read + forward) p50 "
              f"{f['baseline_feast_read_plus_forward']['p50_ms']:.2f} / p99 "
              f"{f['baseline_feast_read_plus_forward']['p99_ms']:.2f} ms; p99 ratio "
              f"{f['ratio_p99_full_vs_baseline']:.2f}x")
    if "warmup_p99_ms" in r:
        windows = {k: ", ".join(f"{v:.0f}" if v is not None else "-" for v in p) for k, p in r["warmup_p99_ms"].items()}
        print("warm-up windows' p99, ms: " + "; ".join(f"{k}: {v}" for k, v in windows.items()))
    for key, name in (("kafka", "recommender (median of rounds)"), ("kafka_echo", "bare echo (median of rounds)"),
                      ("kafka_sustained", "recommender, sustained"), ("kafka_sustained_echo", "bare echo, sustained")):
        if key in r:
            print(_line(name, r[key]))
    sw = r.get("kafka_swap")
    if sw:
        print(f"hot swap at {sw['rate']:.0f} req/s (took {sw['swap_s']:.1f} s, {sw['errors']} errors): round trip p99 "
              f"{sw['during']['p99_ms'] or float('nan'):.1f} ms during ({sw['during']['requests']} requests) vs "
              f"{sw['outside']['p99_ms'] or float('nan'):.1f} ms outside")
    sat = r.get("saturation")
    if sat:
        for name in ("echo", "recommender"):
            steps = ", ".join(f"{s['rate']:.0f}:{'ok' if s['passed'] else 'no'} p99 {s['p99_ms'] or float('nan'):.0f}"
                              for s in sat[name]["steps"])
            print(f"saturation, {name}: {sat[name]['rate'] or '-'} req/s ({steps})")
        print(f"saturation ratio recommender/echo: {sat['ratio'] if sat['ratio'] is not None else '-'}")


if __name__ == "__main__":
    main()
