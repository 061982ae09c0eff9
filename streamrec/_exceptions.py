"""The errors streamrec raises on purpose.

    StreamrecError              -- anything a user can act on; the CLI prints it as one line
    ├── ConfigError             -- an environment variable with a bad value
    ├── SchemaError             -- a message that does not match its schema
    └── StackError              -- the embedded broker or Redis could not be started/stopped/reached

Third-party errors (kafka-python, redis, subprocess) are translated into these at the boundary
with ``raise ... from exc`` so the cause stays in the traceback for developers.
"""

from __future__ import annotations

__all__ = ["StreamrecError", "ConfigError", "SchemaError", "StackError"]


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
