"""Item updates (stock, price) merged into whole `item_features` rows, as a pure function."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from streamrec.schemas import ItemUpdate

__all__ = ["merge_item_updates"]


def merge_item_updates(current: pd.DataFrame, updates: Sequence[ItemUpdate]) -> tuple[pd.DataFrame, list[str]]:
    """Apply ``updates`` (in order, the newest timestamp wins) to ``current`` (online rows by item_id).

    Returns the rows to write (item_id, every feature, updated_at) and the ids not in the store.
    A price change moves the discounted price and recomputes the discount against the list price.
    """
    latest: dict[str, ItemUpdate] = {}
    stock: dict[str, int] = {}
    price: dict[str, float] = {}
    for update in sorted(updates, key=lambda u: u.timestamp):
        latest[update.item_id] = update
        if update.stock is not None:
            stock[update.item_id] = update.stock
        if update.price is not None:
            price[update.item_id] = update.price
    known = [i for i in latest if i in current.index and pd.notna(current.loc[i, "category"])]
    unknown = [i for i in latest if i not in known]
    rows = current.loc[known].copy()
    for item_id in known:
        if item_id in stock:
            rows.loc[item_id, "stock"] = stock[item_id]
        if item_id in price:
            new_price = price[item_id]
            actual = max(float(rows.loc[item_id, "actual_price"]), new_price)
            rows.loc[item_id, "discounted_price"] = new_price
            rows.loc[item_id, "actual_price"] = actual
            rows.loc[item_id, "discount_percentage"] = round(100.0 * (1 - new_price / actual), 2) if actual else 0.0
    rows["updated_at"] = [pd.Timestamp(latest[i].timestamp) for i in known]
    rows["arrival_date"] = pd.to_datetime(rows["arrival_date"], utc=True)
    rows["stock"] = rows["stock"].astype("int64")
    rows["rating_count"] = rows["rating_count"].astype("int64")
    return rows.rename_axis("item_id").reset_index(), unknown
