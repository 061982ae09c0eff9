"""Feast on Redis against a raw redis-py pipeline doing the same work, in the same run.

- push: history rows/s through ``FeatureClient.push_history`` (batches of 1 and 1,000 rows) vs a redis-py
  pipeline writing the same rows as hashes (one round trip per batch);
- read: ``get_online_features`` p50/p99 for 1 and 100 users (profile + history) vs pipelined HGETALLs;
- the same on a Redis Cluster (3 primaries, a replica each; ``result["cluster"]``), in the same run: what a
  cluster costs per row (one pipeline per node) beside one server.

    python benchmarks/bench_features.py [--rounds 200]

Runs on a stack of its own on free ports (started here and stopped again), never the default one. It
touches no broker, so it runs once whatever ``streamrec bench --broker`` says; the stack's broker is
Tansu, which starts in well under a second.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from generation.dataset_gen_amazon import GeneratorConfig, generate, write
from streamrec.features import FeatureClient, history_frame

try:
    from ._harness import latency_ms, own_stack
except ImportError:  # run as a script
    from _harness import latency_ms, own_stack

TYPES = ("positive_view", "negative_view", "cart", "purchase", "rate")


def _rows(user_ids: list[str], rng: np.random.Generator) -> list[dict]:
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for uid in user_ids:
        items = [f"I{int(i):06d}" for i in rng.integers(1, 5000, 20)]
        types = [TYPES[int(t)] for t in rng.integers(0, 5, 20)]
        rows.append(dict(user_id=uid, recent_item_ids=items, recent_interaction_types=types,
                         **{f"count_{t}": types.count(t) for t in TYPES}, last_event_at=now,
                         pushed_at_ms=int(now.value // 1_000_000), event_timestamp=now))
    return rows


def _raw_push(client, prefix: str, rows: list[dict]) -> None:  # noqa: ANN001 - redis.Redis
    with client.pipeline(transaction=False) as pipe:
        for row in rows:
            mapping = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in row.items()
                       if k != "user_id"}
            pipe.hset(f"{prefix}:{row['user_id']}", mapping=mapping)
        pipe.execute()


def run(rounds: int = 200) -> dict:
    """Measure push throughput and read latency on one Redis server, then on a Redis Cluster; returns the
    figures (the cluster's under ``cluster``)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write(generate(GeneratorConfig(n_users=2000, n_items=5000, n_interactions=20000, seed=1)), data)
        with own_stack(Path(tmp) / "one", data, broker="tansu", feature_repo=False) as (settings, _env):
            result = _measure(settings, rounds)
        with own_stack(Path(tmp) / "cluster", data, broker="tansu", feature_repo=False, redis_nodes=3) as (settings, _):
            result["cluster"] = _measure(settings, rounds)
        return result


def _measure(settings, rounds: int) -> dict:  # noqa: ANN001 - streamrec Settings
    import redis

    client = FeatureClient(settings, project=f"bench{uuid.uuid4().hex[:6]}")
    client.apply()
    client.materialize()
    raw = (redis.RedisCluster if settings.redis_is_cluster else redis.Redis).from_url(settings.redis)
    prefix = f"rawbench:{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(0)
    users = [f"U{i:06d}" for i in range(1, 2001)]
    result: dict = {"push": {}, "read": {}}

    for batch in (1, 1000):
        n_batches = max(3, min(rounds, 2000 // batch * 2))
        frames = [history_frame(_rows(list(rng.choice(users, batch, replace=False)), rng))
                  for _ in range(n_batches)]
        dicts = [f.to_dict("records") for f in frames]
        t = time.perf_counter()
        for f in frames:
            client.push_history(f)
        feast_s = time.perf_counter() - t
        t = time.perf_counter()
        for d in dicts:
            _raw_push(raw, prefix, d)
        raw_s = time.perf_counter() - t
        rows = batch * n_batches
        result["push"][f"batch_{batch}"] = {
            "feast_rows_per_s": rows / feast_s, "raw_rows_per_s": rows / raw_s,
            "ratio": (rows / feast_s) / (rows / raw_s)}

    for n in (1, 100):
        feast_t, raw_t = [], []
        for _ in range(rounds):
            ids = list(rng.choice(users, n, replace=False))
            t = time.perf_counter()
            client.users_features(ids)
            feast_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            with raw.pipeline(transaction=False) as pipe:
                for uid in ids:
                    pipe.hgetall(f"{prefix}:{uid}")
                pipe.execute()
            raw_t.append(time.perf_counter() - t)
        f, r = latency_ms(feast_t), latency_ms(raw_t)
        result["read"][f"entities_{n}"] = {"feast": f, "raw": r, "ratio_p50": f["p50_ms"] / r["p50_ms"]}
    for uid in users:  # one key at a time: a cluster refuses a DEL across slots
        raw.delete(f"{prefix}:{uid}")
    raw.close()
    client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="reads per measurement (default 200)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    result = run(args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for title, figures in (("one Redis server", result), ("Redis Cluster, 3 primaries", result["cluster"])):
        print(f"{title}\npush (rows/s)            feast        raw redis    feast/raw")
        for name, r in figures["push"].items():
            print(f"  {name:<20} {r['feast_rows_per_s']:>10,.0f}   {r['raw_rows_per_s']:>10,.0f}   {r['ratio']:.2f}x")
        print("read (ms)                feast p50/p99     raw p50/p99     p50 feast/raw")
        for name, r in figures["read"].items():
            f, w = r["feast"], r["raw"]
            print(f"  {name:<20} {f['p50_ms']:6.2f} / {f['p99_ms']:6.2f}   {w['p50_ms']:5.2f} / {w['p99_ms']:5.2f}"
                  f"     {r['ratio_p50']:.1f}x")


if __name__ == "__main__":
    main()
