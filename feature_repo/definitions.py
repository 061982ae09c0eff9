"""Feast objects: entities `user` and `item`, views `user_profile`, `item_features` and the streaming
`user_recent_history` written through the push source `user_recent_history_push`.

`build(data_dir)` makes them for any data folder (streamrec calls it); the module-level objects are
for `feast apply` run by hand and read STREAMREC_DATA_DIR (relative paths count from the project root).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String, UnixTimestamp

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HISTORY_FILE = "user_recent_history.parquet"  # offline log of pushed rows (schema for the push source)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A shopper, keyed by user_id")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A product, keyed by item_id")

HISTORY_SCHEMA = [
    Field(name="recent_item_ids", dtype=Array(String)),  # newest first
    Field(name="recent_interaction_types", dtype=Array(String)),  # aligned with recent_item_ids
    Field(name="count_positive_view", dtype=Int64),
    Field(name="count_negative_view", dtype=Int64),
    Field(name="count_cart", dtype=Int64),
    Field(name="count_purchase", dtype=Int64),
    Field(name="count_rate", dtype=Int64),
    Field(name="last_event_at", dtype=UnixTimestamp),  # payload time of the newest event
    # epoch milliseconds when the row was written (UnixTimestamp keeps only seconds): feature age
    Field(name="pushed_at_ms", dtype=Int64),
    Field(name="purchased_item_ids", dtype=Array(String)),  # bought, newest first, bounded: never again
    # The rest of the stream worker's state: whichever worker owns the user's partition next carries on
    # from this row (the online store is the state's durable copy). Not model features.
    Field(name="recent_event_times_ms", dtype=Array(Int64)),  # aligned with recent_item_ids
    Field(name="recent_event_ids", dtype=Array(String)),  # to drop a producer's retried duplicate
    Field(name="source_partition", dtype=Int64),  # where the newest applied event was read: a replay
    Field(name="source_offset", dtype=Int64),  # at or before it changes nothing
]


def build(data_dir: Path) -> list:
    """Every Feast object of the repository, reading its files from ``data_dir``."""
    data_dir = Path(data_dir).resolve()
    users_source = FileSource(name="users_parquet", path=str(data_dir / "recommendation_users.parquet"),
                              timestamp_field="signup_date")
    items_source = FileSource(name="items_parquet", path=str(data_dir / "recommendation_items.parquet"),
                              timestamp_field="updated_at")
    history_log = FileSource(name="user_recent_history_log", path=str(data_dir / HISTORY_FILE),
                             timestamp_field="event_timestamp")
    history_push = PushSource(name="user_recent_history_push", batch_source=history_log)

    user_profile = FeatureView(
        name="user_profile", entities=[user], ttl=timedelta(0), source=users_source, online=True,
        schema=[
            Field(name="age", dtype=Int64),
            Field(name="gender", dtype=String),
            Field(name="region", dtype=String),
            Field(name="signup_date", dtype=UnixTimestamp),
            Field(name="preferred_categories", dtype=Array(String)),
        ],
    )
    item_features = FeatureView(
        name="item_features", entities=[item], ttl=timedelta(0), source=items_source, online=True,
        schema=[
            Field(name="category", dtype=String),
            Field(name="top_category", dtype=String),
            Field(name="discounted_price", dtype=Float64),
            Field(name="actual_price", dtype=Float64),
            Field(name="discount_percentage", dtype=Float64),
            Field(name="rating", dtype=Float64),
            Field(name="rating_count", dtype=Int64),
            Field(name="stock", dtype=Int64),
            Field(name="arrival_date", dtype=UnixTimestamp),
        ],
    )
    user_recent_history = FeatureView(
        name="user_recent_history", entities=[user], ttl=timedelta(0), source=history_push, online=True,
        schema=HISTORY_SCHEMA,
    )
    return [user, item, history_push, user_profile, item_features, user_recent_history]


def _data_dir_from_env() -> Path:
    configured = Path(os.environ.get("STREAMREC_DATA_DIR", "feature_repo/data"))
    return configured if configured.is_absolute() else PROJECT_ROOT / configured


# For `feast apply` by hand: Feast collects the module's objects.
(_user, _item, user_recent_history_push, user_profile, item_features,
 user_recent_history) = build(_data_dir_from_env())
