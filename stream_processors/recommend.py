"""The recommender's core, free of Kafka: a served model (towers + FAISS index) and ``recommend()``.

    bundle = ServingBundle.build(load_latest(dir))        # item embeddings → FAISS, off the event loop
    responses = recommender.recommend(requests, user_rows, bundle)

Retrieval takes a few times k candidates by inner product (exact below ``ANN_THRESHOLD`` items, HNSW
above), the rule filters run in order, and popularity backfills under the same filters when fewer than
k survive. A bundle is immutable: a hot swap replaces the whole bundle in one assignment, so a batch
that started on the old model finishes on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd

from models.filtering import Candidates, FilterConfig, FilterContext, apply_filters
from models.serving import LoadedModel, UserInput
from streamrec.schemas import RecommendationRequest, RecommendationResponse, ScoredItem

__all__ = ["ANN_THRESHOLD", "Catalog", "ServingBundle", "Recommender", "user_input"]

ANN_THRESHOLD = 50_000  # exact search is a few ms up to here; above it HNSW keeps p99 flat
CANDIDATE_FACTOR = 5  # retrieve k × this (at least 50): enough left after the filters


class Catalog:
    """Item columns the filters need, in memory as numpy arrays, kept current from item updates."""

    def __init__(self, items: pd.DataFrame, popularity: Sequence[str]) -> None:
        self._pos = {item_id: i for i, item_id in enumerate(items.index)}
        arrival = pd.to_datetime(items["arrival_date"], utc=True)
        self._columns = {
            "top_category": items["top_category"].to_numpy(dtype=object),
            # float with NaN: an item whose stock or price is unknown (an imported catalogue) is not
            # "out of stock" nor "too expensive"; the filters let it through
            "stock": _floats(items["stock"]),
            "arrival_ns": arrival.to_numpy(dtype="datetime64[ns]").view("int64"),
            "discounted_price": _floats(items["discounted_price"]),
        }
        self._ids = items.index.to_numpy(dtype=object)
        self._lock = threading.Lock()
        self.popularity = [i for i in popularity if i in self._pos]

    def __len__(self) -> int:
        return len(self._ids)

    def candidates(self, item_ids: Sequence[str], scores: Sequence[float]) -> Candidates:
        """The known items among ``item_ids`` with their columns and scores, order kept."""
        pairs = [(self._pos[i], s) for i, s in zip(item_ids, scores, strict=True) if i in self._pos]
        rows = np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs))
        with self._lock:  # fancy indexing copies: the candidates never see a later update
            columns = {name: values[rows] for name, values in self._columns.items()}
        columns["score"] = np.fromiter((s for _, s in pairs), dtype=np.float64, count=len(pairs))
        return Candidates(self._ids[rows], columns)

    def update(self, item_id: str, stock: int | None = None, price: float | None = None) -> bool:
        """Apply an item update; False for an item the catalog does not know."""
        row = self._pos.get(item_id)
        if row is None:
            return False
        with self._lock:
            if stock is not None:
                self._columns["stock"][row] = stock
            if price is not None:
                self._columns["discounted_price"][row] = price
        return True

    def stock(self, item_id: str) -> int | None:
        """The item's stock; None when unknown."""
        value = self._columns["stock"][self._pos[item_id]]
        return None if np.isnan(value) else int(value)


def _floats(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


@dataclass(frozen=True)
class ServingBundle:
    """A model and the index of its item embeddings; never changed after build."""

    model: LoadedModel
    index: Any  # faiss.Index
    item_ids: np.ndarray  # row → item_id

    @classmethod
    def build(cls, model: LoadedModel) -> ServingBundle:
        import faiss

        vectors = np.ascontiguousarray(model.item_embeddings(), dtype=np.float32)  # (N, D)
        if len(vectors) > ANN_THRESHOLD:
            index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        else:
            index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(model, index, np.asarray(model.item_ids, dtype=object))

    @property
    def version(self) -> str:
        return self.model.version


def user_input(row: dict[str, Any] | None) -> UserInput:
    """The tower's input from an online-store row (profile + recent history)."""
    row = row or {}
    profile = {k: row.get(k) for k in ("age", "gender", "region", "preferred_categories")}
    return UserInput(profile=profile, recent_item_ids=list(row.get("recent_item_ids") or []),
                     recent_interaction_types=list(row.get("recent_interaction_types") or []))


def _known(row: dict[str, Any] | None) -> bool:
    return bool(row) and any(row.get(k) is not None for k in ("age", "gender", "region", "recent_item_ids"))


class Recommender:
    """Answers requests with a bundle, a catalog and the filter rules."""

    def __init__(self, catalog: Catalog, filters: FilterConfig) -> None:
        self.catalog = catalog
        self.filters = filters

    def recommend(self, requests: Sequence[RecommendationRequest], user_rows: Sequence[dict[str, Any] | None],
                  bundle: ServingBundle | None, received: Sequence[float] | None = None,
                  now_ms: float | None = None) -> list[RecommendationResponse]:
        """One response per request, in order. ``received``: epoch seconds each request entered Kafka."""
        now_ms = now_ms if now_ms is not None else time.time() * 1000
        known = [_known(r) for r in user_rows]
        embedded = [i for i, k in enumerate(known) if k and bundle is not None]
        scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if embedded:
            users = bundle.model.user_embeddings([user_input(user_rows[i]) for i in embedded])  # (B, D)
            depth = max(max(requests[i].k for i in embedded) * CANDIDATE_FACTOR, 50)
            depth += max(len(user_rows[i].get("recent_item_ids") or []) + len(requests[i].exclude or []) +
                         len(user_rows[i].get("purchased_item_ids") or []) for i in embedded)
            sims, rows = bundle.index.search(np.ascontiguousarray(users), min(depth, bundle.index.ntotal))
            for j, i in enumerate(embedded):
                valid = rows[j] >= 0
                scores[i] = (bundle.item_ids[rows[j][valid]], sims[j][valid])
        out = []
        for i, request in enumerate(requests):
            row = user_rows[i] or {}
            if i in scores:
                ids, sims = scores[i]
                fallback = None if row.get("recent_item_ids") else "no_history"
            else:
                ids, sims = np.array([], dtype=object), np.array([], dtype=np.float32)
                fallback = "unknown_user" if not known[i] else "no_model"
            items, counts, backfilled = self._rank(request, row, ids, sims)
            if backfilled:
                fallback = f"{fallback}+popularity" if fallback else "popularity_backfill"
            pushed = row.get("pushed_at_ms")
            latency = (time.time() - received[i]) * 1000 if received else None
            out.append(RecommendationResponse(
                request_id=request.request_id, user_id=request.user_id, items=items,
                model_version=bundle.version if bundle else None,
                feature_age_ms=float(now_ms - pushed) if pushed is not None else None,
                latency_ms=latency, fallback=fallback, filtered=counts))
        return out

    def _rank(self, request: RecommendationRequest, row: dict[str, Any], ids: np.ndarray,
              sims: np.ndarray) -> tuple[list[ScoredItem], dict[str, int], bool]:
        ctx = self._context(request, row)
        kept, counts = apply_filters(self.catalog.candidates(ids, sims), ctx, self.filters)
        top = slice(0, request.k)
        items = [ScoredItem(item_id=str(i), score=float(s)) for i, s in zip(kept.ids[top], kept["score"][top],
                                                                              strict=True)]
        if len(items) >= request.k:
            return items, counts, False
        taken = {it.item_id for it in items}
        # deep enough that the items the history filter drops (every purchase on record) leave k behind
        depth = request.k * CANDIDATE_FACTOR + 200 + len(ctx.purchased_item_ids) + len(ctx.exclude)
        pool = list(islice((p for p in self.catalog.popularity if p not in taken), depth))
        extra, extra_counts = apply_filters(self.catalog.candidates(pool, [0.0] * len(pool)), ctx, self.filters)
        items += [ScoredItem(item_id=str(i), score=0.0) for i in extra.ids[: request.k - len(items)]]
        return items, {k: counts.get(k, 0) + extra_counts.get(k, 0) for k in counts}, True

    @staticmethod
    def _context(request: RecommendationRequest, row: dict[str, Any]) -> FilterContext:
        context = request.context
        now = context.timestamp if context and context.timestamp else datetime.now(UTC)
        return FilterContext(
            now=now, age=row.get("age"), gender=row.get("gender"),
            recent_item_ids=list(row.get("recent_item_ids") or []),
            recent_interaction_types=list(row.get("recent_interaction_types") or []),
            purchased_item_ids=list(row.get("purchased_item_ids") or []),
            device=context.device if context else None, exclude=frozenset(request.exclude or ()))
