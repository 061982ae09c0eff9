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

