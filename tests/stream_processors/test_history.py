"""The per-user state update as a pure function: order, truncation, counts, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_processors.history import HISTORY_LENGTH, apply_event, feature_row
from streamrec.schemas import INTERACTION_TYPES, Interaction

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def ev(i: int, item: str, kind: str = "positive_view", seconds: int | None = None,
       eid: str | None = None) -> Interaction:
    return Interaction(event_id=eid or f"e{i}", user_id="U1", item_id=item, interaction_type=kind,
                       timestamp=T0 + timedelta(seconds=i if seconds is None else seconds))


def test_newest_first_and_counts() -> None:
    state = None
    for i, (item, kind) in enumerate([("A", "positive_view"), ("A", "cart"), ("B", "positive_view")]):
        state, applied = apply_event(state, ev(i, item, kind), offset=i)
        assert applied
    assert state["items"] == ["B", "A", "A"] and state["types"] == ["positive_view", "cart", "positive_view"]
    assert state["counts"]["positive_view"] == 2 and state["counts"]["cart"] == 1
    assert state["last_event_ms"] == int((T0 + timedelta(seconds=2)).timestamp() * 1000)


def test_replayed_offsets_and_duplicate_ids_change_nothing() -> None:
    state, _ = apply_event(None, ev(0, "A"), offset=10)
    again, applied = apply_event(state, ev(0, "A"), offset=10)  # redelivered after a crash
    assert not applied and again == state
    dup, applied = apply_event(state, ev(1, "B", eid="e0"), offset=11)  # a producer's retry, new offset
    assert not applied and dup == state


def test_a_late_event_slots_in_by_time() -> None:
    state = None
    for i, secs in enumerate([10, 30, 20]):
        state, _ = apply_event(state, ev(i, f"I{secs}", seconds=secs), offset=i)
    assert state["items"] == ["I30", "I20", "I10"]
    assert state["last_event_ms"] == int((T0 + timedelta(seconds=30)).timestamp() * 1000)


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(INTERACTION_TYPES), min_size=1, max_size=60))
def test_matches_a_recount_from_scratch(kinds: list[str]) -> None:
    state = None
    for i, kind in enumerate(kinds):
        state, _ = apply_event(state, ev(i, f"I{i}", kind), offset=i)
    assert len(state["items"]) == min(len(kinds), HISTORY_LENGTH)
    assert state["items"] == [f"I{i}" for i in reversed(range(len(kinds)))][:HISTORY_LENGTH]
    assert state["counts"] == {t: kinds.count(t) for t in INTERACTION_TYPES}
    row = feature_row("U1", state, pushed_at_ms=5)
    assert row["count_purchase"] == kinds.count("purchase") and row["recent_item_ids"] == state["items"]
    assert row["event_timestamp"] == row["last_event_at"]


def test_stall_watch_flags_a_partition_only_while_it_lags_and_its_commit_stands_still() -> None:
    from stream_processors.metrics import StallWatch

    watch = StallWatch(after_s=10)
    assert watch.update({"p0": (5, 9), "p1": (3, 3)}, now=0) == []
    assert watch.update({"p0": (5, 9), "p1": (3, 3)}, now=9) == []
    assert watch.update({"p0": (5, 12), "p1": (3, 3)}, now=10) == ["p0"]  # lag, no commit for 10 s
    assert watch.update({"p0": (6, 12), "p1": (3, 3)}, now=11) == []  # the commit moved
    assert watch.update({"p0": (12, 12), "p1": (3, 3)}, now=30) == []  # caught up: never stalled
    assert watch.update({"p1": (3, 3)}, now=100) == []


def test_dlq_reason_kinds_stay_bounded() -> None:
    from collections import Counter

    from stream_processors.metrics import MAX_REASON_KINDS, dlq_reason_kind

    counts: Counter[str] = Counter()
    for i in range(500):
        counts[dlq_reason_kind(f"field{i}: bad", counts)] += 1
    assert len(counts) == MAX_REASON_KINDS + 1 and counts["other"] == 500 - MAX_REASON_KINDS
