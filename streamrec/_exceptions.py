"""The errors streamrec raises on purpose.

    StreamrecError              -- anything a user can act on; the CLI prints it as one line
    ├── ConfigError             -- an environment variable with a bad value
    ├── SchemaError             -- a message that does not match its schema
    └── StackError              -- the embedded broker or Redis could not be started/stopped/reached

Third-party errors (kafka-python, redis, subprocess) are translated into these at the boundary
with ``raise ... from exc`` so the cause stays in the traceback for developers.

:func:`is_infrastructure` tells the two kinds of failure a stream processor meets apart: the broker or
Redis failing (retried, bounded by health checks) and a record's own content failing (never retried: it
is dead-lettered on its own).
"""

from __future__ import annotations

__all__ = ["StreamrecError", "ConfigError", "SchemaError", "StackError", "causes", "is_infrastructure"]


class StreamrecError(Exception):
    """Base of every error that the CLI reports as one clear line."""


class ConfigError(StreamrecError):
    """An environment variable holds a value streamrec cannot use."""


class SchemaError(StreamrecError):
    """A message does not match its schema; ``fields`` names the offending fields."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class StackError(StreamrecError):
    """The embedded stack could not do what was asked."""


# Redis client errors that mean the server, not the request, is the problem.
_REDIS_INFRA = frozenset({"ConnectionError", "TimeoutError", "BusyLoadingError", "ReadOnlyError",
                          "MasterDownError", "TryAgainError", "ClusterDownError"})


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from, outermost first: only explicit ``raise ... from`` (a
    context may be unrelated)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def is_infrastructure(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) is the network, the broker or Redis failing,
    not the data: such a failure is worth retrying; any other is not."""
    for current in causes(exc):
        if isinstance(current, (OSError, EOFError)):  # ConnectionError, TimeoutError, socket errors
            return True
        module = type(current).__module__ or ""
        if module.startswith("redis") and type(current).__name__ in _REDIS_INFRA:
            return True
        if module.startswith(("aiokafka", "kafka")) and getattr(current, "retriable", False):
            return True
    return False
