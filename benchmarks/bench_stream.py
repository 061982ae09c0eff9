"""The stream worker against a raw baseline, in the same run, on a stack of its own.

1. steady: after a short warm-up, replay at each of ``--rates`` events/s (default 1,000 and 5,000) for
   ``--seconds``; freshness p50/p99 from the worker's samples of that phase, and the rate the replay
   reached (the producer shares the machine);
2. backlog: the worker stops, ``--events`` events (``--users`` users) go into the topic, and the worker
   starts again in the same group: it drains exactly that backlog, with a cold state cache and the steady
   phase's users already in the online store; events/s from its first to its last push. The baseline, a
   plain aiokafka consumer on assigned partitions + a redis-py pipeline writing the same rows (same
   validation, same state update, no reads), drains the same offsets; ratio = worker / baseline;
3. the worker's peak RSS (VmHWM) after the backlog;
4. scaling: on a fresh stack each, one worker and then two workers (one group, ``topic_partitions``
   partitions) take ``--scale-events`` events, replayed at full speed once the group has settled;
   events/s and events per CPU-second of the workers, and how many users' rows differ from the ground
   truth afterwards (0 expected); then one worker on a Redis Cluster (3 primaries, a replica each): what
   the cluster costs the worker beside one Redis server.

The broker is ``--broker`` (tansu or kafka; default STREAMREC_BROKER, else tansu): the worker and the
baseline read the same topic on it, so the ratio is the same broker's.

    python benchmarks/bench_stream.py [--users 100000] [--events 300000] [--rates 1000,5000] [--seconds 20]
                                      [--scale-events 60000] [--broker tansu|kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from streamrec import kafka_clients
from streamrec.shell.workers import get_json
from streamrec.stats import cpu_seconds, percentiles

try:
    from ._harness import broker_kind, own_stack, start_worker, stop
    from .oracle import ground_truth
except ImportError:  # run as a script
    from _harness import broker_kind, own_stack, start_worker, stop
    from oracle import ground_truth

WARM_UP = 3000  # events at 1,000/s before the first measured phase: the broker's JIT, the worker's caches


def _figures(url: str, samples: bool = False) -> dict[str, Any]:
    return get_json(f"{url}/freshness{'?samples=1' if samples else ''}")


def _wait_events(urls: list[str], n: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        total = sum(_figures(u)["events"] for u in urls)
        if total >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the workers processed {total} of {n} events in {timeout:.0f} s")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _end_offsets(settings: Any) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    from streamrec.topics import INTERACTIONS

    consumer = KafkaConsumer(**kafka_clients.python_config(settings))
    try:
        tps = [TopicPartition(INTERACTIONS, p) for p in range(settings.topic_partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


async def _baseline(settings: Any, start: dict[int, int], n_events: int) -> float:
    """Plain aiokafka (assigned partitions, from ``start``) + redis pipeline: same decode, state update, rows."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_processors.history import apply_event, feature_row
    from streamrec.schemas import Interaction, SchemaError, decode
    from streamrec.topics import INTERACTIONS

    consumer = AIOKafkaConsumer(**kafka_clients.aio_config(settings), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=settings.push_batch)
    await consumer.start()
    tps = [TopicPartition(INTERACTIONS, p) for p in range(settings.topic_partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    client = aioredis.Redis.from_url(settings.redis)
    states: dict[str, Any] = {}
    seen = 0
    started = None
    try:
        while seen < n_events:
            batch = await consumer.getmany(timeout_ms=1000, max_records=settings.push_batch)
            changed: set[str] = set()
            for records in batch.values():
                for record in records:
                    seen += 1
                    try:
                        event = decode(Interaction, record.value)
                    except SchemaError:
                        continue
                    states[event.user_id], _ = apply_event(states.get(event.user_id), event, record.offset)
                    changed.add(event.user_id)
            if changed:
                started = started or time.perf_counter()
                pushed = int(time.time() * 1000)
                pipe = client.pipeline(transaction=False)
                for user in changed:
                    row = feature_row(user, states[user], pushed)
                    pipe.hset(f"rawbaseline:{user}", mapping={k: json.dumps(v, default=str) for k, v in row.items()})
                await pipe.execute()
        return seen / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()
        await client.aclose()


def _steady(settings: Any, url: str, parquet: Path, rate: float, start_at: int, n: int) -> dict[str, Any]:
    from producers.replay import replay

    before = _figures(url)
    stats = replay(settings, parquet, rate=rate, start_at=start_at, limit=n)
    _wait_events([url], before["events"] + n)
    after = _figures(url, samples=True)
    lags = after["lags_ms"][-(after["rows_pushed"] - before["rows_pushed"]):]
    fresh = percentiles(lags, (50, 99), with_max=True)
    return {"rate": rate, "replayed_per_s": stats.rate, "events": n, "freshness_p50_ms": fresh["p50"],
            "freshness_p99_ms": fresh["p99"], "freshness_max_ms": fresh["max"]}


def _drain(env: dict[str, str], logs: Path, n_workers: int, n_events: int, app_id: str,
           feed: Any = None) -> dict[str, Any]:
    """``n_workers`` workers (one group) drain ``n_events``: already waiting, or sent by ``feed()`` (in a
    thread) once every worker owns partitions. Events/s from the first event to the last, and the
    workers' CPU seconds over that span."""
    import threading

    workers = [start_worker(env, logs / f"{app_id}-{i}.log", app_id=app_id) for i in range(n_workers)]
    feeder = None
    try:
        urls = [url for _, url in workers]
        deadline = time.monotonic() + 90
        while min(_figures(u)["assigned_partitions"] for u in urls) == 0 and time.monotonic() < deadline:
            time.sleep(0.3)  # the group settles: each worker owns partitions of its own
        if feed is not None:
            feeder = threading.Thread(target=feed)
            feeder.start()
        first = None
        t0 = time.perf_counter()
        while True:
            done = sum(_figures(u)["events"] for u in urls)
            if done and first is None:
                first = (time.perf_counter(), done, sum(cpu_seconds(p.pid) or 0.0 for p, _ in workers))
            if done >= n_events:
                break
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"drain stalled at {done} of {n_events} events")
            time.sleep(0.2)
        span = time.perf_counter() - first[0]
        cpu = sum(cpu_seconds(p.pid) or 0.0 for p, _ in workers) - first[2]
        lags = [lag for u in urls for lag in _figures(u, samples=True)["lags_ms"]]
        return {"workers": n_workers, "events_per_s": (done - first[1]) / span, "cpu_s": cpu,
                "events_per_cpu_s": (done - first[1]) / cpu if cpu else None,
                **{f"freshness_{k}_ms": v for k, v in percentiles(lags, (50, 99)).items()},
                "peak_rss_mb": max(_peak_rss_mb(p.pid) for p, _ in workers)}
    finally:
        if feeder is not None:
            feeder.join()
        for proc, _ in workers:
            stop(proc)


def _online_differences(settings: Any, events: Any) -> int:
    """How many users' rows differ from the ground truth of ``events``."""
    from streamrec.features import FeatureClient

    truth = ground_truth(events)
    users = list(truth)
    client = FeatureClient(settings)
    try:
        rows = []
        for i in range(0, len(users), 1000):
            rows += client.users_features(users[i:i + 1000])
    finally:
        client.close()
    wrong = 0
    for user, row in zip(users, rows, strict=True):
        if any(row[k] != v for k, v in truth[user].items()):
            wrong += 1
    return wrong


def _scaling(tmp: Path, broker: str, n_events: int) -> dict[str, Any]:
    """One worker, then two, each draining ``n_events`` on a stack of its own; state vs the ground truth."""
    import pandas as pd

    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from producers.replay import replay

    data = tmp / "scale-data"
    write(generate(GeneratorConfig(n_users=max(1000, n_events // 3), n_items=5000, n_interactions=n_events,
                                   seed=11)), data)
    parquet = data / "recommendation_interactions.parquet"
    events = pd.read_parquet(parquet)
    out: dict[str, Any] = {"events": n_events}
    for name, n_workers, redis_nodes in (("one", 1, 1), ("two", 2, 1), ("one_cluster", 1, 3)):
        with own_stack(tmp / f"scale-{name}", data, broker=broker, redis_nodes=redis_nodes) as (settings, env):
            out["partitions"] = settings.topic_partitions
            figures = _drain(env, tmp, n_workers, n_events, app_id=f"bench-scale-{name.replace('_', '-')}",
                             feed=lambda settings=settings: replay(settings, parquet))
            figures["users_differing_from_truth"] = _online_differences(settings, events)
            out[name] = figures
    return out


def run(users: int = 100_000, events: int = 300_000, rates: tuple[float, ...] | list[float] = (1000.0, 5000.0),
        seconds: float = 20.0, scale_events: int = 60_000, broker: str | None = None) -> dict:
    """Run the phases on ``broker`` (tansu or kafka; default STREAMREC_BROKER); returns the figures."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from producers.replay import replay

    broker = broker_kind(broker)
    rates = [float(r) for r in rates]
    steady_total = WARM_UP + sum(int(r * seconds) for r in rates)
    result: dict[str, Any] = {"broker": broker, "users": users, "events": events, "steady": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        write(generate(GeneratorConfig(n_users=users, n_items=5000, n_interactions=steady_total + events, seed=5)),
              data)
        with own_stack(tmp_path, data, broker=broker) as (settings, env):
            parquet = data / "recommendation_interactions.parquet"

            # 1. steady rates, after a warm-up
            proc, url = start_worker(env, tmp_path / "steady.log", app_id="bench-stream")
            replay(settings, parquet, rate=1000.0, limit=WARM_UP)
            _wait_events([url], WARM_UP)
            at = WARM_UP
            for rate in rates:
                n = int(rate * seconds)
                result["steady"][f"{rate:g}"] = _steady(settings, url, parquet, rate, at, n)
                at += n
            stop(proc)

            # 2. a backlog for the same group (a worker back after an outage), then the baseline on it
            start = _end_offsets(settings)
            replay(settings, parquet, start_at=at)
            result["max_rate"] = {**_drain(env, tmp_path, 1, events, app_id="bench-stream")}
            result["worker_peak_rss_mb"] = result["max_rate"].pop("peak_rss_mb")
            base_rate = asyncio.run(_baseline(settings, start, events))
            worker_rate = result["max_rate"]["events_per_s"]
            result["max_rate"].update(worker_events_per_s=worker_rate, baseline_events_per_s=base_rate,
                                      ratio=worker_rate / base_rate)
        if scale_events:
            result["scaling"] = _scaling(tmp_path, broker, scale_events)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rates", default="1000,5000", help="comma-separated steady rates, events/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scale-events", type=int, default=60_000, help="events of the one vs two workers phase "
                        "(0: skip it)")
    parser.add_argument("--broker", choices=["tansu", "kafka"], default=None,
                        help="the broker to run on (default: STREAMREC_BROKER, else tansu)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(args.users, args.events, [float(x) for x in args.rates.split(",")], args.seconds, args.scale_events,
            broker=args.broker)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"broker: {r['broker']}")
    for s in r["steady"].values():
        print(f"steady {s['rate']:,.0f} ev/s (replayed at {s['replayed_per_s']:,.0f}/s, {s['events']:,} events): "
              f"freshness p50 {s['freshness_p50_ms']:.1f} ms, p99 {s['freshness_p99_ms']:.1f} ms, "
              f"max {s['freshness_max_ms']:.1f} ms")
    m = r["max_rate"]
    print(f"backlog ({r['events']:,} events, {r['users']:,} users): worker {m['worker_events_per_s']:,.0f} ev/s, "
          f"raw baseline {m['baseline_events_per_s']:,.0f} ev/s, ratio {m['ratio']:.2f}x; "
          f"freshness under backlog p50 {m['freshness_p50_ms']:.0f} ms p99 {m['freshness_p99_ms']:.0f} ms")
    print(f"worker peak RSS {r['worker_peak_rss_mb']:.0f} MB")
    for key, sc in ((k, r["scaling"][k]) for k in ("one", "two") if "scaling" in r):
        print(f"{key} worker(s): {sc['events_per_s']:,.0f} ev/s, {sc['events_per_cpu_s']:,.0f} events per CPU-second, "
              f"{sc['users_differing_from_truth']} users differ from the ground truth")


if __name__ == "__main__":
    main()
