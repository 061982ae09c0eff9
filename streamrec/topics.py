"""Topic names from the contract, and the one helper that creates them for everyone."""

from __future__ import annotations

from collections.abc import Iterable

from . import kafka_clients
from ._exceptions import StackError
from .config import Settings

__all__ = ["INTERACTIONS", "ITEM_UPDATES", "REQUESTS", "RECOMMENDATIONS", "MODEL_UPDATES",
           "INPUT_TOPICS", "ALL_TOPICS", "dlq", "ensure_topics"]

INTERACTIONS = "interactions"
ITEM_UPDATES = "item-updates"
REQUESTS = "recommendation-requests"
RECOMMENDATIONS = "recommendations"
MODEL_UPDATES = "model-updates"

# Topics whose messages a worker validates, and so may dead-letter.
INPUT_TOPICS = (INTERACTIONS, ITEM_UPDATES, REQUESTS, MODEL_UPDATES)


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


ALL_TOPICS = (INTERACTIONS, ITEM_UPDATES, REQUESTS, RECOMMENDATIONS, MODEL_UPDATES,
              *(dlq(t) for t in INPUT_TOPICS))


def ensure_topics(settings: Settings, topics: Iterable[str] = ALL_TOPICS,
                  partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names that were missing. Idempotent.

    Replicas: ``settings.topic_replication`` (3 on an embedded cluster of 3 nodes or more, else 1).
    """
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    partitions = partitions or settings.topic_partitions
    replicas = settings.topic_replication
    # RF 3 → min ISR 2: an acks=all write needs two copies, and one node may be down.
    configs = {"min.insync.replicas": str(settings.topic_min_insync)} if replicas > 1 else {}
    try:
        admin = kafka_clients.admin(settings, client_id="streamrec-topics", request_timeout_ms=10_000)
    except KafkaError as exc:
        raise StackError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        before = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in before]
        if not missing:
            return []
        try:  # one request for all: on a 3-node cluster each one costs ~0.3 s
            admin.create_topics([NewTopic(name, partitions, replicas, topic_configs=configs) for name in missing])
        except TopicAlreadyExistsError:
            pass  # someone else created one between our list and create: the broker still made the others
        return missing
    except KafkaError as exc:
        raise StackError(f"creating topics on {settings.bootstrap_servers} failed: {exc}") from exc
    finally:
        admin.close()
