"""A small two-tower configuration and seeded random user batches for it: the tower tests and serving's
numpy-tower parity test build their models from these (kept apart from helpers.py, which imports no torch)."""

from __future__ import annotations

import torch

from models.towers import TowerConfig, UserBatch

CFG = TowerConfig(n_items=50, n_top=6, n_leaf=10, n_price=5, n_rating=5, n_count=5, n_text=64, text_tokens=4,
                  n_age=7, n_gender=4, n_region=6, dim=16, hidden=32)


def random_batch(b: int, h: int = 20, empty: bool = False) -> UserBatch:
    g = torch.Generator().manual_seed(0)
    hist = torch.zeros(b, h, dtype=torch.long) if empty else torch.randint(0, CFG.n_items, (b, h), generator=g)
    def ints(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=g)

    types = torch.where(hist > 0, torch.randint(2, CFG.n_types, (b, h), generator=g), 0)
    return UserBatch(ints(CFG.n_age, b), ints(CFG.n_gender, b), ints(CFG.n_region, b), ints(CFG.n_top, b, 4),
                     hist, types)
