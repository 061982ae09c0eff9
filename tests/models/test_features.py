from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.features import OOV, FeatureError, FeatureSchema, popularity_ranking, text_hashes
from tests.helpers import raw_of


@pytest.fixture(scope="module")
def schema(tiny) -> FeatureSchema:  # noqa: ANN001 - fixture
    raw = raw_of(tiny)
    return FeatureSchema.build(raw.users, raw.items, raw.interactions)


def test_json_round_trip(schema: FeatureSchema) -> None:
    again = FeatureSchema.from_json(json.loads(json.dumps(schema.to_json())))
    assert again == schema


def test_from_json_refuses_malformed_input(schema: FeatureSchema) -> None:
    good = schema.to_json()
    for bad in ({**good, "surprise": 1}, {k: v for k, v in good.items() if k != "item_ids"},
                {**good, "item_ids": [1, 2]}, {**good, "item_ids": ["a", "a"]}, {**good, "version": 99}, []):
        with pytest.raises(FeatureError):
            FeatureSchema.from_json(bad)


def test_unknown_values_map_to_oov(schema: FeatureSchema) -> None:
    assert schema.item_index(["nope", schema.item_ids[0]]).tolist() == [OOV, 2]
    prof = schema.profile_table([{"age": None, "gender": "?", "region": None, "preferred_categories": ["Nope"]},
                                 None, {"age": 30, "gender": "F", "preferred_categories": None}])
    assert prof["age"].tolist()[:2] == [0, 0] and prof["age"][2] > 0
    assert prof["gender"][0] == 0 and prof["gender"][2] > 0
    assert prof["pref"][0, 0] == OOV and (prof["pref"][1:] == 0).all()
    cats = list(schema.top_categories[:2])
    as_list, as_text = schema.profile_table([{"preferred_categories": cats}, {"preferred_categories": ",".join(cats)}])[
        "pref"]
    assert (as_list == as_text).all() and (as_list[:2] >= 2).all()


def test_history_encoding_keeps_the_newest(schema: FeatureSchema) -> None:
    h = schema.max_history
    ids = list(schema.item_ids[:h + 5])
    assert len(ids) == h + 5, "the fixture catalogue is too small for this test"
    items, types = schema.encode_history([ids, []], [["cart"] * len(ids), []])
    assert items.shape == (2, h)
    assert items[0].tolist() == schema.item_index(ids[:h]).tolist()  # newest first: the head is kept
    assert (items[1] == 0).all() and (types[1] == 0).all()
    with pytest.raises(FeatureError, match="aligned"):
        schema.encode_history([["a", "b"]], [["cart"]])


def test_extend_appends_and_keeps_indices(schema: FeatureSchema) -> None:
    users = pd.DataFrame({"user_id": ["U9"], "gender": ["Q"], "region": ["Mars"], "preferred_categories": [["Space"]]})
    items = pd.DataFrame({"item_id": ["NEW1"], "category": ["Space|Ships|Rockets"], "top_category": ["Space"],
                          "discounted_price": [1.0], "rating": [4.0], "rating_count": [3], "product_name": ["x"]})
    inter = pd.DataFrame({"item_id": ["NEW2", schema.item_ids[0]]})
    grown = schema.extend(users, items, inter)
    assert grown.item_ids[: len(schema.item_ids)] == schema.item_ids
    assert grown.item_ids[len(schema.item_ids):] == ("NEW1", "NEW2")
    assert grown.top_categories[-1] == "Space" and grown.regions[-1] == "Mars"
    assert grown.price_edges == schema.price_edges
    table = grown.item_table(items)
    row = grown.item_index(["NEW1", "NEW2"])
    assert table["top"][row[0]] == len(grown.top_categories) + 1 and table["top"][row[1]] == OOV


def test_text_hashes_are_stable_and_in_range() -> None:
    a = text_hashes("Acme Quiet In Ear Headphones", 128, 16)
    assert a == text_hashes("acme quiet in-ear headphones", 128, 16)  # case and punctuation do not matter
    assert all(1 <= h < 128 for h in a) and len(a) == 5 + 4
    assert np.unique(text_hashes("a b c d e f g h", 1 << 20, 3)).size == 3


def test_an_imported_catalogue_without_prices_ratings_or_names_encodes_as_unknown() -> None:
    """Imported logs leave prices, ratings, counts and sometimes categories empty (NaN, None, <NA>)."""
    users = pd.DataFrame({"user_id": ["1"], "gender": [None], "region": [np.nan]})
    items = pd.DataFrame({"item_id": ["10", "20", "30"], "product_name": ["Heat (1995)", None, np.nan],
                          "category": ["Action|Crime", None, np.nan], "top_category": ["Action", None, np.nan],
                          "discounted_price": [np.nan, None, np.nan],
                          "rating": [None, None, None], "rating_count": pd.array([pd.NA] * 3, dtype="Int64")})
    schema = FeatureSchema.build(users, items, pd.DataFrame({"item_id": ["10", "40"]}))
    assert schema.price_edges == ()  # no known price: no edges, every price bucket "unknown"
    assert schema.top_categories == ("Action",) and schema.leaf_categories == ("Action|Crime",)  # no "None"/"nan"
    assert schema.genders == () and schema.regions == ()
    table = schema.item_table(items)
    rows = schema.item_index(["10", "20", "30"])
    assert table["top"][rows].tolist() == [2, OOV, OOV]
    for column in ("price", "rating", "count"):
        assert (table[column][rows] == 0).all(), column
    assert (table["text"][rows[0]] > 0).any() and (table["text"][rows[1:]] == 0).all()  # no "none" token
    assert schema.sizes()["n_price"] == 2


def test_some_missing_prices_do_not_poison_the_edges() -> None:
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "discounted_price": [1.0, np.nan, 100.0, None],
                          "category": "X|Y", "top_category": "X", "rating": np.nan, "rating_count": 0,
                          "product_name": "n"})
    built = FeatureSchema.build(pd.DataFrame({"user_id": []}), items, pd.DataFrame({"item_id": []}))
    assert built.price_edges and all(np.isfinite(built.price_edges))
    buckets = built.item_table(items)["price"][built.item_index(["a", "b", "c", "d"])]
    assert buckets[1] == buckets[3] == 0 and buckets[0] > 0 and buckets[2] > buckets[0]


def test_string_ids_from_any_column_type() -> None:
    from streamrec.frames import string_ids

    assert string_ids(pd.Series([1, 22])).tolist() == ["1", "22"]
    assert string_ids(pd.Series([1.0, np.nan, 3.0])).tolist() == ["1", None, "3"]  # ints with a null
    assert string_ids(pd.Series(["007", None, "x"])).tolist() == ["007", None, "x"]
    assert string_ids(pd.Series([1.5])).tolist() == ["1.5"]
    assert string_ids(pd.Series(pd.array([4, pd.NA], dtype="Int64"))).tolist() == ["4", None]


def test_popularity_ranking_weighs_what_each_event_says() -> None:
    """A purchase says 3, a cart or a rating 2, a positive view 1, a negative view nothing; ties go by id,
    so two runs over one log rank alike; ids become strings as everywhere else."""
    log = pd.DataFrame({"item_id": [7, 7, 8, 9, 9, 9, 10, 11, 12.0],
                        "interaction_type": ["positive_view", "positive_view", "purchase", "cart", "positive_view",
                                             "negative_view", "rate", "negative_view", "cart"]})
    assert popularity_ranking(log) == ["8", "9", "10", "12", "7"]  # 3, 3, 2, 2, 2 → ties by id
    assert popularity_ranking(log, limit=2) == ["8", "9"]
    assert popularity_ranking(log.iloc[:0]) == []
