"""Replay an interactions parquet onto the `interactions` topic with kafka-python, keyed by user_id.

Pacing: ``rate`` events/s, or ``speedup`` (the original gaps divided by X), or as fast as possible.
Delivery is confirmed (acks=all, retries); Ctrl-C flushes what was sent before exiting; the totals say
how many were delivered and how many failed. Any parquet works with a column mapping
(``{"our_name": "their_name"}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from streamrec import kafka_clients
from streamrec._exceptions import StreamrecError
from streamrec.config import Settings
from streamrec.schemas import INTERACTION_TYPES
from streamrec.topics import INTERACTIONS

__all__ = ["ReplayError", "ReplayStats", "load_events", "build_messages", "replay"]

REQUIRED = ("user_id", "item_id", "interaction_type", "timestamp")
OPTIONAL = ("interaction_id", "rating", "quantity", "device", "session_id")


class ReplayError(StreamrecError):
    """The input cannot be replayed (missing file or column, bad pacing)."""


@dataclass
class ReplayStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def load_events(path: Path, column_map: Mapping[str, str] | None = None, start_at: int = 0,
                limit: int | None = None) -> pd.DataFrame:
    """Read, rename, validate and sort (by time) the events to replay."""
    if not Path(path).exists():
        raise ReplayError(f"no such file: {path} (run `streamrec generate` first?)")
    frame = pd.read_parquet(path)
    frame = frame.rename(columns={theirs: ours for ours, theirs in (column_map or {}).items()})
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ReplayError(f"{path} lacks column(s) {', '.join(missing)}; map them with --map ours=theirs")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    bad_types = set(frame["interaction_type"].unique()) - set(INTERACTION_TYPES)
    if bad_types:
        raise ReplayError(f"unknown interaction_type(s) {sorted(bad_types)[:5]}; expected {INTERACTION_TYPES}")
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if "interaction_id" not in frame.columns:
        frame["interaction_id"] = [f"{path.stem}-{i}" for i in range(len(frame))]
    end = None if limit is None else start_at + limit
    return frame.iloc[start_at:end].reset_index(drop=True)


def build_messages(frame: pd.DataFrame, loop_round: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs in CONTRACT's interaction schema. Later loop rounds get fresh event ids."""
    suffix = f"~{loop_round}" if loop_round else ""
    stamps = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00").to_numpy()
    columns = {c: frame[c].to_numpy() for c in (*REQUIRED, *OPTIONAL) if c in frame.columns}
    n = len(frame)
    # Optional columns resolved once, not per row (a per-row default list made this quadratic: 4.6k rows/s).
    def present(name: str) -> Any:  # values with None where missing
        if name not in frame.columns:
            return [None] * n
        column = frame[name].astype(object)
        return column.where(frame[name].notna(), None).to_numpy()

    ratings, quantities = present("rating"), present("quantity")
    context_columns = [(k, present(k)) for k in ("device", "session_id") if k in columns]
    ids, users, items, kinds = (columns[c] for c in ("interaction_id", "user_id", "item_id", "interaction_type"))
    out = []
    for i in range(n):
        user = str(users[i])
        body: dict[str, Any] = {"event_id": f"{ids[i]}{suffix}", "user_id": user, "item_id": str(items[i]),
                                "interaction_type": kinds[i], "timestamp": stamps[i]}
        if ratings[i] is not None:
            body["rating"] = float(ratings[i])
        if quantities[i] is not None:
            body["quantity"] = int(quantities[i])
        context = {k: str(values[i]) for k, values in context_columns if values[i] is not None}
        if context:  # an imported log has no device or session: no context, not "None"
            body["context"] = context
        out.append((user.encode(), json.dumps(body, separators=(",", ":")).encode()))
    return out


def _pacer(frame: pd.DataFrame, rate: float | None, speedup: float | None) -> Callable[[int], float]:
    """Seconds after the start at which message ``i`` is due (0 for as fast as possible)."""
    if rate:
        return lambda i: i / rate
    if speedup:
        offsets = ((frame["timestamp"] - frame["timestamp"].iloc[0]).dt.total_seconds() / speedup).to_numpy()
        return lambda i: float(offsets[i])
    return lambda i: 0.0


def replay(settings: Settings, path: Path, *, rate: float | None = None, speedup: float | None = None,
           loop: bool = False, limit: int | None = None, start_at: int = 0,
           column_map: Mapping[str, str] | None = None, topic: str = INTERACTIONS,
           progress: Callable[[int, int], None] | None = None, producer: Any = None) -> ReplayStats:
    """Send the events; returns the totals. Ctrl-C stops sending and still flushes what was sent."""
    if rate is not None and speedup is not None:
        raise ReplayError("give --rate or --speedup, not both")
    if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
        raise ReplayError("--rate and --speedup must be greater than 0")
    frame = load_events(Path(path), column_map, start_at, limit)
    if frame.empty:
        raise ReplayError(f"nothing to replay in {path} from row {start_at}")
    from kafka.errors import KafkaError

    own_producer = producer is None
    if own_producer:
        kafka_clients.require_reachable(settings)
        try:
            producer = kafka_clients.producer(settings, acks="all", linger_ms=5, batch_size=256 * 1024,
                                              **kafka_clients.ordered(settings))
        except KafkaError as exc:
            raise ReplayError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    stats = ReplayStats()
    due = _pacer(frame, rate, speedup)

    def ok(_: Any) -> None:
        stats.delivered += 1

    def failed(exc: Exception) -> None:
        stats.failed += 1
        if len(stats.errors) < 5:
            stats.errors.append(str(exc))

    started = time.perf_counter()
    try:
        for round_no in _rounds(loop):
            messages = build_messages(frame, round_no)
            round_start = time.perf_counter()
            for i, (key, value) in enumerate(messages):
                wait = round_start + due(i) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                producer.send(topic, key=key, value=value).add_callback(ok).add_errback(failed)
                stats.sent += 1
                if progress and stats.sent % 200 == 0:
                    progress(stats.sent, stats.delivered)
    except KeyboardInterrupt:
        pass  # stop sending; what was sent is flushed below
    finally:
        producer.flush(timeout=60)
        stats.seconds = time.perf_counter() - started
        if progress:
            progress(stats.sent, stats.delivered)
        if own_producer:
            producer.close(timeout=10)
    return stats


def _rounds(loop: bool) -> Iterator[int]:
    n = 0
    while True:
        yield n
        n += 1
        if not loop:
            return


def parse_column_map(pairs: list[str]) -> dict[str, str]:
    """``["user_id=customer", ...]`` → ``{"user_id": "customer"}``."""
    out = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            raise ReplayError(f"--map expects ours=theirs, got {pair!r}")
        if ours not in (*REQUIRED, *OPTIONAL):
            raise ReplayError(f"--map: {ours!r} is not one of {', '.join((*REQUIRED, *OPTIONAL))}")
        out[ours] = theirs
    return out
