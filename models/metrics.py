"""Ranking metrics, pure numpy: one batched pass computes all of them, thin wrappers pick one.

``top`` is (B, K) recommended item indices, best first. ``targets`` is (B, T) relevant item
indices padded with -1 (one row per user; rows without any target are skipped).

- recall@k = |top[:k] ∩ targets| / |targets|
- ndcg@k = DCG / ideal DCG, binary gains, ideal = min(|targets|, k) hits at the top
- coverage@k = distinct items in all top[:k] lists / n_items (catalogue coverage)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ranking_metrics", "per_row_metrics", "recall_at_k", "ndcg_at_k", "coverage_at_k"]


def ranking_metrics(top: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (10, 20),
                    n_items: int | None = None) -> dict[str, float]:
    """``recall@k``, ``ndcg@k`` (and ``coverage@k`` when ``n_items`` is given) for every k."""
    rows, top = per_row_metrics(top, targets, ks)
    out: dict[str, float] = {}
    for k in ks:
        for name in (f"recall@{k}", f"ndcg@{k}"):
            out[name] = float(rows[name].mean()) if len(top) else 0.0
        if n_items is not None:
            out[f"coverage@{k}"] = coverage_at_k(top, k, n_items)
    return out


def per_row_metrics(top: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (10, 20)
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each row's ``recall@k`` and ``ndcg@k`` (rows without a target left out), and the top lists
    of the rows kept: the means are :func:`ranking_metrics`, the rows feed paired bootstraps."""
    top, targets = np.asarray(top), np.asarray(targets)
    if top.ndim != 2 or targets.ndim != 2 or len(top) != len(targets):
        raise ValueError(f"expected (B, K) and (B, T) arrays, got {top.shape} and {targets.shape}")
    if max(ks) > top.shape[1]:
        raise ValueError(f"k={max(ks)} needs at least {max(ks)} recommendations, got {top.shape[1]}")
    n_rel = (targets >= 0).sum(axis=1)  # (B,)
    keep = n_rel > 0
    top, targets, n_rel = top[keep], targets[keep], n_rel[keep]
    # hit[b, r]: the item at rank r of row b is relevant; -1 padding never equals an item index
    hit = (top[:, :, None] == np.where(targets >= 0, targets, -2)[:, None, :]).any(axis=2)  # (B, K)
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)  # (K,)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hits = hit[:, :k]
        out[f"recall@{k}"] = hits.sum(axis=1) / np.maximum(n_rel, 1)
        idcg = np.cumsum(discount[:k])[np.minimum(n_rel, k) - 1] if len(top) else np.zeros(0)
        out[f"ndcg@{k}"] = (hits * discount[:k]).sum(axis=1) / idcg if len(top) else np.zeros(0)
    return out, top


def recall_at_k(top: np.ndarray, targets: np.ndarray, k: int) -> float:
    return ranking_metrics(top, targets, (k,))[f"recall@{k}"]


def ndcg_at_k(top: np.ndarray, targets: np.ndarray, k: int) -> float:
    return ranking_metrics(top, targets, (k,))[f"ndcg@{k}"]


def coverage_at_k(top: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    return float(len(np.unique(np.asarray(top)[:, :k])) / n_items)
