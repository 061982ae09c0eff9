from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import coverage_at_k, ndcg_at_k, ranking_metrics, recall_at_k

TOP = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3]])
TARGETS = np.array([[3, -1], [9, 5], [-1, -1]])  # the last row has no target: skipped


def test_hand_computed_case() -> None:
    m = ranking_metrics(TOP, TARGETS, ks=(2, 4), n_items=10)
    # row 0: target 3 at rank 2 (0-based); row 1: target 5 at rank 0, target 9 missing
    assert m["recall@2"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@4"] == pytest.approx((1 + 0.5) / 2)
    idcg_two = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx((0 + 1 / idcg_two) / 2)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(4) + 1 / idcg_two) / 2)
    # rows without targets are skipped, so the last list does not count toward coverage
    assert m["coverage@2"] == pytest.approx(len({1, 2, 5, 6}) / 10)


def test_wrappers_agree_with_the_batched_pass() -> None:
    m = ranking_metrics(TOP, TARGETS, ks=(3,))
    assert recall_at_k(TOP, TARGETS, 3) == m["recall@3"]
    assert ndcg_at_k(TOP, TARGETS, 3) == m["ndcg@3"]
    assert coverage_at_k(TOP, 1, 20) == pytest.approx(3 / 20)


def test_perfect_and_empty_rankings() -> None:
    top = np.array([[7, 8, 9]])
    assert ranking_metrics(top, np.array([[7, 8]]), ks=(2,))["ndcg@2"] == pytest.approx(1.0)
    assert ranking_metrics(top, np.array([[1]]), ks=(3,))["recall@3"] == 0.0
    assert ranking_metrics(top, np.array([[-1]]), ks=(3,))["recall@3"] == 0.0  # nobody to score


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="k=5"):
        ranking_metrics(TOP, TARGETS, ks=(5,))
    with pytest.raises(ValueError, match="expected"):
        ranking_metrics(TOP[0], TARGETS)
