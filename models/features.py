"""Feature vocabularies and encoders shared by training and serving.

A :class:`FeatureSchema` is everything needed to turn raw ids and catalogue rows into the integer
tensors the towers read. It is saved in a checkpoint's ``meta.json``, so serving encodes a request
exactly as training encoded its examples. Index conventions (the same in every table):

- item rows: 0 = padding (empty history slot), 1 = out-of-vocabulary, 2.. = ``item_ids``;
- top/leaf categories and interaction types: 0 = padding, 1 = OOV, 2.. = the vocabulary;
- gender, region, age band and the price/rating/count buckets: 0 = unknown, 1.. = known values.
"""

from __future__ import annotations

import numbers
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd

from streamrec._exceptions import StreamrecError
from streamrec.frames import string_ids
from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES

__all__ = ["FeatureError", "FeatureSchema", "POSITIVE_TYPES", "PAD", "OOV", "SCHEMA_VERSION",
           "popularity_ranking", "text_hashes"]

PAD, OOV = 0, 1  # reserved rows of every padded vocabulary
SCHEMA_VERSION = 1
POSITIVE_TYPES = ("positive_view", "cart", "purchase", "rate")  # negative_view is history only
# how much one event says an item is wanted; what serving backfills from (a checkpoint's `popularity`)
POPULARITY_WEIGHTS = {"purchase": 3.0, "cart": 2.0, "rate": 2.0, "positive_view": 1.0}

# Fixed edges: the generator's ratings live in [1, 5] and ages in [18, 80]; fixed edges keep the
# buckets' meaning stable across retrains, so a warm start never reinterprets an embedding row.
_AGE_EDGES = (25.0, 35.0, 45.0, 55.0, 65.0)
_RATING_EDGES = (2.0, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.6, 4.8)
_COUNT_EDGES = tuple(float(2**k) for k in range(1, 14))  # log2 buckets of rating_count
_TOKEN = re.compile(r"[a-z0-9]+")


class FeatureError(StreamrecError):
    """Inputs that cannot be encoded (misaligned history lists, a bad schema)."""


def text_hashes(text: str, n_buckets: int, max_tokens: int) -> list[int]:
    """Hashed word unigrams and bigrams of ``text`` in [1, n_buckets); 0 is left for padding."""
    words = _TOKEN.findall(text.lower())
    grams = [f"u:{w}" for w in words] + [f"b:{a}_{b}" for a, b in zip(words, words[1:], strict=False)]
    # crc32, not hash(): Python's string hash is salted per process, so it would not survive a restart
    return [1 + zlib.crc32(g.encode()) % (n_buckets - 1) for g in grams[:max_tokens]]


def popularity_ranking(interactions: pd.DataFrame, limit: int = 5000) -> list[str]:
    """The ``limit`` most wanted item ids of an interaction log (item_id, interaction_type), most wanted
    first: each event weighs :data:`POPULARITY_WEIGHTS` (negative views and unknown types nothing), ties
    broken by id so the ranking is the same on every run. Items never wanted are left out."""
    weights = interactions["interaction_type"].map(POPULARITY_WEIGHTS).fillna(0.0)
    ids = string_ids(interactions["item_id"])
    totals = weights.groupby(ids.to_numpy()).sum()
    totals = totals[totals > 0]
    order = np.lexsort((totals.index.to_numpy(dtype=str), -totals.to_numpy()))
    return [str(i) for i in totals.index.to_numpy()[order][:limit]]


def _floats(items: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for missing, absent or non-numeric values (imported logs
    leave prices, ratings and counts empty, as None or a nullable integer column)."""
    if name not in items.columns:
        return np.full(len(items), np.nan)
    return pd.to_numeric(items[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _texts(items: pd.DataFrame, name: str) -> list[str | None]:
    """A text column as str, with None (not the string "None" or "nan") where it is missing."""
    if name not in items.columns:
        return [None] * len(items)
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)
            for v in items[name]]


def _bucket(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """0 for missing values, 1.. for the bucket between consecutive edges."""
    values = np.asarray(values, dtype=np.float64)
    out = np.digitize(values, np.asarray(edges, dtype=np.float64)) + 1
    return np.where(np.isfinite(values), out, 0).astype(np.int64)


def _number(value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if ok else np.nan


@lru_cache(maxsize=64)
def _lookup(vocab: tuple[str, ...], offset: int) -> dict[str, int]:
    return {v: i + offset for i, v in enumerate(vocab)}


def _index(vocab: Sequence[str], values: Iterable[Any], offset: int, unknown: int) -> np.ndarray:
    lookup = _lookup(tuple(vocab), offset)  # built once per vocabulary: serving encodes every batch
    return np.fromiter((lookup.get(v, unknown) if isinstance(v, str) else unknown for v in values),
                       dtype=np.int64)


def _extend(vocab: tuple[str, ...], values: Iterable[Any]) -> tuple[str, ...]:
    """``vocab`` followed by the new values in order of first appearance (old indices stay put)."""
    seen = set(vocab)
    new = [v for v in dict.fromkeys(values) if isinstance(v, str) and v and v not in seen]
    return vocab + tuple(new)


@dataclass(frozen=True)
class FeatureSchema:
    item_ids: tuple[str, ...]
    top_categories: tuple[str, ...]
    leaf_categories: tuple[str, ...]  # full "Top|Sub|Leaf" paths: leaf names repeat across tops
    genders: tuple[str, ...]
    regions: tuple[str, ...]
    price_edges: tuple[float, ...]  # quantiles of log(discounted_price) at the first build
    age_edges: tuple[float, ...] = _AGE_EDGES
    rating_edges: tuple[float, ...] = _RATING_EDGES
    count_edges: tuple[float, ...] = _COUNT_EDGES
    interaction_types: tuple[str, ...] = INTERACTION_TYPES
    text_buckets: int = 2**12
    text_tokens: int = 16
    max_history: int = HISTORY_LENGTH  # what the stream keeps: recent events, newest first
    max_preferred: int = 4
    version: int = field(default=SCHEMA_VERSION)

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, users: pd.DataFrame, items: pd.DataFrame, interactions: pd.DataFrame,
              n_price_buckets: int = 16, **options: Any) -> FeatureSchema:
        """A fresh schema over the catalogue plus every item id the interactions mention.

        Price edges are quantiles of the known prices; with none known (an imported log) there are no
        edges and every item's price bucket is "unknown".
        """
        prices = np.log1p(_floats(items, "discounted_price")) if len(items) else np.zeros(1)
        prices = prices[np.isfinite(prices)]
        qs = np.quantile(prices, np.linspace(0, 1, n_price_buckets + 1)[1:-1]) if len(prices) else []
        empty = cls((), (), (), (), (), tuple(float(q) for q in np.unique(qs)), **options)
        return empty.extend(users, items, interactions)

    def extend(self, users: pd.DataFrame, items: pd.DataFrame, interactions: pd.DataFrame) -> FeatureSchema:
        """This schema with new items, categories, genders and regions appended; edges unchanged."""
        cats = _texts(items, "category")
        prefs = [c for cs in users.get("preferred_categories", pd.Series([], dtype=object))
                 if cs is not None for c in cs]
        return replace(
            self,
            item_ids=_extend(_extend(self.item_ids, items["item_id"]), interactions["item_id"]),
            top_categories=_extend(self.top_categories, _texts(items, "top_category") + prefs),
            leaf_categories=_extend(self.leaf_categories, cats),
            genders=_extend(self.genders, users.get("gender", [])),
            regions=_extend(self.regions, users.get("region", [])),
        )

    # ---- sizes, for TowerConfig ----------------------------------------------------------------
    @property
    def n_item_rows(self) -> int:
        return len(self.item_ids) + 2

    def sizes(self) -> dict[str, int]:
        """Embedding table sizes implied by the vocabularies and edges."""
        return {
            "n_items": self.n_item_rows, "n_top": len(self.top_categories) + 2,
            "n_leaf": len(self.leaf_categories) + 2, "n_price": len(self.price_edges) + 2,
            "n_rating": len(self.rating_edges) + 2, "n_count": len(self.count_edges) + 2,
            "n_text": self.text_buckets, "text_tokens": self.text_tokens,
            "n_age": len(self.age_edges) + 2, "n_gender": len(self.genders) + 1,
            "n_region": len(self.regions) + 1, "n_types": len(self.interaction_types) + 2,
            "max_history": self.max_history, "max_preferred": self.max_preferred,
        }

    # ---- items ---------------------------------------------------------------------------------
    @cached_property
    def _item_lookup(self) -> dict[str, int]:
        return {item: i + 2 for i, item in enumerate(self.item_ids)}

    def item_index(self, ids: Iterable[Any]) -> np.ndarray:
        """Item rows for ``ids``; unknown ids map to OOV."""
        lookup = self._item_lookup
        return np.fromiter((lookup.get(i, OOV) for i in ids), dtype=np.int64)

    def item_table(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per-row item features (rows aligned with item_index); items missing from ``items`` get OOV."""
        n = self.n_item_rows
        table = {"top": np.full(n, OOV, np.int64), "leaf": np.full(n, OOV, np.int64),
                 "price": np.zeros(n, np.int64), "rating": np.zeros(n, np.int64),
                 "count": np.zeros(n, np.int64), "text": np.zeros((n, self.text_tokens), np.int64)}
        table["top"][PAD] = table["leaf"][PAD] = PAD
        rows = self.item_index(items["item_id"])
        keep = rows >= 2
        items, rows = items[keep], rows[keep]
        # any of these may be missing (NaN, None, absent) in an imported catalogue: unknown, never an error
        table["top"][rows] = _index(self.top_categories, _texts(items, "top_category"), 2, OOV)
        table["leaf"][rows] = _index(self.leaf_categories, _texts(items, "category"), 2, OOV)
        table["price"][rows] = _bucket(np.log1p(_floats(items, "discounted_price")), self.price_edges)
        table["rating"][rows] = _bucket(_floats(items, "rating"), self.rating_edges)
        table["count"][rows] = _bucket(_floats(items, "rating_count"), self.count_edges)
        for row, name in zip(rows, _texts(items, "product_name"), strict=True):
            hashes = text_hashes(name or "", self.text_buckets, self.text_tokens)
            table["text"][row, : len(hashes)] = hashes
        return table

    # ---- users ---------------------------------------------------------------------------------
    def profile_table(self, profiles: Sequence[dict[str, Any] | None]) -> dict[str, np.ndarray]:
        """Encode profile dicts (age, gender, region, preferred_categories; any may be None)."""
        n = len(profiles)
        ps = [p or {} for p in profiles]
        ages = np.array([_number(p.get("age")) for p in ps], dtype=np.float64)
        pref = np.zeros((n, self.max_preferred), np.int64)
        kept: list[list[Any]] = []
        for p in ps:
            cats = p.get("preferred_categories")
            if isinstance(cats, str):  # the seed's "A,B" form
                cats = [c for c in cats.split(",") if c]
            ok = isinstance(cats, (list, tuple, np.ndarray)) and len(cats)
            kept.append(list(cats)[: self.max_preferred] if ok else [])
        filled = np.arange(self.max_preferred) < np.array([len(c) for c in kept], np.int64).reshape(n, 1)
        pref[filled] = _index(self.top_categories, [c for cs in kept for c in cs], 2, OOV)  # one lookup pass
        return {"age": _bucket(ages, self.age_edges).reshape(n),
                "gender": _index(self.genders, (p.get("gender") for p in ps), 1, 0).reshape(n),
                "region": _index(self.regions, (p.get("region") for p in ps), 1, 0).reshape(n),
                "pref": pref}

    def type_index(self, types: Iterable[Any]) -> np.ndarray:
        return _index(self.interaction_types, types, 2, OOV)

    def encode_history(self, item_ids: Sequence[Sequence[str]],
                       types: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(B, H) item rows and type codes from newest-first lists; longer lists keep the newest H."""
        h = self.max_history
        flat_ids: list[Any] = []
        flat_types: list[Any] = []
        lengths = np.zeros(len(item_ids), np.int64)
        for b, (ids, ts) in enumerate(zip(item_ids, types, strict=True)):
            if len(ids) != len(ts):
                raise FeatureError(f"recent_item_ids has {len(ids)} entries but recent_interaction_types "
                                   f"has {len(ts)}: they must be aligned")
            flat_ids += list(ids)[:h]
            flat_types += list(ts)[:h]
            lengths[b] = min(len(ids), h)
        filled = np.arange(h) < lengths[:, None]  # row-major: each row's slots in order
        items = np.zeros((len(item_ids), h), np.int64)
        codes = np.zeros((len(item_ids), h), np.int64)
        items[filled] = self.item_index(flat_ids)  # one lookup pass for the whole batch
        codes[filled] = self.type_index(flat_types)
        return items, codes

    # ---- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any) -> FeatureSchema:
        """Rebuild from ``to_json`` output; anything malformed raises FeatureError."""
        if not isinstance(data, dict):
            raise FeatureError("feature_schema must be a JSON object")
        names = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(names)
        missing = {n for n, f in names.items()
                   if f.default is MISSING and f.default_factory is MISSING and n not in data}
        if unknown or missing:
            raise FeatureError(f"feature_schema: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
        if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise FeatureError(f"feature_schema version {data.get('version')!r}, expected {SCHEMA_VERSION}")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if str(names[key].type).startswith("tuple"):  # annotations are strings here
                kind = float if key.endswith("_edges") else str
                ok = isinstance(value, list) and all(
                    isinstance(v, str) if kind is str else isinstance(v, (int, float)) and not isinstance(v, bool)
                    for v in value)
                if not ok:
                    raise FeatureError(f"feature_schema.{key}: expected a list of {kind.__name__}")
                out[key] = tuple(kind(v) for v in value)
            elif isinstance(value, int) and not isinstance(value, bool):
                out[key] = value
            else:
                raise FeatureError(f"feature_schema.{key}: expected an integer, got {value!r:.60}")
        schema = cls(**out)
        if len(set(schema.item_ids)) != len(schema.item_ids):
            raise FeatureError("feature_schema.item_ids has duplicates")
        if schema.text_buckets < 2 or schema.max_history < 1:
            raise FeatureError("feature_schema: text_buckets must be >= 2 and max_history >= 1")
        return schema
