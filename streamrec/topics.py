"""Topic names from the contract, and the one helper that creates them for everyone."""

from __future__ import annotations

from collections.abc import Iterable

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
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    partitions = partitions or settings.topic_partitions
    try:
        admin = KafkaAdminClient(client_id="streamrec-topics", request_timeout_ms=10_000,
                                 **settings.kafka_python_config())
    except KafkaError as exc:
        raise StackError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        missing = [t for t in dict.fromkeys(topics) if t not in set(admin.list_topics())]
        created = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # someone else created it between our list and create: fine
        return created
    except KafkaError as exc:
        raise StackError(f"creating topics on {settings.bootstrap_servers} failed: {exc}") from exc
    finally:
        admin.close()
