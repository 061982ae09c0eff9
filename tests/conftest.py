"""Shared fixtures: the real embedded stack, once per session, and factories on top of it.

`make test` starts the stack before pytest; run pytest alone and the `stack` fixture starts it
(and stops it afterwards). Nothing here fakes Kafka, Redis or Feast.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from streamrec.config import Settings, get_settings, load_settings
from streamrec.shell import stack as _stack
from streamrec.topics import ensure_topics


def pytest_report_header(config: pytest.Config) -> str:
    settings = load_settings()
    where = settings.kafka_bootstrap_servers or f"embedded, {settings.kafka_brokers} node(s)"
    return f"streamrec broker: {settings.broker if settings.embedded_kafka else 'external'} ({where})"


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    """Each test reads the environment anew (tests that set variables must not leak)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Settings for a running stack (embedded unless KAFKA_BOOTSTRAP_SERVERS/REDIS_URL are set)."""
    settings = load_settings()
    was_running = all(s.running for s in _stack.status(settings))
    _stack.up(settings)
    yield settings
    if not was_running:
        _stack.down(settings)


@pytest.fixture
def topic_factory(stack: Settings) -> Callable[..., str]:
    """Create a fresh, uniquely named topic: ``topic_factory(partitions=1) -> name``."""

    def make(prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        ensure_topics(stack, [name], partitions=partitions)
        return name

    return make
