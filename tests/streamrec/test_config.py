from __future__ import annotations

from pathlib import Path

import pytest

from streamrec import ConfigError, Settings, StreamrecError, kafka_clients, load_settings
from streamrec.config import _SECRET_FIELDS, TABLE_MARKERS, _env_name, configuration_table, with_configuration_table

VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "STREAMREC_DATA_DIR", "STREAMREC_CHECKPOINT_DIR",
             "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
             "KAFKA_SASL_PASSWORD", "STREAMREC_STACK_DIR", "STREAMREC_KAFKA_PORT",
             "STREAMREC_REDIS_PORT", "STREAMREC_TOPIC_PARTITIONS", "STREAMREC_BROKER", "STREAMREC_KAFKA_BROKERS",
             "STREAMREC_KAFKA_CACHE", "KAFKA_SSL_CAFILE", "STREAMREC_SECURE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_use_the_embedded_stack() -> None:
    s = load_settings()
    assert s.embedded_kafka and s.embedded_redis
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.redis == "redis://127.0.0.1:6379/0"
    assert s.data_dir == Path("feature_repo/data")
    assert s.checkpoint_dir == Path("checkpoints")
    assert s.topic_partitions == 4


def test_an_embedded_kafka_cluster_is_bootstrapped_from_every_node(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (load_settings().broker, load_settings().topic_replication) == ("tansu", 1)
    monkeypatch.setenv("STREAMREC_BROKER", "kafka")
    monkeypatch.setenv("STREAMREC_KAFKA_BROKERS", "3")
    monkeypatch.setenv("STREAMREC_KAFKA_PORT", "19092")
    s = load_settings()
    assert s.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert (s.topic_replication, s.topic_min_insync) == (3, 2)
    assert load_settings(kafka_bootstrap_servers="k:9092").topic_replication == 1  # external: its own rules


@pytest.mark.parametrize(("env", "message"), [
    ({"STREAMREC_BROKER": "redpanda"}, "STREAMREC_BROKER: expected 'tansu' or 'kafka'"),
    ({"STREAMREC_KAFKA_BROKERS": "3"}, "STREAMREC_KAFKA_BROKERS: Tansu runs one broker"),
    ({"STREAMREC_BROKER": "kafka", "STREAMREC_KAFKA_BROKERS": "9"}, "STREAMREC_KAFKA_BROKERS: "),
])
def test_a_bad_broker_choice_names_its_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9093, k2:9094")
    monkeypatch.setenv("REDIS_URL", "rediss://:s3cret@redis.example:6380/2")
    monkeypatch.setenv("STREAMREC_DATA_DIR", "/tmp/d")
    monkeypatch.setenv("STREAMREC_CHECKPOINT_DIR", "/tmp/c")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    monkeypatch.setenv("STREAMREC_TOPIC_PARTITIONS", "8")
    s = load_settings()
    assert not s.embedded_kafka and not s.embedded_redis
    assert s.bootstrap_servers == "k1:9093,k2:9094"
    assert s.data_dir == Path("/tmp/d") and s.checkpoint_dir == Path("/tmp/c")
    assert s.topic_partitions == 8
    kp = kafka_clients.python_config(s)
    assert kp["bootstrap_servers"] == ["k1:9093", "k2:9094"]
    assert kp["security_protocol"] == "SASL_PLAINTEXT"
    assert (kp["sasl_mechanism"], kp["sasl_plain_username"], kp["sasl_plain_password"]) == (
        "SCRAM-SHA-256", "alice", "pw")
    assert kafka_clients.aio_config(s)["sasl_plain_password"] == "pw"
    assert s.feast_redis_connection_string() == (
        "redis.example:6380,password=s3cret,ssl=true,db=2,socket_timeout=5,socket_connect_timeout=5,retry=null")


def test_secrets_are_masked_in_display_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://user:hunter2@h:6379/0")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter3")
    s = load_settings()
    assert s.redis_display() == "redis://user:***@h:6379/0"
    assert "hunter2" not in repr(s) and "hunter3" not in repr(s)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("KAFKA_BOOTSTRAP_SERVERS", "h:99999", "host:port"),
        ("REDIS_URL", "http://h:1", "redis://"),
        ("REDIS_URL", "redis://h:notaport", "port"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT"),
        ("STREAMREC_TOPIC_PARTITIONS", "zero", "integer"),
        ("STREAMREC_TOPIC_PARTITIONS", "0", "greater than or equal to 1"),
        ("STREAMREC_KAFKA_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                        expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert expected in message
    assert "\n" not in message


def test_a_bad_redis_url_never_echoes_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://:topsecret@h:1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "topsecret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unix_socket_redis_is_refused_for_feast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "unix:///tmp/redis.sock")
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_settings().feast_redis_connection_string()


def test_every_streamrec_variable_is_read_through_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The filter rules, the stack's Redis binary and the demo's folder come from Settings like the rest
    (they once bypassed it), and so does the generator's and `feast apply`'s data folder."""
    monkeypatch.setenv("STREAMREC_FILTERS_CONFIG", str(tmp_path / "rules.yaml"))
    monkeypatch.setenv("STREAMREC_REDIS_SERVER", "valkey-server")
    monkeypatch.setenv("STREAMREC_DEMO_DIR", str(tmp_path / "demo"))
    settings = load_settings()
    assert settings.filters_config == tmp_path / "rules.yaml"
    assert settings.redis_server == "valkey-server" and settings.demo_dir == tmp_path / "demo"
    assert load_settings(demo_dir="x").demo_dir == Path("x")
    root = Path(__file__).resolve().parents[2]
    sources = [p for top in ("streamrec", "stream_processors", "serving", "models", "producers", "generation",
                             "feature_repo") for p in (root / top).rglob("*.py")]
    readers = [p.relative_to(root) for p in sources if "environ.get(\"STREAMREC_" in p.read_text(encoding="utf-8")]
    assert readers == []


def test_a_child_process_gets_exactly_these_settings_security_and_redis_included(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from streamrec.config import settings_env

    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "the-parent's")  # this process's own: never inherited
    monkeypatch.setenv("STREAMREC_STRAY", "1")
    plain = settings_env(load_settings(kafka_sasl_password=None))
    assert "KAFKA_SASL_PASSWORD" not in plain and "STREAMREC_STRAY" not in plain and "REDIS_URL" not in plain
    assert plain["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    secured = settings_env(load_settings(kafka_bootstrap_servers="k:9093", kafka_security_protocol="SASL_SSL",
                                         kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc",
                                         kafka_sasl_password="s3cret", redis_url="rediss://:pw@r:6380/0"))
    assert {k: secured[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
                                    "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "REDIS_URL")} == {
        "KAFKA_BOOTSTRAP_SERVERS": "k:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "s3cret",
        "REDIS_URL": "rediss://:pw@r:6380/0"}


def _table_rows() -> dict[str, tuple[str, str]]:
    rows = [line.strip("|").split(" | ") for line in configuration_table().splitlines()[2:]]
    return {variable.strip(" `"): (default, meaning.strip()) for variable, default, meaning in rows}


def test_every_setting_says_what_it_is_for() -> None:
    """The README's table is drawn from these descriptions: a field without one would be a blank meaning."""
    assert [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()] == []


def test_the_table_has_a_row_per_variable_with_its_default_as_users_write_it() -> None:
    rows = _table_rows()
    assert list(rows) == [_env_name(name) for name in Settings.model_fields]
    assert rows["STREAMREC_DATA_DIR"][0] == "`feature_repo/data`"
    assert rows["STREAMREC_EVENT_TIME_FLOOR"][0] == "`1990-01-01T00:00:00Z`"
    assert rows["KAFKA_BOOTSTRAP_SERVERS"][0] == "unset"
    assert rows["STREAMREC_BROKER"][1].endswith("; one of `tansu`, `kafka`")
    assert rows["KAFKA_SASL_MECHANISM"][1].endswith("; one of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`")


def test_the_table_shows_no_default_of_a_secret() -> None:
    assert _SECRET_FIELDS == {"redis_url", "kafka_sasl_password"}  # drawn from the SecretStr annotations
    rows = _table_rows()
    assert [rows[_env_name(name)][0] for name in Settings.model_fields if name in _SECRET_FIELDS] == [
        "(secret)", "(secret)"]


def test_the_readme_table_is_replaced_between_its_markers_only() -> None:
    begin, end = TABLE_MARKERS
    readme = f"# title\n\n{begin}\n| stale |\n{end}\n\nafter\n"
    assert with_configuration_table(readme) == f"# title\n\n{begin}\n{configuration_table()}{end}\n\nafter\n"
    with pytest.raises(StreamrecError, match="settings-table"):
        with_configuration_table("# a README without the markers\n")


def test_a_redis_cluster_has_no_database_in_its_url_and_feast_runs_in_cluster_mode() -> None:
    """redis-py's RedisCluster refuses a `db` (a cluster has one database): the embedded cluster's URL and
    Feast's connection string carry none, and Feast is told the store is a cluster."""
    cluster = load_settings(redis_url=None, redis_nodes=3, embedded_redis_port=7000)
    assert cluster.redis_is_cluster and cluster.redis == "redis://127.0.0.1:7000"
    assert cluster.embedded_redis_ports == [7000 + i for i in range(6)]
    assert "db=" not in cluster.feast_redis_connection_string()
    # every node is a startup node: a client started while the first is down finds the others
    assert cluster.feast_redis_connection_string().startswith(",".join(f"127.0.0.1:{7000 + i}" for i in range(6)))
    external = load_settings(redis_url="redis://:pw@cache.example:6380/0", redis_cluster=True)
    assert external.redis_is_cluster and "db=" not in external.feast_redis_connection_string()
    single = load_settings(redis_url=None, redis_nodes=1, embedded_redis_port=7000)
    assert not single.redis_is_cluster and single.redis.endswith("/0")
    with pytest.raises(ConfigError, match="3 primaries"):
        load_settings(redis_nodes=2)


def test_a_tls_redis_url_carries_its_ca_to_feast_and_a_ca_file_must_exist(tmp_path: Path) -> None:
    settings = load_settings(redis_url="rediss://:pw@r.example:6380/0?ssl_ca_certs=/etc/ca.pem&unknown=x")
    assert settings.feast_redis_connection_string().split(",")[:5] == [
        "r.example:6380", "password=pw", "ssl=true", "ssl_ca_certs=/etc/ca.pem", "db=0"]
    with pytest.raises(ConfigError, match="ssl_ca_certs holds ','"):
        load_settings(redis_url="rediss://r:6380/0?ssl_ca_certs=/a,b.pem").feast_redis_connection_string()
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE: .* is not a file"):
        load_settings(kafka_ssl_cafile=str(tmp_path / "missing.pem"))
    assert load_settings(kafka_ssl_cafile="").kafka_ssl_cafile is None  # set but empty: as unset
