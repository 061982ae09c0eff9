"""The features worker's fenced write (issue #29): a worker whose write waits on Redis while its partitions
are taken away writes nothing after it lost them.

Real worker processes, a real broker and Redis. Redis writes are paused (``CLIENT PAUSE … WRITE``: a write
waits, reads go on) while the first worker is mid-write; a second worker joins and takes some partitions;
then writes resume. Redis' MONITOR says who wrote what when: each worker names its connections (its group
and pid, ``CLIENT SETNAME``), and ``CLIENT LIST`` maps a connection's address to its name.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd
import redis

from benchmarks.oracle import ground_truth
from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.schemas import INTERACTION_TYPES
from streamrec.shell.stack import free_port
from streamrec.topics import INTERACTIONS
from tests.helpers import Worker, online_state, wait_until

WRITES = {"HSET", "HMSET", "HDEL", "DEL", "UNLINK", "EXPIRE", "SET"}


def _partition(user: str, partitions: int) -> int:
    """kafka-python's default partitioner, as the producer below keys the events."""
    from kafka.partitioner.default import murmur2

    return (murmur2(user.encode()) & 0x7FFFFFFF) % partitions


def _one_user_per_partition(partitions: int) -> dict[int, str]:
    tag, users, i = uuid.uuid4().hex[:6], {}, 0
    while len(users) < partitions:
        user = f"fence-{tag}-{i:04d}"  # fixed width: no user id is a prefix of another
        users.setdefault(_partition(user, partitions), user)
        i += 1
    return users


class RedisWatch:
    """Every command Redis runs (MONITOR), with the name of the connection that sent it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: list[tuple[float, str, str]] = []  # (server time, "addr:port", command)
        self.names: dict[str, str] = {}  # "addr:port" → client name, as CLIENT LIST showed it
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._threads = [threading.Thread(target=self._monitor, daemon=True),
                         threading.Thread(target=self._list_clients, daemon=True)]

    def __enter__(self) -> RedisWatch:
        for thread in self._threads:
            thread.start()
        probe = redis.Redis.from_url(self.url)

        def answering() -> bool:
            probe.echo("watching?")  # MONITOR leaves admin commands (CLIENT LIST) out: this shows
            return self._listed.is_set() and any("watching?" in c for _, _, c in self.commands)

        wait_until(answering, 10, "CLIENT LIST and MONITOR to answer")
        probe.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        client = redis.Redis.from_url(self.url)
        client.echo("stop-watching")  # MONITOR's loop sees it and ends
        client.close()
        for thread in self._threads:
            thread.join(10)

    def _monitor(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:
            while True:
                try:
                    command = monitor.next_command()
                except (ValueError, KeyError, IndexError):  # a line redis-py cannot parse: not a write of ours
                    continue
                self.commands.append((command["time"], f"{command.get('client_address')}:{command.get('client_port')}",
                                      command["command"]))
                if self._stop.is_set() and "stop-watching" in command["command"]:
                    return

    def _list_clients(self) -> None:
        client = redis.Redis.from_url(self.url)
        while not self._stop.is_set():
            for one in client.client_list():
                if one.get("name"):
                    self.names[one["addr"]] = one["name"]
            self._listed.set()
            time.sleep(0.05)
        client.close()

    def writes(self, name_prefix: str, user: str, since: float = 0.0) -> list[float]:
        """When connections named ``name_prefix…`` ran a write to ``user``'s rows, at or after ``since``.
        A Feast Redis key is the serialized entity key (the user id's bytes) followed by the project's name;
        redis-py gives the command's arguments space-separated, unquoted."""
        return [t for t, addr, command in self.commands
                if t >= since and command.split(" ", 1)[0].upper() in WRITES and f"{user}streamrec " in command
                and self.names.get(addr, "").startswith(name_prefix)]


def _send(settings: Settings, users: list[str], step: int) -> list[dict]:
    from kafka import KafkaProducer

    producer = KafkaProducer(acks="all", **kafka_clients.python_config(settings))
    now = datetime.now(UTC).replace(microsecond=0)
    events = [{"event_id": f"{user}-{step}", "user_id": user, "item_id": f"item-{step}",
               "interaction_type": INTERACTION_TYPES[step % len(INTERACTION_TYPES)],
               "timestamp": (now + pd.Timedelta(seconds=step)).isoformat()} for user in users]
    for event in events:
        producer.send(INTERACTIONS, key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()
    return events


def _interactions(worker: Worker) -> set[str]:
    return {tp for tp in worker.figures()["assigned"] if tp.startswith(f"{INTERACTIONS}/")}


def test_a_worker_that_lost_its_partitions_mid_write_writes_nothing_after(
        env_stack: Settings, worker_factory: Callable[..., Worker]) -> None:
    n = env_stack.topic_partitions
    everything = {f"{INTERACTIONS}/{p}" for p in range(n)}
    users = _one_user_per_partition(n)
    admin = redis.Redis.from_url(env_stack.redis)
    with RedisWatch(env_stack.redis) as watch:
        first = worker_factory(env_stack)
        first_name = f"{env_stack.worker_app_id}-{first.proc.pid}"
        wait_until(lambda: _interactions(first) == everything, 60, "the first worker to own every partition")
        sent = _send(env_stack, list(users.values()), 0)
        wait_until(lambda: first.figures()["applied"] >= n, 60, "the first events to be applied")
        wait_until(lambda: all(watch.writes(first_name, u) for u in users.values()), 10,
                   "MONITOR to show the first worker's writes under its name")

        retries = first.figures()["push_retries"]
        admin.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
        try:
            sent += _send(env_stack, list(users.values()), 1)
            # its write waits on Redis until the socket timeout, then is tried again: it is mid-write
            wait_until(lambda: first.figures()["push_retries"] > retries, 30, "the first worker to retry its write")
            second = worker_factory(env_stack, port=free_port())
            wait_until(lambda: first.figures()["fenced_batches"] >= 1, 60,
                       "the first worker to drop its batch once its partitions were being taken")
            seen: list[tuple[frozenset, frozenset]] = []

            def settled() -> bool:
                seen.append((frozenset(_interactions(first)), frozenset(_interactions(second))))
                mine, theirs = seen[-1]
                return len(seen) > 8 and len(set(seen[-8:])) == 1 and mine | theirs == everything and theirs
            wait_until(settled, 90, "the partitions to be split between both workers, and stay so for 2 s")
            taken = {users[int(tp.split("/")[1])] for tp in seen[-1][1]}  # users whose partition moved
            rebalances = first.figures()["rebalances"]
        finally:
            resumed_at = time.time()
            admin.execute_command("CLIENT", "UNPAUSE")
        truth = ground_truth(pd.DataFrame(sent).assign(timestamp=lambda f: pd.to_datetime(f["timestamp"])))
        wait_until(lambda: online_state(env_stack, list(truth)) == truth, 60, "every row to hold both events")
        time.sleep(1.0)  # a late write from the first worker would come now, if at all
    assert first.figures()["rebalances"] == rebalances, "the partitions moved again: the check below is void"
    second_name = f"{env_stack.worker_app_id}-{second.proc.pid}"
    late = {u: watch.writes(first_name, u, since=resumed_at) for u in taken}
    assert not any(late.values()), f"the first worker wrote rows of partitions it had lost: {late}"
    assert all(watch.writes(second_name, u, since=resumed_at) for u in taken), \
        "the second worker should have written the rows of the partitions it took"
    admin.close()
