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


# ---- the profiles: the embedded stack's other two shapes ----------------------------------------------
SHAPES = {"redis-cluster": ("worker-cluster", "trainer-cluster", "replay-cluster"),
          "secure": ("worker-secure", "trainer-secure", "replay-secure")}


def test_the_default_shape_has_no_profile_and_each_other_shape_one(compose: dict) -> None:
    services = compose["services"]
    default = {name for name, spec in services.items() if not spec.get("profiles")}
    assert default == {"kafka", "redis", "worker", "trainer", "replay"}
    for profile, clients in SHAPES.items():
        assert all(services[c]["profiles"] == [profile] for c in clients)
        for client in clients:  # what `--profile P up <clients>` starts: the clients and their dependencies
            assert all(profile in services[d].get("profiles", [profile]) or d == "kafka"
                       for d in services[client]["depends_on"]), client


def test_the_redis_cluster_profile_is_the_embedded_cluster(compose: dict) -> None:
    from streamrec.shell import redis_cluster

    services = compose["services"]
    nodes = {name: spec for name, spec in services.items() if name.startswith("redis-node-")}
    defaults = load_settings(redis_nodes=3, redis_url=None)
    assert len(nodes) == len(defaults.embedded_redis_ports) == 6  # 3 primaries + a replica each
    addresses = [spec["networks"]["default"]["ipv4_address"] for spec in nodes.values()]
    for spec in nodes.values():
        command = spec["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-node-timeout") + 1] == str(redis_cluster.NODE_TIMEOUT_MS)
    init = services["redis-cluster-init"]["command"]
    assert init[:3] == ["redis-cli", "--cluster", "create"] and init[3:9] == [f"{a}:6379" for a in addresses]
    assert init[init.index("--cluster-replicas") + 1] == "1"
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(subnet) for a in addresses)
    for client in SHAPES["redis-cluster"]:
        env = {k: str(v) for k, v in services[client]["environment"].items()}
        settings = load_settings(**env)
        assert settings.redis_is_cluster and settings.redis.startswith(f"redis://{addresses[0]}:6379")
        assert services[client]["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"


def test_the_secure_profile_runs_the_files_the_embedded_secure_stack_would(compose: dict, tmp_path: Path) -> None:
    """`secure-files` (the service's own command, into a folder here) writes what the servers' commands name,
    the Kafka node's security settings are the embedded secured node's, and the clients' client.env points
    at the profile's host names with the ordinary security settings."""
    import subprocess
    import sys

    from streamrec.shell import apache_kafka as ak
    from streamrec.shell import secure
    from tests.helpers import sourced

    services = compose["services"]
    command = services["secure-files"]["command"]
    mount = command[2]
    assert f"streamrec-secure:{mount}" in services["secure-files"]["volumes"]
    args = [a for a in command if a not in ("--owner", "1000:1000")]
    args[2] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    kafka, redis_server = services["kafka-secure"], services["redis-secure"]
    assert kafka["image"] == f"apache/kafka:{ak.VERSION}" and kafka["entrypoint"][-1].startswith(mount)
    assert (tmp_path / Path(kafka["entrypoint"][-1]).name).exists()
    assert redis_server["command"][-1] == f"{mount}/redis.conf" and (tmp_path / "redis.conf").exists()
    assert all(f"streamrec-secure:{mount}:ro" in services[s]["volumes"]
               for s in ("kafka-secure", "redis-secure", *SHAPES["secure"]))

    props = dict(line.split("=", 1) for line in (tmp_path / "server.properties").read_text().splitlines())
    assert props["advertised.listeners"] == f"SASL_SSL://{kafka['hostname']}:9092"
    assert f"--bootstrap-server {kafka['hostname']}:9092" in " ".join(kafka["healthcheck"]["test"])
    native = load_settings(broker="kafka", kafka_brokers=1, stack_secure=True, stack_dir=tmp_path / "embedded",
                           kafka_bootstrap_servers=None)
    secure.make(native)
    embedded = ak.server_properties(native, 0, tmp_path / "data")
    wiring = {"listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs", "ssl.keystore.location",
              "ssl.truststore.location", "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"}  # paths, hosts
    assert {k: v for k, v in props.items() if k not in wiring} == {k: v for k, v in embedded.items() if k not in wiring}

    env = sourced(tmp_path / "client.env")
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['hostname']}:9092"
    assert env["REDIS_URL"].split("@")[1].startswith(f"{redis_server['hostname']}:6379/0?ssl_ca_certs=")
    settings = load_settings(**{k: v for k, v in env.items() if k.startswith(("KAFKA_", "REDIS_"))})
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", secure.MECHANISM)
    for client in SHAPES["secure"]:
        spec = services[client]
        assert f". {mount}/client.env" in spec["entrypoint"][2] and spec["command"][0] in cli.commands
        assert not set(spec["environment"]) & {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}  # client.env's alone
