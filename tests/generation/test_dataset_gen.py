"""The synthetic Amazon-like generator: counts, schema, funnels, time, preference share, errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.dataset_gen_amazon import (
    CATEGORIES,
    INTERACTION_TYPES,
    Dataset,
    GeneratorConfig,
    GeneratorError,
    generate,
    main,
    validate,
    write,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "generation/dataset_gen_amazon.py"


@cache
def _dataset(n_users: int = 300, n_items: int = 800, n_interactions: int = 6000, seed: int = 42,
             share: float = 0.7) -> Dataset:
    return generate(GeneratorConfig(n_users, n_items, n_interactions, seed=seed, preference_share=share))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def _share(ds: Dataset) -> float:
    """Realized preference share recomputed from the frames alone."""
    pref = ds.users[["user_id", "preferred_categories"]].explode("preferred_categories")
    pref = pref.rename(columns={"preferred_categories": "top_category"}).assign(hit=True)
    rows = ds.interactions[["user_id", "item_id"]].merge(ds.items[["item_id", "top_category"]], on="item_id")
    rows = rows.merge(pref, on=["user_id", "top_category"], how="left")
    return float(rows["hit"].notna().mean())


def _assert_funnels(inter: pd.DataFrame) -> None:
    """Cart needs an earlier positive view, purchase an earlier view and cart, rate an earlier purchase."""
    df = inter.sort_values(["user_id", "timestamp"], kind="stable")
    keys = [df["user_id"], df["item_id"]]
    before = {}
    for kind in ("positive_view", "cart", "purchase"):
        hit = (df["interaction_type"] == kind).astype(int)
        before[kind] = hit.groupby(keys).cumsum() - hit
    t = df["interaction_type"]
    assert (before["positive_view"][t == "cart"] >= 1).all()
    assert (before["positive_view"][t == "purchase"] >= 1).all()
    assert (before["cart"][t == "purchase"] >= 1).all()
    assert (before["purchase"][t == "rate"] >= 1).all()


def _assert_strictly_increasing_per_user(inter: pd.DataFrame) -> None:
    gaps = inter.groupby("user_id", sort=False)["timestamp"].diff().dropna()
    assert (gaps > pd.Timedelta(0)).all()


def test_exact_counts_and_columns() -> None:
    ds = _dataset()
    assert len(ds.users) == 300 and len(ds.items) == 800 and len(ds.interactions) == 6000
    assert len(ds.affinities) == 300 * len(CATEGORIES)
    assert list(ds.users.columns) == ["user_id", "user_name", "signup_date", "preferences", "age", "gender",
                                      "region", "preferred_categories"]
    assert list(ds.items.columns) == [
        "item_id", "product_name", "category", "top_category", "discounted_price", "actual_price",
        "discount_percentage", "rating", "rating_count", "about_product", "arrival_date", "stock",
        "img_link", "product_link", "updated_at"]
    assert list(ds.interactions.columns) == [
        "interaction_id", "user_id", "item_id", "timestamp", "interaction_type", "review_title",
        "review_content", "rating", "quantity", "device", "session_id"]
    assert list(ds.affinities.columns) == ["user_id", "category", "affinity"]
    for frame, key in ((ds.users, "user_id"), (ds.items, "item_id"), (ds.interactions, "interaction_id")):
        assert frame[key].is_unique
    assert ds.users["user_id"].iloc[0] == "U000001" and ds.items["item_id"].iloc[0] == "I000001"


def test_dtypes_and_value_ranges() -> None:
    ds = _dataset()
    u, it, x = ds.users, ds.items, ds.interactions
    for col in (u["signup_date"], it["arrival_date"], it["updated_at"], x["timestamp"]):
        assert str(col.dtype) == "datetime64[ns, UTC]"
    # Feast keeps feature timestamps in whole seconds
    assert (u["signup_date"] == u["signup_date"].dt.floor("s")).all()
    assert (it["arrival_date"] == it["arrival_date"].dt.floor("s")).all()
    assert u["age"].dtype == np.int64 and u["age"].between(18, 80).all()
    assert set(u["gender"]) <= {"F", "M", "X"}
    assert (u["preferences"] == u["preferred_categories"].map(",".join)).all()
    assert it["top_category"].isin(CATEGORIES).all()
    assert (it["category"].str.split("|").str[0] == it["top_category"]).all()
    assert (it["category"].str.count(r"\|") == 2).all()
    assert (it["actual_price"] >= it["discounted_price"]).all() and (it["discounted_price"] > 0).all()
    assert it["discount_percentage"].between(0, 100).all()
    implied = it["actual_price"] * (1 - it["discount_percentage"] / 100)
    assert np.allclose(implied, it["discounted_price"], atol=0.006)
    assert it["rating"].between(1, 5).all() and (it["rating"].round(1) == it["rating"]).all()
    assert (it["stock"] >= 0).all() and (it["rating_count"] >= 0).all()
    assert it["img_link"].str.contains("I000001").iloc[0]
    assert x["interaction_type"].isin(INTERACTION_TYPES).all()
    assert set(x["device"]) <= {"mobile", "desktop", "tablet"}
    assert str(x["quantity"].dtype) == "Int64"
    # the stream contract and the generator name the same event types
    from streamrec.schemas import INTERACTION_TYPES as CONTRACT_TYPES
    assert tuple(CONTRACT_TYPES) == INTERACTION_TYPES


def test_ratings_reviews_and_quantities_only_where_they_belong() -> None:
    x = _dataset().interactions
    rate = x["interaction_type"] == "rate"
    assert x.loc[rate, "rating"].notna().all() and x.loc[~rate, "rating"].isna().all()
    assert x.loc[rate, "rating"].isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    for col in ("review_title", "review_content"):
        assert x.loc[rate, col].notna().all() and x.loc[~rate, col].isna().all()
    qty = x["interaction_type"].isin(["cart", "purchase"])
    assert x.loc[qty, "quantity"].notna().all() and (x.loc[qty, "quantity"] >= 1).all()
    assert x.loc[~qty, "quantity"].isna().all()
    assert rate.any() and qty.any()


def test_funnels_and_time() -> None:
    ds = _dataset()
    _assert_funnels(ds.interactions)
    _assert_strictly_increasing_per_user(ds.interactions)
    end = GeneratorConfig(1, 12, 1).end
    ts = ds.interactions["timestamp"]
    assert ts.min() >= pd.Timestamp(end - timedelta(days=90)) and ts.max() <= pd.Timestamp(end)
    assert ts.is_monotonic_increasing
    # nothing is touched before sign-up or arrival; future items are never touched
    first_u = ds.interactions.groupby("user_id")["timestamp"].min()
    assert (ds.users.set_index("user_id")["signup_date"].reindex(first_u.index) < first_u).all()
    first_i = ds.interactions.groupby("item_id")["timestamp"].min()
    assert (ds.items.set_index("item_id")["arrival_date"].reindex(first_i.index) < first_i).all()
    future = ds.items["arrival_date"] > pd.Timestamp(end)
    assert future.any() and not ds.interactions["item_id"].isin(ds.items.loc[future, "item_id"]).any()
    # sessions are one user's and one device's
    per_session = ds.interactions.groupby("session_id")[["user_id", "device"]].nunique()
    assert (per_session == 1).all().all()


@pytest.mark.parametrize("share", [0.7, 0.4])
def test_realized_preference_share_tracks_the_setting(share: float) -> None:
    ds = _dataset(500, 1000, 20000, share=share)
    assert abs(ds.realized_preference_share - share) <= 0.03
    assert abs(_share(ds) - share) <= 0.03
    assert _share(ds) == pytest.approx(ds.realized_preference_share)


def test_affinities_are_the_ground_truth() -> None:
    ds = _dataset()
    aff = ds.affinities
    assert np.allclose(aff.groupby("user_id")["affinity"].sum(), 1.0)
    assert (aff["affinity"] >= 0).all() and set(aff["category"]) == set(CATEGORIES)
    top2 = aff.sort_values(["user_id", "affinity"], ascending=[True, False]).groupby("user_id").head(2)
    top2 = top2.groupby("user_id")["category"].agg(frozenset)
    stated = ds.users.set_index("user_id")["preferred_categories"].map(frozenset)
    assert (top2 == stated.reindex(top2.index)).all()


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = generate(GeneratorConfig(120, 200, 1500, seed=7))
    b = generate(GeneratorConfig(120, 200, 1500, seed=7))
    c = generate(GeneratorConfig(120, 200, 1500, seed=8))
    for name in ("users", "items", "interactions", "affinities"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
        assert not getattr(a, name).equals(getattr(c, name))


@settings(max_examples=15, deadline=None)
@given(n_users=st.integers(1, 40), n_items=st.integers(len(CATEGORIES), 80), n_inter=st.integers(1, 400),
       share=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_property_exact_counts_and_valid_funnels(n_users: int, n_items: int, n_inter: int, share: float,
                                                 seed: int) -> None:
    ds = generate(GeneratorConfig(n_users, n_items, n_inter, seed=seed, preference_share=share))
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (n_users, n_items, n_inter)
    _assert_funnels(ds.interactions)
    _assert_strictly_increasing_per_user(ds.interactions)
    # calibrated on rows: off by rounding, plus at most 3 rows when no single-row funnel is left
    assert abs(ds.realized_preference_share - share) <= 3.5 / n_inter + 1e-9


@pytest.mark.parametrize("cfg, flag", [
    (GeneratorConfig(0, 100, 10), "--n_users"),
    (GeneratorConfig(10, 5, 10), "--n_items"),
    (GeneratorConfig(10, 100, -1), "--n_interactions"),
    (GeneratorConfig(10, 100, 10, preference_share=1.5), "--preference-share"),
    (GeneratorConfig(10, 100, 10, preference_share=float("nan")), "--preference-share"),
    (GeneratorConfig(10, 100, 10, days=0), "--days"),
])
def test_validate_names_the_flag(cfg: GeneratorConfig, flag: str) -> None:
    with pytest.raises(GeneratorError, match=flag):
        validate(cfg)


def test_write_roundtrip_and_unwritable_folder(tmp_path: Path) -> None:
    ds = _dataset()
    paths = write(ds, tmp_path / "data")
    assert {p.name for p in paths.values()} == {
        "recommendation_users.parquet", "recommendation_items.parquet",
        "recommendation_interactions.parquet", "user_affinities.parquet"}
    users = pd.read_parquet(paths["users"])
    assert users["preferred_categories"].iloc[0].tolist() == ds.users["preferred_categories"].iloc[0]
    inter = pd.read_parquet(paths["interactions"])
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]" and len(inter) == 6000
    assert str(inter["quantity"].dtype) == "Int64"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GeneratorError, match="--out"):
        write(ds, blocker / "data")


@pytest.mark.parametrize("args, flag", [
    (["--n_items", "5"], "--n_items"),
    (["--n_users", "0"], "--n_users"),
    (["--n_interactions", "-3"], "--n_interactions"),
    (["--preference-share", "1.5"], "--preference-share"),
    (["--end", "yesterday"], "--end"),
    (["--out", "{blocker}/data"], "--out"),
])
def test_cli_errors_are_one_clear_line(tmp_path: Path, args: list[str], flag: str) -> None:
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    proc = _run(*[a.format(blocker=blocker) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_seed_command_writes_exact_counts(tmp_path: Path) -> None:
    proc = _run("--n_users", "1000", "--n_items", "5000", "--n_interactions", "20000", "--out", str(tmp_path),
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "realized preference share" in proc.stdout and proc.stderr == ""
    counts = {name: len(pd.read_parquet(tmp_path / f"{name}.parquet"))
              for name in ("recommendation_users", "recommendation_items", "recommendation_interactions",
                           "user_affinities")}
    assert counts == {"recommendation_users": 1000, "recommendation_items": 5000,
                      "recommendation_interactions": 20000, "user_affinities": 1000 * len(CATEGORIES)}


def test_out_defaults_to_streamrec_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path / "d"))
    assert main(["--n_users", "3", "--n_items", "12", "--n_interactions", "5", "--quiet"]) == 0
    assert (tmp_path / "d" / "recommendation_interactions.parquet").exists()
    assert "realized preference share" in capsys.readouterr().out


def _session_category_runs(ds: Dataset) -> float:
    """Share of a session's consecutive first touches (funnel starts) that stay in the previous one's category."""
    inter = ds.interactions.sort_values(["user_id", "timestamp"])
    cat = inter["item_id"].map(ds.items.set_index("item_id")["top_category"])
    starts = inter.assign(cat=cat).drop_duplicates(["session_id", "item_id"])
    same_session = starts["session_id"].to_numpy()[1:] == starts["session_id"].to_numpy()[:-1]
    same_cat = starts["cat"].to_numpy()[1:] == starts["cat"].to_numpy()[:-1]
    return float(same_cat[same_session].mean())


def test_dynamics_keep_sessions_inside_a_category_and_the_preference_share() -> None:
    """--dynamics: a user's next events depend on their last ones (a session stays in a category), while the
    calibrated preference share, counts and funnels stay exactly as without it."""
    flat = generate(GeneratorConfig(400, 1000, 20000, seed=5))
    dyn = generate(GeneratorConfig(400, 1000, 20000, seed=5, dynamics=True))
    assert len(dyn.interactions) == 20000
    _assert_funnels(dyn.interactions)
    _assert_strictly_increasing_per_user(dyn.interactions)
    assert dyn.realized_preference_share == pytest.approx(flat.realized_preference_share, abs=1e-12)
    assert _session_category_runs(dyn) >= _session_category_runs(flat) + 0.3, (
        _session_category_runs(dyn), _session_category_runs(flat))
