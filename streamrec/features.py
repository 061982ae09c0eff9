"""Feature access shared by the stream processors and the recommender: one Feast store, configured in
code from streamrec's settings.

- ``FeatureClient.apply()`` registers the repository and ``materialize()`` loads the static views;
- ``user_features(user_id)`` reads a profile and recent history in one call;
- ``item_features(item_ids)`` reads many items at once; ``item_ids()`` lists the view's source;
- ``push_history(rows)`` writes a micro-batch to the push source in one call;
- the stream worker's hot path, ``history_rows(user_ids)`` and ``write_history(rows)``, goes one level
  down, to the online store's own batch read and write (``Provider.online_read`` /
  ``online_write_batch``): the same feature view, entity keys and values as a push, without converting
  every row through pandas and arrow (a push cost ~275 µs a row, a Feast read ~240).

The registry is read once and cached for the client's life (``cache_ttl_seconds=0``): a Feast push
that refreshes the registry on every call takes seconds (feast#2051). Long-running processes that
must see a changed registry call ``refresh_registry()``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Collection
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

os.environ.setdefault("FEAST_USAGE", "False")  # never phone home

from . import feature_rows
from ._exceptions import StreamrecError, causes
from .config import Settings

__all__ = ["require_redis", "FeatureClient", "FeatureStoreError", "PROFILE_FEATURES", "HISTORY_FEATURES",
           "STATE_FIELDS", "SERVING_FEATURES", "ITEM_FEATURES", "REPO_PATH", "history_frame"]

REPO_PATH = Path(__file__).resolve().parents[1] / "feature_repo"
PROFILE_FEATURES = feature_rows.names(feature_rows.USER_PROFILE)
HISTORY_FEATURES = feature_rows.names(feature_rows.HISTORY_FEATURES)
# What the recommender reads per request: the user tower's inputs, the filters' and the feature age.
SERVING_FEATURES = ("age", "gender", "region", "preferred_categories", "recent_item_ids", "recent_interaction_types",
                    "purchased_item_ids", "pushed_at_ms")
# The rest of the stream worker's per-user state, kept in the same row (read by the worker only).
STATE_FIELDS = feature_rows.names(feature_rows.HISTORY_STATE)
HISTORY_FIELDS = feature_rows.names(feature_rows.USER_RECENT_HISTORY)
ITEM_FEATURES = feature_rows.names(feature_rows.ITEM_FEATURES)
STATIC_VIEWS = ("user_profile", "item_features")


class FeatureStoreError(StreamrecError):
    """Feast or its online store failed; the message says which step."""


def _definitions() -> Any:
    """feature_repo/definitions.py, imported from the repository folder (it is not a package)."""
    if str(REPO_PATH) not in sys.path:
        sys.path.insert(0, str(REPO_PATH))
    import definitions  # noqa: PLC0415 - lives in feature_repo/

    return definitions


class FeatureClient:
    """A Feast store for ``settings``; ``project`` separates tests sharing one Redis; ``client_name`` names
    its Redis connections."""

    def __init__(self, settings: Settings, project: str = "streamrec", client_name: str | None = None) -> None:
        from feast import FeatureStore, RepoConfig

        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        def config(**online: Any) -> Any:
            return RepoConfig(
                project=project,
                provider="local",
                registry={"path": str(self.data_dir / "registry.db"), "cache_ttl_seconds": 0},
                online_store={"type": "redis", "connection_string": settings.feast_redis_connection_string(client_name),
                              "redis_type": "redis_cluster" if settings.redis_is_cluster else "redis", **online},
                offline_store={"type": "file"},
                entity_key_serialization_version=3,
                repo_path=str(REPO_PATH),
            )

        self.store = FeatureStore(config=config(), repo_path=str(REPO_PATH))
        # The worker's history rows skip the store's dedup read (Feast's `skip_dedup`: one HMGET of every
        # row's timestamp before the write, a round trip and a fifth of a batch's write). Each user's row
        # has one writer, the owner of their partition, writing one batch at a time with a strictly later
        # stamp (history.stamped): the check never skipped one of its rows.
        self._history_write_config = config(skip_dedup=True)
        self._provider_cache: Any = None
        self._views: dict[str, Any] = {}
        self._view_encoders: dict[str, dict[str, Any]] = {}
        self._hash_field_cache: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        self._redis_key_cache: dict[str, bytes] = {}

    # ---- set-up -------------------------------------------------------------------------------
    def apply(self) -> list[str]:
        """Register entities, sources and views (what `feast apply` does). Returns the view names."""
        defs = _definitions()
        missing = [n for n in ("recommendation_users.parquet", "recommendation_items.parquet")
                   if not (self.data_dir / n).exists()]
        if missing:
            raise FeatureStoreError(f"{self.data_dir} lacks {', '.join(missing)}: run `streamrec generate` first")
        self._ensure_history_log(defs)
        objects = defs.build(self.data_dir)
        try:
            self.store.apply(objects)
        except Exception as exc:
            raise _store_error("feast apply", exc) from exc
        self.store.refresh_registry()
        return [o.name for o in objects if type(o).__name__ == "FeatureView"]

    def materialize(self, end: datetime | None = None) -> None:
        """Load the static views (profiles, items) from parquet into the online store."""
        # Items carry `updated_at` at the generator's window end, which may lie after now.
        end = end or max(datetime.now(UTC), self._latest_static_timestamp())
        try:
            self.store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end,
                                   feature_views=list(STATIC_VIEWS))
        except Exception as exc:
            raise _store_error("feast materialize", exc) from exc

    def refresh_registry(self) -> None:
        self.store.refresh_registry()
        self._views.clear()
        self._view_encoders.clear()

    def _latest_static_timestamp(self) -> datetime:
        items = pd.read_parquet(self.data_dir / "recommendation_items.parquet", columns=["updated_at"])
        return items["updated_at"].max().to_pydatetime() + pd.Timedelta(seconds=1)

    def _ensure_history_log(self, defs: Any) -> None:
        """The push source's batch source must exist with the right columns for Feast to read it."""
        import pyarrow.parquet as pq

        path = self.data_dir / defs.HISTORY_FILE
        schema = feature_rows.arrow_schema(feature_rows.USER_RECENT_HISTORY, key="user_id")
        if path.exists():
            existing = pq.read_schema(path)
            if all(name in existing.names for name in schema.names):
                return
            if pq.read_metadata(path).num_rows:
                missing = [n for n in schema.names if n not in existing.names]
                raise FeatureStoreError(f"{path} lacks the columns {missing} of this version's user_recent_history: "
                                        "add them or move the file away")
        # absent, or the empty schema file of an older version
        pq.write_table(schema.empty_table(), path)

    # ---- reads --------------------------------------------------------------------------------
    def user_features(self, user_id: str) -> dict[str, Any]:
        """Profile and recent history of one user in one online read; absent values are None."""
        return self.users_features([user_id])[0]

    def users_features(self, user_ids: list[str], only: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Profiles and recent histories of many users: one batch read of the online store per view.
        ``only``: read just these features (e.g. SERVING_FEATURES); each value read costs a proto parse."""
        profile, history = _user_views(only)
        return _merged(user_ids, self._read(*profile, user_ids), self._read(*history, user_ids))

    async def users_features_async(self, user_ids: list[str], only: Collection[str] | None = None
                                   ) -> list[dict[str, Any]]:
        """:meth:`users_features` on the event loop (redis.asyncio), in one round trip of one HMGET per user.

        Both views are keyed by the same entity (user_id), and Feast's Redis store keeps every view of an
        entity in one hash, so one HMGET of the two views' fields reads both; Feast's own
        ``online_read_async`` is one pipeline per view, with a second HMGET per user (at 500 requests/s the
        read was ~15% of the recommender's loop). The keys, field names and decoding are the online store's
        own, and each value is Feast's Value proto (its Redis layout is not restated here; the write time of
        each view is not read: nothing here uses it); tests/feature_repo/test_feature_repo.py holds the result
        to Feast's ``get_online_features``. For the recommender, whose loop would otherwise hand each batch's
        read to a thread and wait for the GIL to come back (the read's p99 was 3x its p50 under load)."""
        views = [(self._view(name), fields) for name, _, fields in _user_views(only)]
        store = self._provider().online_store
        config = self.store.config
        hset_keys = [key for view, fields in views for key in self._hash_fields(store, view, fields)]
        try:
            client = await store._get_client_async(config.online_store)
            async with client.pipeline(transaction=False) as pipe:
                for key in self._redis_keys(store, user_ids):
                    pipe.hmget(key, hset_keys)
                values = await pipe.execute()
        except Exception as exc:
            raise _store_error("online read of user_profile and user_recent_history", exc) from exc
        from feast.protos.feast.types.Value_pb2 import Value

        parse = Value.FromString  # each value the store wrote is one Value proto
        parts, start = [], 0
        for _, fields in views:
            end = start + len(fields)
            found = [(None, {name: parse(raw) for name, raw in zip(fields, v[start:end], strict=True) if raw})
                     for v in values]
            parts.append(_rows(found, fields))
            start = end
        return _merged(user_ids, *parts)

    def _hash_fields(self, store: Any, view: Any, fields: tuple[str, ...]) -> list[Any]:
        """The hash fields of ``fields`` of ``view``, in order, as the online store names them. Not the view's
        write time (the store's "_ts:<view>" field, which it appends last): nothing here reads it, so it is
        neither fetched nor parsed (Feast's own conversion parses it per user and view)."""
        cached = self._hash_field_cache.get((view.name, fields))
        if cached is None:
            from feast.infra.online_stores.redis import _versioned_fv_name

            fv_name = _versioned_fv_name(view, self.store.config)
            _, keys = store._generate_hset_keys_for_features(view, list(fields), fv_name_override=fv_name)
            cached = self._hash_field_cache[(view.name, fields)] = keys[:len(fields)]
        return cached

    def _redis_keys(self, store: Any, user_ids: list[str]) -> list[bytes]:
        """Each user's hash key, as the online store names it (cached: the same users come again and again)."""
        cache, missing = self._redis_key_cache, [u for u in user_ids if u not in self._redis_key_cache]
        if missing:
            if len(cache) > 100_000:
                cache.clear()
            cache.update(zip(missing, store._generate_redis_keys_for_entities(
                self.store.config, [_entity_key("user_id", u) for u in missing]), strict=True))
        return [cache[u] for u in user_ids]

    def check_history_view(self) -> None:
        """Raise a clear error unless the registry's `user_recent_history` has every field this version
        writes (a registry applied by an older version lacks the worker's state fields)."""
        try:
            view = self.store.get_feature_view("user_recent_history")
        except Exception as exc:
            raise FeatureStoreError(f"the feature registry in {self.data_dir} has no user_recent_history view "
                                    "(run `streamrec apply`)") from exc
        missing = [f for f in (*HISTORY_FEATURES, *STATE_FIELDS) if f not in {x.name for x in view.features}]
        if missing:
            raise FeatureStoreError(f"user_recent_history in {self.data_dir} lacks {', '.join(missing)}: it was "
                                    "applied by an older streamrec (run `streamrec apply` again)")

    def history_rows(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """Whole `user_recent_history` rows (features and the worker's state fields) in one online read;
        a user without a row gets a row of None."""
        return self._read("user_recent_history", "user_id", HISTORY_FIELDS, user_ids)

    def _read(self, view_name: str, join_key: str, fields: tuple[str, ...], ids: list[str]) -> list[dict[str, Any]]:
        """``fields`` of ``view_name`` for each id through the online store's batch read (the view's TTL is
        0, so nothing expires); values as ``get_online_features`` gives them, None where absent."""
        view = self._view(view_name)
        keys = [_entity_key(join_key, i) for i in ids]
        try:
            found = self._provider().online_read(self.store.config, view, keys, list(fields))
        except Exception as exc:
            raise _store_error(f"online read of {view_name}", exc) from exc
        return _rows(found, fields)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Write `user_recent_history` rows (as ``history.feature_row`` makes them: user_id, every field,
        event_timestamp) in one batch write of the online store."""
        if not rows:
            return
        view = self._view("user_recent_history")
        try:
            self._provider().online_write_batch(self._history_write_config, view, self._history_data(view, rows), None)
        except Exception as exc:
            raise _store_error("write to user_recent_history", exc) from exc

    def _history_data(self, view: Any, rows: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any], Any, None]]:
        """The online store's batch-write form of history rows: entity key, value protos, event time."""
        encode = self._encoders(view)
        return [(_entity_key("user_id", row["user_id"]),
                 {name: to_proto(row[name]) for name, to_proto in encode.items()},
                 row["event_timestamp"], None) for row in rows]

    def _provider(self) -> Any:
        if self._provider_cache is None:
            from feast.infra.provider import get_provider

            self._provider_cache = get_provider(self.store.config)
        return self._provider_cache

    def _view(self, name: str) -> Any:
        if name not in self._views:
            try:
                self._views[name] = self.store.get_feature_view(name, allow_registry_cache=True)
            except Exception as exc:
                raise FeatureStoreError(f"no {name} view in the registry (run `streamrec apply`): {exc}") from exc
        return self._views[name]

    def _encoders(self, view: Any) -> dict[str, Any]:
        """Per field of ``view``, the function from a Python value to its Feast value proto."""
        if view.name not in self._view_encoders:
            self._view_encoders[view.name] = {f.name: _encoder(f.dtype.to_value_type()) for f in view.features}
        return self._view_encoders[view.name]

    def item_ids(self) -> list[str]:
        """Every item id of the `item_features` view's source, as the registry names it (not a file this
        code assumes): the catalogue the online store was materialized from, whatever data it holds."""
        source = self._view("item_features").batch_source
        path = Path(getattr(source, "path", "") or "")
        if not str(path):
            raise FeatureStoreError(f"item_features reads from {type(source).__name__}, not a file: the "
                                    "recommender cannot list its items")
        path = path if path.is_absolute() else REPO_PATH / path
        try:
            column = pd.read_parquet(path, columns=["item_id"])["item_id"]
        except (OSError, ValueError, KeyError) as exc:
            raise FeatureStoreError(f"cannot list the items of item_features from {path}: {exc}") from exc
        return [str(i) for i in column.dropna().drop_duplicates()]

    def item_features(self, item_ids: list[str]) -> pd.DataFrame:
        """Item features for many items in one online read, indexed by item_id."""
        rows = self._read("item_features", "item_id", ITEM_FEATURES, item_ids)
        return pd.DataFrame([{"item_id": i, **row} for i, row in zip(item_ids, rows, strict=True)],
                            columns=["item_id", *ITEM_FEATURES]).set_index("item_id")

    # ---- writes -------------------------------------------------------------------------------
    def push_history(self, rows: pd.DataFrame) -> None:
        """Write a batch of history rows (one per user, see :func:`history_frame`) in one push."""
        if rows.empty:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.store.push("user_recent_history_push", rows, allow_registry_cache=True)
        except Exception as exc:
            raise _store_error("push to user_recent_history", exc) from exc

    def write_items(self, rows: pd.DataFrame) -> None:
        """Overwrite whole `item_features` rows (item_id, every feature, updated_at) in the online store."""
        try:
            self.store.write_to_online_store("item_features", rows, allow_registry_cache=True)
        except Exception as exc:
            raise _store_error("write to item_features", exc) from exc

    def close(self) -> None:
        """Close the Redis clients the store's provider and this client's own provider opened."""
        for provider in (getattr(self.store, "_provider", None), self._provider_cache):
            client = getattr(getattr(provider, "online_store", None), "_client", None)
            if client is not None:
                client.close()

    async def aclose(self) -> None:
        """Close the online store's asyncio Redis client (what :meth:`users_features_async` opened), on the
        loop that used it; a later async read opens a new one."""
        store = getattr(self._provider_cache, "online_store", None)
        client = getattr(store, "_client_async", None)
        if client is not None:
            store._client_async = None
            await client.aclose()


def require_redis(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise one clear line, within ``timeout_s``, when the online store's Redis cannot be used as
    REDIS_URL says: unreachable, a certificate this client does not trust, a refused password, or TLS on one
    side only. Names the setting to change, never the URL (it holds the password)."""
    import ssl

    import redis

    where = settings.redis_display()
    try:
        client = redis.Redis.from_url(settings.redis, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      retry=None)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if not _refused_credentials(exc):
            raise FeatureStoreError(f"Redis at {where} refused a PING: {exc}") from exc
        if urlsplit(settings.redis).password is None:
            raise FeatureStoreError(f"Redis at {where} wants a password: put it in REDIS_URL "
                                    "(`rediss://:password@host:port/0`)") from exc
        raise FeatureStoreError(f"Redis at {where} refused the password in REDIS_URL ({exc})") from exc
    except (redis.RedisError, OSError) as exc:
        found = [e for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, ssl.SSLError)]
        text = str(exc)
        if any(isinstance(e, ssl.SSLCertVerificationError) for e in found) or "CERTIFICATE_VERIFY_FAILED" in text:
            raise FeatureStoreError(f"Redis at {where} presented a TLS certificate this client does not trust: add "
                                    "`?ssl_ca_certs=/path/ca.pem` (the CA that signed it) to REDIS_URL") from exc
        if found or "SSL" in text:
            raise FeatureStoreError(f"TLS with Redis at {where} failed ({text}): check REDIS_URL's scheme "
                                    "(rediss:// for TLS)") from exc
        if "reset by peer" in text or "Connection closed" in text:
            raise FeatureStoreError(f"Redis at {where} closed the connection at its first command: if it takes TLS "
                                    "only, REDIS_URL must start with rediss://") from exc
        raise FeatureStoreError(f"cannot reach Redis at {where} ({text}): start it with `streamrec stack up` "
                                "or set REDIS_URL") from exc


def _refused_credentials(exc: BaseException) -> bool:
    """Redis refused the connection's user or password (or wants one), in ``exc`` or what it was raised from."""
    return any(type(e).__name__.startswith("Authentication") or "NOAUTH" in str(e) or "WRONGPASS" in str(e)
               for e in causes(exc))


def _store_error(step: str, exc: BaseException) -> FeatureStoreError:
    """``step failed: why``, naming the setting to check when Redis refused the credentials (never the URL,
    which holds the password)."""
    hint = " (check the user and password in REDIS_URL)" if _refused_credentials(exc) else ""
    return FeatureStoreError(f"{step} failed: {exc}{hint}")


def _user_views(only: Collection[str] | None) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(view, join key, fields) of the two user views, each field restricted to ``only`` when given."""
    def wanted(names: tuple[str, ...]) -> tuple[str, ...]:
        return names if only is None else tuple(n for n in names if n in only)

    return (("user_profile", "user_id", wanted(PROFILE_FEATURES)),
            ("user_recent_history", "user_id", wanted(HISTORY_FEATURES)))


def _merged(user_ids: list[str], profiles: list[dict[str, Any]], histories: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    return [{"user_id": u, **p, **h} for u, p, h in zip(user_ids, profiles, histories, strict=True)]


@lru_cache(maxsize=100_000)
def _entity_key(join_key: str, value: str) -> Any:
    """The entity key proto (cached: each request builds the same ~1 µs protos again; the online store
    only serializes them)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])


def _rows(found: list[tuple[Any, dict[str, Any] | None]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The online store's read result as rows of Python values, None where absent."""
    empty = dict.fromkeys(fields)
    rows = []
    for _, values in found:
        row = empty.copy()
        if values is not None:
            row.update((k, _python(v)) for k, v in values.items() if k in row)
        rows.append(row)
    return rows


def _python(value: Any) -> Any:
    """A Feast value proto as the Python value ``get_online_features`` gives (lists, ints, UTC datetimes)."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    got = getattr(value, kind)
    # materialize stores a null time (NaT: an imported item without a release date) as int64's minimum
    if kind == "unix_timestamp_val":
        return None if got == _NULL_TIMESTAMP else datetime.fromtimestamp(got, tz=UTC)
    if kind == "unix_timestamp_list_val":
        return [None if t == _NULL_TIMESTAMP else datetime.fromtimestamp(t, tz=UTC) for t in got.val]
    return list(got.val) if kind.endswith("_list_val") else got


_NULL_TIMESTAMP = -(2**63)  # feast.type_map.NULL_TIMESTAMP_INT_VALUE, without importing feast here


def _encoder(value_type: Any) -> Any:
    """Python value → Feast value proto for one field type, as a push would write it.

    Lists are extended into the message in place: building a list message and passing it to ``Value(...)``
    copies it, and took ~3 µs a field, 25 µs of a history row (the worker writes one per changed user)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    def seconds(t: Any) -> int:
        return int(t.timestamp()) if isinstance(t, datetime) else int(t)

    lists = {ValueType.STRING_LIST: "string_list_val", ValueType.INT64_LIST: "int64_list_val",
             ValueType.DOUBLE_LIST: "double_list_val"}
    scalars = {ValueType.STRING: ("string_val", str), ValueType.INT64: ("int64_val", int),
               ValueType.DOUBLE: ("double_val", float), ValueType.UNIX_TIMESTAMP: ("unix_timestamp_val", seconds)}
    if value_type in lists:
        name = lists[value_type]

        def to_list(v: Any) -> Any:
            value = Value()
            if v is not None:
                field = getattr(value, name)
                field.SetInParent()  # an empty list is a value, not a missing one
                field.val.extend(v)
            return value

        return to_list
    if value_type not in scalars:
        raise FeatureStoreError(f"no writer for feature type {value_type}")
    name, convert = scalars[value_type]

    def to_scalar(v: Any) -> Any:
        value = Value()
        if v is not None:
            setattr(value, name, convert(v))
        return value

    return to_scalar


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A push-ready frame: user_id, the history features, event_timestamp (= last_event_at)."""
    columns = ["user_id", *HISTORY_FEATURES, *STATE_FIELDS, "event_timestamp"]
    frame = pd.DataFrame(rows, columns=columns)
    # Rows built by hand (or by an older writer) may leave the worker's state out: no state, no purchases.
    for name in ("purchased_item_ids", "recent_event_times_ms", "recent_event_ids"):
        frame[name] = [v if isinstance(v, list) else [] for v in frame[name]]
    for name in ("source_partition", "source_offset"):
        frame[name] = frame[name].fillna(-1)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    for column in feature_rows.USER_RECENT_HISTORY:
        if column.kind == "time":
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
        elif column.kind == "int":
            frame[column.name] = frame[column.name].astype("int64")
    return frame
