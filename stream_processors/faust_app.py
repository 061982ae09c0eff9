"""What every streamrec Faust app shares: credentials from settings and latency tuning."""

from __future__ import annotations

from typing import Any

import faust

from streamrec.config import Settings

__all__ = ["create_app", "FETCH_MAX_WAIT_MS"]


def _credentials(settings: Settings) -> Any:
    if settings.kafka_sasl_mechanism:
        ssl_context = settings.aiokafka_config().get("ssl_context")
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context)
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(settings.aiokafka_config()["ssl_context"])
    return None


# Faust hard-codes fetch_max_wait_ms=1500 for its consumer. The embedded broker (Tansu) parks a fetch
# for up to that long even when records arrive meanwhile, so every event waited ~1 s before the worker
# saw it. A short wait costs a few idle fetches per second and brings freshness back to milliseconds.
FETCH_MAX_WAIT_MS = 20


def _short_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_streamrec_short_wait", False):
        return

    def create_with_short_wait(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by aiokafka when the consumer starts
        return consumer

    create_with_short_wait._streamrec_short_wait = True  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_with_short_wait


def create_app(settings: Settings, app_id: str, web_port: int) -> faust.App:
    """A Faust app on streamrec's Kafka settings, tuned for low latency on the embedded broker."""
    _short_fetch_wait()
    datadir = settings.data_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",  # the changelog topic is the durable copy; recovery replays it
        topic_partitions=settings.topic_partitions,
        web_host="127.0.0.1",
        web_port=web_port,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        datadir=str(datadir),
        # Faust's 60 s defaults make the embedded broker take ~30 s to seat a new member; these give
        # ~3-5 s joins and a 10 s failure detection for a killed worker.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
        producer_acks=-1,
        # Without linger every changelog record became its own produce request (a fifth of the
        # worker's time); 5 ms lets a batch's records share requests.
        producer_linger_ms=5,
        web_in_thread=False,
    )
