"""The online store's rows, defined once: every feature view's columns, their types and what they hold.

Derived from here, never written out again:
- Feast's fields of each view (feature_repo/definitions.py, :func:`feast_fields`);
- the pyarrow schema of the history push source's offline log (:func:`arrow_schema`);
- the names the clients read and check (:func:`names`: ``streamrec.features``);
- the column types of a push-ready history frame (``streamrec.features.history_frame``).
The stream worker's row builder (``stream_processors.history.feature_row``) fills exactly
:data:`USER_RECENT_HISTORY` (a test holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Column", "USER_PROFILE", "ITEM_FEATURES", "HISTORY_FEATURES", "HISTORY_STATE", "USER_RECENT_HISTORY",
           "names", "feast_fields", "arrow_schema"]

Kind = Literal["string", "int", "float", "time", "strings", "ints"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    doc: str = ""


USER_PROFILE = (
    Column("age", "int"),
    Column("gender", "string"),
    Column("region", "string"),
    Column("signup_date", "time"),
    Column("preferred_categories", "strings"),
)

ITEM_FEATURES = (
    Column("category", "string"),
    Column("top_category", "string"),
    Column("discounted_price", "float"),
    Column("actual_price", "float"),
    Column("discount_percentage", "float"),
    Column("rating", "float"),
    Column("rating_count", "int"),
    Column("stock", "int"),
    Column("arrival_date", "time"),
)

# `user_recent_history`, written by the stream worker through the push source `user_recent_history_push`.
HISTORY_FEATURES = (
    Column("recent_item_ids", "strings", "newest first"),
    Column("recent_interaction_types", "strings", "aligned with recent_item_ids"),
    Column("count_positive_view", "int"),
    Column("count_negative_view", "int"),
    Column("count_cart", "int"),
    Column("count_purchase", "int"),
    Column("count_rate", "int"),
    Column("last_event_at", "time", "payload time of the newest event"),
    # UnixTimestamp keeps only seconds: the feature age needs milliseconds
    Column("pushed_at_ms", "int", "epoch milliseconds when the row was written"),
    Column("purchased_item_ids", "strings", "bought, newest first, bounded: never recommended again"),
)
# The rest of the stream worker's state: whichever worker owns the user's partition next carries on from
# the row (the online store is the state's durable copy). Not model features.
HISTORY_STATE = (
    Column("recent_event_times_ms", "ints", "aligned with recent_item_ids"),
    Column("recent_event_ids", "strings", "to drop a producer's retried duplicate"),
    Column("source_partition", "int", "where the newest applied event was read: a replay"),
    Column("source_offset", "int", "at or before it changes nothing"),
)
USER_RECENT_HISTORY = (*HISTORY_FEATURES, *HISTORY_STATE)


def names(columns: tuple[Column, ...]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


def feast_fields(columns: tuple[Column, ...]) -> list[Any]:
    """``feast.Field``s of ``columns``, in order."""
    from feast import Field
    from feast.types import Array, Float64, Int64, String, UnixTimestamp

    types = {"string": String, "int": Int64, "float": Float64, "time": UnixTimestamp, "strings": Array(String),
             "ints": Array(Int64)}
    return [Field(name=c.name, dtype=types[c.kind]) for c in columns]


def arrow_schema(columns: tuple[Column, ...], key: str, timestamp: str = "event_timestamp") -> Any:
    """The pyarrow schema of a file of rows: the entity ``key``, ``columns``, then the event ``timestamp``."""
    import pyarrow as pa

    time = pa.timestamp("us", tz="UTC")
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "time": time,
             "strings": pa.list_(pa.string()), "ints": pa.list_(pa.int64())}
    return pa.schema([(key, pa.string()), *((c.name, types[c.kind]) for c in columns), (timestamp, time)])
