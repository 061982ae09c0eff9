"""The recommender: in-process on a trained model, and end to end over Kafka with both workers."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from producers.requests import RequestClient, run_load
from serving.filtering import FilterConfig, load_filter_config
from serving.model import load_latest
from serving.recommend import Catalog, ExactIndex, Recommender, ServingBundle
from streamrec import kafka_clients
from streamrec.config import Settings
from streamrec.schemas import HISTORY_LENGTH, RecommendationRequest, RecommendationResponse, decode, encode
from tests.helpers import Worker, wait_until

NOON = "2026-11-04T12:00:00+00:00"  # a Wednesday noon: no time-of-day rule applies


def _request(body: dict) -> RecommendationRequest:
    return decode(RecommendationRequest, json.dumps(body))


@pytest.fixture(scope="module")
def catalog(generated: Path) -> Catalog:
    items = pd.read_parquet(generated / "recommendation_items.parquet").set_index("item_id")
    popularity = pd.read_parquet(generated / "recommendation_interactions.parquet")["item_id"].value_counts()
    return Catalog(items, list(popularity.index))


@pytest.fixture(scope="module")
def bundle(trained_checkpoint: Path) -> ServingBundle:
    return ServingBundle.build(load_latest(trained_checkpoint))


def _row(generated: Path, user_id: str) -> dict:
    users = pd.read_parquet(generated / "recommendation_users.parquet").set_index("user_id")
    events = pd.read_parquet(generated / "recommendation_interactions.parquet")
    mine = events[events["user_id"] == user_id].sort_values("timestamp", ascending=False).head(HISTORY_LENGTH)
    p = users.loc[user_id]
    return {"age": int(p["age"]), "gender": p["gender"], "region": p["region"],
            "preferred_categories": list(p["preferred_categories"]), "recent_item_ids": list(mine["item_id"]),
            "recent_interaction_types": list(mine["interaction_type"]), "pushed_at_ms": time.time() * 1000 - 10}


def test_in_process_top_k_is_available_unseen_and_scored(generated: Path, catalog: Catalog,
                                                         bundle: ServingBundle) -> None:
    rec = Recommender(catalog, load_filter_config())
    events = pd.read_parquet(generated / "recommendation_interactions.parquet")
    buyers = events.loc[events["interaction_type"] == "purchase", "user_id"].unique()[:20]
    requests = [_request({"request_id": f"r{i}", "user_id": u, "k": 10,
                                                       "context": {"timestamp": NOON}}) for i, u in enumerate(buyers)]
    rows = [_row(generated, u) for u in buyers]
    items = pd.read_parquet(generated / "recommendation_items.parquet").set_index("item_id")
    for row, response in zip(rows, rec.recommend(requests, rows, bundle), strict=True):
        ids = [i.item_id for i in response.items]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert response.model_version == "v1" and response.feature_age_ms is not None
        assert (items.loc[ids, "stock"] > 0).all()
        assert (items.loc[ids, "arrival_date"] <= pd.Timestamp(NOON)).all()
        purchased = {i for i, t in zip(row["recent_item_ids"], row["recent_interaction_types"], strict=True)
                     if t == "purchase"}
        assert purchased and not purchased & set(ids)
        scores = [i.score for i in response.items if response.fallback is None]
        assert scores == sorted(scores, reverse=True)
        assert set(response.filtered) == {"availability", "demographic", "history", "contextual"}


def test_no_purchase_on_record_is_recommended_again_even_outside_the_recent_history(
        generated: Path, catalog: Catalog, bundle: ServingBundle) -> None:
    """Issue 15: a user with 30 purchases, the earliest 10 outside the 20 recent events, gets none of the
    30 back, neither from the model's candidates nor from the popularity backfill."""
    rec = Recommender(catalog, load_filter_config())
    user = "U000003"
    row = _row(generated, user)
    ask = _request({"request_id": "r", "user_id": user, "k": 30, "context": {"timestamp": NOON}})
    (before,) = rec.recommend([ask], [row], bundle)
    bought = [i.item_id for i in before.items]  # what the model would recommend most: now all bought
    bought += [p for p in catalog.popularity if p not in bought][: 30 - len(bought)]
    assert len(bought) == 30
    row = {**row, "purchased_item_ids": bought[::-1],  # newest first
           "recent_item_ids": bought[::-1][:20], "recent_interaction_types": ["purchase"] * 20}
    (after,) = rec.recommend([ask], [row], bundle)
    got = [i.item_id for i in after.items]
    assert len(got) == 30 and not set(got) & set(bought), set(got) & set(bought)
    assert not set(got) & set(bought[:10])  # the ten purchases no longer among the recent events
    (backfilled,) = Recommender(catalog, FilterConfig(history_last_n=0)).recommend(
        [RecommendationRequest(request_id="c", user_id="nobody-known", k=30)],
        [{"age": 30, "purchased_item_ids": list(catalog.popularity[:300])}], None)
    assert len(backfilled.items) == 30 and not {i.item_id for i in backfilled.items} & set(catalog.popularity[:300])


def test_a_mixed_batch_answers_each_request_as_it_would_alone(generated: Path, catalog: Catalog,
                                                             bundle: ServingBundle) -> None:
    """The filters run over the whole batch's candidates × requests matrix: no request's history, excludes,
    context, k or backfill may leak into another's answer. Every kind of request at once (known users,
    an unknown one, heavy purchasers that need the backfill, other times, devices, excludes and k)
    must equal the same request answered on its own."""
    rec = Recommender(catalog, load_filter_config())
    users = ["U000001", "U000002", "U000003", "U000004", "U000005", "U000006"]
    rows: list[dict | None] = [_row(generated, u) for u in users]
    rows[2] = {"purchased_item_ids": catalog.popularity[:400]}  # no profile: popularity, skipping 400
    rows[3] = {k: rows[3][k] for k in ("age", "gender", "region", "preferred_categories")}  # no history
    rows[4] = None  # unknown
    asks = [{"k": 10, "context": {"timestamp": NOON}},
            {"k": 1, "context": {"timestamp": "2026-11-07T02:00:00+00:00", "device": "mobile"}},  # Sat night
            {"k": 50},
            {"k": 10, "exclude": [i.item_id for i in rec.recommend(
                [RecommendationRequest(request_id="p", user_id=users[3])], [rows[3]], bundle)[0].items[:5]]},
            {"k": 100, "context": {"device": "tablet"}},
            {"k": 10, "exclude": rows[5]["recent_item_ids"][20:], "context": {"timestamp": NOON}}]
    requests = [_request({"request_id": f"r{i}", "user_id": u, **a})
                for i, (u, a) in enumerate(zip(users, asks, strict=True))]
    together = rec.recommend(requests, rows, bundle, now_ms=1.0)
    alone = [rec.recommend([q], [r], bundle, now_ms=1.0)[0] for q, r in zip(requests, rows, strict=True)]
    for i, (a, b) in enumerate(zip(together, alone, strict=True)):
        assert _answer(a) == _answer(b), i
        # the user tower over a batch of 6 or of 1: the same vectors to float32 rounding
        assert [x.score for x in a.items] == pytest.approx([x.score for x in b.items], abs=1e-5), i
        assert len(a.items) == requests[i].k, (i, a.fallback, a.filtered)
    assert "popularity" in together[2].fallback and together[4].fallback.startswith("unknown_user")
    assert not {i.item_id for i in together[3].items} & set(requests[3].exclude)
    assert not {i.item_id for i in together[2].items} & set(catalog.popularity[:400])
    # and in the reverse order, the batch still answers each request the same
    backwards = rec.recommend(requests[::-1], rows[::-1], bundle, now_ms=1.0)[::-1]
    assert [_answer(r) for r in backwards] == [_answer(r) for r in together]


def _answer(response: RecommendationResponse) -> tuple:
    return (response.request_id, [i.item_id for i in response.items], response.fallback, response.filtered,
            response.model_version)


def test_cold_starts_are_flagged(generated: Path, catalog: Catalog, bundle: ServingBundle) -> None:
    rec = Recommender(catalog, FilterConfig())
    row = _row(generated, "U000001")
    profile_only = {k: row[k] for k in ("age", "gender", "region", "preferred_categories")}
    r_unknown, r_new = rec.recommend(
        [RecommendationRequest(request_id="a", user_id="nobody"), RecommendationRequest(request_id="b",
                                                                                      user_id="U000001")],
        [None, profile_only], bundle)
    assert r_unknown.fallback.startswith("unknown_user") and len(r_unknown.items) == 10
    assert r_unknown.items[0].item_id == catalog.popularity[0] or catalog.stock(catalog.popularity[0]) == 0
    assert r_new.fallback == "no_history" and len(r_new.items) == 10 and r_new.items[0].score > 0


def test_backfill_from_popularity_when_filters_leave_too_few(generated: Path, catalog: Catalog,
                                                             bundle: ServingBundle) -> None:
    rules = load_filter_config()
    every = frozenset(catalog.categories) - {"Books"}
    strict = FilterConfig(contextual=(type(rules.contextual[0])(exclude_categories=every),))
    rec = Recommender(catalog, strict)
    request = RecommendationRequest(request_id="r", user_id="U000002", k=10)
    (response,) = rec.recommend([request], [_row(generated, "U000002")], bundle)
    assert "popularity" in response.fallback
    assert response.filtered["contextual"] > 0
    books = set(pd.read_parquet(generated / "recommendation_items.parquet").query("top_category == 'Books'")["item_id"])
    assert {i.item_id for i in response.items} <= books


@pytest.mark.parametrize("batch, k", [(1, 10), (64, 300), (7, 500), (3, 900)])
def test_the_exact_index_finds_what_faiss_finds(batch: int, k: int) -> None:
    """Below ANN_THRESHOLD the recommender searches in numpy: same items and scores as FAISS's exact
    index, best first, for any depth (deeper than the index: all of it)."""
    import faiss

    rng = np.random.default_rng(batch)
    items = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((batch, 16)).astype(np.float32)
    reference = faiss.IndexFlatIP(16)
    reference.add(items)
    want_scores, want_rows = reference.search(queries, min(k, 500))
    scores, rows = ExactIndex(items).search(queries, k)
    assert rows.shape == want_rows.shape == (batch, min(k, 500))
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    for got, want in zip(rows, want_rows, strict=True):
        assert set(got.tolist()) == set(want.tolist())


@pytest.mark.parametrize("batch", [1, 64])
def test_equal_scores_come_in_row_order(batch: int) -> None:
    """Ties are ordered by row. Small whole numbers make every inner product exact, so two equal rows
    score exactly alike whatever order BLAS sums in (random floats do not: one machine's kernel gave
    two identical rows scores 5e-7 apart)."""
    rng = np.random.default_rng(batch)
    items = rng.integers(-3, 4, (500, 16)).astype(np.float32)
    items[7] = items[8]
    queries = rng.integers(-3, 4, (batch, 16)).astype(np.float32)
    scores, rows = ExactIndex(items).search(queries, 500)
    for row_scores, got in zip(scores, rows, strict=True):
        ties = row_scores[:-1] == row_scores[1:]
        assert (got[:-1][ties] < got[1:][ties]).all()
        assert got.tolist().index(7) + 1 == got.tolist().index(8)


def test_backfill_follows_the_served_checkpoints_popularity(generated: Path, bundle: ServingBundle) -> None:
    """A model brings the popularity of the data it was trained on; without one, the catalogue's own order
    (rating_count, from the store) answers. Here the catalogue's order is the checkpoint's reversed, so
    each answer shows which one was used."""
    ranked = list(bundle.model.popularity)
    assert len(ranked) > 50
    items = pd.read_parquet(generated / "recommendation_items.parquet").set_index("item_id")
    items["stock"] = 5  # nothing sold out: the answers show the order alone
    reversed_catalog = Catalog(items, ranked[::-1])
    rec = Recommender(reversed_catalog, FilterConfig())
    unknown = RecommendationRequest(request_id="r", user_id="nobody", k=10)
    (with_model,) = rec.recommend([unknown], [None], bundle)
    (without,) = rec.recommend([unknown], [None], None)
    assert [i.item_id for i in with_model.items] == ranked[:10]
    assert [i.item_id for i in without.items] == ranked[::-1][:10]
    # the checkpoint's ranking first, then what the catalogue ranks and the checkpoint does not, once each
    items["rating_count"] = range(len(items))
    from_store = Catalog(items, list(items.index[::-1]))  # as load_catalog ranks: every item
    keys = Recommender(from_store, FilterConfig()).popularity_keys(bundle)
    assert list(from_store.ids[keys[:len(ranked)]]) == ranked
    assert sorted(keys.tolist()) == list(range(len(from_store)))


def test_an_imported_catalogue_with_unknown_stock_and_prices_is_recommendable() -> None:
    """Items as the online store returns an imported log's catalogue (stock, price, arrival all None):
    unknown is not "sold out", so popularity still answers with them."""
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "top_category": ["Drama", "Comedy", "unknown"],
                          "stock": [None, 0, None], "arrival_date": [None, None, None],
                          "discounted_price": [None, None, None]}).set_index("item_id")
    catalog = Catalog(items, ["2", "1", "3"])
    assert catalog.stock("1") is None and catalog.stock("2") == 0
    rec = Recommender(catalog, load_filter_config(categories=set(items["top_category"])))
    (response,) = rec.recommend([RecommendationRequest(request_id="r", user_id="5", k=3)], [None], None)
    assert [i.item_id for i in response.items] == ["1", "3"] and response.filtered["availability"] == 1
    catalog.update("1", stock=0)
    assert catalog.stock("1") == 0


def test_item_ids_no_answer_could_carry_never_enter_the_catalog(caplog: pytest.LogCaptureFixture) -> None:
    """An id a response cannot hold (empty, over 128 characters, a control character) would fail every
    answer it appeared in: the catalog leaves it out, with a warning, and serves the rest."""
    bad = ["", "x" * 129, "a\nb"]
    items = pd.DataFrame({"item_id": ["ok", *bad, "ok"], "top_category": ["A"] * 5, "stock": [1] * 5,
                          "arrival_date": [None] * 5, "discounted_price": [1.0] * 5}).set_index("item_id")
    with caplog.at_level("WARNING", logger="streamrec.recommender"):
        catalog = Catalog(items, [*bad, "ok"])
    assert len(catalog) == 1 and list(catalog.ids) == ["ok"] and catalog.popularity == ["ok"]
    assert "3 item ids are not valid ids" in caplog.text
    (response,) = Recommender(catalog, FilterConfig()).recommend(
        [RecommendationRequest(request_id="r", user_id="u", k=5)], [None], None)
    assert [i.item_id for i in response.items] == ["ok"] and response.error is None


def _start_both(env_stack: Settings, worker_factory: Callable[..., Worker], checkpoint: Path) -> Worker:
    shutil.copytree(checkpoint, env_stack.checkpoint_dir)
    worker_factory(env_stack)
    return worker_factory(env_stack, app="recommender")


def test_over_kafka_answers_and_malformed_requests_get_errors(env_stack: Settings, trained_checkpoint: Path,
                                                              worker_factory: Callable[..., Worker]) -> None:
    recommender = _start_both(env_stack, worker_factory, trained_checkpoint)
    client = RequestClient(env_stack)
    try:
        response, _ = client.ask(RecommendationRequest(request_id="ok-1", user_id="U000003", k=7))
        assert len(response.items) == 7 and response.model_version == "v1" and response.error is None
        assert response.latency_ms is not None and response.latency_ms >= 0
        bad_k = json.dumps({"request_id": "bad-k", "user_id": "U1", "k": 0}).encode()
        bad = [(b"U1", b"{not json", None), (b"U1", bad_k, "bad-k"),
               (b"U1", json.dumps({"request_id": "bad-type", "user_id": 7}).encode(), "bad-type"),
               (None, b"\xff\xfe", None)]
        for key, value, _ in bad:
            client.send_raw(key, value)
        client.send(RecommendationRequest(request_id="ok-2", user_id="U000004"))
        client.producer.flush()
        got: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while len(got) < len(bad) + 1 and time.monotonic() < deadline:
            for r, _ in client.poll():
                got[r.request_id or f"anon-{len(got)}"] = r
    finally:
        client.close()
    assert got["bad-k"].error.code == "bad_request" and "k" in got["bad-k"].error.message
    assert got["bad-type"].error is not None
    assert sum(1 for k in got if k.startswith("anon-")) == 2  # unreadable ids still get an answer
    assert got["ok-2"].error is None and len(got["ok-2"].items) == 10
    # errors are counted once the broker acknowledges the answers, which the client may read a moment before
    wait_until(lambda: recommender.status()["errors"] == 4, 10, "the 4 error answers to be counted")
    status = recommender.status()
    assert status["errors"] == 4
    # Faust's spinner had left the root logger at DEBUG: every aiokafka debug call built a record
    assert status["log_level"] == "WARNING", status["log_level"]
    # a second BLAS/OpenMP thread only spins on a batch at a time, taking CPU from the broker
    assert set(status["compute_threads"].values()) == {1}, status["compute_threads"]
    # what the start built is out of the cyclic collector's reach: a full collection of it stopped the loop
    # for ~171 ms (Feast, torch, the model and the catalogue are far over 100k objects)
    assert status["gc_frozen"] > 100_000, status["gc_frozen"]


def test_a_stopped_request_group_closes_the_redis_connections_its_reads_opened(env_stack: Settings,
                                                                              trained_checkpoint: Path) -> None:
    """The request group reads features through Feast's asyncio Redis client; when the group stops (the
    app's shutdown cancels it) those connections are closed on its loop, not left open until the process
    exits or the collector finds them."""
    import asyncio
    import contextlib

    import redis

    from serving.requests import RequestGroup
    from serving.updates import Serving

    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    server = redis.Redis.from_url(env_stack.redis)

    def ask() -> RecommendationResponse:
        client = RequestClient(env_stack)
        try:
            return client.ask(RecommendationRequest(request_id="one", user_id="U000003", k=5))[0]
        finally:
            client.close()

    async def main() -> tuple[RecommendationResponse, int, int]:
        serving, followers = Serving(env_stack), []
        await serving.start(lambda c: followers.append(asyncio.ensure_future(c)))
        group = asyncio.ensure_future(RequestGroup(serving).run())
        try:
            response = await asyncio.get_running_loop().run_in_executor(None, ask)
            serving_clients = len(server.client_list())
            group.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await group
            deadline = time.monotonic() + 5  # the server drops a closed connection from its list a moment later
            while len(server.client_list()) >= serving_clients and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return response, serving_clients, len(server.client_list())
        finally:
            for f in [group, *followers]:
                f.cancel()
            await asyncio.gather(group, *followers, return_exceptions=True)
            if serving.features is not None:
                serving.features.close()

    try:
        response, serving_clients, stopped = asyncio.run(main())
    finally:
        server.close()
    assert response.error is None and len(response.items) == 5  # the group read features: the client was used
    assert stopped < serving_clients, (serving_clients, stopped)


def test_a_burst_of_views_moves_a_new_category_into_the_top_10(env_stack: Settings, trained_checkpoint: Path,
                                                               worker_factory: Callable[..., Worker]) -> None:
    """No retraining: the fresh history alone moves the user's embedding."""
    from kafka import KafkaProducer

    features = worker_factory(env_stack)
    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    worker_factory(env_stack, app="recommender")
    items = pd.read_parquet(env_stack.data_dir / "recommendation_items.parquet").set_index("item_id")
    user = "U000010"
    client = RequestClient(env_stack)
    try:
        def top10() -> list[str]:
            response, _ = client.ask(_request(
                {"request_id": f"q-{time.monotonic_ns()}", "user_id": user, "context": {"timestamp": NOON}}))
            return list(items.loc[[i.item_id for i in response.items], "top_category"])

        before = top10()
        available = items[(items["stock"] > 0) & (items["arrival_date"] < pd.Timestamp(NOON))]
        category = next(c for c in available["top_category"].value_counts().index if c not in before)
        # a burst of 20 views in a category the user was not being shown (older events stay in the history)
        burst = available[available["top_category"] == category].head(20).index
        producer = KafkaProducer(acks="all", **kafka_clients.python_config(env_stack))
        base = features.figures()["events"]
        for n, item_id in enumerate(burst):
            event = {"event_id": f"burst-{n}", "user_id": user, "item_id": item_id,
                     "interaction_type": "positive_view", "timestamp": pd.Timestamp.now(tz="UTC").isoformat()}
            producer.send("interactions", key=user.encode(), value=json.dumps(event).encode())
        producer.flush()
        sent = time.perf_counter()
        producer.close()
        wait_until(lambda: features.figures()["events"] >= base + len(burst), 30, "the burst to be pushed")
        after = top10()  # the very next request, once the history is in the online store
        elapsed = time.perf_counter() - sent
    finally:
        client.close()
    print(f"burst → visible in top-10 after {elapsed * 1000:.0f} ms (push + one request)")
    assert category not in before
    assert after.count(category) >= 1, (category, before, after)


def test_hot_swap_under_load_has_no_errors_and_refuses_a_corrupt_checkpoint(
        env_stack: Settings, trained_checkpoint: Path, worker_factory: Callable[..., Worker]) -> None:
    from models.checkpoints import promote

    recommender = _start_both(env_stack, worker_factory, trained_checkpoint)
    users = list(pd.read_parquet(env_stack.data_dir / "recommendation_users.parquet")["user_id"])
    v2 = env_stack.checkpoint_dir / "v2"
    shutil.copytree(env_stack.checkpoint_dir / "v1", v2)
    meta = json.loads((v2 / "meta.json").read_text())
    meta["version"] = "v2"
    (v2 / "meta.json").write_text(json.dumps(meta))
    result: dict[str, object] = {}
    v1_since = recommender.status()["model_since"]
    load = threading.Thread(target=lambda: result.update(r=run_load(env_stack, users, 400, 80.0)))
    load.start()
    time.sleep(1.5)
    promoted_at = time.time()
    promote(env_stack.checkpoint_dir, "v2")  # the recommender watches LATEST
    load.join(60)
    summary = result["r"].summary()
    assert summary["answered"] == summary["sent"] == 400 and summary["errors"] == 0
    status = recommender.status()
    assert status["model_version"] == "v2" and status["swaps"] == 2
    assert v1_since < promoted_at <= status["model_since"] <= status["time"]  # since when v2 serves

    v3 = env_stack.checkpoint_dir / "v3"
    shutil.copytree(v2, v3)
    weights = v3 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated: corrupt
    promote(env_stack.checkpoint_dir, "v3")
    wait_until(lambda: recommender.status()["refused_by_reason"].get("unloadable", 0) >= 1, 30,
               "the corrupt checkpoint to be refused")
    client = RequestClient(env_stack)
    try:
        response, _ = client.ask(RecommendationRequest(request_id="after-v3", user_id=users[0]))
    finally:
        client.close()
    assert response.model_version == "v2" and response.error is None and len(response.items) == 10
    assert np.isfinite([i.score for i in response.items]).all()
    assert encode(response)


def test_request_load_warms_up_sends_at_the_rate_asked_and_reports_its_own_cpu(
        env_stack: Settings, trained_checkpoint: Path, worker_factory: Callable[..., Worker]) -> None:
    import subprocess
    import sys

    from streamrec.shell.workers import settings_env

    _start_both(env_stack, worker_factory, trained_checkpoint)

    def load(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamrec", "request", *args], env=settings_env(env_stack),
                              cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=180)

    done = load("--load", "150", "--rate", "100", "--warmup-max-s", "2", "--json")
    assert done.returncode == 0, done.stderr[-500:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["sent"], summary["answered"], summary["errors"], summary["expired"]) == (150, 150, 0, 0)
    assert 80 < summary["requests_per_s"] < 120  # the rate it actually sent, not the one asked
    assert 0 < summary["cpu_cores"]["load_generator"] < 1
    assert len(summary["warmup_p99_ms"]) == 1  # one 3-second window fills the 2 s allowed; not counted above
    shown = load("--load", "20", "--rate", "50", "--warmup-max-s", "0")
    assert shown.returncode == 0, shown.stderr[-500:]
    assert "answered 20, missing 0" in shown.stdout and "load generator CPU" in shown.stdout
