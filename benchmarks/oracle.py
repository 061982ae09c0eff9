"""The ground truth a stream run is held to: what every user's history row must hold once a set of
interactions has been applied, each once.

Computed from the whole log at once (sort by time, group by user), not event by event as
`stream_processors.history.apply_event` does, so it checks the worker rather than repeating it. An oracle,
not product code: the worker's tests and `streamrec bench stream` compare the online store with it, and
`pip install` does not ship it (benchmarks/ stays in the checkout)."""

from __future__ import annotations

from typing import Any

from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES

__all__ = ["ground_truth"]


def ground_truth(events: Any, n: int = HISTORY_LENGTH) -> dict[str, dict[str, Any]]:
    """What every user's row must hold once ``events`` (a DataFrame of interactions, each applied once) are
    all in: the last ``n`` items and types newest first by event time, and the counts by type."""
    truth = {}
    ordered = events.sort_values("timestamp", ascending=False, kind="stable")
    for user_id, rows in ordered.groupby("user_id", sort=False):
        counts = rows["interaction_type"].value_counts()
        truth[user_id] = {
            "recent_item_ids": list(rows["item_id"][:n]),
            "recent_interaction_types": list(rows["interaction_type"][:n]),
            **{f"count_{t}": int(counts.get(t, 0)) for t in INTERACTION_TYPES},
        }
    return truth
