"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrec import load_settings
from streamrec.cli import cli
from streamrec.config import Settings

ROOT = Path(__file__).resolve().parents[1]


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
