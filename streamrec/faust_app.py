"""What every streamrec Faust app shares: the cluster from the Kafka client layer, and latency tuning.

The stream worker (stream_processors/app.py) and the recommender (serving/app.py) are Faust apps made here.
"""

from __future__ import annotations

from typing import Any

import faust

from . import kafka_clients
from .config import Settings

__all__ = ["create_app", "FETCH_MAX_WAIT_MS"]


# Faust 0.15.3 hard-codes fetch_max_wait_ms=1500 for its consumer (no setting). aiokafka sends the next
# fetch only for partitions whose records the app has taken; while the agent works through a batch, the
# fetch in flight covers the other partitions and parks at the broker for up to that wait, and records
# arriving meanwhile wait with it. Measured on Apache Kafka 4.1.2 (1,000 events/s, 100k users, one
# worker): freshness p50 1,537 ms / p99 2,062 ms with Faust's wait, 190 / 599 ms with 20 ms. The
# embedded Tansu parks every fetch for the whole wait even when records arrive, so it needs it more.
# A short wait costs a few idle fetches per second: on every broker.
FETCH_MAX_WAIT_MS = 20
_fetch_wait_ms = {"value": FETCH_MAX_WAIT_MS}  # this process's app (one per worker process)


def _short_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_streamrec_short_wait", False):
        return

    def create_with_short_wait(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = _fetch_wait_ms["value"]  # read by aiokafka when the consumer starts
        return consumer

    create_with_short_wait._streamrec_short_wait = True  # type: ignore[attr-defined]
    create_with_short_wait._streamrec_original = create  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_with_short_wait


def create_app(settings: Settings, app_id: str, web_port: int, fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
               linger_ms: int = 5) -> faust.App:
    """A Faust app on streamrec's Kafka settings, tuned for low latency on the embedded broker.

    ``fetch_max_wait_ms`` bounds how long an idle fetch is parked (what a new record may wait before the
    app sees it); ``linger_ms`` how long the producer holds a record to share a request with others.
    """
    _fetch_wait_ms["value"] = fetch_max_wait_ms
    _short_fetch_wait()
    datadir = settings.data_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        app_id,
        **kafka_clients.faust_broker(settings),
        store="memory://",  # no tables: the worker's state lives in the online store (history.py)
        topic_partitions=settings.topic_partitions,
        # Faust's own topics (the leader topic, any changelog) as replicated as ours (3 on an embedded
        # 3-node cluster): with Faust's default of 1, a topic partition lives on one broker, and when that
        # broker dies the writes to it wait forever.
        topic_replication_factor=settings.topic_replication,
        # Faust binds 0.0.0.0 unless told: the pages (and /live/user, which runs a recommendation) stay
        # on loopback unless STREAMREC_WEB_BIND says otherwise.
        web_bind=settings.web_bind,
        web_host=settings.web_bind if settings.web_bind not in ("0.0.0.0", "::") else "127.0.0.1",
        web_port=web_port,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        datadir=str(datadir),
        # Faust's 60 s defaults make the embedded broker take ~30 s to seat a new member; these give
        # ~3-5 s joins and a 10 s failure detection for a killed worker.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
        producer_acks=-1,
        # Without linger every changelog record became its own produce request (a fifth of the
        # worker's time); 5 ms lets a batch's records share requests.
        producer_linger_ms=linger_ms,
        web_in_thread=False,
    )
    app.task(_restore_root_log_level)
    return app


async def _restore_root_log_level() -> None:
    """faust-streaming 0.15.3's Worker sets the ROOT logger to DEBUG for its terminal spinner whenever the
    log level is warn or above (Worker._setup_spinner_handler; it leaves its own handler at the level
    asked for), tty or not. Every debug call of aiokafka and Faust then built a LogRecord only for the
    handler to drop it: ~3% of the recommender's CPU under load (py-spy). An app task runs after the
    worker set up logging: the root logger goes back to the level its handler was given."""
    import logging

    if logging.root.handlers:  # [0]: the handler Faust gave the level asked for (the spinner's is DEBUG)
        logging.root.setLevel(logging.root.handlers[0].level or logging.WARNING)
