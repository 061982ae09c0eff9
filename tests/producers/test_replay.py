"""Replay's message building as a pure function: the contract's schema, optional fields only when present."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from producers.replay import build_messages
from streamrec.schemas import Interaction, decode


def test_optional_fields_appear_only_where_the_log_has_them_and_every_message_validates() -> None:
    frame = pd.DataFrame({
        "interaction_id": ["E1", "E2", "E3"], "user_id": ["U1", "U2", "U1"], "item_id": ["I1", "I2", "I3"],
        "interaction_type": ["rate", "purchase", "cart"],
        "timestamp": pd.to_datetime(["2026-11-01T00:00:00.000Z", "2026-11-01T00:00:01.500Z",
                                     "2026-11-01T00:00:02.000Z"]),
        "rating": [4.5, np.nan, np.nan], "quantity": [np.nan, 2.0, np.nan], "device": ["mobile", "web", "tv"],
    })
    messages = build_messages(frame, loop_round=1)
    bodies = [json.loads(v) for _, v in messages]
    assert [k for k, _ in messages] == [b"U1", b"U2", b"U1"]
    assert bodies[0]["rating"] == 4.5 and "quantity" not in bodies[0]
    assert bodies[1]["quantity"] == 2 and isinstance(bodies[1]["quantity"], int) and "rating" not in bodies[1]
    assert "rating" not in bodies[2] and "quantity" not in bodies[2]
    assert [b["event_id"] for b in bodies] == ["E1~1", "E2~1", "E3~1"]  # a loop round's ids are fresh
    assert bodies[2]["context"] == {"device": "tv"}
    for _, value in messages:
        decode(Interaction, value)  # the worker accepts every one



def test_an_imported_log_replays_without_a_made_up_context() -> None:
    """The importer leaves device, session and quantity empty: no "None" context, every message valid."""
    frame = pd.DataFrame({
        "interaction_id": ["E1", "E2"], "user_id": ["1", "2"], "item_id": ["10", "10"],
        "interaction_type": ["rate", "negative_view"],
        "timestamp": pd.to_datetime(["1997-12-04T15:55:49Z", "1997-12-04T15:56:49Z"]),
        "rating": [5.0, 2.0], "quantity": pd.array([pd.NA, pd.NA], dtype="Int64"), "device": [None, None],
        "session_id": [None, None],
    })
    bodies = [json.loads(v) for _, v in build_messages(frame)]
    assert all("context" not in b and "quantity" not in b for b in bodies)
    assert [b["rating"] for b in bodies] == [5.0, 2.0]
    for _, value in build_messages(frame):
        decode(Interaction, value)


def test_item_updates_over_unknown_stock_and_prices() -> None:
    from producers.item_updates import make_updates

    items = pd.DataFrame({"item_id": ["1", "2"], "stock": pd.array([pd.NA, pd.NA], dtype="Int64"),
                          "discounted_price": [np.nan, np.nan]})
    updates = make_updates(items, 200, seed=1)
    assert all("price" not in u for u in updates)  # nothing to change a price from
    assert all(isinstance(u["stock"], int) and u["stock"] >= 0 for u in updates)
    json.dumps(updates)  # plain Python numbers


