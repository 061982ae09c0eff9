from __future__ import annotations

import torch

from models.towers import TowerConfig, TwoTower, UserBatch
from models.train import TrainConfig, fit, new_model, prepare

from .conftest import raw_of

CFG = TowerConfig(n_items=50, n_top=6, n_leaf=10, n_price=5, n_rating=5, n_count=5, n_text=64, text_tokens=4,
                  n_age=7, n_gender=4, n_region=6, dim=16, hidden=32)


def _batch(b: int, h: int = 20, empty: bool = False) -> UserBatch:
    g = torch.Generator().manual_seed(0)
    hist = torch.zeros(b, h, dtype=torch.long) if empty else torch.randint(0, CFG.n_items, (b, h), generator=g)
    def ints(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=g)

    types = torch.where(hist > 0, torch.randint(2, CFG.n_types, (b, h), generator=g), 0)
    return UserBatch(ints(CFG.n_age, b), ints(CFG.n_gender, b), ints(CFG.n_region, b), ints(CFG.n_top, b, 4),
                     hist, types)


def test_shapes_and_normalisation() -> None:
    model = TwoTower(CFG).eval()
    users, loss = model(_batch(8))
    assert users.shape == (8, 16) and loss is None
    assert torch.allclose(users.norm(dim=1), torch.ones(8), atol=1e-5)
    items = model.items(torch.arange(2, 50))
    assert items.shape == (48, 16)
    assert torch.allclose(items.norm(dim=1), torch.ones(48), atol=1e-5)
    logits, loss = model(_batch(8), torch.arange(2, 10), torch.zeros(CFG.n_items))
    assert logits.shape == (8, 8) and loss is not None and loss.dim() == 0


def test_empty_history_is_finite() -> None:
    users, _ = TwoTower(CFG).eval()(_batch(4, empty=True))
    assert torch.isfinite(users).all()


def test_duplicate_targets_are_not_negatives() -> None:
    model = TwoTower(CFG).eval()
    logits, loss = model(_batch(3), torch.tensor([5, 5, 7]))
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

