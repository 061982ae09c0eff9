"""The online store as a Redis Cluster (issue #30): 3 primaries, each with a replica, made by the stack
(`streamrec stack up --redis-nodes 3`), with Feast in its `redis_cluster` mode. The features worker's rows
equal the ground truth, spread over every primary, and the recommender answers from them over Kafka."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from benchmarks.oracle import ground_truth
from producers.replay import replay
from producers.requests import RequestClient
from streamrec.config import Settings
from streamrec.schemas import RecommendationRequest
from streamrec.shell import redis_cluster
from streamrec.shell import stack as _stack
from tests.helpers import N_EVENTS, Worker, first_events, online_state, wait_caught_up


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
    stats = replay(env_stack, env_stack.data_dir / "recommendation_interactions.parquet", limit=N_EVENTS)
    assert stats.delivered == N_EVENTS and stats.failed == 0
    wait_caught_up(env_stack, worker, 120)
    truth = ground_truth(first_events(env_stack))
    assert online_state(env_stack, list(truth)) == truth
    keys = {p: redis.Redis(port=p).dbsize() for p in primaries}
    assert all(n > 0 for n in keys.values()), f"rows should live on every primary: {keys}"

    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    recommender = worker_factory(env_stack, app="recommender")
    client = RequestClient(env_stack)
    try:
        answers = [client.ask(RecommendationRequest(request_id=f"c-{u}", user_id=u, k=5))[0] for u in list(truth)[:5]]
    finally:
        client.close()
    assert all(a.error is None and len(a.items) == 5 and a.feature_age_ms is not None for a in answers), answers
    assert recommender.status()["errors"] == 0
