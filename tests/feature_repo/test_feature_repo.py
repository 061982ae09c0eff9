"""The feature repository on the real embedded Redis and real Feast: apply, materialize, read, push."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from generation.dataset_gen_amazon import GeneratorConfig, generate, write
from streamrec import load_settings
from streamrec.config import Settings
from streamrec.features import (
    HISTORY_FEATURES,
    PROFILE_FEATURES,
    REPO_PATH,
    SERVING_FEATURES,
    FeatureClient,
    history_frame,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write(generate(GeneratorConfig(n_users=200, n_items=400, n_interactions=3000, seed=7)), out)
    return out


@pytest.fixture(scope="module")
def client(stack: Settings, data_dir: Path) -> Iterator[FeatureClient]:
    settings = load_settings(data_dir=data_dir, kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
                             redis_url=stack.redis_url, embedded_redis_port=stack.embedded_redis_port)
    c = FeatureClient(settings, project=f"t{uuid.uuid4().hex[:8]}")
    assert c.apply() == ["user_profile", "item_features", "user_recent_history"]
    c.materialize()
    yield c
    c.close()


def test_profiles_read_back_as_generated(client: FeatureClient, data_dir: Path) -> None:
    users = pd.read_parquet(data_dir / "recommendation_users.parquet").set_index("user_id")
    for user_id in ("U000001", "U000077", "U000200"):
        got = client.user_features(user_id)
        want = users.loc[user_id]
        assert (got["age"], got["gender"], got["region"]) == (want["age"], want["gender"], want["region"])
        assert got["preferred_categories"] == list(want["preferred_categories"])
        assert pd.Timestamp(got["signup_date"]) == want["signup_date"]
        assert got["recent_item_ids"] is None  # nothing pushed yet


def test_many_items_in_one_read(client: FeatureClient, data_dir: Path) -> None:
    items = pd.read_parquet(data_dir / "recommendation_items.parquet").set_index("item_id")
    ids = list(items.index[:50]) + ["I999999"]
    got = client.item_features(ids)
    assert list(got.index) == ids
    pd.testing.assert_series_equal(got.loc[ids[:50], "stock"].astype("int64"), items.loc[ids[:50], "stock"],
                                   check_names=False)
    assert (got.loc[ids[:50], "top_category"] == items.loc[ids[:50], "top_category"]).all()
    # items that arrive after now are in the store too: the availability filter needs them
    future = items.index[items["arrival_date"] > pd.Timestamp.now(tz="UTC")][:5]
    assert client.item_features(list(future))["category"].notna().all()
    assert got.loc["I999999"].isna().all()


def _row(user_id: str, items: list[str], types: list[str], when: pd.Timestamp, pushed_ms: int) -> dict:
    counts = {f"count_{t}": types.count(t) for t in
              ("positive_view", "negative_view", "cart", "purchase", "rate")}
    return dict(user_id=user_id, recent_item_ids=items, recent_interaction_types=types, **counts,
                last_event_at=when, pushed_at_ms=pushed_ms, event_timestamp=when)


def test_the_recommenders_catalog_comes_from_the_registry_and_the_online_store(client: FeatureClient,
                                                                                data_dir: Path) -> None:
    """The recommender's catalogue is the `item_features` source the registry names, with the online
    store's values, ranked by rating_count until a model brings its own popularity; it never reads the
    generator's interactions file."""
    from serving.recommend import load_catalog

    items = pd.read_parquet(data_dir / "recommendation_items.parquet").set_index("item_id")
    assert client.item_ids() == list(items.index)
    catalog = load_catalog(client)
    assert set(catalog.ids) == set(items.index)
    counts = items["rating_count"].loc[catalog.popularity].to_numpy()
    assert len(catalog.popularity) == len(items) and (counts[:-1] >= counts[1:]).all()
    first = catalog.popularity[0]
    assert catalog.stock(first) == items.loc[first, "stock"]


def test_pushed_history_reads_back_and_newest_push_wins(client: FeatureClient) -> None:
    t0 = pd.Timestamp("2026-11-01T10:00:00Z")
    client.push_history(history_frame([
        _row("U000001", ["I000002", "I000001"], ["cart", "positive_view"], t0, 1_000),
        _row("U000002", ["I000009"], ["purchase"], t0, 1_001),
    ]))
    got = client.users_features(["U000001", "U000002", "U000003"])
    assert got[0]["recent_item_ids"] == ["I000002", "I000001"]
    assert got[0]["recent_interaction_types"] == ["cart", "positive_view"]
    assert (got[0]["count_cart"], got[0]["count_positive_view"], got[0]["count_purchase"]) == (1, 1, 0)
    assert got[0]["pushed_at_ms"] == 1_000 and got[1]["count_purchase"] == 1
    assert got[0]["age"] is not None  # profile and history come back in the same read
    assert got[2]["recent_item_ids"] is None
    served = client.users_features(["U000001", "U000003"], only=SERVING_FEATURES)  # what the recommender reads
    assert [set(r) for r in served] == [{"user_id", *SERVING_FEATURES}] * 2
    assert served[0] == {k: v for k, v in got[0].items() if k in served[0]}

    client.push_history(history_frame([
        _row("U000001", ["I000003", "I000002", "I000001"], ["purchase", "cart", "positive_view"],
             t0 + pd.Timedelta(seconds=5), 2_000)]))
    again = client.user_features("U000001")
    assert again["recent_item_ids"][0] == "I000003" and again["count_purchase"] == 1
    assert pd.Timestamp(again["last_event_at"]) == t0 + pd.Timedelta(seconds=5)


def test_the_worker_state_round_trips_through_the_online_row(client: FeatureClient) -> None:
    """The stream worker's durable state is the row: what it reads back equals what it wrote."""
    from stream_processors.history import apply_event, feature_row, stamped, state_from_row
    from streamrec.schemas import Interaction

    state = None
    for i, kind in enumerate(["purchase", "cart", "positive_view"]):
        event = Interaction(event_id=f"e{i}", user_id="U000004", item_id=f"I00000{i}", interaction_type=kind,
                            timestamp=pd.Timestamp("2026-11-01T10:00:00.250Z") + pd.Timedelta(seconds=i))
        state, _ = apply_event(state, event, offset=40 + i, partition=3)
    state = stamped(state, now_ms=1_790_000_000_000)
    nothing_bought = {**state, "purchased": []}  # an empty list column survives too
    client.push_history(history_frame([feature_row("U000004", state), feature_row("U000005", nothing_bought)]))
    rows = client.history_rows(["U000004", "U000005", "U000006"])
    assert state_from_row(rows[0]) == state and state_from_row(rows[1]) == nothing_bought
    assert state_from_row(rows[2]) is None  # no row yet
    assert client.user_features("U000004")["purchased_item_ids"] == ["I000000"]

    # The worker's batch write (the online store's own, no push) stores exactly what the push stored:
    # Feast's reads, the recommender's included, see the same row.
    client.write_history([{**feature_row("U000006", state)}])
    refs = [f"user_recent_history:{f}" for f in HISTORY_FEATURES] + [f"user_profile:{f}" for f in PROFILE_FEATURES]
    users = ["U000004", "U000006", "U000199", "nobody"]
    by_feast = client.store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_dict()
    pushed, written = ({k: by_feast[k][i] for k in HISTORY_FEATURES} for i in (0, 1))
    assert written == pushed
    # our batch read returns what Feast's own read returns, absent users and values included
    ours = client.users_features(users)
    assert ours == [{k: by_feast[k][i] for k in ("user_id", *PROFILE_FEATURES, *HISTORY_FEATURES)}
                    for i in range(len(users))]
    # and so does the recommender's read: both views in one HMGET per user (a user twice, as a batch may ask)
    async def read() -> list[dict]:
        try:
            return await client.users_features_async([*users, users[0]], only=SERVING_FEATURES)
        finally:
            await client.aclose()

    served = asyncio.run(read())
    assert served == [{k: row[k] for k in ("user_id", *SERVING_FEATURES)} for row in [*ours, ours[0]]]
    assert served[0]["purchased_item_ids"] == ["I000000"] and served[0]["age"] is not None
    assert state_from_row(client.history_rows(["U000006"])[0]) == state
    later = stamped(state, now_ms=1_790_000_000_001)
    client.write_history([feature_row("U000006", {**later, "items": ["I000009"]})])  # a newer write wins
    assert client.user_features("U000006")["recent_item_ids"] == ["I000009"]


def test_the_worker_refuses_a_registry_applied_by_an_older_version(stack: Settings, data_dir: Path) -> None:
    """The worker's state lives in the history row: a view without the state fields (an older
    `feast apply`) must stop it with one clear line, not dead-letter every event as unreadable."""
    from feast import FeatureView

    from streamrec.features import FeatureStoreError

    settings = load_settings(data_dir=data_dir, redis_url=stack.redis_url,
                             embedded_redis_port=stack.embedded_redis_port)
    c = FeatureClient(settings, project=f"t{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(FeatureStoreError, match="no user_recent_history view.*streamrec apply"):
            c.check_history_view()
        c.apply()
        c.check_history_view()  # this version's view
        import definitions  # feature_repo/, on the path once applied

        old = next(o for o in definitions.build(data_dir) if o.name == "user_recent_history")
        kept = [f for f in old.schema if not f.name.startswith(("source_", "recent_event"))]
        older = FeatureView(name=old.name, entities=[definitions.user], ttl=old.ttl, source=old.stream_source,
                            online=True, schema=kept)
        c.store.apply([older])
        with pytest.raises(FeatureStoreError, match="lacks recent_event_times_ms.*streamrec apply"):
            c.check_history_view()
    finally:
        c.close()


def test_apply_without_data_is_a_clear_error(stack: Settings, tmp_path: Path) -> None:
    from streamrec.features import FeatureStoreError

    c = FeatureClient(load_settings(data_dir=tmp_path, redis_url=stack.redis_url,
                                    embedded_redis_port=stack.embedded_redis_port), project="empty")
    with pytest.raises(FeatureStoreError, match="streamrec generate"):
        c.apply()


def _env(stack: Settings, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_DATA_DIR"}
    env["STREAMREC_DATA_DIR"] = str(data_dir)
    env["STREAMREC_REDIS_PORT"] = str(stack.embedded_redis_port)
    return env


def test_streamrec_apply_then_feast_by_hand(stack: Settings, data_dir: Path, tmp_path: Path) -> None:
    own = tmp_path / "data"
    own.mkdir()
    for f in data_dir.glob("recommendation_*.parquet"):
        (own / f.name).write_bytes(f.read_bytes())
    env = _env(stack, own)
    applied = subprocess.run([sys.executable, "-m", "streamrec", "apply"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    assert applied.returncode == 0, applied.stderr
    assert "materialized user_profile and item_features" in applied.stdout

    exports = subprocess.run([sys.executable, "-m", "streamrec", "apply", "--print-env"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert exports.returncode == 0, exports.stderr
    feast = Path(sys.executable).parent / "feast"
    script = f"{exports.stdout}\n{feast} apply && {feast} feature-views list"
    by_hand = subprocess.run(["bash", "-c", script], env=env, cwd=REPO_PATH, capture_output=True, text=True,
                             timeout=180)
    assert by_hand.returncode == 0, by_hand.stderr
    for view in ("user_profile", "item_features", "user_recent_history"):
        assert view in by_hand.stdout
    assert (own / "registry.db").exists() and not (REPO_PATH / "${STREAMREC_DATA_DIR}").exists()


def test_a_redis_that_hangs_up_fails_the_call_at_once_for_the_caller_to_retry(
        client: FeatureClient, data_dir: Path) -> None:
    """redis-py 7 retries a failed command 3 times with up to 14 s of jittered backoff inside the call,
    unseen by the worker's and recommender's own retry loops (a worker's push hung through a 10 s Redis
    outage with no retry counted). The online store's client connects once and fails: counted here by a
    listener that takes each connection and closes it, as a Redis on its way down does."""
    import socket
    import threading

    from streamrec._exceptions import is_infrastructure

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    port = listener.getsockname()[1]
    down = FeatureClient(load_settings(data_dir=data_dir, redis_url=f"redis://127.0.0.1:{port}/0"),
                         project=client.store.config.project)
    try:
        with pytest.raises(Exception) as raised:
            down.history_rows(["U000001"])
        assert is_infrastructure(raised.value), repr(raised.value)
        assert len(accepted) == 1, f"{len(accepted)} connections for one call"

    finally:
        listener.close()
        down.close()


@pytest.mark.parametrize(("kind", "value"), [
    ("STRING_LIST", ["I000001", "I000002"]), ("STRING_LIST", []), ("STRING_LIST", None),
    ("INT64_LIST", [1, 2, -3]), ("INT64_LIST", []), ("DOUBLE_LIST", [1.5, -0.0]),
    ("STRING", "x"), ("STRING", ""), ("STRING", None), ("INT64", 0), ("INT64", -5), ("INT64", 2**62),
    ("DOUBLE", 0.0), ("DOUBLE", 2.5), ("UNIX_TIMESTAMP", "2024-01-02T03:04:05+00:00"), ("UNIX_TIMESTAMP", None),
])
def test_the_workers_value_protos_are_byte_for_byte_what_feast_converts(kind: str, value: object) -> None:
    """The worker builds value protos itself (fast, in place); they must be what Feast's own conversion
    (a push) writes, empty lists and zeros included: an empty list is a value, a None a missing one."""
    from datetime import datetime

    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    from streamrec.features import _encoder

    value_type = ValueType[kind]
    if kind == "UNIX_TIMESTAMP" and value is not None:
        value = datetime.fromisoformat(str(value))
    feasts = python_values_to_proto_values([value], value_type)[0]
    ours = _encoder(value_type)(value)
    assert ours.SerializeToString() == feasts.SerializeToString()
    assert ours.WhichOneof("val") == feasts.WhichOneof("val")
