"""Model freshness's arithmetic: which served model first saw each event (pure function)."""

from __future__ import annotations

import pytest

from benchmarks.model_freshness import Swap, event_freshness


def test_each_event_waits_for_the_first_swap_whose_model_logged_its_offset() -> None:
    sent = [(0, 0, 100.0), (0, 1, 101.0), (1, 0, 101.5), (0, 2, 104.0)]
    swaps = [Swap("v2", 103.0, {0: 2, 1: 0}),   # saw offsets 0-1 of partition 0, nothing of partition 1
             Swap("v3", 108.0, {0: 3, 1: 1})]
    ages, missed = event_freshness(sent, swaps)
    assert ages == pytest.approx([3.0, 2.0, 6.5, 4.0]) and missed == 0


def test_events_no_served_model_saw_are_counted_not_timed() -> None:
    ages, missed = event_freshness([(0, 5, 1.0), (0, 6, 2.0)], [Swap("v2", 10.0, {0: 6})])
    assert ages == [9.0] and missed == 1
    assert event_freshness([(0, 0, 1.0)], []) == ([], 1)


def test_a_rollback_to_a_model_that_saw_less_does_not_cover_newer_events() -> None:
    # v3 saw offset 4 and was served at 20; a rollback to v2 (saw up to 2) at 30 cannot un-serve it, and
    # swaps are taken in serving order whatever order they are passed in
    swaps = [Swap("v2", 30.0, {0: 3}), Swap("v3", 20.0, {0: 5}), Swap("v1", 5.0, {0: 1})]
    ages, missed = event_freshness([(0, 0, 0.0), (0, 2, 1.0), (0, 4, 2.0)], swaps)
    assert ages == pytest.approx([5.0, 19.0, 18.0]) and missed == 0
