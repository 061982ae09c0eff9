"""The stream worker against a raw baseline, in the same run, on a stack of its own.

1. steady: replay at ``--rate`` events/s (default 1,000) for ``--seconds``; freshness p50/p99 from the
   worker's samples taken during that phase;
2. max rate: ``--events`` events already in the topic, a fresh worker (new consumer group) drains them;
   events/s from its first to its last push; the baseline — a plain aiokafka consumer on assigned
   partitions + a redis-py pipeline writing the same rows (same validation, same state update) — drains
   the same topic; ratio = worker / baseline;
3. the worker's peak RSS (VmHWM) once it holds ``--users`` users.

The broker is ``--broker`` (tansu or kafka; default STREAMREC_BROKER, else tansu): the worker and the
baseline read the same topic on it, so the ratio is the same broker's.

    python benchmarks/bench_stream.py [--users 100000] [--events 300000] [--rate 1000] [--seconds 20]
                                      [--broker tansu|kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from ._harness import broker_kind, get_json, own_stack, start_worker, stop
except ImportError:  # run as a script
    from _harness import broker_kind, get_json, own_stack, start_worker, stop

def _figures(url: str, samples: bool = False) -> dict[str, Any]:
    return get_json(f"{url}/freshness{'?samples=1' if samples else ''}")


def _wait_events(url: str, n: int, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fig = _figures(url)
        if fig["events"] >= n:
            return fig
        time.sleep(0.5)
    raise RuntimeError(f"worker processed {fig['events']} of {n} events in {timeout}s")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _baseline(settings: Any, n_events: int) -> float:
    """Plain aiokafka (assigned partitions) + redis pipeline: same decode, state update and rows."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_processors.history import apply_event, feature_row
    from streamrec.schemas import Interaction, SchemaError, decode
    from streamrec.topics import INTERACTIONS

    consumer = AIOKafkaConsumer(**settings.aiokafka_config(), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=settings.push_batch)
    await consumer.start()
    consumer.assign([TopicPartition(INTERACTIONS, p) for p in range(settings.topic_partitions)])
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


def run(users: int = 100_000, events: int = 300_000, rate: float = 1000.0, seconds: float = 20.0,
        broker: str | None = None) -> dict:
    """Run the three phases on ``broker`` (tansu or kafka; default STREAMREC_BROKER); returns the figures."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from producers.replay import replay

    broker = broker_kind(broker)
    result: dict[str, Any] = {"broker": broker, "users": users, "events": events}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        write(generate(GeneratorConfig(n_users=users, n_items=5000, n_interactions=events, seed=5)), data)
        with own_stack(tmp_path, data, broker=broker) as (settings, env):
            parquet = data / "recommendation_interactions.parquet"

            # 1. steady rate
            steady_n = int(rate * seconds)
            proc, url = start_worker(env, tmp_path / "steady.log", app_id="bench-steady")
            before = _figures(url)
            replay(settings, parquet, rate=rate, limit=steady_n)
            after = _wait_events(url, steady_n)
            lags = _figures(url, samples=True)["lags_ms"][-(after["rows_pushed"] - before["rows_pushed"]):]
            p50, p99 = np.percentile(lags, [50, 99])
            result["steady"] = {"rate": rate, "events": steady_n, "freshness_p50_ms": float(p50),
                                "freshness_p99_ms": float(p99), "freshness_max_ms": float(max(lags))}
            stop(proc)

            # 2. max rate: the rest of the events into the topic first, then drain with a fresh group
            replay(settings, parquet, start_at=steady_n)
            proc, url = start_worker(env, tmp_path / "max.log", app_id="bench-max")
            t0 = time.perf_counter()
            first = None
            while True:
                fig = _figures(url)
                if fig["events"] and first is None:
                    first = (time.perf_counter(), fig["events"])
                if fig["events"] >= events:
                    break
                if time.perf_counter() - t0 > 900:
                    raise RuntimeError(f"max-rate drain stalled at {fig['events']} events")
                time.sleep(0.2)
            worker_rate = (fig["events"] - first[1]) / (time.perf_counter() - first[0])
            lags = _figures(url, samples=True)["lags_ms"]
            result["max_rate"] = {"worker_events_per_s": worker_rate,
                                  "freshness_p50_ms": float(np.percentile(lags, 50)),
                                  "freshness_p99_ms": float(np.percentile(lags, 99))}
            result["worker_peak_rss_mb"] = _peak_rss_mb(proc.pid)
            stop(proc)

            base_rate = asyncio.run(_baseline(settings, events))
            result["max_rate"]["baseline_events_per_s"] = base_rate
            result["max_rate"]["ratio"] = worker_rate / base_rate
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default=None,
                        help="the broker to run on (default: STREAMREC_BROKER, else tansu)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = run(args.users, args.events, args.rate, args.seconds, broker=args.broker)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    s, m = r["steady"], r["max_rate"]
    print(f"broker: {r['broker']}")
    print(f"steady {s['rate']:.0f} ev/s ({s['events']:,} events): freshness p50 {s['freshness_p50_ms']:.1f} ms, "
          f"p99 {s['freshness_p99_ms']:.1f} ms, max {s['freshness_max_ms']:.1f} ms")
    print(f"max rate ({r['events']:,} events, {r['users']:,} users): worker {m['worker_events_per_s']:,.0f} ev/s, "
          f"raw baseline {m['baseline_events_per_s']:,.0f} ev/s, ratio {m['ratio']:.2f}x; "
          f"freshness under backlog p50 {m['freshness_p50_ms']:.0f} ms p99 {m['freshness_p99_ms']:.0f} ms")
    print(f"worker peak RSS {r['worker_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
