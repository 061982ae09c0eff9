"""The periodic trainer on the real embedded stack: log, warm start, compare, promote, announce."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from generation.dataset_gen_amazon import GeneratorConfig, generate, write
from models.checkpoints import latest_version, list_versions, read_checkpoint
from models.cli import trainer as trainer_cmd
from models.train import TrainConfig
from models.trainer import OFFSETS, InteractionLog, TrainerOptions, parse_duration, run_once, run_trainer
from streamrec import kafka_clients
from streamrec.config import Settings, load_settings
from streamrec.offsets import end_offsets_sync
from streamrec.schemas import Interaction, ModelUpdate, decode, encode
from streamrec.topics import MODEL_UPDATES

pytestmark = pytest.mark.stack


def _end_offsets(settings: Settings) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**kafka_clients.python_config(settings), group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(MODEL_UPDATES, p) for p in sorted(consumer.partitions_for_topic(MODEL_UPDATES))]
        return end_offsets_sync(kafka_clients.python_config(settings), parts)
    finally:
        consumer.close()


def _updates_since(settings: Settings, start: dict[TopicPartition, int], root: Path) -> list[ModelUpdate]:
    consumer = KafkaConsumer(**kafka_clients.python_config(settings), group_id=None, enable_auto_commit=False)
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        end = end_offsets_sync(kafka_clients.python_config(settings), list(start))
        found: list[ModelUpdate] = []
        for _ in range(50):
            if all(consumer.position(tp) >= end[tp] for tp in start):
                break
            for records in consumer.poll(timeout_ms=200).values():
                found += [decode(ModelUpdate, r.value) for r in records]
        # other tests may announce models too: keep ours
        return [u for u in found if Path(u.path).parent == root.resolve()]
    finally:
        consumer.close()


def _produce(settings: Settings, topic: str, events: list[Interaction]) -> None:
    producer = KafkaProducer(**kafka_clients.python_config(settings))
    for ev in events:
        producer.send(topic, key=ev.user_id.encode(), value=encode(ev))
    producer.send(topic, key=b"bad", value=b"{not an interaction")  # skipped, never fatal
    producer.flush()
    producer.close()


def _new_events(ds, prefix: str, n: int) -> list[Interaction]:  # noqa: ANN001 - generator Dataset
    """Positive views after the data window, on brand-new items the catalogue does not know yet."""
    end = ds.interactions.timestamp.max().ceil("s").to_pydatetime()
    users = ds.users.user_id.to_list()
    return [Interaction(event_id=f"{prefix}-{i}", user_id=users[i % len(users)], item_id=f"NEW-{prefix}-{i % 7}",
                        interaction_type="positive_view", timestamp=end + timedelta(minutes=i + 1))
            for i in range(n)]


def test_trainer_promotes_refuses_and_announces(stack: Settings, topic_factory: Callable[..., str],
                                                 tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "ckpt")
    root = settings.checkpoint_dir
    ds = generate(GeneratorConfig(n_users=400, n_items=800, n_interactions=8000, seed=11))
    write(ds, settings.data_dir)
    topic = topic_factory("interactions", partitions=2)
    before = _end_offsets(settings)
    opts = TrainerOptions(topic=topic, train=TrainConfig(epochs=0), warm_start=False)

    # run 1: an untrained model is promoted only because there is nothing to compare with
    _produce(settings, topic, _new_events(ds, "a", 40))
    first = run_trainer(settings, opts, once=True, report=lambda line: None)[0]
    assert first.promoted and first.version == "v1" and first.current is None
    log_dir = settings.data_dir / "interactions_log"
    offsets = json.loads((log_dir / OFFSETS).read_text())["topics"][topic]
    assert sum(offsets.values()) == 41  # 40 events + the bad one, all consumed

    # run 2 (through the CLI): new items arrive; a trained warm start beats the untrained v1
    _produce(settings, topic, _new_events(ds, "b", 40))
    result = CliRunner().invoke(trainer_cmd, [
        "--once", "--topic", topic, "--epochs", "3", "--data-dir", str(settings.data_dir),
        "--out", str(root),
        # in this process: leave pytest's own priority and torch threads as they are
        "--nice", "0", "--threads", str(torch.get_num_threads())], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert latest_version(root) == "v2"
    _, schema2, meta2 = read_checkpoint(root / "v2")
    _, schema1, _ = read_checkpoint(root / "v1")
    assert schema2.item_ids[: len(schema1.item_ids)] == schema1.item_ids  # vocabulary grew in place
    assert "NEW-b-0" in schema2.item_ids and "NEW-b-0" not in schema1.item_ids
    assert meta2["parent"] == "v1" and meta2["train"]["warm_start"]
    assert meta2["popularity"] and set(meta2["popularity"]) <= set(schema2.item_ids)  # what serving backfills
    assert meta2["metrics"]["recall@10"] > 0.1
    # lineage: the offsets of the stream v2 was trained through (model freshness is measured from them)
    logged = json.loads((log_dir / OFFSETS).read_text())["topics"][topic]
    assert meta2["data_window"]["logged_through"] == {topic: logged} and sum(logged.values()) == 82
    assert meta2["train"]["run_started_at"] < meta2["created_at"]

    # run 3: a deliberately broken (untrained) candidate is measured against v2 and refused
    log = InteractionLog(settings, topic)
    refused = run_once(settings, opts, log.read())
    assert not refused.promoted and refused.current_version == "v2"
    assert refused.candidate["recall@10"] < refused.current["recall@10"] - opts.tolerance
    # run 4: a trained candidate, but a tolerance that demands an impossible gain
    strict = replace(opts, warm_start=True, tolerance=-1.0, train=TrainConfig(epochs=1))
    assert not run_once(settings, strict, log.read()).promoted
    assert latest_version(root) == "v2" and list_versions(root) == ["v1", "v2"]  # LATEST untouched

    # keyed by version, so v1 and v2 may sit on different partitions: order by version, not arrival
    updates = sorted(_updates_since(settings, before, root), key=lambda u: int(u.version[1:]))
    assert [u.version for u in updates] == ["v1", "v2"]
    assert updates[1].metrics["recall@10"] == meta2["metrics"]["recall@10"]
    assert log.poll(wait_s=2.0) == 0  # everything was logged once; offsets are durable
    log.close()
    assert len(log.read()) == 80


def test_a_tombstone_among_valid_events_is_skipped_not_fatal(stack: Settings, topic_factory: Callable[..., str],
                                                             tmp_path: Path) -> None:
    """A null value on `interactions` (issue 17) once crashed InteractionLog.poll with a TypeError, and since
    the trainer re-reads from its saved offsets, every later `streamrec trainer --once` crashed on it too."""
    settings = load_settings(data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "ckpt")
    topic = topic_factory("interactions", partitions=2)
    start = datetime.now(UTC) - timedelta(hours=1)
    users = [f"U{n:06d}" for n in range(1, 9)]  # keyed by user: both partitions get events and tombstones
    events = [Interaction(event_id=f"t-{i}", user_id=users[i % len(users)], item_id=f"I{i % 13:06d}",
                          interaction_type="positive_view", timestamp=start + timedelta(seconds=i)) for i in range(60)]
    producer = KafkaProducer(**kafka_clients.python_config(settings))
    futures = []
    for i, ev in enumerate(events):
        producer.send(topic, key=ev.user_id.encode(), value=encode(ev))
        if i % 15 == 7:  # tombstones between valid events of the same users
            futures.append(producer.send(topic, key=users[i // 15].encode(), value=None))
    producer.flush()
    producer.close()
    tombstones = {(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)}
    assert len(tombstones) == 4 and len({p for p, _ in tombstones}) == 2

    log = InteractionLog(settings, topic)
    try:
        assert log.poll(wait_s=15.0) == len(events) and log.caught_up
        assert log.skipped == len(tombstones)
        offsets = json.loads((settings.data_dir / "interactions_log" / OFFSETS).read_text())["topics"][topic]
        assert sum(offsets.values()) == len(events) + len(tombstones)  # past the tombstones, for good
        assert log.poll(wait_s=2.0) == 0
    finally:
        log.close()
    logged = InteractionLog(settings, topic).read()
    assert sorted(logged["interaction_id"]) == sorted(ev.event_id for ev in events)


def test_parse_duration() -> None:
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    assert parse_duration("2.5s") == 2.5
    for bad in ("", "soon", "0", "-5m"):
        with pytest.raises(Exception, match="--every"):
            parse_duration(bad)


def test_the_trainer_yields_the_cpu_to_the_stream_workers() -> None:
    """Fewer torch threads and a lower priority (in a child process: niceness cannot be raised back)."""
    import subprocess
    import sys

    code = ("import os, torch; from models.trainer import yield_cpu; before = os.nice(0); "
            "threads, now = yield_cpu(None, 7); "
            "print(threads, torch.get_num_threads(), now - before, max(1, (os.cpu_count() or 2) // 2), now)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    threads, torch_threads, added, half, now = map(int, out)

    def out_of_room(added: int) -> bool:
        return now == 19
    assert threads == torch_threads == half
    assert added == 7 or (added < 7 and out_of_room(added))  # niceness stops at 19
