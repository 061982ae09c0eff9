"""The serving face of a checkpoint: item and user embeddings from raw ids, never retraining.

    model = load_latest(settings.checkpoint_dir)
    items = model.item_embeddings()                       # (n_items, D), row i <-> model.item_ids[i]
    users = model.user_embeddings([UserInput(profile, recent_item_ids, recent_interaction_types)])
    scores = users @ items.T                              # cosine scores, higher is better

A user's recent history (newest first) is pooled inside the user tower, so a fresh event changes
the user's vector on the next call. Unknown item ids, categories, genders and regions map to OOV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import CheckpointError, latest_version, read_checkpoint
from .features import FeatureSchema
from .towers import TwoTower, UserBatch

__all__ = ["UserInput", "LoadedModel", "load_checkpoint", "load_latest"]

_CHUNK = 1024  # users per forward pass: bounds memory for large batches


@dataclass(frozen=True)
class UserInput:
    profile: dict[str, Any] = field(default_factory=dict)  # age, gender, region, preferred_categories
    recent_item_ids: list[str] = field(default_factory=list)  # newest first, ≤ the schema's max_history used
    recent_interaction_types: list[str] = field(default_factory=list)  # aligned with recent_item_ids


class LoadedModel:
    """A validated checkpoint ready to embed; immutable after load (safe to share across threads)."""

    __slots__ = ("_model", "_schema", "_meta", "_items", "_item_ids", "version", "path")

    def __init__(self, model: TwoTower, schema: FeatureSchema, meta: dict[str, Any], path: Path) -> None:
        self._model = model.eval()
        self._schema = schema
        # the schema (with its full vocabulary) is reachable through .schema; meta stays small
        self._meta = {k: v for k, v in meta.items() if k != "feature_schema"}
        self._item_ids = list(schema.item_ids)
        self.version: str = meta["version"]
        self.path = path
        with torch.inference_mode():
            rows = torch.arange(2, schema.n_item_rows)
            items = model.items(rows).numpy().astype(np.float32)  # (n_items, D)
        items.flags.writeable = False  # shared by every caller: nobody may change it in place
        self._items = items

    @property
    def meta(self) -> dict[str, Any]:
        """version, created_at, data_window, metrics, config, train, weights (a copy)."""
        import copy

        return copy.deepcopy(self._meta)

    @property
    def item_ids(self) -> list[str]:
        return list(self._item_ids)

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
        t = torch.from_numpy
        batch = UserBatch(t(prof["age"]), t(prof["gender"]), t(prof["region"]), t(prof["pref"]),
                          t(items), t(types))
        with torch.inference_mode():
            return self._model.users(batch).numpy()  # (B, D)


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
