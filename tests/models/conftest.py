"""Shared, session-scoped data and one trained model: training is the slow part, so do it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.dataset_gen_amazon import Dataset, GeneratorConfig, generate
from models.checkpoints import promote, save_checkpoint
from models.compare import Report, train_and_evaluate
from models.features import popularity_ranking
from models.train import TrainConfig
from tests.helpers import raw_of


@pytest.fixture(scope="session")
def medium() -> Dataset:
    """2k users: big enough for the model-vs-popularity comparison to be far outside noise."""
    return generate(GeneratorConfig(n_users=2000, n_items=3000, n_interactions=40_000, seed=7))


@pytest.fixture(scope="session")
def tiny() -> Dataset:
    return generate(GeneratorConfig(n_users=150, n_items=300, n_interactions=3000, seed=3))


@pytest.fixture(scope="session")
def trained(medium: Dataset) -> Report:
    return train_and_evaluate(raw_of(medium), TrainConfig(epochs=4, seed=0))


@pytest.fixture(scope="session")
def checkpoint(trained: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model saved as v1 and promoted (treat as read-only)."""
    root = tmp_path_factory.mktemp("checkpoints")
    path = save_checkpoint(root, trained.fit.model, trained.prepared.enc.schema,
                           metrics=trained.test["two-tower"], data_window={"n_interactions": 40_000},
                           popularity=popularity_ranking(trained.prepared.raw.interactions))
    promote(root, path.name)
    return path
