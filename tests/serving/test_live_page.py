"""The live page (/live on the recommender) in headless Chromium, on real workers and a real stack: the
figures render and move while events flow, and the user lookup shows fresh history and a top-10."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from producers.replay import build_messages, load_events
from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.schemas import RecommendationRequest, encode
from streamrec.topics import INTERACTIONS, REQUESTS
from tests.helpers import Worker, wait_until

EVENTS_PER_S = 80.0
REQUESTS_PER_S = 10.0
INJECTED = '<img src=x id=injected onerror="document.title=1">'  # a user id that must stay text


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not install chromium for the live-page test: apt-get {' '.join(args)}: {exc}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's `chromium` (headless-capable), installed with apt-get when missing: we run as root."""
    if not shutil.which("chromium"):
        install = ("install", "-y", "--no-install-recommends", "chromium")
        done = _apt(*install)
        if done.returncode != 0:  # stale package lists are the usual reason
            _apt("update")
            done = _apt(*install)
        if done.returncode != 0 or not shutil.which("chromium"):
            pytest.fail(f"could not install chromium for the live-page test: `apt-get {' '.join(install)}` "
                        f"exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
    return shutil.which("chromium")


class Dom(HTMLParser):
    """Elements with an id (their attributes) and the cell texts of each table body's rows."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.counts: dict[str, int] = {}  # tag → how many
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if a.get("id"):
            self.by_id[a["id"]] = a
        table = next((i for t, i in reversed(self._open) if t == "table"), None)
        if tag == "tr" and table and any(t == "tbody" for t, _ in self._open):
            self.rows.setdefault(table, []).append([])
        if tag == "td":
            self._cell = []
        if tag not in self.VOID:
            self._open.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            table = next(i for t, i in reversed(self._open) if t == "table")
            self.rows[table][-1].append("".join(self._cell))
            self._cell = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def value(self, element_id: str) -> str:
        return self.by_id[element_id].get("data-value") or ""

    def number(self, element_id: str) -> float | None:
        v = self.value(element_id)
        return float(v) if v else None


def dump_dom(chromium: str, url: str, profile: Path, budget_ms: int = 3500) -> tuple[Dom, str]:
    """Load ``url`` in headless Chromium, let its timers run ``budget_ms`` of virtual time, parse the DOM."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "</html>" in done.stdout, (done.returncode, done.stderr[-2000:])
    return Dom(done.stdout), done.stdout


class Traffic:
    """Interactions and recommendation requests at a steady rate from one thread, until stopped."""

    def __init__(self, settings: Settings, events: list[tuple[bytes, bytes]], users: list[str]) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(acks=1, linger_ms=5, **kafka_clients.python_config(settings))
        self.events, self.users = events, users
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        requests = 0
        while not self._stop.is_set() and self.sent < len(self.events):
            elapsed = time.perf_counter() - started
            while self.sent < min(len(self.events), int(elapsed * EVENTS_PER_S)):
                key, value = self.events[self.sent]
                self.producer.send(INTERACTIONS, key=key, value=value)
                self.sent += 1
            while requests < int(elapsed * REQUESTS_PER_S):
                user = self.users[requests % len(self.users)]
                request = RecommendationRequest(request_id=f"live-test-{requests}", user_id=user)
                self.producer.send(REQUESTS, key=user.encode(), value=encode(request))
                requests += 1
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.close(timeout=10)


def test_live_page_renders_and_moves_while_events_flow(env_stack: Settings, trained_checkpoint: Path,
                                                       worker_factory: Callable[..., Worker], chromium: str,
                                                       tmp_path: Path) -> None:
    settings = env_stack
    shutil.copytree(trained_checkpoint, settings.checkpoint_dir)
    features = worker_factory(settings)
    recommender = worker_factory(settings, app="recommender")
    frame = load_events(settings.data_dir / "recommendation_interactions.parquet", limit=3000)
    user = str(frame["user_id"].head(400).value_counts().index[0])  # busy early: history grows while we look
    page = f"{recommender.url}/live?user={urllib.parse.quote(user)}"
    with Traffic(settings, build_messages(frame), list(frame["user_id"].unique()[:50])) as traffic:
        wait_until(lambda: features.figures()["events"] > 0, 60, "the features worker to apply events")
        first, _ = dump_dom(chromium, page, tmp_path / "profile")
        time.sleep(3.0)  # real seconds: more events, another server-side point or three
        second, _ = dump_dom(chromium, page, tmp_path / "profile")
        sent = traffic.sent
    print(f"sent {sent} events; events on the page {first.number('events')} → {second.number('events')}; "
          f"freshness p50/p99 {second.value('fresh-p50')}/{second.value('fresh-p99')} ms; "
          f"latency p50/p99 {second.value('lat-p50')}/{second.value('lat-p99')} ms")

    for dom in (first, second):
        assert dom.value("model-version") == "v1"
        assert dom.value("worker-state") == "up" and dom.value("recommender-state") == "ready"
    # The figures move: more events, more points, the freshness chart drawn from real lags.
    assert 0 < first.number("events") < second.number("events")
    assert int(first.value("updated")) < int(second.value("updated"))
    assert second.number("fresh-p50") is not None and second.number("fresh-p50") > 0
    assert second.number("fresh-p99") >= second.number("fresh-p50")
    assert int(second.by_id["chart-fresh"]["data-points"]) > 0
    assert int(second.by_id["chart-rate"]["data-points"]) > int(first.by_id["chart-rate"]["data-points"])
    assert second.number("lat-p50") is not None and second.number("lat-p99") >= second.number("lat-p50")
    # The user lookup: the fresh history the worker pushed and a full top-10 from the serving model.
    history, top10 = second.rows.get("history", []), second.rows.get("top10", [])
    assert history and all(r[2] in {"positive_view", "negative_view", "cart", "purchase", "rate"} for r in history)
    assert set(r[1] for r in history) <= set(frame.loc[frame["user_id"] == user, "item_id"])
    assert len(top10) == 10 and len({r[1] for r in top10}) == 10
    assert second.number("user-age") is not None

    # A user id is text, never markup: an unknown user still gets the popular items.
    dom, html = dump_dom(chromium, f"{recommender.url}/live?user={urllib.parse.quote(INJECTED)}",
                         tmp_path / "profile", budget_ms=2000)
    assert "injected" not in dom.by_id and dom.counts.get("img", 0) == 0
    assert "&lt;img src=x id=injected" in html
    assert len(dom.rows.get("top10", [])) == 10


def test_each_point_takes_the_freshness_of_the_rows_pushed_since_the_last_one() -> None:
    from serving.live import LiveFigures

    figures = LiveFigures()
    worker = {"rows_pushed": 3, "events": 3, "events_per_s": 1.0, "freshness_ms": {"p99": 30.0}}
    first = figures.add_point(100.0, worker, [10.0, 20.0, 30.0], requests=0, model_version="v1")
    assert first["fresh_p50"] is None and first["requests_per_s"] is None  # nothing to compare with yet
    figures.record_response(5.0, error=False)
    figures.record_response(None, error=True)
    second = figures.add_point(102.0, {**worker, "rows_pushed": 5}, [10.0, 20.0, 30.0, 400.0, 600.0],
                               requests=8, model_version="v1")
    assert (second["fresh_rows"], second["fresh_p50"], second["fresh_max"]) == (2, 500.0, 600.0)
    assert (second["lat_p50"], second["response_errors"], second["requests_per_s"]) == (5.0, 1, 4.0)
    down = figures.add_point(103.0, None, [], requests=8, model_version="v1")
    assert not down["worker_up"] and down["fresh_p50"] is None and down["lat_p50"] is None
    assert [p["t"] for p in figures.since(100.0)] == [102.0, 103.0]


def test_user_lookups_are_rate_limited() -> None:
    from serving.live import RateLimit

    limit = RateLimit(per_s=10)
    assert sum(limit.take(0.0) for _ in range(50)) == 10  # a burst of 10, then refused
    assert not limit.take(0.05)
    assert limit.take(0.2)  # refilled at 10 a second
    assert sum(limit.take(10.0) for _ in range(50)) == 10  # never more than one burst banked
