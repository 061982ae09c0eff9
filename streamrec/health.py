"""What a worker's health page reports about its consumers, as pure bookkeeping: stalled partitions and
the bounded counting of dead-letter reasons. Both workers use them."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["StallWatch", "dlq_reason_kind", "MAX_REASON_KINDS"]

MAX_REASON_KINDS = 32  # reasons come from data: their count must stay bounded whatever is sent


def dlq_reason_kind(reason: str, known: Counter[str] | dict[str, int]) -> str:
    """The counter key of a DLQ reason: the text before its first colon, or "other" once
    ``MAX_REASON_KINDS`` keys exist (a field path in a reason is attacker-chosen)."""
    kind = reason.split(":", 1)[0][:60]
    return kind if kind in known or len(known) < MAX_REASON_KINDS else "other"


class StallWatch:
    """Per partition: has the committed offset stood still for ``after_s`` while the broker holds records
    past it? Pure bookkeeping; the caller feeds it (committed, end) pairs. A partition with no lag is
    never stalled, however long it stays put."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._since: dict[Any, tuple[int | None, float]] = {}

    def update(self, positions: dict[Any, tuple[int | None, int | None]], now: float) -> list[Any]:
        """Returns the partitions stalled now."""
        stalled = []
        for tp, (committed, end) in positions.items():
            lagging = end is not None and end > (committed if committed is not None and committed >= 0 else 0)
            previous = self._since.get(tp)
            if not lagging or previous is None or previous[0] != committed:
                self._since[tp] = (committed, now)
            elif now - previous[1] >= self.after_s:
                stalled.append(tp)
        for tp in set(self._since) - set(positions):
            del self._since[tp]
        return stalled
