"""The command line as a user meets it: in a subprocess, reading stdout, stderr and the exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.config import TABLE_MARKERS, configuration_table
from streamrec.shell.cli import cli


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def _all_commands() -> list[list[str]]:
    paths: list[list[str]] = [[]]
    for name, command in cli.commands.items():
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    from benchmarks.cli import bench  # `streamrec bench` runs them from the checkout

    return paths + [["bench", sub] for sub in bench.commands]


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "streamrec")
def test_every_command_has_help(path: list[str]) -> None:
    result = run(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()
    assert "Traceback" not in result.stderr


def test_the_contract_commands_all_exist() -> None:
    expected = {"stack", "generate", "import", "images", "apply", "train", "trainer", "worker", "replay", "request",
                "freshness", "demo", "bench"}
    assert expected <= set(cli.commands)


def test_a_bad_setting_is_one_line_and_a_nonzero_exit() -> None:
    result = run("stack", "status", STREAMREC_REDIS_PORT="not-a-port")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: STREAMREC_REDIS_PORT")
    assert "Traceback" not in result.stderr


def test_an_unknown_command_is_a_usage_error() -> None:
    result = run("nonsense")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once the block ends


def test_request_without_a_broker_is_one_line_in_seconds() -> None:
    result = run("request", "--user", "U000001", KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{_closed_port()}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Kafka broker"), result.stderr


def test_the_demo_refuses_a_busy_port_and_starts_nothing(tmp_path) -> None:  # noqa: ANN001
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("demo", STREAMREC_WORKER_PORT=str(port), STREAMREC_STACK_DIR=str(tmp_path / "stack"),
                     STREAMREC_KAFKA_PORT=str(_closed_port()), STREAMREC_REDIS_PORT=str(_closed_port()),
                     STREAMREC_DEMO_DIR=str(tmp_path / "demo"))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (STREAMREC_WORKER_PORT) is in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack").exists()  # nothing was started, so nothing to stop


def test_config_prints_the_settings_table_and_rewrites_a_readme_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{TABLE_MARKERS[0]}\n| stale |\n{TABLE_MARKERS[1]}\nrest\n", encoding="utf-8")
    printed = run("config")
    rewritten = run("config", "--readme", str(readme))
    assert (printed.returncode, rewritten.returncode) == (0, 0), printed.stderr + rewritten.stderr
    assert printed.stdout == configuration_table()
    assert readme.read_text(encoding="utf-8") == (
        f"intro\n{TABLE_MARKERS[0]}\n{configuration_table()}{TABLE_MARKERS[1]}\nrest\n")


def test_a_refused_redis_password_is_one_line_naming_redis_url_never_the_secret(tmp_path: Path) -> None:
    """Issue 30: a wrong credential is one clear error line naming the setting, never a hang, never the
    secret. A real server that requires a password (the stack's Redis binary)."""
    import time

    from generation.dataset_gen_amazon import GeneratorConfig, generate, write
    from streamrec import load_settings
    from streamrec.shell import stack as st

    write(generate(GeneratorConfig(n_users=50, n_items=100, n_interactions=300, seed=1)), tmp_path / "data")
    port = st.free_port()
    server = subprocess.Popen([st.redis_server_binary(load_settings()), "--port", str(port), "--bind", "127.0.0.1",
                               "--requirepass", "right-one", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not st._port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        result = run("apply", REDIS_URL=f"redis://:not-the-secret-pw@127.0.0.1:{port}/0",
                     STREAMREC_DATA_DIR=str(tmp_path / "data"))
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "REDIS_URL" in errors[0], result.stderr[-2000:]
    assert "not-the-secret-pw" not in result.stdout + result.stderr
