"""The one Kafka client layer: every producer, consumer, admin client and Faust app of streamrec connects
through here, from the one :class:`~streamrec.config.Settings`.

- connection settings (brokers, security, SASL credentials, TLS) are built here and nowhere else, for
  kafka-python (:func:`python_config`), aiokafka (:func:`aio_config`) and Faust (:func:`faust_broker`);
- the clients: :func:`producer`, :func:`consumer`, :func:`admin` (kafka-python, for the CLI, producers and
  the trainer) and :func:`aio_producer`, :func:`aio_consumer`, :func:`aio_admin` (aiokafka, for the workers);
- the embedded broker's workarounds, applied on Tansu and only there (``settings.on_tansu``): end offsets
  confirmed by a fetch (streamrec/offsets.py) and an ordered producer with one request in flight;
- :func:`require_reachable`: one clear line, in seconds, when no bootstrap server answers.

A caller states what it needs (``acks``, ``group_id``, waits) as keyword options; the connection part is
never spelled out twice.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from . import offsets
from ._exceptions import StreamrecError
from .config import Settings

__all__ = ["python_config", "aio_config", "rdkafka_config", "faust_broker", "producer", "consumer", "admin",
           "aio_producer", "aio_consumer", "aio_admin", "ordered", "require_reachable", "accepts", "end_offsets",
           "end_offsets_sync", "consumer_at_end", "topic_partitions", "EndOffsetError"]

EndOffsetError = offsets.EndOffsetError


def _sasl(settings: Settings) -> dict[str, Any]:
    if not settings.kafka_sasl_mechanism:
        return {}
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return {"sasl_mechanism": settings.kafka_sasl_mechanism, "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password}


def _tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _ssl_context(settings: Settings) -> Any:
    """The aiokafka/Faust TLS context: the brokers' certificates checked against KAFKA_SSL_CAFILE (else the
    system's CAs), host names checked."""
    if not _tls(settings):
        return None
    from aiokafka.helpers import create_ssl_context

    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    return create_ssl_context(cafile=cafile)


def python_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for kafka-python clients (may hold a password: never log them)."""
    config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers.split(","),
                              "security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    if _tls(settings) and settings.kafka_ssl_cafile:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return config


def aio_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for aiokafka clients (may hold a password: never log them)."""
    config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers,
                              "security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    context = _ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    return config


def rdkafka_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for confluent-kafka (librdkafka) clients, the load generator's (may hold a
    password: never log them). TLS trusts the system's CA store, as the other clients do."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers,
                              "security.protocol": settings.kafka_security_protocol.lower()}
    sasl = _sasl(settings)
    if sasl:
        config.update({"sasl.mechanism": sasl["sasl_mechanism"], "sasl.username": sasl["sasl_plain_username"],
                       "sasl.password": sasl["sasl_plain_password"]})
    if _tls(settings):
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else "probe"
    return config


def faust_broker(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments for the same cluster: ``broker`` and ``broker_credentials``."""
    import faust

    credentials: Any = None
    sasl = _sasl(settings)
    if sasl:
        credentials = faust.SASLCredentials(username=sasl["sasl_plain_username"], password=sasl["sasl_plain_password"],
                                            mechanism=sasl["sasl_mechanism"], ssl_context=_ssl_context(settings))
    elif settings.kafka_security_protocol == "SSL":
        credentials = faust.SSLCredentials(_ssl_context(settings))
    return {"broker": [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
            "broker_credentials": credentials}


def ordered(settings: Settings) -> dict[str, Any]:
    """Producer options that keep each key's records in order when the producer retries. Apache Kafka: the
    idempotent producer (sequence numbers per partition), which keeps order with 5 requests in flight, so
    the producer never waits a round trip per batch. Tansu: one request in flight (a retry can then never
    overtake an earlier batch)."""
    if settings.on_tansu:
        return {"retries": 5, "max_in_flight_requests_per_connection": 1}
    return {"enable_idempotence": True, "max_in_flight_requests_per_connection": 5}


# ---- kafka-python (blocking: the CLI, producers, trainer) ----------------------------------------------
def producer(settings: Settings, **options: Any) -> Any:
    """A ``kafka.KafkaProducer`` on the cluster; ``options`` as kafka-python's (``acks``, ``linger_ms``...)."""
    from kafka import KafkaProducer

    return KafkaProducer(**python_config(settings), **options)


def consumer(settings: Settings, **options: Any) -> Any:
    """A ``kafka.KafkaConsumer`` on the cluster (no topics: the caller assigns or subscribes)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(**python_config(settings), **options)


def admin(settings: Settings, **options: Any) -> Any:
    """A ``kafka.admin.KafkaAdminClient`` on the cluster (``bootstrap_servers`` may be overridden)."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**{**python_config(settings), **options})


# ---- aiokafka (the workers' event loops) --------------------------------------------------------------
def aio_producer(settings: Settings, **options: Any) -> Any:
    """An ``aiokafka.AIOKafkaProducer`` on the cluster (not started)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**aio_config(settings), **options)


def aio_consumer(settings: Settings, **options: Any) -> Any:
    """An ``aiokafka.AIOKafkaConsumer`` on the cluster (not started, no topics)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(**aio_config(settings), **options)


def aio_admin(settings: Settings, **options: Any) -> Any:
    """An ``aiokafka.admin.AIOKafkaAdminClient`` on the cluster (not started)."""
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(**aio_config(settings), **options)


# ---- reachability --------------------------------------------------------------------------------------
def _refusal(server: str, timeout: float) -> str | None:
    """Why ``host:port`` refuses a TCP connection; None when it accepts one."""
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except ValueError:
        return "not host:port"


def accepts(server: str, timeout: float = 0.5) -> bool:
    """True when ``host:port`` accepts a TCP connection."""
    return _refusal(server, timeout) is None


def require_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise one clear line, within ``timeout_s`` a server, when no bootstrap server accepts a connection
    or the first one that does refuses this client's TLS or credentials (kafka-python would retry for half
    a minute and end in a traceback, or in "Unable to bootstrap" that says neither). The line names the
    setting to change and never holds a secret."""
    reason: str | None = None
    for server in settings.bootstrap_servers.split(","):
        reason = _refusal(server, timeout_s)
        if reason is None:
            refused, cluster_wide = _handshake_refusal(settings, server, timeout_s)
            if refused is None:
                return
            if cluster_wide or server == settings.bootstrap_servers.split(",")[-1]:
                raise StreamrecError(refused)
            reason = refused  # one node going down: ask the next
    raise StreamrecError(f"cannot reach the Kafka broker at {settings.bootstrap_servers} ({reason}): "
                         "start it with `streamrec stack up` or set KAFKA_BOOTSTRAP_SERVERS")


def _handshake_refusal(settings: Settings, server: str, timeout_s: float) -> tuple[str | None, bool]:
    """Why ``server`` refuses a connection made with the configured security (TLS, SASL) and a Metadata
    request (None when it answers), and whether the reason holds for every node (a certificate or the
    credentials) rather than this one. aiokafka's connection says which step failed, in milliseconds; it
    runs on a thread of its own, so callers inside an event loop can ask too."""
    import asyncio
    import contextlib
    import ssl
    import threading

    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
    from aiokafka.protocol.metadata import MetadataRequest

    host, _, port = server.strip().rpartition(":")
    config = {k: v for k, v in aio_config(settings).items() if k != "bootstrap_servers"}
    outcome: list[BaseException | None] = []

    async def connect() -> None:
        conn = await create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout_s * 1000),
                                 max_idle_ms=int(timeout_s * 1000), **config)
        try:  # a SASL listener answers ApiVersions to anyone: a request past it proves the credentials
            await conn.send(MetadataRequest([]))
        finally:
            closed = conn.close()  # the transport closes on a later turn of the loop: wait for it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closed, 2.0)

    async def probe() -> None:
        try:
            await asyncio.wait_for(connect(), timeout_s)
        finally:  # a connection aiokafka closed on failing (a refused login) finishes closing before the loop
            await asyncio.sleep(0.1)  # ends: else its socket is reported unclosed when collected

    def attempt() -> None:
        try:
            asyncio.run(probe())
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="kafka-handshake", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    error = outcome[0] if outcome else TimeoutError()
    if error is None:
        return None, False
    where = f"Kafka at {server}"
    protocol = settings.kafka_security_protocol
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"{where} presented a TLS certificate this client does not trust ({error.verify_message}): set "
                f"KAFKA_SSL_CAFILE to the PEM file of the CA that signed it"), True
    if isinstance(error, ssl.SSLError):
        return f"TLS with {where} failed ({error.reason or error}): check KAFKA_SECURITY_PROTOCOL ({protocol})", True
    if isinstance(error, SaslAuthenticationFailed):
        return (f"{where} refused the SASL credentials in KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD "
                f"({settings.kafka_sasl_mechanism}): authentication failed"), True
    if isinstance(error, UnsupportedSaslMechanismError):
        return f"{where} does not take KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}: {error}", True
    if isinstance(error, (KafkaError, OSError, asyncio.TimeoutError, TimeoutError)):
        return (f"{where} accepts connections but did not answer a {protocol} client within {timeout_s:.0f}s "
                f"({type(error).__name__}): check KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_MECHANISM against its "
                f"listener"), False
    raise error


# ---- end offsets, right on every broker (the fetch check runs on Tansu only) ---------------------------
async def end_offsets(settings: Settings, partitions: Iterable[Any]) -> dict[Any, int]:
    """The offset after the last record of each partition."""
    return await offsets.end_offsets(aio_config(settings), partitions, fetch_check=settings.on_tansu)


def end_offsets_sync(settings: Settings, partitions: Iterable[Any]) -> dict[Any, int]:
    """:func:`end_offsets` from blocking code."""
    return offsets.end_offsets_sync(python_config(settings), partitions, fetch_check=settings.on_tansu)


async def consumer_at_end(settings: Settings, topic: str, **options: Any) -> Any:
    """A started aiokafka consumer assigned every partition of ``topic``, positioned at its end (what is
    produced from now on). The caller stops it."""
    return await offsets.consumer_at_end(aio_config(settings), topic, fetch_check=settings.on_tansu, **options)


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic``, asked of the broker by name."""
    return await offsets.topic_partitions(aio_config(settings), topic)
