"""The workers' one error policy.

Every failure is one of two kinds (:func:`streamrec._exceptions.is_infrastructure`):
- **the infrastructure's** (the broker, Redis, a timeout): tried again with capped exponential backoff,
  for as long as it takes, or until a deadline where the work has one (a request's answer). The worker
  stalls rather than dropping anything, which backpressures Kafka and shows on its health page;
- **the data's** (anything else): never retried. :func:`isolated` narrows a failing batch down to the
  record that fails on its own, which is dead-lettered, while every other record of the batch still takes
  effect.

Each failure meets one retry: the worker retries each call to Redis or the broker (never the batch around
it, whose dead letters would be sent twice), the recommender a batch's answers within their deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ._exceptions import is_infrastructure

__all__ = ["retry", "isolated", "FIRST_DELAY_S", "MAX_DELAY_S"]

log = logging.getLogger("streamrec.retry")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
T = TypeVar("T")


async def retry(call: Callable[[], Awaitable[T]], *, on_retry: Callable[[BaseException, float], None] | None = None,
                first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S, deadline: float | None = None,
                retryable: Callable[[BaseException], bool] = is_infrastructure) -> T:
    """``await call()``, again after ``first_s``, ``2 × first_s``… (at most ``max_s`` apart) while it fails
    with a ``retryable`` error (the infrastructure's); any other error is raised at once. ``deadline``
    (``time.monotonic()``): the last failure is raised when the next try would start after it; None:
    forever. ``on_retry(exc, delay)`` is told of every retry (count it, log it)."""
    delay = first_s
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not retryable(exc) or (deadline is not None and time.monotonic() + delay >= deadline):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)


Process = Callable[[Sequence[Any]], Awaitable[None]]


def isolated(process: Process, reject: Callable[[Any, str], Awaitable[None]],
             retryable: Callable[[BaseException], bool] = is_infrastructure) -> Process:
    """``process`` with per-record isolation: one poison record never takes its batch down with it.

    A batch that fails for its data is split in halves, each processed in order, until the single record
    that fails on its own is found: ``reject(record, reason)`` dead-letters and acks it, and every other
    record of the batch still takes effect. ``process`` retries its own calls to the infrastructure
    (:func:`retry`, the one retry layer); a failure of the infrastructure that still reaches here is
    raised, never blamed on a record. ``process`` must be idempotent per record (the history state dedupes
    by offset), since the good part of a failed half is applied again.
    """

    async def run(events: Sequence[Any]) -> None:
        try:
            await process(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the data's: narrowed down below, never dropped
            if retryable(exc):
                raise
            if len(events) == 1:
                log.error("a record failed on its own, dead-lettering it: %r", exc)
                await reject(events[0], f"unprocessable: {exc!r}"[:2048])
                return
            middle = len(events) // 2
            await run(events[:middle])
            await run(events[middle:])

    return run
