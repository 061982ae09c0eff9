"""`streamrec train`'s run: split the log, train the two-tower, and score it beside the baselines.

Per user, the last first-time positive is the test target and the one before it chooses the epoch count
(:func:`models.data.split_by_time`). Every ranker of the table (:mod:`models.rankers`) learns from the
same training targets and answers the same test requests; `bench quality` (:mod:`models.quality`) runs
the same rankers on its own splits, with tuning and intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.progress import Progress

from .data import Prepared, RawData, prepare
from .evaluation import day_start_rows, eval_set, evaluate
from .rankers import Context, Fold, Oracle, Popularity, Random, Ranker, TwoTowerRanker
from .train import FitResult, TrainConfig, pick_device

__all__ = ["Report", "train_and_evaluate"]


@dataclass
class Report:
    prepared: Prepared
    fit: FitResult
    test: dict[str, dict[str, float]]  # model and baselines -> metrics on the test targets


def train_and_evaluate(raw: RawData, cfg: TrainConfig, model_options: dict[str, Any] | None = None,
                       progress: Progress | None = None, baselines: bool = True) -> Report:
    """Split, train from scratch, and score the model and the baselines on the same test targets."""
    p = prepare(raw, None, cfg.targets, pick_device(cfg.device))
    ctx = Context.of(p.raw, p.events, p.enc)
    es = eval_set(p.enc, p.split.test)
    train = np.zeros(len(p.events.ts), bool)
    train[p.split.train] = True  # the training targets: the tower's examples, popularity's counts
    fold = Fold(train, p.split.test, es.targets)
    tower = TwoTowerRanker(cfg, model_options, progress=progress)
    tower.fit(ctx, fold, {}, val=eval_set(p.enc, p.split.val) if len(p.split.val) else None)
    test = {tower.name: evaluate(tower.scorer(ctx, es), es)[0]}
    # the same model and targets with each history as a nightly snapshot would hold it: what fresh features
    # are worth to the served model (the demo's summary shows it)
    stale = day_start_rows(p.events.ts, p.events.user_start, p.split.test)
    day_start = evaluate(tower.scorer(ctx, es, history_rows=stale), es)[0]
    test[tower.name] |= {f"day_start_{k}": v for k, v in day_start.items() if k in ("recall@10", "ndcg@10")}
    if baselines:
        rankers: list[Ranker] = [Random(cfg.seed), Popularity(per_user=False)]
        if raw.affinities is not None:
            rankers.append(Oracle())
        for ranker in rankers:
            ranker.fit(ctx, fold, {})
            test[ranker.name] = evaluate(ranker.scorer(ctx, es), es)[0]
    return Report(p, tower.result, test)
