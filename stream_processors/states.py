"""The stream worker's memory of users' states: a bounded cache in front of the online store.

The durable copy of a user's state is their `user_recent_history` row (see history.py): the worker reads
the rows of users it does not hold, applies events, writes the rows, and only then acks. Nothing here has
to survive a crash, and nothing is recovered from a changelog when partitions move between workers.

What the cache must never do is serve a state older than the row. A user's row is written only by the
worker that owns the user's partition, so held states stay current while the assignment does; when it
changes (a rebalance), another worker may have written rows meanwhile, so every held state is dropped,
and a batch that started before the drop does not put its states back (``generation``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

__all__ = ["StateCache", "UNKNOWN"]

UNKNOWN: Any = object()  # not held: read the row


class StateCache:
    """At most ``capacity`` users' states (least recently used go first); ``None`` is a held "no row"."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.generation = 0
        self._states: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, user_id: str) -> Any:
        """The held state (or None: the user has no row), else :data:`UNKNOWN`."""
        state = self._states.get(user_id, UNKNOWN)
        if state is UNKNOWN:
            self.misses += 1
        else:
            self.hits += 1
            self._states.move_to_end(user_id)
        return state

    def put_all(self, generation: int, states: Iterable[tuple[str, Any]]) -> bool:
        """Hold states read or written under ``generation``; False (nothing held) if it is over."""
        if generation != self.generation:
            return False
        for user_id, state in states:
            self._states[user_id] = state
            self._states.move_to_end(user_id)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return True

    def drop_all(self) -> None:
        """The assignment changed: rows may have moved on elsewhere; read them again."""
        self.generation += 1
        self._states.clear()
