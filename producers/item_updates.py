"""A stream of item updates (sell-outs, restocks, sales and price changes) onto `item-updates`,
so availability is a stream too. Deterministic for a seed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.topics import ITEM_UPDATES

from .replay import ReplayError, ReplayStats

__all__ = ["make_updates", "send_updates"]

KINDS = ("sell_out", "restock", "sale", "price")
KIND_P = (0.25, 0.35, 0.3, 0.1)


def make_updates(items: pd.DataFrame, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` updates over ``items`` (item_id, stock, discounted_price), consistent with each other.

    An unknown stock (an imported catalogue) counts as 0 once an update changes it; an item without a
    price gets a restock where a price change was drawn."""
    rng = np.random.default_rng(seed)
    known = lambda column: column.astype(object).where(column.notna(), None)  # noqa: E731 - NaN/NA -> None
    stock = dict(zip(items["item_id"], known(items["stock"]), strict=True))
    price = dict(zip(items["item_id"], known(items["discounted_price"]), strict=True))
    ids = items["item_id"].to_numpy()
    picks = rng.choice(len(ids), n)
    kinds = rng.choice(len(KINDS), n, p=KIND_P)
    out = []
    for pick, kind in zip(picks, kinds, strict=True):
        item_id = str(ids[pick])
        update: dict[str, Any] = {"item_id": item_id}
        draw = "restock" if KINDS[kind] == "price" and price[item_id] is None else KINDS[kind]
        if draw == "sell_out":
            stock[item_id] = update["stock"] = 0
        elif draw == "restock":
            stock[item_id] = update["stock"] = int(stock[item_id] or 0) + int(rng.integers(10, 200))
        elif draw == "sale":
            stock[item_id] = update["stock"] = max(0, int(stock[item_id] or 0) - int(rng.integers(1, 4)))
        else:
            price[item_id] = update["price"] = round(float(price[item_id]) * float(rng.uniform(0.8, 1.15)), 2)
        out.append(update)
    return out


def send_updates(settings: Settings, items_path: Path, n: int, rate: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> ReplayStats:
    """Send ``n`` updates (timestamped now) keyed by item_id; returns delivery totals."""
    if not Path(items_path).exists():
        raise ReplayError(f"no such file: {items_path} (run `streamrec generate` first?)")
    if n <= 0:
        raise ReplayError("--item-updates must be greater than 0")
    items = pd.read_parquet(items_path, columns=["item_id", "stock", "discounted_price"])
    updates = make_updates(items, n, seed)
    producer = kafka_clients.producer(settings, acks="all", retries=5, linger_ms=5)
    stats = ReplayStats()
    started = time.perf_counter()

    def ok(_: Any) -> None:
        stats.delivered += 1

    def failed(exc: Exception) -> None:
        stats.failed += 1
        stats.errors.append(str(exc))

    try:
        for i, update in enumerate(updates):
            if rate:
                wait = started + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            update["timestamp"] = pd.Timestamp.now(tz="UTC").isoformat()
            value = json.dumps(update, separators=(",", ":")).encode()
            producer.send(ITEM_UPDATES, key=update["item_id"].encode(), value=value).add_callback(
                ok).add_errback(failed)
            stats.sent += 1
            if progress and stats.sent % 200 == 0:
                progress(stats.sent, stats.delivered)
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(timeout=60)
        producer.close(timeout=10)
        stats.seconds = time.perf_counter() - started
        if progress:
            progress(stats.sent, stats.delivered)
    return stats
