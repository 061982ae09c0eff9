"""Periodic retraining: log new interactions from Kafka, retrain, compare, promote, announce.

Each run reads the base interactions parquet plus the offline log that :class:`InteractionLog`
appends from the ``interactions`` topic, warm-starts from LATEST (vocabularies grow, old rows are
kept), and evaluates the candidate and the current model on the newest hold-out (each user's last
novel positive event). The candidate is promoted when its Recall@10 >= current - tolerance
(absolute), then announced on ``model-updates``. A failed or refused run leaves LATEST untouched.

The log consumer assigns partitions by hand (no consumer group: a group join costs ~20 s on the
embedded broker) and keeps its next offsets in ``_offsets.json`` beside the parquet parts, written
only after the part is durable: a crash between the two re-reads events, which are deduplicated
by ``interaction_id`` (= the event's ``event_id``) when the log is read.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from streamrec import kafka_clients
from streamrec._exceptions import SchemaError, StreamrecError
from streamrec.config import Settings
from streamrec.files import atomic_write
from streamrec.schemas import Interaction, ModelUpdate, decode, encode
from streamrec.topics import INTERACTIONS, MODEL_UPDATES

from .checkpoints import CheckpointError, latest_version, promote, read_checkpoint, save_checkpoint
from .data import Prepared, load_data, prepare
from .data import encode as encode_events
from .evaluation import EvalSet, eval_set, evaluate, model_scorer
from .features import FeatureSchema, popularity_ranking
from .towers import TwoTower
from .train import TrainConfig, fit, fit_tuned, grow_state, new_model, pick_device

__all__ = ["TrainerError", "InteractionLog", "TrainerOptions", "RunResult", "run_once", "run_trainer",
           "parse_duration", "LOG_DIR", "OFFSETS"]

LOG_DIR, OFFSETS = "interactions_log", "_offsets.json"  # '_' prefix: parquet readers skip it


class TrainerError(StreamrecError):
    """The periodic trainer cannot go on (Kafka unreachable, bad options)."""


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1h', '1h30m' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not text or not text.strip() or parts is None:
        raise TrainerError(f"--every: expected a duration like 30s, 10m or 1h, got {text!r}")
    h, m, s = parts.groups()
    seconds = int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)
    if seconds <= 0:
        raise TrainerError(f"--every must be positive, got {text!r}")
    return seconds


class InteractionLog:
    """The offline log of the interactions topic: parquet parts + next offsets per partition."""

    def __init__(self, settings: Settings, topic: str = INTERACTIONS) -> None:
        self.settings, self.topic = settings, topic
        self.dir = Path(settings.data_dir) / LOG_DIR
        self.skipped = 0  # undecodable messages (the stream worker dead-letters them; we just skip)
        self.caught_up = False  # whether the last poll reached the end offsets it saw at its start
        self._consumer: Any = None
        self._parts: list[Any] = []

    def _offsets(self) -> dict[int, int]:
        try:
            data = json.loads((self.dir / OFFSETS).read_text(encoding="utf-8"))
            return {int(p): int(o) for p, o in data.get("topics", {}).get(self.topic, {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            raise TrainerError(f"{self.dir / OFFSETS} is unreadable ({exc}); delete it to re-read the topic") from exc

    def _connect(self) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        try:
            consumer = kafka_clients.consumer(self.settings, group_id=None, enable_auto_commit=False,
                                              auto_offset_reset="earliest", client_id="streamrec-trainer")
            partitions = consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            raise TrainerError(f"cannot read topic {self.topic!r} at {self.settings.bootstrap_servers}: {exc}") from exc
        if not partitions:
            consumer.close()
            raise TrainerError(f"topic {self.topic!r} does not exist on {self.settings.bootstrap_servers}"
                               " (run `streamrec stack up`)")
        self._parts = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(self._parts)
        stored = self._offsets()
        for tp in self._parts:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        self._consumer = consumer

    def poll(self, wait_s: float = 1.0, until_caught_up: bool = True) -> int:
        """Append what the topic holds beyond our offsets; returns the number of events logged.

        With ``until_caught_up`` it returns as soon as the end offsets seen at the start are reached
        (or after ``wait_s``); otherwise it waits the full ``wait_s`` for new events.
        """
        from kafka.errors import KafkaError

        if self._consumer is None:
            self._connect()
        c, rows = self._consumer, []
        try:
            end = kafka_clients.end_offsets_sync(self.settings, self._parts)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if until_caught_up and all(c.position(tp) >= end[tp] for tp in self._parts):
                    break
                batch = c.poll(timeout_ms=max(1, int(200 if until_caught_up else (deadline - time.monotonic()) * 1000)))
                for records in batch.values():
                    rows.extend(self._row(r) for r in records)
            positions = {tp.partition: c.position(tp) for tp in self._parts}
            self.caught_up = all(positions[tp.partition] >= end[tp] for tp in self._parts)
        except (KafkaError, kafka_clients.EndOffsetError) as exc:
            raise TrainerError(f"reading {self.topic!r} failed: {exc}") from exc
        rows = [r for r in rows if r is not None]
        if rows:
            self.dir.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(rows)
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
            frame["quantity"] = frame["quantity"].astype("Int64")
            name = f"part-{time.time_ns():020d}.parquet"
            atomic_write(self.dir / name, lambda tmp: frame.to_parquet(tmp, index=False))
        if rows or positions:
            self.dir.mkdir(parents=True, exist_ok=True)
            data = self._offsets_doc(positions)
            atomic_write(self.dir / OFFSETS, json.dumps(data, indent=1).encode())
        return len(rows)

    def positions(self) -> dict[int, int]:
        """Per partition, the next offset not yet in the log: what a run over :meth:`read` has seen."""
        return self._offsets()

    def _offsets_doc(self, positions: dict[int, int]) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / OFFSETS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        doc.setdefault("topics", {})[self.topic] = {str(p): o for p, o in sorted(positions.items())}
        doc["updated_at"] = datetime.now(UTC).isoformat()
        return doc

    def _row(self, record: Any) -> dict[str, Any] | None:
        try:
            ev = decode(Interaction, record.value)
        except SchemaError:
            self.skipped += 1
            return None
        return {"interaction_id": ev.event_id, "user_id": ev.user_id, "item_id": ev.item_id,
                "interaction_type": ev.interaction_type, "timestamp": ev.timestamp,
                "rating": ev.rating, "quantity": ev.quantity,
                "kafka_partition": record.partition, "kafka_offset": record.offset}

    def read(self) -> pd.DataFrame:
        """Every logged event once (duplicates from a crash-and-replay dropped)."""
        parts = sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []
        if not parts:
            return pd.DataFrame(columns=["interaction_id", "user_id", "item_id", "interaction_type", "timestamp"])
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        return frame.drop_duplicates("interaction_id", keep="first").reset_index(drop=True)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


@dataclass(frozen=True)
class TrainerOptions:
    tolerance: float = 0.02  # absolute Recall@10 the candidate may lose against the current model
    warm_start: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5))
    model: dict[str, Any] = field(default_factory=dict)  # TowerConfig options for a cold start
    topic: str = INTERACTIONS
    publish: bool = True


@dataclass
class RunResult:
    promoted: bool
    reason: str
    candidate: dict[str, float]
    current: dict[str, float] | None = None
    current_version: str | None = None
    version: str | None = None  # the new checkpoint, when promoted
    published: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        cur = (f" vs {self.current_version} {self.current['recall@10']:.4f}" if self.current else "")
        verdict = f"promoted {self.version}" if self.promoted else "kept the current model"
        return (f"{verdict}: recall@10 {self.candidate['recall@10']:.4f}{cur} ({self.reason}), "
                f"{self.seconds:.1f}s")


def _candidate(p: Prepared, opts: TrainerOptions, current: TwoTower | None) -> tuple[TwoTower, list[dict[str, Any]]]:
    """Train the candidate: from ``current``'s weights (rows appended for new vocabulary) or fresh; with
    the linear paths a cold start tried (empty for a warm start)."""
    if current is None:  # a cold start chooses the linear path on validation, as `streamrec train` does
        val = eval_set(p.enc, p.split.val) if len(p.split.val) else None
        tuned = fit_tuned(p, opts.train, opts.model, val=val)
        return tuned.model, tuned.result.path_tried
    torch.manual_seed(opts.train.seed)
    sizes = p.enc.schema.sizes()  # everything else (dim, dropout, temperature, the path) stays as it was
    model = new_model(p.enc.schema, p.enc, **{k: v for k, v in asdict(current.cfg).items() if k not in sizes})
    grow_state(model, current.state_dict())
    model.item_tower.set_features(p.enc.items)
    fit(model, p, opts.train)
    return model, []


def _score_current(p: Prepared, es: EvalSet, current: tuple[TwoTower, FeatureSchema, Any]) -> dict[str, float]:
    """The current model on the candidate's hold-out, encoded with its own (older) vocabulary."""
    model, schema, _ = current
    device = p.enc.ev_item.device
    enc = encode_events(p.events, schema, p.raw.users, p.raw.items, device)
    known = torch.as_tensor(schema.item_index(p.enc.schema.item_ids), device=device)
    columns = torch.where(known >= 2, known, torch.full_like(known, -1))  # items it never saw: not offered
    return evaluate(model_scorer(model.to(device), enc, es, columns), es)[0]


def run_once(settings: Settings, opts: TrainerOptions, extra: pd.DataFrame | None = None,
             logged_through: dict[int, int] | None = None) -> RunResult:
    """One retrain-compare-promote-announce cycle over the base data plus ``extra`` events.

    ``logged_through`` (partition → next offset of ``opts.topic`` that ``extra`` holds) goes into the
    checkpoint's data window: which stream events a served model has seen, the measure of model freshness.
    """
    t0, started_at = time.perf_counter(), datetime.now(UTC)
    root = Path(settings.checkpoint_dir)
    raw = load_data(Path(settings.data_dir), extra)
    current, cur_version, note = None, latest_version(root), ""
    if cur_version is not None:
        try:
            current = read_checkpoint(root / cur_version)
        except CheckpointError as exc:  # serving cannot load it either: replacing it is the fix
            note = f"; current {cur_version} unreadable, replaced: {exc}"
    warm = current if opts.warm_start else None
    p = prepare(raw, warm[1] if warm else None, opts.train.targets, pick_device(opts.train.device))
    model, path_tried = _candidate(p, opts, warm[0] if warm else None)
    es = eval_set(p.enc, p.split.test)
    result = RunResult(False, "", evaluate(model_scorer(model, p.enc, es), es)[0])
    if current is None:
        result.promoted, result.reason = True, "no current model" + note
    else:
        result.current, result.current_version = _score_current(p, es, current), cur_version
        floor = result.current["recall@10"] - opts.tolerance
        result.promoted = result.candidate["recall@10"] >= floor
        result.reason = f"{'>=' if result.promoted else '<'} {floor:.4f} = current - tolerance {opts.tolerance:g}"
    if result.promoted:
        ts = p.events.ts
        window = {"start": pd.Timestamp(int(ts.min()), tz="UTC").isoformat(),
                  "end": pd.Timestamp(int(ts.max()), tz="UTC").isoformat(),
                  "n_interactions": len(ts), "n_logged": 0 if extra is None else len(extra),
                  "n_train": len(p.split.train), "n_val": len(p.split.val), "n_test": len(p.split.test)}
        if logged_through is not None:
            window["logged_through"] = {opts.topic: {str(k): int(v) for k, v in sorted(logged_through.items())}}
        train_info = {**vars(opts.train), "warm_start": warm is not None, "path_tried": path_tried,
                      "compared_with": result.current_version,
                      "tolerance": opts.tolerance, "run_started_at": started_at.isoformat(),
                      "run_s": round(time.perf_counter() - t0, 3)}  # until the save: the announcement follows
        path = save_checkpoint(root, model.cpu(), p.enc.schema, metrics=result.candidate, data_window=window,
                               train=train_info, parent=result.current_version,
                               popularity=popularity_ranking(p.raw.interactions))
        promote(root, path.name)
        result.version = path.name
        if opts.publish:
            _publish(settings, path, result.candidate)
            result.published = True
    result.seconds = time.perf_counter() - t0
    return result


def _publish(settings: Settings, path: Path, metrics: dict[str, float]) -> None:
    from kafka.errors import KafkaError

    update = ModelUpdate(version=path.name, path=str(path.resolve()), metrics=metrics,
                         created_at=datetime.now(UTC))
    try:
        producer = kafka_clients.producer(settings, acks="all", client_id="streamrec-trainer")
        try:
            producer.send(MODEL_UPDATES, key=path.name.encode(), value=encode(update)).get(timeout=30)
        finally:
            producer.close(timeout=10)
    except KafkaError as exc:
        raise TrainerError(f"promoted {path.name} but could not announce it on {MODEL_UPDATES!r}: {exc}") from exc


def run_trainer(settings: Settings, opts: TrainerOptions, *, every_s: float | None = None,
                after_events: int | None = None, once: bool = False, max_runs: int | None = None,
                report: Callable[[str], None] = print) -> list[RunResult]:
    """Poll the topic and retrain on schedule until ``once``/``max_runs`` says stop (or Ctrl-C)."""
    if not once and every_s is None and after_events is None:
        raise TrainerError("say when to retrain: --every 10m, --after-events N, or --once")
    kafka_clients.require_reachable(settings)  # a refused password or certificate: one line, not a 30 s stall
    log = InteractionLog(settings, opts.topic)
    runs: list[RunResult] = []
    pending, next_at = 0, time.monotonic() + (every_s or 0.0)
    try:
        while not log.caught_up:  # catch up first, so the first run sees the whole backlog
            pending += log.poll(wait_s=30.0)
            report(f"logged {pending:,} events from {opts.topic!r}")
        while True:
            due = once or (every_s is not None and time.monotonic() >= next_at) or (
                after_events is not None and pending >= after_events)
            if due:
                logged = log.read()  # every parquet part: read once a run, not once per use
                report(f"retraining on the base data + {len(logged):,} logged events ({pending:,} new)")
                try:
                    result = run_once(settings, opts, logged, log.positions())
                    report(result.line())
                except StreamrecError as exc:
                    if once:
                        raise
                    result = RunResult(False, f"failed: {exc}", {})
                    report(f"run failed, LATEST untouched: {exc}")
                runs.append(result)
                pending, next_at = 0, time.monotonic() + (every_s or 0.0)
                if once or (max_runs is not None and len(runs) >= max_runs):
                    return runs
            pending += log.poll(wait_s=1.0, until_caught_up=False)
    finally:
        log.close()


def yield_cpu(threads: int | None, niceness: int) -> tuple[int, int]:
    """Make this process a background one: at most ``threads`` torch threads (default half the cores,
    at least 1) and ``niceness`` added to its CPU priority. The periodic trainer shares the machine with
    the stream workers; with torch's default of one thread per core and the same priority, a retrain on 2
    cores pushed the demo's freshness p99 to ~3 s (issue 14). Returns (threads, niceness now)."""
    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    now = os.nice(niceness) if niceness else os.nice(0)
    return threads, now
