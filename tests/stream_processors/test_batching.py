"""MicroBatcher on its own: batches by size, by age and by load, and nothing read is ever dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from stream_processors.batching import BEHIND_WAIT_S, MicroBatcher


def test_full_batches_go_at_once_and_the_rest_after_the_wait() -> None:
    batches: list[list[int]] = []

    async def process(events: Sequence[int]) -> None:
        batches.append(list(events))

    async def main() -> None:
        batcher = MicroBatcher(process, size=3, max_wait_s=0.05)
        for i in range(7):
            await batcher.add(i)
        await asyncio.sleep(0.01)
        assert batches == [[0, 1, 2], [3, 4, 5]]  # the 7th waits for company
        await asyncio.sleep(0.2)
        assert batches == [[0, 1, 2], [3, 4, 5], [6]]
        await batcher.stop()

    asyncio.run(main())


def test_events_that_arrive_while_a_batch_is_written_form_the_next_batch_without_waiting() -> None:
    """Under load a batch is what arrived while the last one was written: they have waited for company
    already, so the next batch starts as soon as the last is done, and the stream is read meanwhile."""
    batches: list[list[int]] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def gated(events: Sequence[int]) -> None:
            batches.append(list(events))
            await gate.wait()

        batcher = MicroBatcher(gated, size=100, max_wait_s=0.05)
        await batcher.add(0)
        await asyncio.sleep(0.1)  # [0] went after its wait and is being written
        for i in range(1, 6):
            await batcher.add(i)  # not held up by the write in progress
        await asyncio.sleep(0.1)  # longer than the wait for company
        assert batches == [[0]]
        gate.set()
        for _ in range(5):  # a few turns of the loop, no time for another wait
            await asyncio.sleep(0)
        assert batches == [[0], [1, 2, 3, 4, 5]]
        await batcher.stop()

    asyncio.run(main())


def test_a_consumer_behind_fills_its_batches_instead_of_flushing_each_few_events() -> None:
    """Behind (records after the newest already fetched), a batch waits to fill up, for at most
    BEHIND_WAIT_S: small batches' fixed cost would keep a worker behind. Caught up, it goes at once."""
    batches: list[list[int]] = []
    behind = {"now": True}

    async def process(events: Sequence[int]) -> None:
        batches.append(list(events))

    async def main() -> None:
        batcher = MicroBatcher(process, size=5, max_wait_s=0.0, behind=lambda event: behind["now"])
        for i in range(3):
            await batcher.add(i)
        for _ in range(5):
            await asyncio.sleep(0)
        assert batches == []  # behind: waits for company though max_wait_s is 0
        for i in range(3, 7):
            await batcher.add(i)
        await asyncio.sleep(0.01)
        assert batches == [[0, 1, 2, 3, 4]]  # full
        await asyncio.sleep(BEHIND_WAIT_S + 0.1)
        assert batches == [[0, 1, 2, 3, 4], [5, 6]]  # not full: went after BEHIND_WAIT_S
        behind["now"] = False
        await batcher.add(7)
        await asyncio.sleep(0.01)
        assert batches[-1] == [7]  # caught up: at once
        await batcher.stop()

    asyncio.run(main())


def test_a_full_batch_waiting_holds_the_agent_until_the_running_one_is_done() -> None:
    order: list[str] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def gated(events: Sequence[int]) -> None:
            order.append(f"process {list(events)}")
            await gate.wait()

        batcher = MicroBatcher(gated, size=2, max_wait_s=0.0)
        await batcher.add(0)
        await asyncio.sleep(0.01)  # [0] runs and waits on the gate
        await batcher.add(1)
        await batcher.add(2)  # [1, 2] is full and waits
        adding = asyncio.ensure_future(batcher.add(3))
        await asyncio.sleep(0.05)
        assert not adding.done(), "a third batch was taken in while one ran and one waited"
        gate.set()
        await asyncio.wait_for(adding, 1)
        await asyncio.sleep(0.01)
        await batcher.stop()

    asyncio.run(main())
    assert order == ["process [0]", "process [1, 2]", "process [3]"]


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

    async def main_flushed() -> None:
        batcher = MicroBatcher(slow, size=16, max_wait_s=0.005)

        async def drained() -> AsyncIterator[int]:
            async for i in stream():
                yield i
            await batcher.flush()

        await batcher.run(drained())

    asyncio.run(main_flushed())
    assert seen == list(range(500))


def test_a_failing_batch_is_logged_and_the_next_batches_still_run(caplog) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []

    async def broken_once(events: Sequence[int]) -> None:
        if 1 in events:
            raise RuntimeError("a bug")
        seen.extend(events)

    async def main() -> None:
        batcher = MicroBatcher(broken_once, size=10, max_wait_s=0.01)
        await batcher.add(1)
        await asyncio.sleep(0.1)
        await batcher.add(2)
        await asyncio.sleep(0.1)
        await batcher.stop()

    asyncio.run(main())
    assert "processing a batch of 1 failed" in caplog.text
    assert seen == [2]


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
    from streamrec._exceptions import is_infrastructure
    from streamrec.retry import isolated

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


def test_an_infrastructure_failure_is_raised_never_blamed_on_a_record() -> None:
    """``process`` retries its own calls (the one retry layer); one that still fails on the infrastructure
    leaves its batch unacked: neither retried here again nor split down to a record to dead-letter."""
    run, applied, rejected = _isolating(set(), infra_failures=1)
    with pytest.raises(Infra):
        asyncio.run(run(list(range(10))))
    assert applied == [] and rejected == []


def test_every_record_poisoned_still_terminates() -> None:
    run, applied, rejected = _isolating(set(range(16)))
    asyncio.run(run(list(range(16))))
    assert applied == [] and [e for e, _ in rejected] == list(range(16))


def test_the_short_fetch_wait_is_installed_on_apache_kafka_too(tmp_path: Path) -> None:
    """Faust hard-codes a 1.5 s fetch wait; on Apache Kafka it showed as ~1.5 s of freshness under load
    (streamrec/faust_app.py): the worker's consumer gets the short wait on every broker."""
    from faust.transport.drivers import aiokafka as driver

    from streamrec import load_settings
    from streamrec.faust_app import create_app

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread._create_worker_consumer, "_streamrec_original", thread._create_worker_consumer)
    thread._create_worker_consumer = original  # as Faust ships it (create_app installs the wait again)
    settings = load_settings(broker="kafka", kafka_bootstrap_servers="127.0.0.1:9", data_dir=tmp_path)
    assert not settings.on_tansu
    create_app(settings, "fetch-wait-test", web_port=1)
    assert getattr(thread._create_worker_consumer, "_streamrec_short_wait", False)


def test_retry_gives_up_at_its_deadline_and_never_retries_the_datas_errors() -> None:
    """The one error policy (streamrec/retry.py): the infrastructure's failures until the deadline (a
    request's answer has one), the data's never."""
    import time

    from streamrec.retry import retry

    calls = {"n": 0}

    async def broker_away() -> None:
        calls["n"] += 1
        raise Infra("broker away")

    async def bad_data() -> None:
        calls["n"] += 1
        raise ValueError("poison")

    retries: list[float] = []
    with pytest.raises(Infra):
        asyncio.run(retry(broker_away, first_s=0.01, max_s=0.02, deadline=time.monotonic() + 0.2,
                          on_retry=lambda exc, delay: retries.append(delay)))
    assert calls["n"] == len(retries) + 1 >= 5 and max(retries) == 0.02
    calls["n"] = 0
    with pytest.raises(ValueError):
        asyncio.run(retry(bad_data))
    assert calls["n"] == 1


def test_faust_acks_and_gaps_on_guarded_topics_count_only_what_our_agents_ack() -> None:
    """The patch in ``batching.guard_acks``: Faust's consumer, unpatched, counts any ack on a topic (a
    skipped event's too) and records an offset jump as done; on a guarded topic neither happens unless
    one of our agents acks a durable batch. A real Faust consumer, never started (no broker needed)."""
    import faust
    from faust.types import TP, Message

    from stream_processors.batching import acking, guard_acks

    async def check() -> None:
        app = faust.App("guard-test", broker="kafka://127.0.0.1:1", store="memory://")
        guard_acks({"guarded"})
        app.topics._acking_topics.update({"guarded", "other"})  # as subscribing agents would
        consumer = app.consumer

        def message(topic: str, offset: int) -> Message:
            return Message(topic, 0, offset, timestamp=0.0, timestamp_type=0, headers=None, key=b"", value=b"",
                           checksum=None)

        assert consumer.ack(message("other", 5)) is True  # Faust's own behaviour, left as it is
        assert consumer.ack(message("guarded", 5)) is False  # skipped by a stream: stays uncommitted
        with acking():
            assert consumer.ack(message("guarded", 6)) is True  # our agent, after the batch is durable
        await consumer._add_gap(TP("other", 0), 10, 20)
        await consumer._add_gap(TP("guarded", 0), 10, 20)
        assert consumer._gap[TP("other", 0)] and not consumer._gap[TP("guarded", 0)]
        consumer._thread.thread_loop.close()  # made for the consumer thread, which never started

    asyncio.run(check())
