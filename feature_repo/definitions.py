"""Feast objects: entities `user` and `item`, views `user_profile`, `item_features` and the streaming
`user_recent_history` written through the push source `user_recent_history_push`.

`build(data_dir)` makes them for any data folder (streamrec calls it); the module-level objects are
for `feast apply` run by hand and read STREAMREC_DATA_DIR (relative paths count from the project root).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, FileSource, PushSource, ValueType

from streamrec import feature_rows

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HISTORY_FILE = "user_recent_history.parquet"  # offline log of pushed rows (schema for the push source)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A shopper, keyed by user_id")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A product, keyed by item_id")

HISTORY_SCHEMA = feature_rows.feast_fields(feature_rows.USER_RECENT_HISTORY)  # streamrec/feature_rows.py


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
        schema=feature_rows.feast_fields(feature_rows.USER_PROFILE),
    )
    item_features = FeatureView(
        name="item_features", entities=[item], ttl=timedelta(0), source=items_source, online=True,
        schema=feature_rows.feast_fields(feature_rows.ITEM_FEATURES),
    )
    user_recent_history = FeatureView(
        name="user_recent_history", entities=[user], ttl=timedelta(0), source=history_push, online=True,
        schema=HISTORY_SCHEMA,
    )
    return [user, item, history_push, user_profile, item_features, user_recent_history]


def _data_dir_from_env() -> Path:
    from streamrec.config import load_settings

    configured = load_settings().data_dir  # STREAMREC_DATA_DIR
    return configured if configured.is_absolute() else PROJECT_ROOT / configured


# For `feast apply` by hand: Feast collects the module's objects.
(_user, _item, user_recent_history_push, user_profile, item_features,
 user_recent_history) = build(_data_dir_from_env())
