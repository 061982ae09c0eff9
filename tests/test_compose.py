"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrec import load_settings
from streamrec.config import Settings
from streamrec.shell.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _defaults_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare with the defaults, not with whatever stack this shell points at."""
    import os

    for name in list(os.environ):
        if name.startswith(("STREAMREC_", "KAFKA_", "REDIS_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_names() -> set[str]:
    return {f.validation_alias for f in Settings.model_fields.values() if isinstance(f.validation_alias, str)}


def test_kafka_runs_in_kraft_mode_on_the_official_image(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)


def test_published_ports_are_the_embedded_defaults(compose: dict) -> None:
    defaults = load_settings(kafka_bootstrap_servers=None, redis_url=None)
    kafka_ports = compose["services"]["kafka"]["ports"]
    redis_ports = compose["services"]["redis"]["ports"]
    assert f"{defaults.embedded_kafka_port}:9092" in kafka_ports
    assert f"{defaults.embedded_redis_port}:6379" in redis_ports
    advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"127.0.0.1:{defaults.embedded_kafka_port}" in advertised


@pytest.mark.parametrize("service", ["worker", "trainer", "replay"])
def test_services_are_built_here_and_wired_with_our_variables(compose: dict, service: str) -> None:
    spec = compose["services"][service]
    assert spec["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    env = {k: str(v) for k, v in spec["environment"].items()}
    assert set(env) <= _env_names(), set(env) - _env_names()
    settings = load_settings(**{name: value for name, value in env.items()})  # validates every value
    kafka_env = compose["services"]["kafka"]["environment"]
    assert settings.bootstrap_servers.split(":")[0] == "kafka"
    assert f"kafka:{settings.bootstrap_servers.split(':')[1]}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.redis.startswith("redis://redis:6379")
    assert spec["command"][0] in cli.commands
    assert set(spec["depends_on"]) == {"kafka", "redis"}


def test_the_compose_broker_is_the_native_kafka_node(compose: dict, tmp_path: Path) -> None:
    """Same Apache Kafka version and the same node settings as `streamrec stack up --broker kafka`."""
    from streamrec.shell import apache_kafka as ak

    kafka = compose["services"]["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    defaults = load_settings(kafka_bootstrap_servers=None, redis_url=None, broker="kafka", kafka_brokers=1,
                             topic_partitions=int(compose["x-streamrec-env"]["STREAMREC_TOPIC_PARTITIONS"]))
    native = ak.server_properties(defaults, 0, tmp_path)
    assert kafka["image"] == f"apache/kafka:{ak.VERSION}"
    # Every setting that shapes what clients see is the same; the wiring, paths and sizes are the host's.
    wiring = {"listeners", "advertised.listeners", "listener.security.protocol.map", "inter.broker.listener.name",
              "controller.quorum.voters"}
    semantic = {k: v for k, v in native.items()
                if k == "num.partitions" or not (k in wiring or k.startswith(("log.", "num.")))}
    assert {"process.roles", "num.partitions", "auto.create.topics.enable", "node.id"} <= set(semantic)
    assert {k: env.get("KAFKA_" + k.upper().replace(".", "_")) for k in semantic} == semantic
    # The client listener on 9092 and the controller on 9093 in both.
    client, controller = native["listeners"].split(",")
    assert client.endswith(":9092") and "HOST://:9092" in env["KAFKA_LISTENERS"]
    assert controller == f"CONTROLLER://127.0.0.1:{ak.controller_port(defaults, 0)}"
    assert f"CONTROLLER://:{ak.controller_port(defaults, 0)}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"0@kafka:{ak.controller_port(defaults, 0)}"
