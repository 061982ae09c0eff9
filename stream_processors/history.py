"""A user's recent history as pure functions: what the Faust agent keeps per user and pushes to Feast.

The state is a JSON-able dict (it lives in a changelog-backed Faust table):

    {"items": [...], "types": [...], "ts": [...ms],   # newest first, at most HISTORY_LENGTH
     "counts": {type: n}, "last_event_ms": int,
     "offset": int,          # source offset of the newest applied event (same partition: keyed by user)
     "event_ids": [...]}     # recent event ids, to drop a producer's retried duplicate

Applying an event is idempotent: a replay after a crash (offset ≤ state offset) or a duplicate
event id changes nothing, so counts never double (Faust is at-least-once: faust#502).
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from streamrec.schemas import INTERACTION_TYPES, Interaction

__all__ = ["HISTORY_LENGTH", "EVENT_ID_MEMORY", "empty_state", "apply_event", "feature_row"]

HISTORY_LENGTH = 20
EVENT_ID_MEMORY = 64  # duplicates from producer retries arrive close together

State = dict[str, Any]


def empty_state() -> State:
    return {"items": [], "types": [], "ts": [], "counts": dict.fromkeys(INTERACTION_TYPES, 0),
            "last_event_ms": 0, "offset": -1, "event_ids": []}


def apply_event(state: State | None, event: Interaction, offset: int) -> tuple[State, bool]:
    """Return ``(new_state, applied)``; ``applied`` is False for a replayed or duplicate event."""
    state = empty_state() if state is None else state
    if offset <= state["offset"] or event.event_id in state["event_ids"]:
        return state, False
    ts_ms = int(event.timestamp.timestamp() * 1000)
    items, types, times = list(state["items"]), list(state["types"]), list(state["ts"])
    # Newest first by event time: a late event slots in where it belongs, not at the front.
    position = _insert_position(times, ts_ms)
    items.insert(position, event.item_id)
    types.insert(position, event.interaction_type)
    times.insert(position, ts_ms)
    counts = dict(state["counts"])
    counts[event.interaction_type] = counts.get(event.interaction_type, 0) + 1
    new_state = {
        "items": items[:HISTORY_LENGTH], "types": types[:HISTORY_LENGTH], "ts": times[:HISTORY_LENGTH],
        "counts": counts, "last_event_ms": max(state["last_event_ms"], ts_ms), "offset": offset,
        "event_ids": ([event.event_id] + state["event_ids"])[:EVENT_ID_MEMORY],
    }
    return new_state, True


def _insert_position(times_newest_first: list[int], ts_ms: int) -> int:
    """Index at which ``ts_ms`` keeps the list newest first (after equal times: arrival order)."""
    ascending = times_newest_first[::-1]
    return len(ascending) - bisect_left(ascending, ts_ms + 1) if ascending else 0


def feature_row(user_id: str, state: State, pushed_at_ms: int) -> dict[str, Any]:
    """The `user_recent_history` row for ``state`` (see feature_repo/definitions.py)."""
    counts = state["counts"]
    last_event_at = datetime.fromtimestamp(state["last_event_ms"] / 1000, tz=UTC)
    return {
        "user_id": user_id,
        "recent_item_ids": list(state["items"]),
        "recent_interaction_types": list(state["types"]),
        **{f"count_{t}": int(counts.get(t, 0)) for t in INTERACTION_TYPES},
        "last_event_at": last_event_at,
        "pushed_at_ms": pushed_at_ms,
        "event_timestamp": last_event_at,
    }
