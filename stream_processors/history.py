"""A user's recent history as pure functions: what the Faust agent keeps per user and pushes to Feast.

The state is a JSON-able dict:

    {"items": [...], "types": [...], "ts": [...ms],   # newest first, at most HISTORY_LENGTH
     "counts": {type: n}, "last_event_ms": int,
     "purchased": [...],     # items the user bought, newest first, at most purchase_memory, no repeats
     "partition": int,       # source partition of the newest applied event (keyed by user: one partition)
     "offset": int,          # its offset
     "event_ids": [...],     # recent event ids, to drop a producer's retried duplicate
     "pushed_ms": int}       # when its row was last written (epoch ms; -1: never)

The whole state is written into the user's `user_recent_history` row (:func:`feature_row`) and read back
from it (:func:`state_from_row`): the online store is the durable copy, so whichever worker owns the
user's partition next (after a crash or a rebalance) carries on from the row, never from its own memory.

Applying an event is idempotent: a replay after a crash (same partition, offset ≤ state offset) or a
duplicate event id changes nothing, so counts never double (Faust is at-least-once: faust#502).
The oracle a run is held to, computed from the whole log instead, is `benchmarks/oracle.py`'s `ground_truth`.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES, Interaction

__all__ = ["EVENT_ID_MEMORY", "PURCHASE_MEMORY", "empty_state", "apply_event", "stamped",
           "feature_row", "state_from_row"]

EVENT_ID_MEMORY = 64  # duplicates from producer retries arrive close together
PURCHASE_MEMORY = 500  # default; the history filter never recommends these again

State = dict[str, Any]


def empty_state() -> State:
    return {"items": [], "types": [], "ts": [], "counts": dict.fromkeys(INTERACTION_TYPES, 0),
            "last_event_ms": 0, "purchased": [], "partition": -1, "offset": -1, "event_ids": [], "pushed_ms": -1}


def apply_event(state: State | None, event: Interaction, offset: int, partition: int = 0,
                purchase_memory: int = PURCHASE_MEMORY) -> tuple[State, bool]:
    """Return ``(new_state, applied)``; ``applied`` is False for a replayed or duplicate event.

    ``offset`` and ``partition`` locate the event in its topic. An offset orders events only within its
    partition: after the topic was given more partitions a user's events move to another one, whose
    offsets say nothing about the old one's (there only the event ids catch duplicates).
    """
    state = empty_state() if state is None else state
    replayed = partition == state["partition"] and offset <= state["offset"]
    if replayed or event.event_id in state["event_ids"]:
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
    purchased = list(state["purchased"])
    if event.interaction_type == "purchase":
        purchased = [event.item_id, *(i for i in purchased if i != event.item_id)][:purchase_memory]
    new_state = {
        "items": items[:HISTORY_LENGTH], "types": types[:HISTORY_LENGTH], "ts": times[:HISTORY_LENGTH],
        "counts": counts, "last_event_ms": max(state["last_event_ms"], ts_ms), "purchased": purchased,
        "partition": partition, "offset": offset,
        "event_ids": ([event.event_id] + state["event_ids"])[:EVENT_ID_MEMORY],
        "pushed_ms": state["pushed_ms"],
    }
    return new_state, True


def stamped(state: State, now_ms: int) -> State:
    """``state`` about to be written at ``now_ms``: its write time, strictly after the previous one.

    The row's event timestamp is this write time, not the newest event's time. Feast's Redis store
    silently skips a row whose event timestamp is not newer than the stored one, so a late event (older
    than the user's newest) or a second write within the same instant would otherwise never reach the row.
    """
    return {**state, "pushed_ms": max(int(now_ms), state["pushed_ms"] + 1)}


def _insert_position(times_newest_first: list[int], ts_ms: int) -> int:
    """Index at which ``ts_ms`` keeps the list newest first (after equal times: arrival order)."""
    ascending = times_newest_first[::-1]
    return len(ascending) - bisect_left(ascending, ts_ms + 1) if ascending else 0


def feature_row(user_id: str, state: State, pushed_at_ms: int | None = None) -> dict[str, Any]:
    """The `user_recent_history` row for ``state`` (see feature_repo/definitions.py), written at
    ``pushed_at_ms`` (default: the state's :func:`stamped` write time)."""
    counts = state["counts"]
    pushed_at_ms = state["pushed_ms"] if pushed_at_ms is None else pushed_at_ms
    last_event_at = datetime.fromtimestamp(state["last_event_ms"] / 1000, tz=UTC)
    return {
        "user_id": user_id,
        "recent_item_ids": list(state["items"]),
        "recent_interaction_types": list(state["types"]),
        **{f"count_{t}": int(counts.get(t, 0)) for t in INTERACTION_TYPES},
        "last_event_at": last_event_at,
        "pushed_at_ms": pushed_at_ms,
        "purchased_item_ids": list(state["purchased"]),
        # the rest of the state, for the next owner of the user's partition (see state_from_row)
        "recent_event_times_ms": list(state["ts"]),
        "recent_event_ids": list(state["event_ids"]),
        "source_partition": int(state["partition"]),
        "source_offset": int(state["offset"]),
        "event_timestamp": datetime.fromtimestamp(pushed_at_ms / 1000, tz=UTC),  # see stamped()
    }


def state_from_row(row: dict[str, Any] | None) -> State | None:
    """The state a `user_recent_history` row was written from; None when the user has no row.

    A row written before the state fields existed (streamrec ≤ 0.5) is adopted as far as it goes: its
    history, counts and time, with no offset (every event not yet in it applies).
    """
    if not row or row.get("recent_item_ids") is None:
        return None
    items = list(row["recent_item_ids"])
    last_event_ms = _epoch_ms(row.get("last_event_at"))
    times = row.get("recent_event_times_ms")
    times = [int(t) for t in times] if times is not None and len(times) == len(items) else [last_event_ms] * len(items)
    partition, offset = row.get("source_partition"), row.get("source_offset")
    return {
        "items": items, "types": list(row.get("recent_interaction_types") or []), "ts": times,
        "counts": {t: int(row.get(f"count_{t}") or 0) for t in INTERACTION_TYPES},
        "last_event_ms": max([last_event_ms, *times]),
        "purchased": list(row.get("purchased_item_ids") or []),
        "partition": -1 if partition is None else int(partition), "offset": -1 if offset is None else int(offset),
        "event_ids": list(row.get("recent_event_ids") or []),
        "pushed_ms": int(row.get("pushed_at_ms") or -1),
    }


def _epoch_ms(value: Any) -> int:
    """Epoch ms of a row's timestamp (Feast returns datetimes; absent: 0)."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)
