"""Broker failover on a 3-node Apache Kafka cluster of the test's own (issue 13, item 4).

Interactions are replayed while requests flow; mid-replay the broker that leads the most partitions of
`interactions` is killed with SIGKILL. The features worker and the recommender must keep going: the online
state ends equal to the ground truth, and every request sent (during the failover too) gets an answer
(an error answer such as `internal` or `expired` counts: the client is told).

Topics have RF 3 and min.insync.replicas 2, so two live nodes still take acks=all writes once KRaft has
moved the dead node's leaderships (its broker session, 9 s by default, must expire first).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from benchmarks.oracle import ground_truth
from producers.replay import replay
from producers.requests import RequestClient
from streamrec import kafka_clients, load_settings
from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.schemas import RecommendationRequest, encode
from streamrec.shell import stack as _stack
from streamrec.shell.stack import free_port, free_ports
from streamrec.topics import INTERACTIONS, REQUESTS
from tests.helpers import (
    KAFKA_CACHE,
    N_EVENTS,
    Worker,
    differences,
    explain,
    first_events,
    needs_kafka,
    wait_caught_up,
    wait_until,
)

# kafka-python 3.0.12 leaks the socket of every refused connection (kafka/net/inet.py: KafkaNetSocket.connect
# does not close it when sock_connect raises); this test's clients retry the dead node for as long as they
# run. The leaked sockets are collected at the end of the test, under this filter (see `cluster`), not
# at the end of the session, where pytest would turn their ResourceWarnings into an error.
pytestmark = [needs_kafka, pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")]

REPLAY_RATE = 500.0  # events/s: N_EVENTS take ~10 s to send
KILL_AT_SENT = 1400  # the replay has sent this many (~3 s in) when the broker dies: ~7 s of replay remain
REQUEST_RATE = 30.0  # requests/s, from before the replay until after the new leaders are elected
REQUESTS_AFTER_S = 3.0  # requests go on this long after the replay ended and the leaders moved
ANSWER_WITHIN_S = 60.0  # after the last request is sent, the time left for the stragglers' answers


@pytest.fixture
def cluster(tmp_path: Path, generated: Path, monkeypatch: pytest.MonkeyPatch,
            caplog: pytest.LogCaptureFixture) -> Iterator[Settings]:
    """A 3-node Apache Kafka cluster and a Redis of this test's own, the feature repo applied and materialized."""
    # kafka-python logs each refused connection to the dead node with the exception as an argument: a log
    # record kept by pytest would keep the exception, its frames and the leaked socket alive past `gc.collect`
    caplog.set_level(logging.CRITICAL, logger="kafka")
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "STREAMREC_BROKER", "STREAMREC_KAFKA_BROKERS"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    for f in generated.glob("*.parquet"):
        shutil.copyfile(f, data / f.name)
    # 6 ports: node i's client port base+i and controller port base+3+i
    settings = load_settings(stack_dir=tmp_path / "stack", broker="kafka", kafka_brokers=3,
                             embedded_kafka_port=free_ports(6), embedded_redis_port=free_port(), data_dir=data,
                             worker_port=free_port(), checkpoint_dir=tmp_path / "checkpoints",
                             kafka_cache_dir=KAFKA_CACHE, kafka_bootstrap_servers=None, redis_url=None)
    try:
        _stack.up(settings)
        client = FeatureClient(settings)
        try:
            client.apply()
            client.materialize()
        finally:
            client.close()
        yield settings
    finally:
        _stack.down(settings)
        gc.collect()  # the sockets kafka-python leaked, now, under this test's filter (not at session end)


def _leaders(settings: Settings) -> list[int]:
    """The leader node id of each partition of `interactions` (-1: none), in partition order."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(client_id="streamrec-failover-test", request_timeout_ms=5000,
                             **kafka_clients.python_config(settings))
    try:
        (topic,) = admin.describe_topics([INTERACTIONS])
    finally:
        admin.close()
    return [p["leader_id"] for p in sorted(topic["partitions"], key=lambda p: p["partition_index"])]


def _kill_node(settings: Settings, node: int) -> None:
    """kill -9 node ``node`` (its node.id, and the ``i`` of ``kafka-<i>.pid``) and reap it."""
    pid = int(json.loads((settings.stack_dir / f"kafka-{node}.pid").read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # `stack up` spawned it from this process: reap it, or it lingers as a zombie
    except ChildProcessError:
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, f"node {node} to die")


@dataclass
class Load:
    """Requests sent at a fixed rate through the project's client, each answer kept by request_id."""

    stop: threading.Event = field(default_factory=threading.Event)  # no more requests
    give_up: threading.Event = field(default_factory=threading.Event)  # no more waiting for answers either
    thread: threading.Thread | None = None
    sent_at: dict[str, float] = field(default_factory=dict)  # request_id -> time.monotonic() at send
    answers: dict[str, str | None] = field(default_factory=dict)  # request_id -> error code (None: items)
    send_errors: list[str] = field(default_factory=list)
    crashed: BaseException | None = None

    def missing(self, since: float = float("-inf"), until: float = float("inf")) -> list[str]:
        return [r for r, t in self.sent_at.items() if since <= t <= until and r not in self.answers]


def _run_load(settings: Settings, users: list[str], load: Load) -> None:
    """Send requests at REQUEST_RATE until ``load.stop``, from this thread, while another collects the answers
    (a poll that waits on a dead node must not hold the next sends back: requests keep coming in the failover)."""
    try:
        client = RequestClient(settings)
    except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
        load.crashed = exc
        return
    sending = threading.Event()
    sending.set()
    deadline = [float("inf")]

    def receive() -> None:
        try:
            while not load.give_up.is_set() and (
                    sending.is_set() or (load.missing() and time.monotonic() < deadline[0])):
                for response, _ in client.poll(100):
                    if response.request_id in load.sent_at and response.request_id not in load.answers:
                        load.answers[response.request_id] = response.error.code if response.error else None
        except BaseException as exc:  # noqa: BLE001
            load.crashed = exc

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    try:
        rng = np.random.default_rng(0)
        started = time.monotonic()
        i = 0
        while not load.stop.is_set():
            if (wait := started + i / REQUEST_RATE - time.monotonic()) > 0:
                time.sleep(wait)
            request = RecommendationRequest(request_id=f"failover-{i}", user_id=users[int(rng.integers(len(users)))])
            load.sent_at[request.request_id] = time.monotonic()
            client.producer.send(REQUESTS, key=request.user_id.encode(), value=encode(request)).add_errback(
                lambda exc, rid=request.request_id: load.send_errors.append(f"{rid}: {exc!r}"))
            i += 1
        client.producer.flush(timeout=ANSWER_WITHIN_S)
    except BaseException as exc:  # noqa: BLE001
        load.crashed = exc
    finally:
        deadline[0] = time.monotonic() + ANSWER_WITHIN_S
        sending.clear()
        receiver.join(ANSWER_WITHIN_S + 10)
        client.close()


@pytest.fixture
def load() -> Iterator[Load]:
    """The request load's state; its threads end with the test, whatever the outcome (before the cluster's
    teardown: a client still retrying the dead node would leak sockets after the `gc.collect` there)."""
    state = Load()
    yield state
    state.stop.set()
    state.give_up.set()
    if state.thread is not None:
        state.thread.join(30)


def test_killing_the_leading_broker_mid_replay_loses_no_event_and_no_request(
        cluster: Settings, trained_checkpoint: Path, worker_factory: Callable[..., Worker], load: Load) -> None:
    settings = cluster
    t0 = time.monotonic()
    shutil.copytree(trained_checkpoint, settings.checkpoint_dir)
    with ThreadPoolExecutor(2) as pool:  # both start at once: each spends its first seconds importing
        starting = pool.submit(worker_factory, settings, timeout=120)
        recommender = worker_factory(settings, app="recommender", timeout=120)
        worker = starting.result()
    truth = ground_truth(first_events(settings))
    users = sorted(truth)
    ready_at = time.monotonic()

    requests = load.thread = threading.Thread(target=_run_load, args=(settings, users, load), daemon=True)
    requests.start()
    wait_until(lambda: len(load.answers) >= 10, 60, "the recommender to answer the first requests")

    stats: dict[str, object] = {}
    mid_replay = threading.Event()

    def progress(sent: int, _delivered: int) -> None:
        if sent >= KILL_AT_SENT:
            mid_replay.set()

    sender = threading.Thread(target=lambda: stats.update(r=replay(
        settings, settings.data_dir / "recommendation_interactions.parquet", limit=N_EVENTS, rate=REPLAY_RATE,
        progress=progress)), daemon=True)
    sender.start()
    assert mid_replay.wait(60), "the replay did not get going"

    leaders = _leaders(settings)
    victim, led = Counter(leaders).most_common(1)[0]
    assert victim >= 0 and led >= 2, f"interactions' leaders {leaders}"
    _kill_node(settings, victim)
    killed_at = time.monotonic()
    applied_at_kill = worker.figures()["applied"]

    def moved() -> bool:
        try:
            now = _leaders(settings)
        except Exception:  # noqa: BLE001 - the admin client's bootstrap may be the dead node: ask again
            return False
        return all(leader not in (-1, victim) for leader in now)

    wait_until(moved, 60, f"interactions' partitions led by node {victim} to get a new leader")
    elected_at = time.monotonic()
    alive = {"worker": worker.proc.poll() is None, "recommender": recommender.proc.poll() is None}
    assert all(alive.values()), f"{alive}\n--- worker:\n{worker.tail()}\n--- recommender:\n{recommender.tail()}"

    sender.join(90)
    assert not sender.is_alive(), "the replay did not finish within 90 s of the kill"
    replayed_at = time.monotonic()
    result = stats["r"]
    assert result.sent == N_EVENTS and result.delivered == N_EVENTS and result.failed == 0, result

    time.sleep(REQUESTS_AFTER_S)
    load.stop.set()
    requests.join(ANSWER_WITHIN_S + 30)
    assert not requests.is_alive(), "the request load did not finish"
    assert load.crashed is None, f"the request load failed: {load.crashed!r}"

    alive = {"worker": worker.proc.poll() is None, "recommender": recommender.proc.poll() is None}
    assert all(alive.values()), f"{alive}\n--- worker:\n{worker.tail()}\n--- recommender:\n{recommender.tail()}"

    wait_caught_up(settings, worker, 120)
    idle_at = time.monotonic()
    wrong = differences(settings, truth)
    assert not wrong, explain(settings, wrong, worker)
    assert worker.figures()["dlq_total"] == 0

    codes = Counter(load.answers.values())
    during = [r for r, t in load.sent_at.items() if killed_at <= t <= elected_at]
    # the last REQUESTS_AFTER_S of requests, after the replay and the election: served again, not shed
    after = Counter(load.answers.get(r, "missing") for r, t in load.sent_at.items() if t >= replayed_at)
    summary = (f"node {victim} led {led}/{len(leaders)} partitions, killed after {applied_at_kill} events; "
               f"new leaders after {elected_at - killed_at:.1f} s, replay done after {replayed_at - killed_at:.1f} s; "
               f"{len(load.sent_at)} requests sent "
               f"({len(during)} during the failover), answers by error code {dict(codes)}, "
               f"of the {after.total()} sent after the replay {dict(after)}; "
               f"workers ready in {ready_at - t0:.0f} s, kill at +{killed_at - ready_at:.1f} s, "
               f"all done and idle {idle_at - killed_at:.0f} s after the kill")
    print(f"\nfailover: {summary}")
    assert not load.send_errors, f"{len(load.send_errors)} requests not sent: {load.send_errors[:3]}"
    assert during, summary
    missing = load.missing()
    assert not missing, (f"{len(missing)} requests unanswered ({len(load.missing(killed_at, elected_at))} of them "
                         f"sent during the failover), e.g. {missing[:5]}; {summary}\n--- recommender:\n"
                         f"{recommender.tail()}")
    assert after.total() > 0 and set(after) == {None}, f"not served again after the failover: {summary}"
    assert recommender.proc.poll() is None and worker.proc.poll() is None
    for w in (worker, recommender):  # both stop at once (worker_factory then waits for each)
        w.proc.send_signal(signal.SIGTERM)
