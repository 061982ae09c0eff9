"""The online store as a Redis Cluster (issue #30): 3 primaries, each with a replica, made by the stack
(`streamrec stack up --redis-nodes 3`), with Feast in its `redis_cluster` mode. The features worker's rows
equal the ground truth, spread over every primary, and the recommender answers from them over Kafka; a
primary killed mid-replay fails over to its replica with nothing lost and no request left unanswered."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from benchmarks.oracle import ground_truth
from producers.replay import replay
from producers.requests import LoadResult, run_load
from streamrec.config import Settings
from streamrec.shell import redis_cluster
from streamrec.shell import stack as _stack
from tests.helpers import (
    FRESHNESS_BACK_WITHIN_MS,
    N_EVENTS,
    Worker,
    ask,
    first_events,
    fresh_burst_lag_ms,
    online_state,
    replay_to_ground_truth,
    wait_caught_up,
    wait_until,
)


@pytest.mark.parametrize("env_stack", ["redis-cluster"], indirect=True)
def test_on_a_redis_cluster_rows_equal_the_ground_truth_and_requests_are_answered(
        env_stack: Settings, trained_checkpoint: Path, worker_factory: Callable[..., Worker]) -> None:
    assert env_stack.redis_is_cluster
    nodes = {n.port: n for n in redis_cluster.nodes(env_stack.embedded_redis_ports[0])}
    primaries = [p for p, n in nodes.items() if n.role == "primary"]
    assert len(nodes) == 6 and len(primaries) == 3, nodes
    statuses = [s for s in _stack.status(env_stack) if s.name.startswith("redis")]
    assert len(statuses) == 6 and all(s.running and "cluster ok" in (s.detail or "") for s in statuses), statuses

    worker = worker_factory(env_stack)
    truth = replay_to_ground_truth(env_stack, worker)
    keys = {p: redis.Redis(port=p).dbsize() for p in primaries}
    assert all(n > 0 for n in keys.values()), f"rows should live on every primary: {keys}"
    # the same cluster as an external one (REDIS_URL names one node, REDIS_CLUSTER=true): a replica's address
    # is enough, the rest is found from it
    replica = next(p for p, n in nodes.items() if n.role != "primary")
    external = env_stack.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{replica}"),
                                            "redis_cluster": True})
    assert not external.embedded_redis and external.redis_is_cluster
    assert online_state(external, list(truth)) == truth

    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    recommender = worker_factory(env_stack, app="recommender")
    answers = ask(env_stack, list(truth)[:5], k=5, tag="c")
    assert all(a.error is None and len(a.items) == 5 and a.feature_age_ms is not None for a in answers), answers
    assert recommender.status()["errors"] == 0


@pytest.mark.parametrize("env_stack", ["redis-cluster"], indirect=True)
def test_a_primary_killed_mid_replay_fails_over_and_nothing_is_lost_or_doubled(
        env_stack: Settings, trained_checkpoint: Path, worker_factory: Callable[..., Worker]) -> None:
    """SIGKILL of a primary mid-replay, with requests flowing: its replica takes over, the worker retries and
    goes on (the rows equal the ground truth: nothing lost, nothing applied twice), fresh events are back in
    the online store within 5 s of being sent, and every request gets an answer (errors counted, none
    silent)."""
    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    worker = worker_factory(env_stack)
    recommender = worker_factory(env_stack, app="recommender")
    events = first_events(env_stack)
    users = list(dict.fromkeys(events["user_id"]))
    path = env_stack.data_dir / "recommendation_interactions.parquet"
    sender = threading.Thread(target=replay, args=(env_stack, path), kwargs={"limit": N_EVENTS, "rate": 400})  # ~12 s
    load: dict[str, LoadResult] = {}
    asker = threading.Thread(target=lambda: load.setdefault("r", run_load(env_stack, users, 2000, 100.0, timeout=30)))
    sender.start()
    asker.start()
    wait_until(lambda: worker.figures()["applied"] > 1000, 60, "the worker to be mid-replay")
    killed = env_stack.embedded_redis_ports[0]
    pid = json.loads((env_stack.stack_dir / "redis-0.pid").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    sender.join(90)
    asker.join(120)
    assert not sender.is_alive() and not asker.is_alive()

    replica = env_stack.embedded_redis_ports[3]
    survivor = env_stack.embedded_redis_ports[1]
    wait_until(lambda: {n.port: n.role for n in redis_cluster.nodes(survivor)}.get(replica) == "primary", 30,
               f"the replica on {replica} to take over from the primary on {killed}")
    wait_caught_up(env_stack, worker, 120)
    truth = ground_truth(events)
    got = online_state(env_stack, list(truth))
    wrong = {u for u in truth if truth[u] != got[u]}
    assert not wrong, f"{len(wrong)} users differ from the ground truth after the failover, e.g. {sorted(wrong)[:3]}"
    assert worker.figures()["push_retries"] > 0, "the worker should have retried its writes during the failover"
    lag = fresh_burst_lag_ms(env_stack, worker, users[0])
    assert lag <= FRESHNESS_BACK_WITHIN_MS, f"fresh events after the failover took {lag:.0f} ms"

    result = load["r"]
    assert result.sent == 2000 and result.answered == result.sent, result.summary()  # none silent
    assert recommender.status()["errors"] == result.errors  # every error answered was counted
    assert result.errors < result.sent / 2, result.summary()  # the failover is a blip, not an outage
