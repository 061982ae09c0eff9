from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.compare import Report
from models.data import Events, TrainError, encode, load_data, split_by_time, user_batch
from models.features import POSITIVE_TYPES, FeatureSchema
from models.train import RowAdam, retain_freed_memory
from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES

EVENTS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 40), st.sampled_from(INTERACTION_TYPES)),
    min_size=1, max_size=120)


def _frame(rows: list[tuple[int, int, int, str]]) -> pd.DataFrame:
    # few distinct timestamps on purpose: ties are where a leak would hide
    return pd.DataFrame({
        "interaction_id": [f"E{i}" for i in range(len(rows))],
        "user_id": [f"U{u}" for u, _, _, _ in rows], "item_id": [f"I{i}" for _, i, _, _ in rows],
        "timestamp": pd.to_datetime([t for _, _, t, _ in rows], unit="s", utc=True),
        "interaction_type": [k for _, _, _, k in rows]})


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.sampled_from(["all", "novel"]))
def test_no_history_reaches_the_target_time(rows: list[tuple[int, int, int, str]], targets: str) -> None:
    ev = Events.from_frame(_frame(rows))
    split = split_by_time(ev, targets)
    for part in (split.train, split.val, split.test):
        if len(part) == 0:
            continue
        hist = ev.history_rows(part, HISTORY_LENGTH)
        for row, h in zip(part, hist, strict=True):
            h = h[h >= 0]
            assert (ev.ts[h] < ev.ts[row]).all(), "history holds an event at or after the target"
            assert (ev.user[h] == ev.user[row]).all(), "history holds another user's event"
            assert (np.diff(ev.ts[h]) <= 0).all(), "history is not newest first"
            earlier = np.flatnonzero((ev.user == ev.user[row]) & (ev.ts < ev.ts[row]))
            assert len(h) == min(HISTORY_LENGTH, len(earlier)), "history is not the full recent window"
    # the encoded batch that training feeds the model holds exactly those events
    if len(split.train):
        schema = FeatureSchema.build(pd.DataFrame({"user_id": []}), _no_items(), ev.frame)
        enc = encode(ev, schema, pd.DataFrame({"user_id": []}), _no_items())
        ub = user_batch(enc, torch.as_tensor(split.train))
        hist = ev.history_rows(split.train, HISTORY_LENGTH)
        expect = np.where(hist >= 0, enc.ev_item.numpy()[np.maximum(hist, 0)], 0)
        assert (ub.hist_items.numpy() == expect).all()
    # training targets are positive and strictly older than the user's held-out targets
    assert ev.frame["interaction_type"].iloc[split.train].isin(POSITIVE_TYPES).all()
    held = np.r_[split.val, split.test]
    for row in split.train:
        same = held[ev.user[held] == ev.user[row]]
        assert (ev.ts[row] < ev.ts[same]).all()


def _no_items() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("item_id", "category", "top_category", "discounted_price", "rating",
                                         "rating_count", "product_name")})


def test_split_holds_out_each_users_last_novel_positive(trained: Report) -> None:
    p = trained.prepared
    ev, split = p.events, p.split
    assert len(np.unique(ev.user[split.test])) == len(split.test)  # one test target per user
    assert set(split.train).isdisjoint(split.test) and set(split.train).isdisjoint(split.val)
    test_ts = dict(zip(ev.user[split.test], ev.ts[split.test], strict=True))
    val_ts = dict(zip(ev.user[split.val], ev.ts[split.val], strict=True))
    for u, t in val_ts.items():
        assert t < test_ts[u]
    # nothing the user touched before the target can be a test target (they are novel)
    seen = set(zip(ev.user[: split.test.min()], ev.frame["item_id"].iloc[: split.test.min()], strict=True))
    assert not any((ev.user[r], ev.frame["item_id"].iloc[r]) in seen for r in split.test if r < split.test.min())


def test_model_beats_popularity(trained: Report) -> None:
    model, pop = trained.test["two-tower"], trained.test["popularity"]
    assert model["recall@10"] > pop["recall@10"] + 0.02, trained.test
    assert model["ndcg@10"] > pop["ndcg@10"], trained.test
    assert trained.test["random"]["recall@10"] < 0.02  # sanity: the task is not trivial
    assert model["coverage@10"] > pop["coverage@10"]  # personalised lists reach more of the catalogue


def test_missing_data_is_one_clear_error(tmp_path) -> None:  # noqa: ANN001 - fixture
    with pytest.raises(TrainError, match="run `streamrec generate` first"):
        load_data(tmp_path)


def test_logged_events_are_added_once(tiny, tmp_path) -> None:  # noqa: ANN001 - fixtures
    from generation.dataset_gen_amazon import write

    write(tiny, tmp_path)
    base = tiny.interactions
    replay = base.iloc[:50].copy()
    looped = replay.assign(interaction_id=replay.interaction_id + "~1",
                           timestamp=replay.timestamp.dt.floor("us"))  # a looped replay, µs timestamps
    new = base.iloc[:3].assign(interaction_id=["N1", "N2", "N3"], item_id="brand-new")
    raw = load_data(tmp_path, pd.concat([replay, looped, new]))
    assert len(raw.interactions) == len(base) + 3


def test_warm_start_grows_vocabularies_in_place(tiny) -> None:  # noqa: ANN001 - fixture
    from models.data import prepare
    from models.train import grow_state, new_model
    from tests.helpers import raw_of

    raw = raw_of(tiny)
    old = prepare(raw)
    model = new_model(old.enc.schema, old.enc, dim=8, hidden=16)
    extra = raw.interactions.iloc[:5].assign(interaction_id=[f"X{i}" for i in range(5)], item_id="NEW")
    raw.interactions = pd.concat([raw.interactions, extra], ignore_index=True)
    grown = prepare(raw, old.enc.schema)
    assert grown.enc.schema.n_item_rows == old.enc.schema.n_item_rows + 1
    bigger = new_model(grown.enc.schema, grown.enc, dim=8, hidden=16)
    grow_state(bigger, model.state_dict())
    old_rows = model.item_tower.id.weight.shape[0]
    assert torch.equal(bigger.item_tower.id.weight[:old_rows], model.item_tower.id.weight)
    with pytest.raises(TrainError, match="--dim"):
        grow_state(new_model(grown.enc.schema, grown.enc, dim=4, hidden=16), model.state_dict())


def test_too_little_data_is_one_clear_error(tiny) -> None:  # noqa: ANN001 - fixture
    from models.data import RawData, prepare

    with pytest.raises(TrainError, match="too little data"):
        prepare(RawData(tiny.users, tiny.items, tiny.interactions.iloc[:3]))


def test_the_model_holds_the_weights_of_the_epoch_selection_chose(trained: Report) -> None:
    """fit keeps the chosen epoch's weights, not the last epoch's: the test figure of the returned model is
    the validation figure recorded for that epoch, recomputed."""
    from models.evaluation import eval_set, evaluate, model_scorer

    result, p = trained.fit, trained.prepared
    assert len(p.split.val) >= 200 and result.selection and 1 <= result.best_epoch <= len(result.history)
    es = eval_set(p.enc, p.split.val)
    now = evaluate(model_scorer(result.model, p.enc, es), es, (10,))[0]
    assert now["ndcg@10"] == pytest.approx(result.history[result.best_epoch - 1]["val_ndcg@10"], abs=1e-6)


def test_the_linear_path_is_the_one_that_scored_best_on_validation(trained: Report) -> None:
    """With >= MIN_REQUESTS validation users every PATH_GRID entry is trained, and the model returned is the
    one choose_variant keeps: its config says so, and its validation figure, recomputed, is that one's."""
    from models.evaluation import eval_set, evaluate, model_scorer
    from models.metrics import per_row_metrics
    from models.selection import selection_figure, selection_ks
    from models.towers import TowerConfig
    from models.train import PATH_GRID, PATH_KEYS

    result, p = trained.fit, trained.prepared
    tried = result.path_tried
    assert [{k: v for k, v in t.items() if k in PATH_KEYS} for t in tried] == list(PATH_GRID)
    assert len({round(t["val_figure"], 6) for t in tried}) == len(tried)  # three models, not one thrice
    json.dumps(tried, allow_nan=False)  # checkpoints' meta.json holds it
    best = max(tried, key=lambda t: t["val_figure"])
    assert tried[0]["gain"] == 0 and all(t["gain"] == pytest.approx(t["val_figure"] - tried[0]["val_figure"])
                                         for t in tried)
    defaults = {k: TowerConfig.__dataclass_fields__[k].default for k in PATH_KEYS}
    assert {k: getattr(result.model.cfg, k) for k in PATH_KEYS} == {**defaults, **{k: best[k] for k in best
                                                                                   if k in PATH_KEYS}}
    assert result.best_epoch == best["epochs"]
    assert result.seconds == pytest.approx(sum(t["seconds"] for t in tried))  # training time: every run
    es = eval_set(p.enc, p.split.val)
    ks = selection_ks(es.n_catalogue)
    _, top = evaluate(model_scorer(result.model, p.enc, es), es, ks)
    assert float(selection_figure(per_row_metrics(top, es.targets, ks)[0]).mean()) == pytest.approx(
        best["val_figure"], abs=1e-6)


def test_below_min_requests_or_pinned_the_path_is_not_chosen(tiny) -> None:  # noqa: ANN001 - fixture
    from models.compare import train_and_evaluate
    from models.train import PATH_GRID, TrainConfig, path_grid
    from tests.helpers import raw_of

    assert path_grid({"dim": 8}) == list(PATH_GRID) and PATH_GRID[0] == {}  # the default comes first
    assert path_grid({"skip": 0.0}) == [{}] and path_grid({"skip_dropout": 0.1}) == [{}]  # as given
    from models.data import prepare
    from models.evaluation import eval_set
    from models.train import fit_tuned

    p = prepare(raw_of(tiny))
    val = eval_set(p.enc, np.resize(p.split.val, 200))  # enough requests (repeated): only epochs 0 stops it
    untrained = fit_tuned(p, TrainConfig(epochs=0), {}, val=val)
    assert untrained.options == {} and len(untrained.result.path_tried) == 1
    report = train_and_evaluate(raw_of(tiny), TrainConfig(epochs=1, seed=0), baselines=False)
    assert len(report.prepared.split.val) < 200
    assert [{k: v for k, v in t.items() if k != "seconds"} for t in report.fit.path_tried
            ] == [{"epochs": 1, "val_figure": None}]  # nothing was scored to choose from
    json.dumps(report.fit.path_tried, allow_nan=False)  # checkpoints' meta.json holds it
    assert report.fit.model.cfg.skip == 1.0 and report.fit.model.cfg.skip_dropout == 0.2


@pytest.mark.parametrize("tower, margin", [("pooled", 0.0), ("sequence", 0.02)])
def test_with_session_dynamics_fresh_history_beats_a_day_start_snapshot(tower: str, margin: float) -> None:
    """streamrec train reports the served model's freshness lift: the same test targets answered with each
    history as of the day's start. With the generator's session dynamics the fresh history must win (the
    sequence tower, which reads the newest events through attention, by a clear margin)."""
    from generation.dataset_gen_amazon import GeneratorConfig, generate
    from models.compare import train_and_evaluate
    from models.train import SEQUENCE_TRAINING, TrainConfig
    from tests.helpers import raw_of

    cfg = TrainConfig(seed=0, **(SEQUENCE_TRAINING if tower == "sequence" else {}))
    report = train_and_evaluate(raw_of(generate(GeneratorConfig(600, 1500, 15_000, seed=11, dynamics=True))),
                                cfg, {"user_tower": tower}, baselines=False)
    m = report.test["two-tower"]
    assert m["recall@10"] > m["day_start_recall@10"] + margin, m


@pytest.mark.parametrize("rows", [50, 16384])
def test_row_adam_moves_the_weights_as_sparse_adam_does(rows: int) -> None:
    """RowAdam is SparseAdam's update without sparse-tensor arithmetic: same weights and moments, step by step,
    with repeated rows in a batch (an uncoalesced gradient) and rows a step does not touch."""
    torch.manual_seed(5)
    a = torch.nn.Embedding(rows, 8, sparse=True)
    b = torch.nn.Embedding(rows, 8, sparse=True)
    b.load_state_dict(a.state_dict())
    opts = torch.optim.SparseAdam([a.weight], lr=1e-2), RowAdam([b.weight], lr=1e-2)
    for _ in range(20):
        idx, w = torch.randint(0, min(rows, 200), (300,)), torch.randn(300, 8)
        for table, opt in zip((a, b), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            (table(idx) * w).sum().backward()
            opt.step()
        assert torch.allclose(a.weight, b.weight, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.allclose(opts[0].state[a.weight][key], opts[1].state[b.weight][key], atol=1e-6)
    assert torch.equal(a.weight[200:], b.weight[200:])  # never named: never moved


def test_retaining_freed_memory_is_idempotent() -> None:
    assert retain_freed_memory() == retain_freed_memory()
