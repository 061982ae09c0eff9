"""The live page, served by the recommender's web server: http://127.0.0.1:6067/live.

One HTML page (static/live.html, no CDN) polls two same-origin JSON endpoints:

- ``/live/figures?since=T``: points (one per second while someone watches) of the freshness p50/p95/p99
  of the rows the features worker pushed in that second, events/s, request latency p50/p99 of the
  responses seen in that second, requests/s and the serving model version; newest ``since`` onwards.
- ``/live/user/{user_id}``: the user's fresh history as the online store has it now, and their current
  top-10 from the serving model (computed in-process, not sent over Kafka, so it counts in no figure).

Figures are pulled only while someone watches (a figures request within ``WATCH_S``): an unwatched
recommender does no extra work, so the page costs nothing to a benchmark run. The freshness comes from
the features worker's ``/freshness?samples=1`` (it may be down: the page says so); the latency from the
``recommendations`` topic itself (every response carries ``latency_ms``), so it covers every instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamrec import kafka_clients
from streamrec._exceptions import StreamrecError
from streamrec.config import Settings
from streamrec.features import FeatureStoreError
from streamrec.schemas import RecommendationRequest, SchemaError, decode
from streamrec.stats import percentiles
from streamrec.topics import RECOMMENDATIONS

__all__ = ["LiveFigures", "RateLimit", "register_live_pages", "user_view", "PAGE"]

log = logging.getLogger("streamrec.live")
PAGE = Path(__file__).with_name("static") / "live.html"
WATCH_S = 30.0  # keep sampling this long after the last figures request (a page polls every second)
SAMPLE_EVERY_S = 0.9  # at most one point per this: several viewers share the points
HISTORY_POINTS = 900  # 15 minutes at one point a second


class LiveFigures:
    """The points of the page, as pure bookkeeping (tested without services)."""

    def __init__(self, maxlen: int = HISTORY_POINTS) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._latencies: list[float] = []  # latency_ms of the responses seen since the last point
        self._errors = 0
        self._prev_rows: int | None = None  # the worker's rows_pushed at the last point
        self._prev_requests: tuple[float, int] | None = None  # (time, requests answered here)

    def record_response(self, latency_ms: float | None, error: bool) -> None:
        if latency_ms is not None:
            self._latencies.append(latency_ms)
        self._errors += int(error)

    def add_point(self, now: float, worker: dict[str, Any] | None, lags_ms: Sequence[float],
                  requests: int, model_version: str | None) -> dict[str, Any]:
        """One point: ``worker`` is the worker's /freshness (None when unreachable), ``lags_ms`` its
        samples, newest last; ``requests`` the requests this instance has answered so far."""
        window: Sequence[float] = []
        if worker is not None:
            rows = int(worker.get("rows_pushed", 0))
            # The rows pushed since the last point are the newest (rows - prev) samples.
            new = rows - self._prev_rows if self._prev_rows is not None and rows >= self._prev_rows else 0
            window = lags_ms[len(lags_ms) - min(new, len(lags_ms)):] if new else []
            self._prev_rows = rows
        else:
            self._prev_rows = None  # a restarted worker counts from 0 again
        fresh = percentiles(window, with_max=True, digits=2)
        rate = None
        if self._prev_requests is not None and now > self._prev_requests[0]:
            rate = round(max(requests - self._prev_requests[1], 0) / (now - self._prev_requests[0]), 1)
        self._prev_requests = (now, requests)
        latency = percentiles(self._latencies, with_max=True, digits=2)
        worker = worker or {}
        point = {
            "t": round(now, 3), "worker_up": bool(worker), "events": worker.get("events"),
            "events_per_s": worker.get("events_per_s"), "dlq": worker.get("dlq_total"),
            "fresh_p50": fresh["p50"], "fresh_p95": fresh["p95"], "fresh_p99": fresh["p99"],
            "fresh_max": fresh["max"], "fresh_rows": len(window),
            "window_p99": (worker.get("freshness_ms") or {}).get("p99"),
            "lat_p50": latency["p50"], "lat_p99": latency["p99"], "responses": len(self._latencies),
            "response_errors": self._errors, "requests": requests, "requests_per_s": rate,
            "model_version": model_version,
        }
        self._latencies, self._errors = [], 0
        self.points.append(point)
        return point

    def since(self, t: float) -> list[dict[str, Any]]:
        return [p for p in self.points if p["t"] > t]

    @property
    def last_t(self) -> float:
        return self.points[-1]["t"] if self.points else 0.0


def _jsonable(value: Any) -> Any:
    """Online-store values as JSON: timestamps as RFC 3339, numpy scalars as numbers."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return [_jsonable(v) for v in value] if isinstance(value, list | tuple) else str(value)


def user_view(user_id: str, features: Any, recommender: Any, bundle: Any) -> dict[str, Any]:
    """The user's fresh history and current top-10 (blocking: run it in an executor).

    Raises SchemaError for a user id no request could carry."""
    request = decode(RecommendationRequest, json.dumps({"request_id": f"live-{uuid.uuid4().hex[:12]}",
                                                        "user_id": user_id, "k": 10}))
    row = features.users_features([user_id])[0]
    now_ms = time.time() * 1000
    (response,) = recommender.recommend([request], [row], bundle, now_ms=now_ms)
    ids = list(row.get("recent_item_ids") or [])
    types = list(row.get("recent_interaction_types") or [])
    top = [i.item_id for i in response.items]
    category = _categories(recommender.catalog, ids + top)
    pushed = row.get("pushed_at_ms")
    return {
        "user_id": user_id, "known": any(row.get(k) is not None for k in ("age", "region", "recent_item_ids")),
        "profile": {k: _jsonable(row.get(k)) for k in ("age", "gender", "region", "preferred_categories")},
        "history": [{"item_id": i, "interaction_type": t, "category": category.get(i)}
                    for i, t in zip(ids, types, strict=False)],
        "counts": {k[len("count_"):]: _jsonable(row.get(k)) for k in sorted(row) if k.startswith("count_")},
        "last_event_at": _jsonable(row.get("last_event_at")),
        "feature_age_ms": round(now_ms - pushed, 1) if pushed is not None else None,
        "top10": [{"item_id": i.item_id, "score": round(i.score, 4), "category": category.get(i.item_id)}
                  for i in response.items],
        "model_version": response.model_version, "fallback": response.fallback, "filtered": response.filtered,
    }


def _categories(catalog: Any, item_ids: list[str]) -> dict[str, str]:
    found = catalog.candidates(item_ids, [0.0] * len(item_ids))  # unknown items drop out
    return {str(i): str(c) for i, c in zip(found.ids, found["top_category"], strict=True)}


class LiveFeed:
    """Pulls the figures while someone watches: the worker's /freshness and the responses' latency."""

    def __init__(self, app: Any, settings: Settings, serving: Any) -> None:
        self.app = app
        self.settings = settings
        self.serving = serving
        self.figures = LiveFigures()
        self.freshness_url = f"http://127.0.0.1:{settings.worker_port}/freshness?samples=1"
        self._last_watch = 0.0
        self._lock = asyncio.Lock()
        self._follower: asyncio.Future[None] | None = None

    def watched(self) -> bool:
        return time.monotonic() - self._last_watch < WATCH_S

    async def points(self, since: float) -> list[dict[str, Any]]:
        """Points after ``since``, taking a new one first when the last is a second old."""
        self._last_watch = time.monotonic()
        if self._follower is None or self._follower.done():
            self._follower = self.app.add_future(self._follow_responses())  # cancelled when the app stops
        async with self._lock:  # one sample at a time, however many viewers
            if time.time() - self.figures.last_t >= SAMPLE_EVERY_S:
                worker = await self._worker_figures()
                lags = worker.pop("lags_ms", []) if worker else []
                self.figures.add_point(time.time(), worker, lags, self.serving.requests, self.serving.version)
        return self.figures.since(since)

    async def _worker_figures(self) -> dict[str, Any] | None:
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http, \
                    http.get(self.freshness_url) as response:
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("features worker unreachable at %s: %s", self.freshness_url, exc)
            return None

    async def _follow_responses(self) -> None:
        """Read `recommendations` from now on, while watched; each response carries its latency. A failure
        here costs the page its latency figures, never the recommender its life."""
        from aiokafka.errors import KafkaError

        try:
            consumer = await kafka_clients.consumer_at_end(self.settings, RECOMMENDATIONS, fetch_max_wait_ms=100)
        except (KafkaError, StreamrecError, OSError) as exc:
            log.warning("live page: cannot follow %s: %s", RECOMMENDATIONS, exc)
            return
        try:
            while self.watched():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._record(record.value)
        except KafkaError as exc:
            log.warning("live page: stopped following %s: %s", RECOMMENDATIONS, exc)
        finally:
            await consumer.stop()

    def _record(self, value: bytes | None) -> None:
        try:
            body = json.loads(value or b"")
        except ValueError:
            return
        if isinstance(body, dict):
            latency = body.get("latency_ms")
            self.figures.record_response(float(latency) if isinstance(latency, int | float) else None,
                                         error=body.get("error") is not None)


USER_LOOKUPS_PER_S = 10.0
USER_CACHE_S = 1.0
USER_CACHE_SIZE = 256


class RateLimit:
    """A token bucket: at most ``per_s`` a second on average, bursts of up to ``per_s``."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.tokens = per_s
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.per_s, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def register_live_pages(app: Any, serving: Any, settings: Settings) -> LiveFeed:
    """Add ``/live``, ``/live/figures`` and ``/live/user/{user_id}`` to the recommender's web server."""
    feed = LiveFeed(app, settings, serving)
    html = PAGE.read_text(encoding="utf-8")

    @app.page("/live")
    async def live_page(web: Any, request: Any) -> Any:
        return web.html(html)

    @app.page("/live/figures")
    async def live_figures(web: Any, request: Any) -> Any:
        try:
            since = float(request.query.get("since", 0))
        except ValueError:
            return web.json({"error": "since: expected a number (epoch seconds)"}, status=400)
        points = await feed.points(since)
        return web.json({"now": time.time(), "ready": serving.ready.is_set(), "model_version": serving.version,
                         "worker_url": feed.freshness_url.split("?")[0], "points": points})

    lookups = RateLimit(USER_LOOKUPS_PER_S)
    recent: dict[str, tuple[float, dict[str, Any]]] = {}  # user → (when, view): a reload costs nothing

    @app.page("/live/user/{user_id}")
    async def live_user(web: Any, request: Any, user_id: str) -> Any:
        # Each lookup runs a recommendation: repeated ones are served from a 1 s cache, and new ones are
        # rate-limited, so the page cannot be turned into a load generator against the recommender.
        if not serving.ready.is_set():
            return web.json({"error": "the recommender is still starting"}, status=503)
        now = time.monotonic()
        cached = recent.get(user_id)
        if cached is not None and now - cached[0] < USER_CACHE_S:
            return web.json(cached[1])
        if not lookups.take(now):
            return web.json({"error": f"more than {USER_LOOKUPS_PER_S:g} user lookups a second: try again"},
                            status=429)
        loop = asyncio.get_running_loop()
        try:
            view = await loop.run_in_executor(None, user_view, user_id, serving.features, serving.recommender,
                                              serving.bundle)
        except SchemaError as exc:
            return web.json({"error": str(exc)}, status=400)
        except FeatureStoreError as exc:
            return web.json({"error": str(exc).splitlines()[0][:300]}, status=503)
        if len(recent) >= USER_CACHE_SIZE:
            recent.clear()
        recent[user_id] = (now, view)
        return web.json(view)

    return feed
