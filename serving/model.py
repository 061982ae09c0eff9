"""The serving face of a checkpoint: item and user embeddings from raw ids, never retraining.

    model = load_latest(settings.checkpoint_dir)
    items = model.item_embeddings()                       # (n_items, D), row i <-> model.item_ids[i]
    users = model.user_embeddings([UserInput(profile, recent_item_ids, recent_interaction_types)])
    scores = users @ items.T                              # cosine scores, higher is better

A user's recent history (newest first) is pooled inside the user tower, so a fresh event changes
the user's vector on the next call. Unknown item ids, categories, genders and regions map to OOV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import erf

from models.checkpoints import CheckpointError, latest_version, read_checkpoint
from models.features import FeatureSchema
from models.towers import TwoTower

__all__ = ["UserInput", "LoadedModel", "NumpyUserTower", "NumpySequenceTower", "numpy_tower", "load_checkpoint",
           "load_latest"]

_CHUNK = 1024  # users per forward pass: bounds memory for large batches


@dataclass(frozen=True)
class UserInput:
    profile: dict[str, Any] = field(default_factory=dict)  # age, gender, region, preferred_categories
    recent_item_ids: list[str] = field(default_factory=list)  # newest first, ≤ the schema's max_history used
    recent_interaction_types: list[str] = field(default_factory=list)  # aligned with recent_item_ids


class NumpyUserTower:
    """The user tower's eval-mode forward in numpy, from the arrays ``UserTower.serving_arrays`` names.

    Serving answers micro-batches of a few requests: there torch spends ~25 µs dispatching each of the
    tower's ~60 small ops (1.7 ms for one user on this project's 2-core machine), numpy a few. Every
    history slot's item vector (id + top + leaf category: ``ItemTower.history_vectors``) is computed once
    for the whole catalogue at load. The same numbers as ``TwoTower.users`` to float32 rounding
    (tests/serving/test_model.py pins it on trained and random weights); training stays in torch.
    """

    def __init__(self, a: dict[str, np.ndarray]) -> None:
        self.hist = a["hist"]  # (rows, D)
        self.profile = _Profile(a)
        self.kinds, self.kind_bias, self.pos_bias = a["kinds"], a["kind_bias"], a["pos_bias"]  # kinds' row 0 is 0
        self.query_w, self.query_b = a["query_w"], a["query_b"]
        self.w1, self.b1, self.w2, self.b2 = a["mlp1_w"], a["mlp1_b"], a["mlp2_w"], a["mlp2_b"]
        self.skip = np.float32(a["skip"])
        self.last_events = int(a["last_events"])
        self.scale = np.float32(1 / math.sqrt(self.hist.shape[1]))

    def __call__(self, age: np.ndarray, gender: np.ndarray, region: np.ndarray, pref: np.ndarray,
                 hist_items: np.ndarray, hist_types: np.ndarray) -> np.ndarray:
        """(B, D) float32, L2-normalised; inputs as :class:`UserBatch` holds them, as numpy."""
        prof = self.profile(age, gender, region, pref)
        h = self.hist[hist_items] + self.kinds[hist_types]  # (B, H, D): each slot's vector
        valid = hist_items > 0
        q = prof @ self.query_w + self.query_b  # (B, D)
        logits = np.einsum("bhd,bd->bh", h, q) * self.scale + self.pos_bias[: h.shape[1]] + self.kind_bias[hist_types]
        logits = np.where(valid, logits, np.float32(-1e9))
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w *= valid.any(axis=1, keepdims=True) / w.sum(axis=1, keepdims=True)  # empty history: zeros
        mean = _masked_mean(valid, h)
        pools = [prof, np.einsum("bh,bhd->bd", w, h), mean]
        if self.last_events:  # the newest events' plain mean (towers.UserTower)
            pools.append(_masked_mean(valid & (np.arange(h.shape[1]) < self.last_events), h))
        x = np.concatenate(pools, axis=1)
        out = _gelu(x @ self.w1 + self.b1) @ self.w2 + self.b2 + self.skip * mean  # the linear path (towers._skip)
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _masked_mean(mask: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(B, D) plain mean of each row's slots of ``h`` (B, H, D) where ``mask`` (B, H) is True; zeros without any."""
    return np.einsum("bh,bhd->bd", (mask / np.maximum(mask.sum(1, keepdims=True), 1)).astype(np.float32), h)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.float32(math.sqrt(2))))  # nn.GELU(): the exact, erf form


def _layer_norm(x: np.ndarray, a: dict[str, np.ndarray], name: str) -> np.ndarray:
    w, b, eps = a[f"{name}_w"], a[f"{name}_b"], a[f"{name}_eps"]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class NumpySequenceTower:
    """The sequence tower's eval-mode forward in numpy (see NumpyUserTower for why numpy), from the arrays
    ``SequenceUserTower.serving_arrays`` names.

    Only the newest position's state is served, and one attention block reads each event's vector
    linearly, so every item's key and value rows are computed once at load: a request costs gathers, one
    query, a softmax over ≤ H keys and the small MLPs. The same numbers as ``TwoTower.users`` to float32
    rounding (tests/serving/test_model.py).
    """

    def __init__(self, a: dict[str, np.ndarray]) -> None:
        self.a = a
        self.hist, self.kinds = a["hist"], a["kinds"]  # (rows, D), (T, D)
        self.heads = a["rel_bias"].shape[0]
        self.profile = _Profile(a)

    def __call__(self, age: np.ndarray, gender: np.ndarray, region: np.ndarray, pref: np.ndarray,
                 hist_items: np.ndarray, hist_types: np.ndarray) -> np.ndarray:
        """(B, D) float32, L2-normalised; histories newest first, as :class:`UserBatch` holds them."""
        a = self.a
        b, h = hist_items.shape
        d = self.hist.shape[1]
        dh = d // self.heads
        valid = hist_items > 0  # (B, H)
        x_new = self.hist[hist_items[:, 0]] + self.kinds[hist_types[:, 0]]  # (B, D): the newest position
        q = (x_new @ a["q_w"] + a["q_b"]).reshape(b, self.heads, dh)  # (B, h, d/h)
        k = (a["k_item"][hist_items] + a["k_kind"][hist_types]).reshape(b, h, self.heads, dh)  # (B, H, h, d/h)
        v = (a["v_item"][hist_items] + a["v_kind"][hist_types]).reshape(b, h, self.heads, dh)
        logits = np.einsum("bnd,bjnd->bnj", q, k) / np.float32(math.sqrt(dh)) + a["rel_bias"][:, :h]  # (B, h, H)
        logits = np.where(valid[:, None, :], logits, np.float32(-1e9))
        att = np.exp(logits - logits.max(-1, keepdims=True))
        att *= valid.any(1)[:, None, None] / att.sum(-1, keepdims=True)  # an empty history attends to nothing
        y = x_new + np.einsum("bnj,bjnd->bnd", att, v).reshape(b, d) @ a["out_w"] + a["out_b"]
        z = y + _gelu(_layer_norm(y, a, "norm1") @ a["ffn1_w"] + a["ffn1_b"]) @ a["ffn2_w"] + a["ffn2_b"]
        x = self.hist[hist_items] + self.kinds[hist_types]  # (B, H, D)
        mean = np.einsum("bh,bhd->bd", valid.astype(np.float32), x) / np.maximum(valid.sum(1, keepdims=True), 1)
        feats = np.concatenate([self.profile(age, gender, region, pref), _layer_norm(z, a, "norm2"), mean], axis=1)
        out = _gelu(feats @ a["mlp1_w"] + a["mlp1_b"]) @ a["mlp2_w"] + a["mlp2_b"] + a["skip"] * mean
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class _Profile:
    """Age, gender, region and the mean of the preferred categories, as the towers embed them: (B, 4D)."""

    def __init__(self, a: dict[str, np.ndarray]) -> None:
        self.age, self.gender, self.region = a["age"], a["gender"], a["region"]
        self.pref, self.padding = a["pref"], a["pref_padding"]

    def __call__(self, age: np.ndarray, gender: np.ndarray, region: np.ndarray, pref: np.ndarray) -> np.ndarray:
        used = pref != self.padding  # EmbeddingBag(mean, padding_idx): the mean of the real codes
        pooled = np.einsum("bp,bpd->bd", used.astype(np.float32), self.pref[pref])
        pooled /= np.maximum(used.sum(1, keepdims=True), 1)
        return np.concatenate([self.age[age], self.gender[gender], self.region[region], pooled], axis=1)


def numpy_tower(model: TwoTower) -> NumpyUserTower | NumpySequenceTower:
    """The numpy forward that matches ``model``'s user tower, from the weights it names for serving."""
    arrays = model.serving_arrays()
    return NumpySequenceTower(arrays) if model.sequential else NumpyUserTower(arrays)


class LoadedModel:
    """A validated checkpoint ready to embed; immutable after load (safe to share across threads)."""

    __slots__ = ("_model", "_users", "_schema", "_meta", "_items", "_item_ids", "_popularity", "version", "path")

    def __init__(self, model: TwoTower, schema: FeatureSchema, meta: dict[str, Any], path: Path) -> None:
        self._model = model.eval()
        self._schema = schema
        # the schema (with its full vocabulary) and the popularity ranking have their own properties;
        # meta stays small
        self._meta = {k: v for k, v in meta.items() if k not in ("feature_schema", "popularity")}
        self._popularity = tuple(meta.get("popularity", ()))
        self._item_ids = list(schema.item_ids)
        self.version: str = meta["version"]
        self.path = path
        with torch.inference_mode():
            rows = torch.arange(2, schema.n_item_rows)
            items = model.items(rows).numpy().astype(np.float32)  # (n_items, D)
        items.flags.writeable = False  # shared by every caller: nobody may change it in place
        self._items = items
        self._users = numpy_tower(model)

    @property
    def meta(self) -> dict[str, Any]:
        """version, created_at, data_window, metrics, config, train, weights (a copy)."""
        import copy

        return copy.deepcopy(self._meta)

    @property
    def item_ids(self) -> list[str]:
        return list(self._item_ids)

    @property
    def popularity(self) -> tuple[str, ...]:
        """Item ids, most wanted first, over the data it was trained on (empty in older checkpoints)."""
        return self._popularity

    @property
    def schema(self) -> FeatureSchema:
        return self._schema

    @property
    def dim(self) -> int:
        return self._items.shape[1]

    def item_embeddings(self) -> np.ndarray:
        """(n_items, D) float32, L2-normalised, read-only; row i belongs to ``item_ids[i]``."""
        return self._items

    def user_embeddings(self, users: Sequence[UserInput]) -> np.ndarray:
        """(B, D) float32, L2-normalised, one row per input, in order."""
        out = np.zeros((len(users), self.dim), np.float32)
        for i in range(0, len(users), _CHUNK):
            out[i:i + _CHUNK] = self._embed(users[i:i + _CHUNK])
        return out

    def _embed(self, users: Sequence[UserInput]) -> np.ndarray:
        prof = self._schema.profile_table([u.profile for u in users])
        items, types = self._schema.encode_history([u.recent_item_ids for u in users],
                                                   [u.recent_interaction_types for u in users])
        return self._users(prof["age"], prof["gender"], prof["region"], prof["pref"], items, types)  # (B, D)


def load_checkpoint(path: Path) -> LoadedModel:
    """Load one version folder (``.../v<N>``); any inconsistency raises CheckpointError."""
    model, schema, meta = read_checkpoint(Path(path))
    return LoadedModel(model, schema, meta, Path(path))


def load_latest(checkpoint_dir: Path) -> LoadedModel:
    """Load the version that LATEST names."""
    version = latest_version(Path(checkpoint_dir))
    if version is None:
        raise CheckpointError(f"no promoted model in {checkpoint_dir} (no LATEST): run `streamrec train` first")
    return load_checkpoint(Path(checkpoint_dir) / version)
