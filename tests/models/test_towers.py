from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import prepare
from models.towers import TowerConfig, TwoTower, UserBatch, Windows, _unique
from models.train import TrainConfig, fit, new_model
from tests.helpers import raw_of
from tests.towers import CFG, random_batch


@pytest.fixture(params=["sequence", "pooled"])
def cfg(request: pytest.FixtureRequest) -> TowerConfig:
    return replace(CFG, user_tower=request.param)


def test_shapes_and_normalisation(cfg: TowerConfig) -> None:
    model = TwoTower(cfg).eval()
    users, loss = model(random_batch(8))
    assert users.shape == (8, 16) and loss is None
    assert torch.allclose(users.norm(dim=1), torch.ones(8), atol=1e-5)
    items = model.items(torch.arange(2, 50))
    assert items.shape == (48, 16)
    assert torch.allclose(items.norm(dim=1), torch.ones(48), atol=1e-5)
    logits, loss = model(random_batch(8), torch.arange(2, 10), torch.zeros(CFG.n_items))
    assert logits.shape == (8, 8) and loss is not None and loss.dim() == 0


def test_empty_history_is_finite(cfg: TowerConfig) -> None:
    users, _ = TwoTower(cfg).eval()(random_batch(4, empty=True))
    assert torch.isfinite(users).all()


class _Reads(dict):
    """A state dict that remembers which tensors were read."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key).float()


def test_serving_arrays_are_the_checkpoints_user_tower_tensors_by_name(cfg: TowerConfig) -> None:
    """serving/model.py's numpy forward reads ``TwoTower.serving_arrays()``: each array is the checkpoint's tensor
    of that name (transposed for ``x @ w``), and every user-tower tensor of the checkpoint reaches serving."""
    torch.manual_seed(1)
    model = TwoTower(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    s = _Reads({k.removeprefix("user_tower."): v for k, v in model.state_dict().items() if k.startswith("user_tower.")})
    with torch.inference_mode():
        hist = model.item_tower.history_vectors(torch.arange(cfg.n_items))
    d = cfg.dim
    want = {"hist": hist, "age": s["age.weight"], "gender": s["gender.weight"], "region": s["region.weight"],
            "pref": s["pref.weight"], "pref_padding": torch.tensor(0), "kinds": s["kind.weight"],
            "mlp1_w": s["mlp.1.weight"].T, "mlp1_b": s["mlp.1.bias"], "mlp2_w": s["mlp.3.weight"].T,
            "mlp2_b": s["mlp.3.bias"], "skip": torch.tensor(cfg.skip)}  # a config value, not a tensor
    if cfg.user_tower == "pooled":
        want |= {"kind_bias": s["kind_bias.weight"][:, 0], "pos_bias": s["pos_bias"],
                 "query_w": s["query.weight"].T, "query_b": s["query.bias"],
                 "last_events": torch.tensor(cfg.last_events)}  # a config value too
    else:
        w, b = s["qkv.weight"], s["qkv.bias"]
        want |= {"q_w": w[:d].T, "q_b": b[:d], "k_item": hist @ w[d:2 * d].T + b[d:2 * d],
                 "v_item": hist @ w[2 * d:].T + b[2 * d:], "k_kind": s["kind.weight"] @ w[d:2 * d].T,
                 "v_kind": s["kind.weight"] @ w[2 * d:].T, "rel_bias": s["rel_bias"],
                 "out_w": s["out.weight"].T, "out_b": s["out.bias"],
                 "ffn1_w": s["ffn.0.weight"].T, "ffn1_b": s["ffn.0.bias"], "ffn2_w": s["ffn.2.weight"].T,
                 "ffn2_b": s["ffn.2.bias"], "norm1_w": s["norm1.weight"], "norm1_b": s["norm1.bias"],
                 "norm2_w": s["norm2.weight"], "norm2_b": s["norm2.bias"],
                 "norm1_eps": torch.tensor(1e-5), "norm2_eps": torch.tensor(1e-5)}
    got = model.serving_arrays()
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == tuple(value.shape), name
        assert np.allclose(got[name], value.numpy(), atol=1e-6), name
    assert s.read == set(s)


def _user_vectors_slot_by_slot(model: TwoTower, u: UserBatch) -> torch.Tensor:
    """The user tower spelled out slot by slot: h = item vector + type vector, attention and mean over h."""
    t = model.user_tower
    hist = model.item_tower.history_vectors(u.hist_items)
    prof = torch.cat([t.age(u.age), t.gender(u.gender), t.region(u.region), t.pref(u.pref)], dim=-1)
    h = hist + t.kind(u.hist_types)  # (B, H, D)
    valid = u.hist_items > 0
    logits = (h @ t.query(prof).unsqueeze(-1)).squeeze(-1) / math.sqrt(h.size(-1))
    logits = logits + t.pos_bias[:h.size(1)] + t.kind_bias(u.hist_types).squeeze(-1)
    w = torch.softmax(logits.masked_fill(~valid, -1e9), dim=-1) * valid.any(dim=-1, keepdim=True)
    pooled = (w.unsqueeze(-1) * h).sum(dim=1)
    mean = (h * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(t.mlp(torch.cat([prof, pooled, mean], dim=-1)) + model.cfg.skip * mean, dim=-1)


def test_the_pooled_user_tower_equals_the_slot_by_slot_formula_with_its_gradients() -> None:
    """TwoTower.users embeds each distinct history item once and pools the type vectors through the type
    table: the values and every gradient must be those of the plain formula."""
    torch.manual_seed(1)
    model = TwoTower(replace(CFG, user_tower="pooled")).eval()
    batch = random_batch(32)
    ragged = torch.arange(20) >= torch.randint(0, 21, (32, 1))  # histories of every length, some empty
    batch = batch._replace(hist_items=batch.hist_items.masked_fill(ragged, 0),
                           hist_types=batch.hist_types.masked_fill(ragged, 0))
    got, want = model.users(batch), _user_vectors_slot_by_slot(model, batch)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    weights = torch.randn_like(got)
    grads = []
    for out in (got, want):
        model.zero_grad()
        (out * weights).sum().backward(retain_graph=True)
        grads.append({n: p.grad.to_dense().clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert grads[0]["user_tower.kind.weight"][0].abs().max() == 0  # the padding type learns nothing


def test_the_marked_unique_is_torch_unique() -> None:
    idx = torch.randint(0, 50, (32, 20), generator=torch.Generator().manual_seed(3))
    got, want = _unique(idx, 50), torch.unique(idx, return_inverse=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_duplicate_targets_are_not_negatives() -> None:
    model = TwoTower(CFG).eval()
    logits, loss = model(random_batch(3), torch.tensor([5, 5, 7]))
    assert logits[0, 1] == float("-inf") and logits[1, 0] == float("-inf")
    assert torch.isfinite(logits.diagonal()).all() and torch.isfinite(loss)


def test_loss_falls_on_a_tiny_dataset(tiny) -> None:  # noqa: ANN001 - fixture
    p = prepare(raw_of(tiny))
    torch.manual_seed(0)
    model = new_model(p.enc.schema, p.enc, dim=16, hidden=32)
    result = fit(model, p, TrainConfig(epochs=8, batch_size=64, lr=3e-3))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.3, losses


def test_training_is_deterministic_for_a_seed(tiny) -> None:  # noqa: ANN001 - fixture
    states = []
    for _ in range(2):
        p = prepare(raw_of(tiny))
        torch.manual_seed(1)
        model = new_model(p.enc.schema, p.enc, dim=16, hidden=32)
        fit(model, p, TrainConfig(epochs=2, batch_size=64, seed=1))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])



def test_the_sequence_tower_reads_every_position_of_a_window_as_serving_reads_that_history() -> None:
    """Training reads a target's state at its position in a window of the user's events (oldest first, all
    positions in one pass); serving reads the newest of the same events (newest first). Same vectors, and
    nothing after the position (the target, the future) reaches it."""
    torch.manual_seed(2)
    h = CFG.max_history
    model = TwoTower(replace(CFG, user_tower="sequence")).eval()
    g = torch.Generator().manual_seed(3)
    n_win, lengths = 6, torch.tensor([h, h, 7, 1, h - 1, 30])
    items = torch.randint(1, CFG.n_items, (n_win, h), generator=g)
    items = items.masked_fill(torch.arange(h) >= lengths.unsqueeze(1), 0)  # short windows end in padding
    types = torch.where(items > 0, torch.randint(2, CFG.n_types, (n_win, h), generator=g), 0)
    win = torch.repeat_interleave(torch.arange(n_win), 4)
    pos = torch.cat([torch.randint(0, int(n), (4,), generator=g) for n in lengths])
    prof = random_batch(len(win))
    got = model.window_users(Windows(items, types, win, pos, prof))
    hist = torch.zeros(len(win), h, dtype=torch.long)
    kinds = torch.zeros_like(hist)
    for t, (w, p) in enumerate(zip(win.tolist(), pos.tolist(), strict=True)):
        hist[t, : p + 1] = items[w, : p + 1].flip(0)  # newest first, as the online store keeps it
        kinds[t, : p + 1] = types[w, : p + 1].flip(0)
    want = model.users(prof._replace(hist_items=hist, hist_types=kinds))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    future = items.clone()
    future[:, -1] = 1  # change the last slot of every window: only states at that slot may move
    moved = (model.window_users(Windows(future, types, win, pos, prof)) - got).abs().amax(1) > 1e-6
    assert not moved[pos < h - 1].any()
