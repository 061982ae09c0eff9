"""The quality benchmark's protocols and rankers on logs whose right answers are known by construction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.bench_quality import markdown, plot, put_section, sections
from benchmarks.bench_quality import run as run_quality
from models.checkpoints import save_checkpoint
from models.data import RawData
from models.evaluation import emptied, shuffled
from models.metrics import ranking_metrics
from models.quality import DAY_NS, freshness_lift, leave_last_out, paired_interval, run_protocol, stale_rows, temporal
from models.rankers import ALS, EASE, Popularity, TwoTowerRanker, context
from models.towers import UserBatch
from models.train import TrainConfig
from serving.model import load_checkpoint

COMMUNITIES, PER_COMMUNITY = 5, 8
USERS_PER = (60, 50, 40, 30, 20)  # community c's users: popularity orders the communities strictly
T0 = pd.Timestamp("2026-01-05", tz="UTC")
SMALL = {"dim": 16, "hidden": 32}  # a 40-item catalogue: a small model learns it in seconds


def community_log(seed: int = 0) -> RawData:
    """Each user rates every item of their community, one a day in a random order; nothing else.

    Leave-last-out's test target is then the one item of the community the user has not touched yet,
    the only unseen item that any personalised ranker should put first.
    """
    rng = np.random.default_rng(seed)
    items = [f"i{c}-{j}" for c in range(COMMUNITIES) for j in range(PER_COMMUNITY)]
    rows, users = [], []
    for c, n in enumerate(USERS_PER):
        for u in range(n):
            user = f"u{c}-{u}"
            users.append(user)
            start = T0 + pd.Timedelta(hours=int(rng.integers(0, 24 * 30)))
            for d, j in enumerate(rng.permutation(PER_COMMUNITY)):
                rows.append((user, f"i{c}-{j}", start + pd.Timedelta(days=d)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter["interaction_id"] = [f"E{i}" for i in range(len(inter))]
    inter["interaction_type"] = "rate"
    item_frame = pd.DataFrame({"item_id": items, "top_category": [i.split("-")[0] for i in items],
                               "category": [i.split("-")[0] for i in items], "product_name": items,
                               "discounted_price": np.nan, "rating": np.nan, "rating_count": np.nan})
    return RawData(pd.DataFrame({"user_id": users}), item_frame, inter)


@pytest.fixture(scope="module")
def ctx():  # noqa: ANN201
    return context(community_log())


def _community(item_cols: np.ndarray) -> np.ndarray:
    return item_cols // PER_COMMUNITY  # items are laid out community by community


def test_leave_last_out_requests_are_each_users_last_item_and_learn_from_nothing_after(ctx) -> None:  # noqa: ANN001
    p = leave_last_out(ctx)
    ev = ctx.ev
    assert len(p.test.rows) == sum(USERS_PER) and p.test.targets.shape == (sum(USERS_PER), 1)
    last = pd.Series(ev.ts).groupby(ev.user).transform("max").to_numpy()
    assert (ev.ts[p.test.rows] == last[p.test.rows]).all()
    # nothing at or after a user's test (tuning: validation) target is learnt from
    for fold in (p.test, p.tune):
        cut = np.full(len(ev.user_ids), np.iinfo(np.int64).max)
        cut[ev.user[fold.rows]] = ev.ts[fold.rows]
        assert not (fold.train & (ev.ts >= cut[ev.user])).any()
    assert (ev.ts[p.tune.rows] < ev.ts[p.test.rows]).all()


def test_temporal_requests_see_only_the_past_and_target_first_touches_after_the_cut(ctx) -> None:  # noqa: ANN001
    p = temporal(ctx, test_frac=0.2, val_frac=0.1, min_requests=0)
    assert p.tune_kind == "global cut"
    ev = ctx.ev
    cut = ev.ts[~p.test.train].min()
    assert ev.ts[p.test.train].max() < cut
    for row, targets in zip(p.test.rows, p.test.targets, strict=True):
        u = ev.user[row]
        before = set(ctx.col[(ev.user == u) & (ev.ts < cut)])
        after = set(ctx.col[(ev.user == u) & (ev.ts >= cut)])
        assert before and ev.ts[row] >= cut and ev.grp_start[row] == ev.user_start[row] + len(before)
        assert set(targets[targets >= 0]) == after - before
    assert ev.ts[p.tune.train].max() < ev.ts[~p.tune.train].min() <= cut


def test_too_few_global_validation_requests_fall_back_to_a_per_user_cut_inside_the_training_period(ctx) -> None:  # noqa: ANN001
    """15 validation requests once chose the model's training length: below min_requests, tuning reads each
    user's last first-time positives before the test cut instead, and learns from nothing at or after them."""
    glob = temporal(ctx, min_requests=0)
    p = temporal(ctx, min_requests=len(glob.tune.rows) + 1)
    assert p.tune_kind == "per-user cut" and len(p.tune.rows) > len(glob.tune.rows)
    ev = ctx.ev
    cut = ev.ts[~p.test.train].min()
    assert (p.test.rows == glob.test.rows).all()  # the test split is untouched
    for row, targets in zip(p.tune.rows, p.tune.targets, strict=True):
        u = ev.user[row]
        mine = ev.user == u
        assert ev.ts[row] < cut
        # it learns from every event of the user before the request, none at or after it
        assert (p.tune.train[mine] == (ev.ts[mine] < ev.ts[row])).all()
        t = targets[targets >= 0]
        later = mine & (ev.ts >= ev.ts[row]) & (ev.ts < cut) & ctx.novel
        assert len(t) >= 1 and set(t) == set(ctx.col[later])  # the last fifth of them: here every one after it
        assert not set(t) & set(ctx.col[mine & (ev.ts < ev.ts[row])])  # never an item of the history


def test_popularity_scores_its_hand_computed_answer(ctx) -> None:  # noqa: ANN001
    """Communities' items are ordered by their user counts: a community-c user's missing item ranks after
    the 8 c' items of every more popular community c' < c (rank 8c), so only c = 0 (rank 0) and c = 1
    (rank 8) hit the top 10."""
    out = run_protocol(ctx, leave_last_out(ctx), [Popularity()])["popularity"]
    n = sum(USERS_PER)
    assert out.metrics["recall@10"] == pytest.approx((USERS_PER[0] + USERS_PER[1]) / n)
    assert out.metrics["ndcg@10"] == pytest.approx((USERS_PER[0] + USERS_PER[1] / math.log2(10)) / n)
    assert out.metrics["recall@20"] == pytest.approx(sum(USERS_PER[:3]) / n)


@pytest.mark.parametrize("ranker", [EASE(lambdas=(1.0, 10.0)), ALS(factors=(16,), alphas=(10.0,)),
                                    TwoTowerRanker(TrainConfig(epochs=20, batch_size=64, lr=3e-3), SMALL)],
                         ids=["EASE", "ALS", "two-tower"])
def test_every_personalised_ranker_puts_the_missing_community_item_first(ctx, ranker) -> None:  # noqa: ANN001
    out = run_protocol(ctx, leave_last_out(ctx), [ranker])[ranker.name]
    assert out.metrics["recall@10"] >= 0.95, out.metrics
    assert out.metrics["ndcg@10"] >= 0.9, out.metrics
    assert out.rows["ndcg@10"].shape == (sum(USERS_PER),)


def test_the_served_checkpoint_ranks_exactly_as_the_benchmark_scored_it(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    """The two-tower figures are the serving model's: saved, loaded through serving.model and asked for the
    same users' histories, it returns the same top 10 as the benchmark's scorer did."""
    p = leave_last_out(ctx)
    ranker = TwoTowerRanker(TrainConfig(epochs=5, batch_size=64, lr=3e-3), SMALL)
    ranker.fit(ctx, p.test, {"epochs": 5})
    es = ctx.eval_set(p.test)
    from models.evaluation import evaluate

    metrics, top = evaluate(ranker.scorer(ctx, es), es, (10,))
    served = load_checkpoint(save_checkpoint(tmp_path, ranker.model.cpu(), ctx.enc.schema, metrics=metrics,
                                             data_window={}))
    from serving.model import UserInput

    ev, frame = ctx.ev, ctx.ev.frame
    inputs, seen = [], []
    for row in p.test.rows:
        past = frame.iloc[ev.user_start[row]:ev.grp_start[row]][::-1]  # newest first, as the stream keeps it
        inputs.append(UserInput({}, list(past["item_id"]), list(past["interaction_type"])))
        seen.append(set(past["item_id"]))
    scores = served.user_embeddings(inputs) @ served.item_embeddings().T
    ids = np.array(served.item_ids)
    col = {item: c for c, item in enumerate(ctx.enc.schema.item_ids)}
    served_top = np.array([[col[i] for i in ids[np.argsort(-s, kind="stable")] if i not in hidden][:10]
                           for s, hidden in zip(scores, seen, strict=True)])
    assert ranking_metrics(served_top, p.test.targets, (10,)) == pytest.approx(
        {k: metrics[k] for k in ("recall@10", "ndcg@10")}, abs=0.01)
    agree = np.mean([set(a) == set(b) for a, b in zip(served_top, top, strict=True)])
    assert agree >= 0.98  # float32 serving vs the benchmark's scores: at most a near-tie swaps


@pytest.mark.parametrize("path, expect", [({"skip": 0.0}, (0.0, 0.2)), ({"skip_dropout": 0.0}, (1.0, 0.0)),
                                          ({}, (1.0, 0.2))])
def test_the_refit_trains_the_linear_path_that_tuning_chose(ctx, path, expect) -> None:  # noqa: ANN001
    ranker = TwoTowerRanker(TrainConfig(epochs=1, batch_size=64, lr=3e-3), SMALL)
    ranker.fit(ctx, leave_last_out(ctx).test, {"epochs": 1, **path})
    assert (ranker.model.cfg.skip, ranker.model.cfg.skip_dropout) == expect


def test_a_stale_history_ends_at_the_users_first_event_of_the_day(ctx) -> None:  # noqa: ANN001
    ev = ctx.ev
    rows = np.arange(len(ev.ts))
    stale = stale_rows(ctx, rows)
    day = ev.ts - ev.ts % DAY_NS
    assert (ev.user[stale] == ev.user[rows]).all() and (stale <= rows).all()
    assert (ev.ts[stale] >= day).all()
    earlier = stale - 1
    ok = (earlier < ev.user_start[rows]) | (ev.ts[np.maximum(earlier, 0)] < day)
    assert ok.all()


def test_the_freshness_lift_is_zero_when_nothing_happened_the_same_day(ctx) -> None:  # noqa: ANN001
    """One event a day per user: the day-start snapshot already holds every earlier event, so fresh and
    stale histories are the same and so are the scores."""
    p = temporal(ctx)
    ease = EASE(lambdas=(10.0,))
    run_protocol(ctx, p, [ease])
    lift = freshness_lift(ctx, p, [ease])
    assert lift["history_changed_share"] == 0.0 and lift["n_requests"] > 0
    x = lift["rankers"]["EASE"]
    assert x["fresh"] == x["stale"] and x["lift"]["ndcg@10"][0] == 0.0


def test_the_freshness_lift_sees_same_day_events() -> None:
    """Squeeze every user's days into hours: the snapshot now misses same-day events and EASE, which reads
    them, scores better with the fresh history."""
    raw = community_log(seed=1)
    inter = raw.interactions
    first = inter.groupby("user_id")["timestamp"].transform("min")
    inter["timestamp"] = first.dt.floor("D") + (inter["timestamp"] - first) / 24
    ctx2 = context(RawData(raw.users, raw.items, inter))
    p = temporal(ctx2)
    ease = EASE(lambdas=(10.0,))
    run_protocol(ctx2, p, [ease])
    lift = freshness_lift(ctx2, p, [ease])
    assert lift["history_changed_share"] > 0.5
    mean, lo, hi = lift["rankers"]["EASE"]["lift"]["ndcg@10"]
    assert mean > 0 and lo > 0, lift


def test_paired_intervals() -> None:
    a, b = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0])
    mean, lo, hi = paired_interval(a, b, n=500)
    assert mean == pytest.approx(0.5) and 0.0 <= lo <= mean <= hi <= 1.0
    assert paired_interval(a, a) == (0.0, 0.0, 0.0)


def test_the_report_section_is_replaced_in_place_and_others_are_kept() -> None:
    doc = "# Benchmarks\n\nbody\n"
    one = put_section(doc, "ml-100k", "first")
    two = put_section(put_section(one, "synthetic", "other"), "ml-100k", "second")
    assert two.count("<!-- quality:ml-100k -->") == 1 and "second" in two and "first" not in two
    assert two.index("second") < two.index("other") and two.startswith(doc.rstrip())
    assert [s.splitlines()[1] for s in sections(two)] == ["second", "other"]


def test_the_benchmark_runs_end_to_end_on_a_folder(tmp_path: Path) -> None:
    raw = community_log(seed=2)
    for name, frame in (("users", raw.users), ("items", raw.items), ("interactions", raw.interactions)):
        frame.to_parquet(tmp_path / f"recommendation_{name}.parquet")
    r = run_quality(tmp_path, ["temporal", "leave-last-out"], epochs=2, als=False)
    for split in ("temporal", "leave-last-out"):
        rankers = r["splits"][split]["rankers"]
        assert set(rankers) == {"popularity", "EASE", "two-tower", "two-tower (sequence)"}
        assert rankers["two-tower"]["vs_two_tower"]["ndcg@10"] == (0.0, 0.0, 0.0)
    assert set(r["freshness_lift"]["rankers"]) == {"EASE", "two-tower"}
    text = markdown(r, "streamrec bench quality --data X")
    assert "| EASE |" in text and "Freshness lift" in text
    png = plot(r, tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "History controls" in text and "history shuffled" in text
    # the toy log's splits are small: the report says its figures cannot say much
    assert r["splits"]["temporal"]["warnings"] and "> **Warning:** the test split has" in text


def test_ease_tuned_from_one_factorisation_scores_as_the_inverse_does(ctx) -> None:  # noqa: ANN001
    """Tuning reads every λ off one eigendecomposition of the Gram matrix; the refit inverts. Same scores."""
    p = leave_last_out(ctx)
    es = ctx.eval_set(p.tune)
    idx = torch.arange(len(es.rows))
    for lam in (1.0, 30.0):
        tuned, refit = EASE(lambdas=(lam,)), EASE(lambdas=(lam,))
        tuned.fit(ctx, p.tune, {"lambda": lam}, val=es)
        refit.fit(ctx, p.tune, {"lambda": lam})
        assert tuned.b is None and refit.b is not None
        a, b = tuned.scorer(ctx, es)(idx), refit.scorer(ctx, es)(idx)
        assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max())), float((a - b).abs().max())


def test_history_controls_keep_the_events_and_lose_only_their_order_or_everything() -> None:
    items = torch.tensor([[5, 4, 3, 2, 0, 0], [7, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    types = torch.where(items > 0, items + 10, 0)
    u = UserBatch(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3, 1), items, types)
    s = shuffled(u, seed=3)
    assert [sorted(r.tolist()) for r in s.hist_items] == [sorted(r.tolist()) for r in items]
    assert (s.hist_types == torch.where(s.hist_items > 0, s.hist_items + 10, 0)).all()  # pairs kept together
    assert (s.hist_items[:, 4:] == 0).all() and (s.hist_items[1] == items[1]).all()  # padding stays last
    assert any((shuffled(u, seed).hist_items[0] != items[0]).any() for seed in range(5))
    e = emptied(u)
    assert (e.hist_items == 0).all() and (e.hist_types == 0).all()


@pytest.mark.parametrize("argv", [["--skip", "-1"], ["--skip-dropout", "1"]])
def test_a_bad_linear_path_option_is_one_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.bench_quality import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("--skip must be at least 0 and --skip-dropout in [0, 1)")
