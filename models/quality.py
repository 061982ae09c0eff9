"""Offline quality: the two-tower beside popularity, ALS and EASE (:mod:`models.rankers`) on one split,
paired bootstrap intervals on the differences, and the freshness lift (what the streaming half of the
system buys). This module draws the splits and runs the rankers on them.

Every ranker answers the same requests through :func:`models.evaluation.evaluate`: a request is an event row,
its history the user's events before that row's time, and every item the user touched before it is
never recommended. Metrics come from :mod:`models.metrics`.

Protocols:

- ``temporal``: one global cut in time; the last ``test_frac`` of all events are the test period. One
  request per user with events before the cut and a first-time positive after it: history = the user's
  events before the cut, targets = the items of those first-time positives. Rankers learn from events
  before the cut. Tuning (EASE's λ, ALS's factors and weight, the two-tower's epochs and linear path)
  uses the same protocol carved out of the training period (its last ``val_frac`` of all events is the
  validation period); each ranker is then refit on the whole training period with what won.
- ``leave-last-out``: per user, the last first-time positive event is the test target and the one
  before the validation target (:func:`models.data.split_by_time`); rankers learn from each user's
  events before their target (for tuning, before their validation target).

Freshness lift (:func:`freshness_lift`): the temporal split's fitted rankers score every first-time
positive of the test period as a request of its own, once with the history as of the event (what the
stream keeps in the online store) and once as of the start of that UTC day (a nightly snapshot). Same
targets, same exclusions (everything touched before the event): only the model's input differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .data import TrainError, split_by_time
from .evaluation import DAY_NS, EvalSet, day_start_rows, emptied, evaluate, shuffled
from .metrics import per_row_metrics
from .rankers import Context, Fold, Ranker, TwoTowerRanker
from .selection import MIN_REQUESTS

__all__ = ["Protocol", "temporal", "leave_last_out", "PROTOCOLS", "Outcome", "run_protocol", "paired_interval",
           "stale_rows", "freshness_lift", "history_controls", "DAY_NS"]

KS = (10, 20)


# ---- protocols ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str
    tune: Fold
    test: Fold
    tune_kind: str = "per-user cut"  # how the validation requests were drawn


def _targets(groups: Iterable[np.ndarray]) -> np.ndarray:
    groups = list(groups)
    width = max((len(g) for g in groups), default=1)
    out = np.full((len(groups), width), -1, np.int64)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
    return out


def _period_fold(ctx: Context, start: int, end: int) -> Fold:
    """Learn from events before ``start`` (ns); one request per user with history before ``start`` and a
    first-time positive in [start, end), its targets those items."""
    ev = ctx.ev
    train = ev.ts < start
    had_history = np.zeros(len(ev.user_ids), bool)
    had_history[ev.user[train]] = True
    # novel relative to everything the user did before: the first touch of the item in the whole log
    in_period = ctx.novel & (ev.ts >= start) & (ev.ts < end) & had_history[ev.user]
    users = np.unique(ev.user[in_period])
    # the request row: the user's first event at or after the cut (history = every event before it)
    first_after = pd.Series(np.flatnonzero(ev.ts >= start)).groupby(ev.user[ev.ts >= start]).min()
    rows = first_after.reindex(users).to_numpy(np.int64)
    pairs = np.unique(np.c_[ev.user[in_period], ctx.col[in_period]], axis=0)  # sorted by user, then item
    bounds = np.searchsorted(pairs[:, 0], users, side="left"), np.searchsorted(pairs[:, 0], users, side="right")
    return Fold(train, rows, _targets(pairs[a:b, 1] for a, b in zip(*bounds, strict=True)))


def _per_user_fold(ctx: Context, cut: int, frac: float = 0.2) -> Fold:
    """Validation inside the training period, cut per user: each user's last ``frac`` (at least one) of
    their first-time positives before ``cut`` are the targets, the first of them the request row; learn
    from each user's events before their own request (everyone's before ``cut``)."""
    ev = ctx.ev
    before = ev.ts < cut
    nov_rows = np.flatnonzero(ctx.novel & before)
    nov_user = ev.user[nov_rows]
    n_novel = np.bincount(nov_user, minlength=len(ev.user_ids))
    from_end = pd.Series(nov_user).groupby(nov_user).cumcount(ascending=False).to_numpy()
    n_val = np.maximum(1, np.floor(frac * n_novel)).astype(np.int64)
    # ≥ 2 first-time positives left to learn from, like leave-last-out's validation users
    chosen = (from_end < n_val[nov_user]) & (n_novel[nov_user] - n_val[nov_user] >= 2)
    val_rows = nov_rows[chosen]
    users, first = np.unique(ev.user[val_rows], return_index=True)  # rows are sorted by (user, time)
    rows = val_rows[first]
    cutoff = np.full(len(ev.user_ids), cut, np.int64)
    cutoff[users] = ev.ts[rows]
    bounds = np.searchsorted(ev.user[val_rows], users, side="left"), np.searchsorted(ev.user[val_rows], users,
                                                                                       side="right")
    return Fold(before & (ev.ts < cutoff[ev.user]), rows,
                _targets(np.unique(ctx.col[val_rows[a:b]]) for a, b in zip(*bounds, strict=True)))


def temporal(ctx: Context, test_frac: float = 0.2, val_frac: float = 0.1,
             min_requests: int = MIN_REQUESTS) -> Protocol:
    """Global time cut: the last ``test_frac`` of events are the test period, the ``val_frac`` before them
    the validation period used for tuning. Where that period holds fewer than ``min_requests`` requests
    (users seldom span a global cut on many real logs), tuning uses a per-user cut inside the training
    period instead (:func:`_per_user_fold`), when that has more."""
    if not 0 < test_frac < 1 or not 0 < val_frac < 1 - test_frac:
        raise ValueError("need 0 < test_frac < 1 and 0 < val_frac < 1 - test_frac")
    ts = np.sort(ctx.ev.ts)
    cut = int(ts[int(len(ts) * (1 - test_frac))])
    val_cut = int(ts[int(len(ts) * (1 - test_frac - val_frac))])
    end = int(ts[-1]) + 1
    test, tune, tune_kind = _period_fold(ctx, cut, end), _period_fold(ctx, val_cut, cut), "global cut"
    if len(tune.rows) < min_requests:
        per_user = _per_user_fold(ctx, cut)
        if len(per_user.rows) > len(tune.rows):
            tune, tune_kind = per_user, "per-user cut"
    if len(test.rows) == 0 or len(tune.rows) == 0:
        raise TrainError(f"temporal split: {len(tune.rows)} validation and {len(test.rows)} test users; a user "
                         "needs events before the cut and a first-time positive after it")
    return Protocol("temporal", tune, test, tune_kind)


def leave_last_out(ctx: Context) -> Protocol:
    """Per user: the last first-time positive is the test target, the one before the validation target."""
    ev = ctx.ev
    split = split_by_time(ev)

    def fold(rows: np.ndarray, *cuts: np.ndarray) -> Fold:
        cutoff = np.full(len(ev.user_ids), np.iinfo(np.int64).max)
        for before in cuts:  # later ones win: a user's validation target comes before their test target
            cutoff[ev.user[before]] = ev.ts[before]
        return Fold(ev.ts < cutoff[ev.user], rows, ctx.col[rows].reshape(-1, 1))

    # tuning learns from nothing at or after either target of a user
    tune = fold(split.val, split.test, split.val)
    test = fold(split.test, split.test)
    if len(test.rows) == 0 or len(tune.rows) == 0:
        raise TrainError(f"leave-last-out split: {len(tune.rows)} validation and {len(test.rows)} test users "
                         "(a user needs three first-time positive events)")
    return Protocol("leave-last-out", tune, test)


PROTOCOLS: dict[str, Callable[[Context], Protocol]] = {"temporal": temporal, "leave-last-out": leave_last_out}


# ---- running ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One ranker on one protocol's test requests."""

    metrics: dict[str, float]
    rows: dict[str, np.ndarray]  # per request, for the paired intervals
    params: dict[str, Any]
    tune_s: float
    train_s: float
    tuning: list[dict[str, Any]] = field(default_factory=list)  # each grid point's validation NDCG@10


def _score(ranker: Ranker, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None
           ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    metrics, top = evaluate(ranker.scorer(ctx, es, history_rows), es, KS)
    rows, _ = per_row_metrics(top, es.targets, KS)
    return metrics, rows


def run_protocol(ctx: Context, protocol: Protocol, rankers: Sequence[Ranker],
                 report: Callable[[str], None] = lambda _: None) -> dict[str, Outcome]:
    """Tune every ranker on the validation fold (NDCG@10), refit on the training period, score the test."""
    val_es, test_es = ctx.eval_set(protocol.tune), ctx.eval_set(protocol.test)
    out: dict[str, Outcome] = {}
    for ranker in rankers:
        t0 = time.perf_counter()
        tried: list[dict[str, Any]] = []
        best: tuple[float, dict[str, Any]] | None = None
        for params in ranker.grid():
            ranker.fit(ctx, protocol.tune, params, val=val_es)
            ndcg = evaluate(ranker.scorer(ctx, val_es), val_es, (10,))[0]["ndcg@10"]
            chosen = ranker.final_params()
            tried.append({**chosen, "val_ndcg@10": ndcg})
            if best is None or ndcg > best[0]:
                best = (ndcg, chosen)
        t1 = time.perf_counter()
        ranker.fit(ctx, protocol.test, best[1] if best else {})
        t2 = time.perf_counter()
        metrics, rows = _score(ranker, ctx, test_es)
        out[ranker.name] = Outcome(metrics, rows, best[1] if best else {}, t1 - t0, t2 - t1, tried)
        report(f"{protocol.name}: {ranker.name} ndcg@10 {metrics['ndcg@10']:.4f} (fit {t2 - t1:.1f}s, "
               f"tuning {t1 - t0:.1f}s, {best[1] if best else {}})")
    return out


def paired_interval(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b and its percentile bootstrap interval, resampling requests (paired)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def stale_rows(ctx: Context, rows: np.ndarray, snapshot_ns: int = DAY_NS) -> np.ndarray:
    """For each request row, the row its history would end at in a snapshot taken at the start of its
    (UTC) day: the user's first event at or after that instant."""
    return day_start_rows(ctx.ev.ts, ctx.ev.user_start, rows, snapshot_ns)


def freshness_lift(ctx: Context, protocol: Protocol, rankers: Sequence[Ranker],
                   snapshot_ns: int = DAY_NS) -> dict[str, Any]:
    """Fresh vs nightly-snapshot history for rankers already fitted on ``protocol.test``'s training period."""
    ev = ctx.ev
    users = np.zeros(len(ev.user_ids), bool)
    users[ev.user[protocol.test.rows]] = True
    rows = np.flatnonzero(ctx.novel & users[ev.user] & ~protocol.test.train)  # after the cut: not learnt from
    fold = Fold(protocol.test.train, rows, ctx.col[rows].reshape(-1, 1))
    es = ctx.eval_set(fold)
    stale = stale_rows(ctx, rows, snapshot_ns)
    changed = float(np.mean(ctx.ev.grp_start[stale] != ctx.ev.grp_start[rows])) if len(rows) else 0.0
    out: dict[str, Any] = {"n_requests": len(rows), "history_changed_share": changed, "rankers": {}}
    for ranker in rankers:
        fresh_m, fresh_r = _score(ranker, ctx, es)
        stale_m, stale_r = _score(ranker, ctx, es, stale)
        out["rankers"][ranker.name] = {
            "fresh": fresh_m, "stale": stale_m,
            "lift": {m: paired_interval(fresh_r[m], stale_r[m]) for m in ("recall@10", "ndcg@10")}}
        if isinstance(ranker, TwoTowerRanker):
            out["controls"] = history_controls(ranker, ctx, es, fresh_r)
    return out


def history_controls(ranker: TwoTowerRanker, ctx: Context, es: EvalSet, fresh: dict[str, np.ndarray]
                     ) -> dict[str, Any]:
    """The same fitted model on the same requests with each history shuffled (what order and recency are
    worth) and emptied (what the history itself is worth): metrics, and fresh minus each, paired."""
    out: dict[str, Any] = {}
    for name, transform in (("shuffled", shuffled), ("empty", emptied)):
        metrics, top = evaluate(ranker.scorer(ctx, es, transform=transform), es, KS)
        rows, _ = per_row_metrics(top, es.targets, KS)
        out[name] = {**metrics, "worth": {m: paired_interval(fresh[m], rows[m]) for m in ("recall@10", "ndcg@10")}}
    return out
