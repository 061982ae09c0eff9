"""The load generator (producers/load.py): its warm-up rule as a pure function, and the whole generator
against a bare echo on the real broker, with records that are not answers mixed into the answers topic."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from producers.load import MIN_WINDOWS, warm_enough
from producers.requests import LoadError, run_load
from streamrec import kafka_clients
from streamrec.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_warm_once_a_window_no_longer_falls_below_the_best_before_it() -> None:
    assert not warm_enough([60.0, 20.0, 20.0, 20.0])  # too few windows (a fresh JVM compiles for ~15 s)
    assert not warm_enough([90.0, 60.0, 50.0, 40.0, 20.0])  # still falling
    assert warm_enough([90.0, 60.0, 50.0, 20.0, 19.0])  # within 10% of the best: stopped falling
    assert warm_enough([90.0, 60.0, 50.0, 20.0, 35.0])  # a worse window is warm too: that was noise
    assert not warm_enough([90.0, 60.0, 50.0, 20.0, None])  # a window that lost answers is never warm
    assert MIN_WINDOWS == 5


@pytest.fixture
def echo(stack: Settings, topic_factory) -> tuple[str, str, subprocess.Popen]:
    requests, answers = topic_factory("load-req", partitions=3), topic_factory("load-ans", partitions=3)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.echo", "--bootstrap", stack.bootstrap_servers,
                             "--requests-topic", requests, "--responses-topic", answers],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield requests, answers, proc
    proc.terminate()
    proc.wait(20)
    proc.stdout.close()


def test_every_request_is_answered_and_timed_beside_records_that_are_not_answers(stack: Settings, echo) -> None:
    requests, answers, proc = echo
    stop = threading.Event()

    def noise() -> None:  # anyone may write to the answers topic: none of it is an answer to the generator
        producer = kafka_clients.producer(stack)
        while not stop.is_set():
            for value in (b"not json", b'{"request_id": "load-someone-else-1"}', b"[1, 2]", b'{"no_id": 1}'):
                producer.send(answers, value)
            producer.flush()
            stop.wait(0.05)
        producer.close()

    thread = threading.Thread(target=noise, daemon=True)
    thread.start()
    try:
        result = run_load(stack, [f"u{i}" for i in range(50)] + ['odd "user"\\'], 300, 150.0, timeout=20,
                          requests_topic=requests, responses_topic=answers, watch={"echo": proc.pid})
    finally:
        stop.set()
        thread.join(10)
    summary = result.summary()
    assert (summary["sent"], summary["answered"], summary["missing"], summary["errors"]) == (300, 300, 0, 0)
    assert len(result.round_trip_ms) == len(result.sent_at) == 300 and min(result.round_trip_ms) > 0
    assert 100 < summary["requests_per_s"] < 200
    assert 0 < summary["cpu_cores"]["load_generator"] < 2 and "echo" in summary["cpu_cores"]
    assert summary["warmup_p99_ms"] == []


def test_the_warm_up_comes_before_what_is_measured_and_is_not_counted(stack: Settings, echo) -> None:
    requests, answers, _ = echo
    result = run_load(stack, ["a", "b"], 100, 100.0, warmup_max_s=5.0, requests_topic=requests,
                      responses_topic=answers)
    assert len(result.warmup) == 2  # two 3-second windows fill the 5 s allowed (warm needs 5)
    assert all(w["sent"] == w["answered"] == 300 for w in result.warmup)
    assert (result.sent, result.answered) == (100, 100)


def test_a_topic_that_is_not_there_is_one_clear_error(stack: Settings) -> None:
    with pytest.raises(LoadError, match="does not exist"):
        run_load(stack, ["a"], 10, 10.0, responses_topic="no-such-answers-topic-" + "x" * 8)
