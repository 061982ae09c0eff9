"""load_data on files that did not come from the generator: ids of any type, missing columns, foreign values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models.data import TrainError, load_data, prepare


def write(folder: Path, users: pd.DataFrame, items: pd.DataFrame, interactions: pd.DataFrame) -> Path:
    folder.mkdir(exist_ok=True)
    for name, frame in (("users", users), ("items", items), ("interactions", interactions)):
        frame.to_parquet(folder / f"recommendation_{name}.parquet", index=False)
    return folder


def log(**overrides: object) -> pd.DataFrame:
    n = 12
    frame = pd.DataFrame({
        "interaction_id": [f"E{i}" for i in range(n)], "user_id": [1, 2] * (n // 2),
        "item_id": [10 + i // 2 for i in range(n)],
        "interaction_type": ["rate"] * n,
        "timestamp": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
    })
    return frame.assign(**overrides)


def test_integer_ids_become_strings_and_missing_columns_null(tmp_path: Path) -> None:
    folder = write(tmp_path, pd.DataFrame({"user_id": [1, 2]}), pd.DataFrame({"item_id": list(range(10, 16))}), log())
    raw = load_data(folder)
    assert raw.interactions["user_id"].tolist()[:2] == ["1", "2"] and raw.interactions["item_id"].iloc[0] == "10"
    assert raw.users["user_id"].tolist() == ["1", "2"] and raw.items["item_id"].iloc[0] == "10"
    for column in ("discounted_price", "top_category", "category", "rating", "rating_count", "product_name"):
        assert raw.items[column].isna().all(), column
    for column in ("age", "gender", "region", "preferred_categories"):
        assert raw.users[column].isna().all(), column
    p = prepare(raw)  # the model's encoders take it as it is
    assert p.enc.schema.item_ids[:2] == ("10", "11") and len(p.split.test) == 2


def test_a_numeric_timestamp_says_how_to_import_it(tmp_path: Path) -> None:
    events = log(timestamp=range(1_700_000_000, 1_700_000_012))
    folder = write(tmp_path, pd.DataFrame({"user_id": ["1"]}), pd.DataFrame({"item_id": ["10"]}), events)
    with pytest.raises(TrainError, match=r"timestamp is a number .*--time-unit") as info:
        load_data(folder)
    assert "\n" not in str(info.value)


def test_an_unknown_interaction_type_is_named(tmp_path: Path) -> None:
    events = log(interaction_type=["rate", "click", "buy", "rate"] * 3)
    folder = write(tmp_path, pd.DataFrame({"user_id": ["1"]}), pd.DataFrame({"item_id": ["10"]}), events)
    with pytest.raises(TrainError, match=r"'buy', 'click' are not among positive_view, negative_view"):
        load_data(folder)
