"""MicroBatcher on its own: batches by size and by age, and nothing read is ever dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from stream_processors.batching import MicroBatcher


def test_full_batches_go_at_once_and_the_rest_after_the_wait() -> None:
    batches: list[list[int]] = []

    async def process(events: Sequence[int]) -> None:
        batches.append(list(events))

    async def main() -> None:
        batcher = MicroBatcher(process, size=3, max_wait_s=0.05)
        for i in range(7):
            await batcher.add(i)
        assert batches == [[0, 1, 2], [3, 4, 5]]  # the 7th waits for its age
        await asyncio.sleep(0.2)
        assert batches == [[0, 1, 2], [3, 4, 5], [6]]

    asyncio.run(main())


def test_events_read_while_a_slow_batch_runs_are_all_processed_once() -> None:
    seen: list[int] = []

    async def slow(events: Sequence[int]) -> None:
        await asyncio.sleep(0.01)  # the stream keeps delivering meanwhile
        seen.extend(events)

    async def stream() -> AsyncIterator[int]:
        for i in range(500):
            if i % 7 == 0:
                await asyncio.sleep(0.002)
            yield i

    async def main() -> None:
        batcher = MicroBatcher(slow, size=16, max_wait_s=0.005)
        await batcher.run(stream())
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert seen == list(range(500))


def test_a_failing_timed_flush_is_logged_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    async def broken(events: Sequence[int]) -> None:
        raise RuntimeError("redis down")

    async def main() -> None:
        batcher = MicroBatcher(broken, size=10, max_wait_s=0.01)
        await batcher.add(1)
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert "flushing a batch failed" in caplog.text


def test_in_order_takes_offsets_in_sequence_and_replays() -> None:
    from stream_processors.batching import InOrder, Verdict

    order = InOrder()
    assert order.check("p0", 10, committed=10, now=0.0) is Verdict.TAKE
    assert order.check("p0", 11, committed=10, now=0.0) is Verdict.TAKE
    assert order.check("p0", 5, committed=10, now=0.0) is Verdict.TAKE  # a replay: the state dedupes it
    assert order.expected == {"p0": 12}


def test_a_hole_rewinds_once_then_drops_until_the_hole_is_read() -> None:
    from stream_processors.batching import InOrder, Verdict

    order = InOrder()
    assert order.check("p0", 24, committed=24, now=0.0) is Verdict.TAKE
    assert order.check("p0", 40, committed=24, now=0.1) is Verdict.REWIND  # 25..39 never came
    assert order.expected["p0"] == 25
    assert order.check("p0", 41, committed=24, now=0.2) is Verdict.DROP
    assert order.check("p0", 25, committed=24, now=0.3) is Verdict.TAKE  # read again after the seek
    assert order.check("p0", 26, committed=24, now=0.3) is Verdict.TAKE
    assert order.check("p1", 3, committed=None, now=0.3) is Verdict.TAKE  # partitions are independent
    assert order.rewinds == 1


def test_a_hole_at_the_start_is_measured_from_the_committed_offset_and_rewound_again_if_slow() -> None:
    from stream_processors.batching import InOrder, Verdict

    order = InOrder()
    assert order.check("p0", 50, committed=30, now=0.0) is Verdict.REWIND
    assert order.check("p0", 51, committed=30, now=1.0) is Verdict.DROP
    assert order.check("p0", 52, committed=30, now=2.5) is Verdict.REWIND  # the first seek got nothing
    order.reset()
    assert order.check("p0", 52, committed=52, now=3.0) is Verdict.TAKE


def test_a_hole_at_a_partitions_end_is_found_from_the_broker_end_once_the_partition_is_quiet() -> None:
    from stream_processors.batching import REWIND_AGAIN_S, InOrder, Verdict

    order = InOrder()
    order.reset(now=100.0)
    # right after an assignment: give the consumer time to deliver from the committed offset
    assert order.stalled("p0", committed=30, end=80, now=100.5) is None
    assert order.stalled("p0", committed=30, end=80, now=100.0 + REWIND_AGAIN_S) == 30
    assert order.stalled("p0", committed=30, end=80, now=101.0 + REWIND_AGAIN_S) is None  # one seek per wait
    assert order.check("p0", 30, committed=30, now=103.0) is Verdict.TAKE
    assert order.stalled("p0", committed=30, end=80, now=103.5) is None  # events are arriving
    assert order.stalled("p0", committed=30, end=80, now=103.0 + REWIND_AGAIN_S) == 31  # and stopped again
    assert order.rewinds == 2
    # caught up with the broker: nothing to read again however long it stays quiet
    for offset in range(31, 80):
        order.check("p0", offset, committed=30, now=110.0)
    assert order.stalled("p0", committed=30, end=80, now=200.0) is None
    # nothing committed and nothing seen: the log's start
    assert order.stalled("p1", committed=None, end=5, now=200.0) == 0
    assert order.stalled("p2", committed=None, end=None, now=200.0) is None  # no fetch answered yet



# ---- per-record isolation (issue 17) -----------------------------------------------------------------
class Infra(ConnectionError):
    pass


def _isolating(fail_on: set[int], infra_failures: int = 0):  # noqa: ANN202 - test helper
    from stream_processors.batching import isolated
    from streamrec._exceptions import is_infrastructure

    applied: list[int] = []
    rejected: list[tuple[int, str]] = []
    attempts = {"infra": infra_failures}

    async def process(events: Sequence[int]) -> None:
        if attempts["infra"] > 0:
            attempts["infra"] -= 1
            raise Infra("broker away")
        if fail_on & set(events):
            raise ValueError(f"poison {sorted(fail_on & set(events))}")
        applied.extend(events)

    async def reject(event: int, reason: str) -> None:
        rejected.append((event, reason))

    return isolated(process, reject, is_infrastructure), applied, rejected


def test_a_poison_record_is_rejected_alone_and_the_rest_of_its_batch_applies_in_order() -> None:
    run, applied, rejected = _isolating({3, 17})
    asyncio.run(run(list(range(40))))
    assert applied == [i for i in range(40) if i not in (3, 17)]
    assert [e for e, _ in rejected] == [3, 17] and all("poison" in r for _, r in rejected)


def test_an_infrastructure_failure_retries_the_whole_batch_and_rejects_nothing() -> None:
    run, applied, rejected = _isolating(set(), infra_failures=3)
    asyncio.run(run(list(range(10))))
    assert applied == list(range(10)) and rejected == []


def test_every_record_poisoned_still_terminates() -> None:
    run, applied, rejected = _isolating(set(range(16)))
    asyncio.run(run(list(range(16))))
    assert applied == [] and [e for e, _ in rejected] == list(range(16))


def test_the_short_fetch_wait_is_installed_on_apache_kafka_too(tmp_path: Path) -> None:
    """Faust hard-codes a 1.5 s fetch wait; on Apache Kafka it showed as ~1.5 s of freshness under load
    (stream_processors/faust_app.py): the worker's consumer gets the short wait on every broker."""
    from faust.transport.drivers import aiokafka as driver

    from stream_processors.faust_app import create_app
    from streamrec import load_settings

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread._create_worker_consumer, "_streamrec_original", thread._create_worker_consumer)
    thread._create_worker_consumer = original  # as Faust ships it (create_app installs the wait again)
    settings = load_settings(broker="kafka", kafka_bootstrap_servers="127.0.0.1:9", data_dir=tmp_path)
    assert not settings.on_tansu
    create_app(settings, "fetch-wait-test", web_port=1)
    assert getattr(thread._create_worker_consumer, "_streamrec_short_wait", False)
