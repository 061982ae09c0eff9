from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generation.dataset_gen_amazon import Dataset
from models.features import FeatureError
from serving.model import LoadedModel, UserInput, load_checkpoint


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load_checkpoint(checkpoint)


def _user(ds: Dataset, user_id: str) -> UserInput:
    row = ds.users.set_index("user_id").loc[user_id]
    events = ds.interactions[ds.interactions.user_id == user_id].sort_values("timestamp", ascending=False)[:20]
    profile = {"age": int(row.age), "gender": row.gender, "region": row.region,
               "preferred_categories": list(row.preferred_categories)}
    return UserInput(profile, list(events.item_id), list(events.interaction_type))


def test_item_embeddings(loaded: LoadedModel, medium: Dataset) -> None:
    items = loaded.item_embeddings()
    assert items.dtype == np.float32 and items.shape == (len(loaded.item_ids), loaded.dim)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    assert set(loaded.item_ids) == set(medium.items.item_id)
    with pytest.raises(ValueError):
        items[0, 0] = 1.0  # shared and read-only
    assert loaded.meta["version"] == "v1" and "feature_schema" not in loaded.meta


def test_user_embeddings_are_batched_and_ordered(loaded: LoadedModel, medium: Dataset) -> None:
    users = [_user(medium, u) for u in medium.users.user_id[:5]]
    users.append(UserInput({}, [], []))  # a brand-new user: profile unknown, no history
    users.append(UserInput({"age": None, "gender": "?", "region": None, "preferred_categories": None},
                           ["no-such-item", "I000001"], ["weird_type", "cart"]))
    together = loaded.user_embeddings(users)
    alone = np.stack([loaded.user_embeddings([u])[0] for u in users])
    assert together.shape == (7, loaded.dim) and together.dtype == np.float32
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert loaded.user_embeddings([]).shape == (0, loaded.dim)
    with pytest.raises(FeatureError, match="aligned"):
        loaded.user_embeddings([UserInput({}, ["a", "b"], ["cart"])])


def test_fresh_events_move_the_user_toward_their_category(loaded: LoadedModel, medium: Dataset) -> None:
    items = loaded.item_embeddings()
    cat = medium.items.set_index("item_id").loc[loaded.item_ids, "top_category"].to_numpy()
    popular = medium.interactions.item_id.value_counts()
    users = [_user(medium, u) for u in medium.users.user_id[:30]]
    gains, closer = [], 0
    for user in users:
        before = items @ loaded.user_embeddings([user])[0]
        top_before = cat[np.argsort(-before)[:10]]
        # C = the category least present in the user's current top-10: the hardest direction to move
        c = min(sorted(set(cat)), key=lambda k: ((top_before == k).sum(), k))
        burst = [i for i in popular.index if cat[loaded.item_ids.index(i)] == c][:10]
        fresh = UserInput(user.profile, (burst + user.recent_item_ids)[:20],
                          (["positive_view"] * len(burst) + user.recent_interaction_types)[:20])
        after = items @ loaded.user_embeddings([fresh])[0]
        closer += after[cat == c].mean() > before[cat == c].mean()  # no retraining, yet it moved
        gains.append((cat[np.argsort(-after)[:10]] == c).sum() - (top_before == c).sum())
    gains_ = np.array(gains)
    assert closer == len(users), "a burst of views in C must move every user toward C's items"
    assert (gains_ > 0).mean() >= 0.6 and gains_.mean() >= 1.0, f"top-10 gains of C items: {gains}"
    assert (gains_ >= 0).all(), f"a burst in C must never push C out of the top-10: {gains}"


@pytest.mark.parametrize(("tower", "skip", "last"), [("sequence", 0.0, 0), ("pooled", 0.0, 0), ("sequence", 1.5, 0),
                                                     ("pooled", 1.5, 0), ("pooled", 0.0, 3)])
def test_the_numpy_user_tower_equals_the_torch_one(tower: str, skip: float, last: int) -> None:
    """Serving embeds users with numpy_tower(model); it must give TwoTower.users' vectors: random weights
    everywhere (biases, recency and type priors too), random and empty histories, OOV and padding codes,
    a batch of one and of many; with and without the linear path beside the MLP (TowerConfig.skip), and
    with the newest events as an input of their own (TowerConfig.last_events)."""
    from dataclasses import replace

    import torch

    from models.towers import TwoTower
    from serving.model import NumpySequenceTower, NumpyUserTower, numpy_tower
    from tests.towers import CFG, random_batch

    torch.manual_seed(3)
    model = TwoTower(replace(CFG, user_tower=tower, skip=skip, skip_dropout=0.5, last_events=last)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.item_tower.set_features({"top": torch.randint(0, CFG.n_top, (CFG.n_items,)),
                                       "leaf": torch.randint(0, CFG.n_leaf, (CFG.n_items,))})
    fast = numpy_tower(model)
    assert isinstance(fast, NumpySequenceTower if tower == "sequence" else NumpyUserTower)
    for batch in (random_batch(1), random_batch(33), random_batch(5, empty=True),
                  random_batch(9, h=CFG.max_history)):
        with torch.inference_mode():
            want = model.users(batch).numpy()
        got = fast(*(t.numpy() for t in batch))
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.allclose(got, want, atol=2e-5), np.abs(got - want).max()


def test_serving_embeds_users_as_the_trained_torch_model_does(loaded: LoadedModel, medium: Dataset) -> None:
    import torch

    from models.towers import UserBatch

    users = [_user(medium, u) for u in medium.users.user_id[:40]] + [UserInput({}, [], [])]
    prof = loaded.schema.profile_table([u.profile for u in users])
    items, types = loaded.schema.encode_history([u.recent_item_ids for u in users],
                                                [u.recent_interaction_types for u in users])
    t = torch.from_numpy
    with torch.inference_mode():
        want = loaded._model.users(UserBatch(t(prof["age"]), t(prof["gender"]), t(prof["region"]), t(prof["pref"]),
                                             t(items), t(types))).numpy()
    assert np.allclose(loaded.user_embeddings(users), want, atol=2e-5)
