"""The models tests' own small dataset; the shared data and trained model are in tests/conftest.py."""

from __future__ import annotations

import pytest

from generation.dataset_gen_amazon import Dataset, GeneratorConfig, generate


@pytest.fixture(scope="session")
def tiny() -> Dataset:
    return generate(GeneratorConfig(n_users=150, n_items=300, n_interactions=3000, seed=3))
