"""The recommender: in process at 5k and 100k items, and over Kafka, beside a bare baseline.

- in process: ``Recommender.recommend()`` for one request (features given) p50/p99, and the same with
  the Feast online read in front; the baseline is the bare Feast read + tower forward;
- over Kafka: ``--rate`` requests/s (default 500) through both workers, round trip and server latency;
  the baseline is the same load answered by a bare aiokafka echo (``benchmarks/echo.py``) on a broker of
  its own of the same kind: the broker's two hops and the client, nothing of streamrec;
- a hot swap: the same load while a new version is promoted halfway, p99 during the swap vs outside it;
- sustained load: ``--sustained-rate`` requests/s (default 2,000) through the same recommender.

The broker is ``--broker`` (tansu or kafka; default STREAMREC_BROKER, else tansu). The in-process part
touches no broker: ``--no-in-process`` skips its timings (the online store is filled all the same, so the
over-Kafka figures are those of the full run), as `streamrec bench --broker both` does for its second broker.

    python benchmarks/bench_recommend.py [--items 5000 100000] [--rate 500] [--seconds 10]
                                         [--sustained-rate 2000] [--broker tansu|kafka] [--no-in-process]
"""

from __future__ import annotations

import argparse
import collections
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
    from ._harness import ROOT, broker_kind, free_port, latency_ms, own_stack, start_worker, stop
except ImportError:  # run as a script
    from _harness import ROOT, broker_kind, free_port, latency_ms, own_stack, start_worker, stop


def _train(data: Path, checkpoints: Path, epochs: int) -> None:
    from models.checkpoints import promote, save_checkpoint
    from models.data import load_data
    from models.features import popularity_ranking
    from models.train import TrainConfig, train_and_evaluate

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


def _echo_baseline(tmp: Path, data: Path, users: list[str], n: int, rate: float, broker: str,
                   faust: bool = False) -> dict[str, Any]:
    """``run_load`` against ``benchmarks/echo.py`` (``faust``: ``benchmarks/echo_faust.py``, the same echo
    from a Faust agent) on a fresh stack of the same broker (Tansu slows as partitions grow)."""
    from producers.requests import run_load

    name = "echo_faust" if faust else "echo"
    with own_stack(tmp / name, data, broker=broker, feature_repo=False) as (settings, env):
        command = ["--web-port", str(free_port())] if faust else ["--bootstrap", settings.bootstrap_servers]
        echo = subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", *command],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines = iter(echo.stdout.readline, "") if echo.stdout else iter(())
            # Faust prints its banner first, and its worker logs what is printed (to stderr): the line ends
            # with "ready"
            if not any(line.rstrip().endswith("ready") for line in lines):
                raise RuntimeError(f"the {name} baseline did not start")
            # keep reading what it prints: a full pipe would stall the Faust echo's logging, and so the echo
            threading.Thread(target=collections.deque, args=(lines, 0), daemon=True).start()
            run_load(settings, users, 200, 100.0)  # warm-up, as for the recommender
            return {"rate": rate, **run_load(settings, users, n, rate).summary()}
        finally:
            stop(echo)


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
    began = time.perf_counter()
    promote(checkpoints, new)
    while get_json(url + "/status")["swaps"] == swaps and time.perf_counter() - began < 30:
        time.sleep(0.05)
    swapped = time.perf_counter()
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


def run(item_counts: tuple[int, ...] = (5000, 100_000), rate: float = 500.0, seconds: float = 10.0,
        rounds: int = 500, broker: str | None = None, in_process: bool = True,
        faust_echo: bool = True, sustained_rate: float = 2000.0) -> dict[str, Any]:
    """In process at each of ``item_counts`` (unless ``in_process`` is False) and over ``broker`` at the first:
    ``rate`` requests/s, then ``rate`` with a hot swap halfway, then ``sustained_rate`` (0: skipped)."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from producers.requests import run_load

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
                    result["in_process"][n_items] = _in_process(settings, data, rounds, seeded)
                if n_items != item_counts[0]:
                    continue
                features, _ = start_worker(env, tmp_path / "features.log")
                recommender, url = start_worker(env, tmp_path / "recommender.log", app="recommender")
                users = list(pd.read_parquet(data / "recommendation_users.parquet")["user_id"])
                run_load(settings, users, 200, 100.0)  # warm-up
                summary = run_load(settings, users, int(rate * seconds), rate).summary()
                result["kafka"] = {"rate": rate, **summary}
                result["kafka_swap"] = _swap_under_load(settings, url, checkpoints, users, int(rate * seconds), rate)
                if sustained_rate:
                    load = run_load(settings, users, int(sustained_rate * seconds), sustained_rate)
                    result["kafka_sustained"] = {"rate": sustained_rate, **load.summary()}
                stop(recommender)
                stop(features)
            if n_items == item_counts[0]:
                result["kafka_echo"] = _echo_baseline(tmp_path, data, users, int(rate * seconds), rate, broker)
                if faust_echo:  # a question asked beside the benchmark: its failure is reported, not fatal
                    try:
                        result["kafka_echo_faust"] = _echo_baseline(tmp_path, data, users, int(rate * seconds),
                                                                    rate, broker, faust=True)
                    except Exception as exc:  # noqa: BLE001
                        result["kafka_echo_faust"] = {"error": repr(exc)}
            shutil.rmtree(data, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[5000, 100_000])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sustained-rate", type=float, default=2000.0,
                        help="requests/s of the sustained-load run over Kafka (0: skip it)")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default=None,
                        help="the broker to run on (default: STREAMREC_BROKER, else tansu)")
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process timings (they touch no broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(tuple(args.items), args.rate, args.seconds, broker=args.broker, in_process=args.in_process,
            sustained_rate=args.sustained_rate)
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
    k = r.get("kafka")
    if k:
        print(f"over Kafka at {k['rate']:.0f} req/s ({k['sent']} sent, {k['answered']} answered, {k['errors']} errors):"
              f" server p50 {k['server_latency_ms']['p50']:.1f} / p99 {k['server_latency_ms']['p99']:.1f} ms, round "
              f"trip p50 {k['round_trip_ms']['p50']:.1f} / p99 {k['round_trip_ms']['p99']:.1f} ms")
    sw = r.get("kafka_swap")
    if sw:
        print(f"hot swap at {sw['rate']:.0f} req/s (took {sw['swap_s']:.1f} s, {sw['errors']} errors): round trip p99 "
              f"{sw['during']['p99_ms'] or float('nan'):.1f} ms during ({sw['during']['requests']} requests) vs "
              f"{sw['outside']['p99_ms'] or float('nan'):.1f} ms outside")
    su = r.get("kafka_sustained")
    if su:
        print(f"sustained at {su['rate']:.0f} req/s (sent at {su['requests_per_s']:.0f}/s, {su['answered']} of "
              f"{su['sent']} answered, {su['errors']} errors): round trip p50 {su['round_trip_ms']['p50'] or 0:.1f}"
              f" / p99 {su['round_trip_ms']['p99'] or 0:.1f} ms")
    echoes = (("kafka_echo", "raw baseline, a bare aiokafka echo"), ("kafka_echo_faust", "a bare Faust agent echo"))
    for key, what in echoes:
        e = r.get(key)
        if e:
            print(f"{what} at {e['rate']:.0f} req/s ({e['answered']} of {e['sent']} answered): round trip p50 "
                  f"{e['round_trip_ms']['p50']:.1f} / p99 {e['round_trip_ms']['p99']:.1f} ms")


if __name__ == "__main__":
    main()
