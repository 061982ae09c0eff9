"""Each rule filter on hand-made frames, where the right answer can be read off the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.dataset_gen_amazon import CATEGORIES
from serving.filtering import (
    Candidates,
    FilterConfig,
    FilterConfigError,
    FilterContext,
    Rule,
    _epoch_ns,
    apply_filters,
    availability,
    contextual,
    demographic,
    history,
    load_filter_config,
    rows_isin,
)

NOW = datetime(2026, 11, 4, 14, 0, tzinfo=UTC)  # a Wednesday afternoon
SAT_NIGHT = datetime(2026, 11, 7, 2, 0, tzinfo=UTC)


def frame() -> Candidates:
    return Candidates.from_frame(pd.DataFrame({
        "item_id": ["A", "B", "C", "D", "E", "F"],
        "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        "top_category": ["Electronics", "Beauty", "Toys&Games", "OfficeProducts", "HomeImprovement", "Books"],
        "stock": [5, 0, 3, 1, 2, 7],
        "arrival_date": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-12-01", "2026-01-01", "2026-01-01",
                                        "2026-11-04T13:59:59"], utc=True, format="ISO8601"),
        "discounted_price": [2500.0, 20.0, 15.0, 40.0, 300.0, 12.0],
    }).set_index("item_id"))


def kept(mask: np.ndarray) -> list[str]:
    return list(frame().ids[mask])


def test_availability_needs_stock_and_an_arrival_that_has_come() -> None:
    assert kept(availability(frame(), FilterContext(now=NOW))) == ["A", "D", "E", "F"]


def test_demographic_rules_by_age_band_and_gender() -> None:
    rules = (Rule(exclude_categories=frozenset({"HomeImprovement"}), age_max=24, max_price=2000),
             Rule(exclude_categories=frozenset({"Toys&Games"}), age_min=65),
             Rule(exclude_categories=frozenset({"Beauty"}), genders=frozenset({"M"}), age_max=30))
    assert kept(demographic(frame(), FilterContext(now=NOW, age=20, gender="M"), rules)) == ["C", "D", "F"]
    assert kept(demographic(frame(), FilterContext(now=NOW, age=70, gender="F"), rules)) == ["A", "B", "D", "E", "F"]
    assert kept(demographic(frame(), FilterContext(now=NOW, age=40, gender="M"), rules)) == list("ABCDEF")
    # an unknown age matches no age-bounded rule
    assert kept(demographic(frame(), FilterContext(now=NOW, gender="F"), rules)) == list("ABCDEF")


def test_history_drops_purchases_recent_items_and_request_excludes() -> None:
    ctx = FilterContext(now=NOW, recent_item_ids=["B", "C", "A"], recent_interaction_types=["positive_view", "cart",
                                                                                            "purchase"],
                        exclude=frozenset({"F"}))
    assert kept(history(frame(), ctx, last_n=2)) == ["D", "E"]  # A purchased, B and C recent, F excluded
    assert kept(history(frame(), ctx, last_n=1, drop_purchased=False)) == ["A", "C", "D", "E"]


def test_history_drops_every_purchase_on_record_not_only_the_recent_ones() -> None:
    ctx = FilterContext(now=NOW, recent_item_ids=["B"], recent_interaction_types=["positive_view"],
                        purchased_item_ids=["E", "D"])  # bought long ago: out of the recent history
    assert kept(history(frame(), ctx, last_n=20)) == ["A", "C", "F"]
    assert kept(history(frame(), ctx, last_n=20, drop_purchased=False)) == ["A", "C", "D", "E", "F"]


def test_contextual_time_of_day_weekend_and_device() -> None:
    rules = (Rule(exclude_categories=frozenset({"OfficeProducts", "Electronics"}), hours=(0, 6)),
             Rule(exclude_categories=frozenset({"OfficeProducts"}), days=frozenset({"weekend"})),
             Rule(max_price=100, devices=frozenset({"mobile"})),
             Rule(exclude_categories=frozenset({"Books"}), hours=(22, 3)))  # wraps midnight
    assert kept(contextual(frame(), FilterContext(now=NOW, device="desktop"), rules)) == list("ABCDEF")
    assert kept(contextual(frame(), FilterContext(now=NOW, device="mobile"), rules)) == ["B", "C", "D", "F"]
    assert kept(contextual(frame(), FilterContext(now=SAT_NIGHT, device="tablet"), rules)) == ["B", "C", "E"]


def test_apply_filters_runs_in_order_and_counts_each_rule() -> None:
    config = FilterConfig(history_last_n=5, demographic=(Rule(exclude_categories=frozenset({"Books"}), age_min=60),),
                          contextual=(Rule(max_price=1000, devices=frozenset({"mobile"})),))
    ctx = FilterContext(now=NOW, age=61, gender="F", recent_item_ids=["D"], recent_interaction_types=["cart"],
                        device="mobile")
    survivors, counts = apply_filters(frame(), ctx, config)
    assert list(survivors.ids) == ["E"]
    assert counts == {"availability": 2, "demographic": 1, "history": 1, "contextual": 1}
    assert list(survivors["score"]) == [0.5]


def test_disabled_filters_do_not_run() -> None:
    survivors, counts = apply_filters(frame(), FilterContext(now=NOW), FilterConfig(enabled=("history",)))
    assert counts == {"history": 0} and len(survivors) == 6


def test_the_shipped_rules_load_and_name_real_categories() -> None:
    config = load_filter_config(categories=CATEGORIES)
    assert config.enabled == ("availability", "demographic", "history", "contextual")
    assert config.demographic and config.contextual


@pytest.mark.parametrize(("text", "message"), [
    ("demographic: [{exclude_categories: [Cars]}]", "not in the data"),
    ("contextual: [{hours: [3]}]", "hours"),
    ("contextual: [{days: [someday]}]", "days"),
    ("demographic: [{colour: red}]", "unknown key"),
    ("enabled: [availability, magic]", "enabled"),
    ("demographic: [", "cannot read"),
])
def test_bad_rules_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(FilterConfigError, match=message):
        load_filter_config(path, categories=CATEGORIES)


# ---- unknown values (an imported catalogue or profile): no rule applies -------------------------------------
def unknowns() -> Candidates:
    """Items as the online store returns an imported catalogue: stock, price and arrival are None."""
    return Candidates(np.array(["K", "S", "N"], dtype=object), {
        "score": np.array([0.9, 0.8, 0.7]), "top_category": np.array(["Drama", "Drama", None], dtype=object),
        "stock": np.array([None, 0, None], dtype=object),
        "arrival_ns": pd.to_datetime(pd.Series([None, None, None]), utc=True).to_numpy("datetime64[ns]").view("int64"),
        "discounted_price": np.array([None, None, None], dtype=object),
    })


def test_unknown_stock_and_arrival_count_as_available() -> None:
    assert list(unknowns().ids[availability(unknowns(), FilterContext(now=NOW))]) == ["K", "N"]  # S: known 0
    as_floats = Candidates.from_frame(pd.DataFrame({
        "item_id": ["K", "S"], "score": [0.9, 0.8], "top_category": ["Drama", "Drama"], "stock": [np.nan, 0.0],
        "arrival_date": [pd.NaT, pd.NaT], "discounted_price": [np.nan, np.nan]}).set_index("item_id"))
    assert list(as_floats.ids[availability(as_floats, FilterContext(now=NOW))]) == ["K"]


def test_an_unknown_price_is_never_above_a_limit_and_an_unknown_age_or_gender_matches_no_rule() -> None:
    rules = (Rule(max_price=10), Rule(exclude_categories=frozenset({"Drama"}), age_max=24),
             Rule(exclude_categories=frozenset({"Drama"}), genders=frozenset({"M"})))
    for age, gender in ((None, None), (float("nan"), float("nan")), (pd.NA, pd.NA)):
        keep = demographic(unknowns(), FilterContext(now=NOW, age=age, gender=gender), rules)
        assert keep.all(), (age, gender)
    assert kept(demographic(frame(), FilterContext(now=NOW, age=float("nan")), (Rule(max_price=100),))) == \
        ["B", "C", "D", "F"]  # the rule without conditions still applies to known prices


def test_the_shipped_rules_on_other_categories_exclude_nothing_but_a_users_file_must_match(tmp_path: Path) -> None:
    config = load_filter_config(categories=["Drama", "Comedy", None])  # an imported log's genres
    assert all(not r.exclude_categories for r in config.demographic + config.contextual)
    assert any(r.max_price for r in config.demographic)  # the rest of each rule stays
    mine = tmp_path / "rules.yaml"
    mine.write_text("demographic: [{age_max: 24, exclude_categories: [Beauty]}]")
    with pytest.raises(FilterConfigError, match="not in the data"):
        load_filter_config(mine, categories=["Drama"])


@given(st.lists(st.tuples(st.lists(st.integers(-1, 40), min_size=6, max_size=6),
                          st.lists(st.integers(0, 40), max_size=8)), min_size=1, max_size=6))
def test_rows_isin_is_numpys_isin_row_by_row(rows: list[tuple[list[int], list[int]]]) -> None:
    """The batch's history filter: each row's keys (-1: an empty slot) against that row's own keys only."""
    keys = np.array([k for k, _ in rows], dtype=np.int64)
    per_row = [np.array(w, dtype=np.int64) for _, w in rows]
    want = np.array([np.isin(k, w) for k, w in zip(keys, per_row, strict=True)]).reshape(keys.shape)
    assert (rows_isin(keys, per_row) == want).all()


@pytest.mark.parametrize("when", [NOW, datetime(2026, 11, 4, 14, 0, 0, 123456), SAT_NIGHT.astimezone(timezone(
    timedelta(hours=-5))), datetime(1960, 1, 1, tzinfo=UTC), pd.Timestamp("2026-11-04T13:59:59.999999Z")])
def test_the_request_time_in_epoch_ns_is_pandas_own(when: datetime) -> None:
    """Availability compares arrival dates (pandas' epoch ns) with the request time: the same clock, a
    naive time taken as UTC, as pandas takes it."""
    assert _epoch_ns(when) == pd.Timestamp(when).value
