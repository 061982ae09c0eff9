"""The per-user state update as a pure function: order, truncation, counts, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_processors.history import PURCHASE_MEMORY, apply_event, feature_row, stamped, state_from_row
from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES, Interaction

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
    assert row["event_timestamp"] == datetime.fromtimestamp(0.005, tz=UTC)  # the write time: see stamped()


def test_stall_watch_flags_a_partition_only_while_it_lags_and_its_commit_stands_still() -> None:
    from streamrec.health import StallWatch

    watch = StallWatch(after_s=10)
    assert watch.update({"p0": (5, 9), "p1": (3, 3)}, now=0) == []
    assert watch.update({"p0": (5, 9), "p1": (3, 3)}, now=9) == []
    assert watch.update({"p0": (5, 12), "p1": (3, 3)}, now=10) == ["p0"]  # lag, no commit for 10 s
    assert watch.update({"p0": (6, 12), "p1": (3, 3)}, now=11) == []  # the commit moved
    assert watch.update({"p0": (12, 12), "p1": (3, 3)}, now=30) == []  # caught up: never stalled
    assert watch.update({"p1": (3, 3)}, now=100) == []


def test_dlq_reason_kinds_stay_bounded() -> None:
    from collections import Counter

    from streamrec.health import MAX_REASON_KINDS, dlq_reason_kind

    counts: Counter[str] = Counter()
    for i in range(500):
        counts[dlq_reason_kind(f"field{i}: bad", counts)] += 1
    assert len(counts) == MAX_REASON_KINDS + 1 and counts["other"] == 500 - MAX_REASON_KINDS


def test_a_replayed_offset_is_only_a_replay_on_the_same_partition() -> None:
    state, _ = apply_event(None, ev(0, "A"), offset=10, partition=1)
    _, applied = apply_event(state, ev(1, "B"), offset=3, partition=1)
    assert not applied  # offset 3 of partition 1 came before 10: already in the state
    moved, applied = apply_event(state, ev(1, "B"), offset=3, partition=7)  # the topic grew: new partition
    assert applied and moved["items"] == ["B", "A"] and (moved["partition"], moved["offset"]) == (7, 3)


def test_purchases_are_kept_beyond_the_recent_history_newest_first_without_repeats() -> None:
    state = None
    kinds = ["purchase", "positive_view", "purchase"] + ["positive_view"] * (HISTORY_LENGTH + 5)
    items = ["P1", "V", "P2"] + [f"V{i}" for i in range(HISTORY_LENGTH + 5)]
    for i, (item, kind) in enumerate(zip(items, kinds, strict=True)):
        state, _ = apply_event(state, ev(i, item, kind), offset=i)
    state, _ = apply_event(state, ev(99, "P1", "purchase"), offset=99)  # bought again: moves to the front
    assert state["purchased"] == ["P1", "P2"]
    assert "P2" not in state["items"]  # long out of the recent history, still never recommended again
    for i in range(PURCHASE_MEMORY + 10):
        state, _ = apply_event(state, ev(100 + i, f"B{i}", "purchase"), offset=100 + i)
    assert len(state["purchased"]) == PURCHASE_MEMORY and state["purchased"][0] == f"B{PURCHASE_MEMORY + 9}"
    small, _ = apply_event(state, ev(999, "Z", "purchase"), offset=999, purchase_memory=3)  # configured smaller
    assert small["purchased"] == ["Z", f"B{PURCHASE_MEMORY + 9}", f"B{PURCHASE_MEMORY + 8}"]


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(INTERACTION_TYPES), min_size=1, max_size=40),
       seconds=st.lists(st.integers(0, 10_000), min_size=40, max_size=40))
def test_the_online_row_carries_the_whole_state(kinds: list[str], seconds: list[int]) -> None:
    """What the next owner of the partition reads back is what was written: applying the same further
    events to either gives the same state (a replay stays a no-op, a new event applies)."""
    state = None
    for i, kind in enumerate(kinds):
        state, _ = apply_event(state, ev(i, f"I{i % 7}", kind, seconds=seconds[i]), offset=i, partition=2)
    state = stamped(state, now_ms=5)
    row = feature_row("U1", state)
    # what Feast gives back: UnixTimestamp keeps whole seconds
    row["last_event_at"] = row["last_event_at"].replace(microsecond=0)
    restored = state_from_row(row)
    assert restored == state
    replay = apply_event(restored, ev(len(kinds) - 1, "X", seconds=1), offset=len(kinds) - 1, partition=2)
    assert replay == (restored, False)
    assert apply_event(restored, ev(500, "N"), offset=500, partition=2)[0] == apply_event(state, ev(500, "N"),
                                                                                      offset=500, partition=2)[0]


def test_every_write_of_a_user_is_stamped_after_the_one_before() -> None:
    """Feast skips a row whose event timestamp is not newer than the stored one: a late event (older
    than the user's newest) must still reach the row, and so must two writes within one millisecond."""
    state, _ = apply_event(None, ev(0, "A", seconds=100), offset=0)
    first = stamped(state, now_ms=1_000)
    late, applied = apply_event(first, ev(1, "B", seconds=50), offset=1)
    assert applied and late["last_event_ms"] == first["last_event_ms"]  # the newest event did not change
    second = stamped(late, now_ms=1_000)  # same millisecond
    third = stamped(second, now_ms=900)  # the clock stepped back
    assert first["pushed_ms"] < second["pushed_ms"] < third["pushed_ms"]
    stamps = [feature_row("U1", s)["event_timestamp"] for s in (first, second, third)]
    assert stamps == sorted(set(stamps))


def test_a_row_without_state_fields_is_adopted_and_no_row_is_no_state() -> None:
    assert state_from_row(None) is None
    assert state_from_row({"recent_item_ids": None, "count_cart": None}) is None  # a user with no row
    old = {"recent_item_ids": ["B", "A"], "recent_interaction_types": ["cart", "purchase"], "count_cart": 1,
           "count_purchase": 1, "last_event_at": T0}  # written by a version before the state fields
    state = state_from_row(old)
    assert state["items"] == ["B", "A"] and state["counts"]["cart"] == 1 and state["offset"] == -1
    assert state["ts"] == [int(T0.timestamp() * 1000)] * 2
    state, applied = apply_event(state, ev(5, "C"), offset=0, partition=0)
    assert applied and state["items"][0] == "C" and state["counts"]["positive_view"] == 1


def test_the_state_cache_is_bounded_and_a_batch_from_before_a_rebalance_puts_nothing_back() -> None:
    from stream_processors.states import UNKNOWN, StateCache

    cache = StateCache(capacity=2)
    assert cache.get("a") is UNKNOWN
    assert cache.put_all(cache.generation, [("a", {"n": 1}), ("b", None)])
    assert cache.get("b") is None  # held: the user has no row
    assert cache.get("a") == {"n": 1}  # now the most recently used
    cache.put_all(cache.generation, [("c", {"n": 3})])
    assert cache.get("b") is UNKNOWN and len(cache) == 2  # b was the least recently used
    before = cache.generation
    cache.drop_all()
    assert cache.get("a") is UNKNOWN and len(cache) == 0
    assert not cache.put_all(before, [("a", {"n": 0})]) and cache.get("a") is UNKNOWN


def test_the_row_builder_fills_exactly_the_defined_columns() -> None:
    """One definition (streamrec/feature_rows.py): the worker's row, Feast's fields, the push log's schema
    and the push frame's types all follow it."""
    import sys

    from streamrec import feature_rows
    from streamrec.features import REPO_PATH, history_frame

    columns = feature_rows.names(feature_rows.USER_RECENT_HISTORY)
    state, _ = apply_event(None, ev(1, "I1", "purchase"), offset=0)
    row = feature_row("U1", stamped(state, now_ms=5))
    assert list(row) == ["user_id", *columns, "event_timestamp"]
    sys.path.insert(0, str(REPO_PATH))
    try:
        import definitions
    finally:
        sys.path.remove(str(REPO_PATH))
    assert tuple(f.name for f in definitions.HISTORY_SCHEMA) == columns
    assert feature_rows.arrow_schema(feature_rows.USER_RECENT_HISTORY, key="user_id").names == list(row)
    frame = history_frame([row])
    kinds = {c.name: c.kind for c in feature_rows.USER_RECENT_HISTORY}
    assert all(str(frame[n].dtype) == "int64" for n, k in kinds.items() if k == "int")
    assert all(str(frame[n].dtype) == "datetime64[ns, UTC]" for n, k in kinds.items() if k == "time")
