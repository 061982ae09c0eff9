"""`streamrec import` on tiny hand-written logs in every format, where the right rows can be read off the file.

No real MovieLens data here (its licence forbids redistribution): each layout is a few lines written by
the test in the format GroupLens documents.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from generation.logs import FILES, SCHEMAS, parse_times
from streamrec.config import get_settings
from streamrec.shell.cli import cli

T0 = 881250949  # 1997-12-04T15:55:49Z, a u.data time
UTC = "UTC"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def imported(args: list[str], out: Path) -> dict[str, pd.DataFrame]:
    code, stdout, stderr = run(*args, "--out", str(out))
    assert code == 0, stderr + stdout
    return {key: pd.read_parquet(out / name) for key, name in FILES.items()}


def at(seconds: int) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz=UTC)


# ---- MovieLens ---------------------------------------------------------------------------------------
def ml100k(folder: Path) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text(f"1\t10\t5\t{T0}\n1\t20\t3\t{T0 + 60}\n2\t10\t4\t{T0 + 30}\n2\t30\t1\t{T0 + 90}\n")
    genres = ["unknown", "Action", "Comedy"]
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (folder / "u.item").write_bytes(
        "10|Café Society (1995)|01-Jan-1995||http://imdb/x|0|0|1\n"
        "20|Heat (1995)|15-Dec-1995||http://imdb/y|0|1|1\n"
        "30|unknown||||1|0|0\n"
        "40|Never Rated (1996)|02-Feb-1996||http://imdb/z|0|1|0\n".encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|30|F|writer|00000\n")
    return folder


def test_ml100k_ids_times_types_and_filled_columns(tmp_path: Path) -> None:
    got = imported(["import", "movielens", str(ml100k(tmp_path / "ml-100k"))], tmp_path / "out")
    inter, items, users = got["interactions"], got["items"], got["users"]
    assert list(inter["user_id"]) == ["1", "2", "1", "2"]  # strings, in time order
    assert list(inter["item_id"]) == ["10", "10", "20", "30"]
    assert list(inter["timestamp"]) == [at(T0), at(T0 + 30), at(T0 + 60), at(T0 + 90)]
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert list(inter["interaction_type"]) == ["rate", "rate", "negative_view", "negative_view"]  # >= 4 is rate
    assert list(inter["rating"]) == [5.0, 4.0, 3.0, 1.0]
    assert inter["interaction_id"].is_unique

    items = items.set_index("item_id")
    assert list(items.index) == ["10", "20", "30", "40"]  # the whole catalogue, rated or not
    assert items.loc["10", "product_name"] == "Café Society (1995)"  # Latin-1 decoded
    assert (items.loc["20", "top_category"], items.loc["20", "category"]) == ("Action", "Action|Comedy")
    assert (items.loc["30", "top_category"], items.loc["30", "product_name"]) == ("unknown", "unknown")
    assert items.loc["20", "arrival_date"] == pd.Timestamp("1995-12-15", tz=UTC)
    assert pd.isna(items.loc["30", "arrival_date"])
    for column in ("discounted_price", "actual_price", "rating", "rating_count", "stock"):
        assert items[column].isna().all(), column
    assert (items["updated_at"] == at(T0 + 90)).all()  # the log's end

    users = users.set_index("user_id")
    assert list(users.index) == ["1", "2"]  # user 3 has no events
    assert (users.loc["1", "age"], users.loc["1", "gender"]) == (24, "M")
    assert users.loc["2", "signup_date"] == at(T0 + 30)  # the first event
    assert users["region"].isna().all() and all(len(c) == 0 for c in users["preferred_categories"])


def test_ml1m_latin1_titles_age_bands_and_double_colon_fields(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(f"1::1193::5::{T0}\n1::661::3::{T0 + 1}\n2::1193::4::{T0 + 2}\n")
    (folder / "movies.dat").write_bytes("1193::Misérables, Les (1995)::Drama|Romance\n"
                                        "661::Star Wars: Episode IV (1977)::Action|Sci-Fi\n".encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    got = imported(["import", "movielens", str(folder)], tmp_path / "out")
    items = got["items"].set_index("item_id")
    assert items.loc["1193", "product_name"] == "Misérables, Les (1995)"
    assert items.loc["661", "product_name"] == "Star Wars: Episode IV (1977)"  # a ':' in the title survives
    assert (items.loc["1193", "top_category"], items.loc["1193", "category"]) == ("Drama", "Drama|Romance")
    assert items["arrival_date"].isna().all()  # ml-1m has no release dates
    users = got["users"].set_index("user_id")
    assert users.loc["1", "age"] == 1 and users.loc["2", "age"] == 56  # band codes = lower bounds
    assert list(got["interactions"]["interaction_type"]) == ["rate", "negative_view", "rate"]


def test_ml_latest_csv_half_stars_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,1,4.0,{T0}\n1,2,3.5,{T0 + 5}\n"
                                        f"7,2,4.5,{T0 + 9}\n")
    (folder / "movies.csv").write_text('movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama\n'
                                       "2,Nothing (2001),(no genres listed)\n")
    got = imported(["import", "movielens", str(folder), "--positive-min", "4.5"], tmp_path / "out")
    assert list(got["interactions"]["interaction_type"]) == ["negative_view", "negative_view", "rate"]
    items = got["items"].set_index("item_id")
    assert items.loc["1", "product_name"] == "American President, The (1995)"
    assert (items.loc["2", "top_category"], items.loc["2", "category"]) == ("unknown", "unknown")
    assert got["users"]["age"].isna().all() and got["users"]["gender"].isna().all()


def test_the_files_have_the_generators_parquet_types(tmp_path: Path) -> None:
    out = tmp_path / "out"
    imported(["import", "movielens", str(ml100k(tmp_path / "ml-100k"))], out)
    for key, name in FILES.items():
        assert pq.read_schema(out / name).remove_metadata().equals(SCHEMAS[key]), key


# ---- tables ------------------------------------------------------------------------------------------
def test_csv_with_integer_ids_unix_seconds_ratings_and_empty_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"uid,sku,ts,stars\n7,100,{T0},5\n7,101,{T0 + 1},2\n,100,{T0 + 2},5\n8,,{T0 + 3},4\n"
                    f"8,100,,4\n8,102,{T0 + 4},\n")
    code, stdout, _ = run("import", "table", str(path), "--user-col", "uid", "--item-col", "sku", "--time-col", "ts",
                          "--rating-col", "stars", "--out", str(tmp_path / "out"))
    assert code == 0
    assert "empty user id 1" in stdout and "empty item id 1" in stdout and "empty time 1" in stdout
    inter = pd.read_parquet(tmp_path / "out" / FILES["interactions"])
    assert list(inter["user_id"]) == ["7", "7", "8"] and list(inter["item_id"]) == ["100", "101", "102"]
    assert list(inter["timestamp"]) == [at(T0), at(T0 + 1), at(T0 + 4)]
    assert list(inter["interaction_type"]) == ["rate", "negative_view", "positive_view"]  # no rating: a view
    items = pd.read_parquet(tmp_path / "out" / FILES["items"])
    assert list(items["product_name"]) == ["100", "101", "102"] and (items["top_category"] == "unknown").all()


def test_parquet_with_millisecond_times_and_a_mapped_type_column(tmp_path: Path) -> None:
    ms = T0 * 1000 + 250
    pd.DataFrame({"user": [1, 2, 1], "item": [5, 5, 6], "when": [ms, ms + 1000, ms + 2000],
                  "kind": ["click", "buy", "rate"]}).to_parquet(tmp_path / "log.parquet")
    got = imported(["import", "table", str(tmp_path / "log.parquet"), "--user-col", "user", "--item-col", "item",
                    "--time-col", "when", "--type-col", "kind", "--type-map", "click=positive_view, buy=purchase"],
                   tmp_path / "out")
    inter = got["interactions"]
    assert list(inter["interaction_type"]) == ["positive_view", "purchase", "rate"]
    assert inter["timestamp"].iloc[0] == pd.Timestamp(ms, unit="ms", tz=UTC)
    assert inter["rating"].isna().all()


def test_parquet_with_text_ids_a_blank_id_and_a_datetime_column(tmp_path: Path) -> None:
    when = pd.to_datetime(["2024-03-01 10:00", "2024-03-01 11:00", "2024-03-01 12:00"])  # naive: UTC
    pd.DataFrame({"u": ["007", "  ", "x"], "i": ["a", "b", "c"], "t": when}).to_parquet(tmp_path / "log.pq")
    code, stdout, _ = run("import", "table", str(tmp_path / "log.pq"), "--user-col", "u", "--item-col", "i",
                          "--time-col", "t", "--out", str(tmp_path / "out"))
    assert code == 0 and "empty user id 1" in stdout
    inter = pd.read_parquet(tmp_path / "out" / FILES["interactions"])
    assert list(inter["user_id"]) == ["007", "x"]  # text ids are kept as written
    assert list(inter["timestamp"]) == [pd.Timestamp("2024-03-01 10:00", tz=UTC), pd.Timestamp("2024-03-01 12:00",
                                                                                               tz=UTC)]


def test_iso_strings_with_and_without_a_zone(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("u\ti\tt\na\tx\t2024-01-02T03:04:05+02:00\nb\ty\t2024-01-02 01:04:06\n")
    got = imported(["import", "table", str(path), "--user-col", "u", "--item-col", "i", "--time-col", "t"],
                   tmp_path / "out")
    assert list(got["interactions"]["timestamp"]) == [pd.Timestamp("2024-01-02T01:04:05Z"),
                                                      pd.Timestamp("2024-01-02T01:04:06Z")]  # naive = UTC
    assert (got["interactions"]["interaction_type"] == "positive_view").all()


@pytest.mark.parametrize(("value", "unit"), [(1_700_000_000, "s"), (1_700_000_000_123, "ms"),
                                             (1_700_000_000_123_456, "us"), (1_700_000_000_123_456_789, "ns")])
def test_auto_time_unit_by_magnitude(value: int, unit: str) -> None:
    parsed, how = parse_times(pd.Series([value]), "t")
    assert how == unit and parsed.iloc[0] == pd.Timestamp(value, unit=unit, tz=UTC)


def test_a_float_time_column_with_whole_values_is_exact() -> None:
    ns = 1_700_000_000_123_456_789
    parsed, _ = parse_times(pd.Series([float(1_700_000_000_123), np.nan]).dropna(), "t", "ms")
    assert parsed.iloc[0] == pd.Timestamp(1_700_000_000_123, unit="ms", tz=UTC)
    assert parse_times(pd.Series([ns]), "t", "ns")[0].iloc[0].value == ns


# ---- errors: one line, non-zero exit, the files left as they were -------------------------------------
def _table(tmp_path: Path, text: str, name: str = "log.csv") -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


BAD = {
    "not movielens": (lambda p: ["import", "movielens", str(p)], "looked for u.data (ml-100k), ratings.dat"),
    "unknown type": (lambda p: ["import", "table", _table(p, "u,i,t,k\n1,2,1700000000,view\n1,3,1700000001,like\n"),
                                "--user-col", "u", "--item-col", "i", "--time-col", "t", "--type-col", "k",
                                "--type-map", "view=positive_view"], "'like' (1); allowed: positive_view"),
    "bad type map": (lambda p: ["import", "table", _table(p, "u,i,t\n1,2,3\n"), "--user-col", "u", "--item-col",
                                "i", "--time-col", "t", "--type-col", "t", "--type-map", "a=like"], "--type-map"),
    "bad time": (lambda p: ["import", "table", _table(p, "u,i,t\n1,2,2024-01-01\n1,3,yesterday\n"), "--user-col",
                            "u", "--item-col", "i", "--time-col", "t"], "column 't': 1 time(s) are not dates"),
    "wrong unit": (lambda p: ["import", "table", _table(p, "u,i,t\n1,2,1700000000000\n"), "--user-col", "u",
                              "--item-col", "i", "--time-col", "t", "--time-unit", "s"], "1700000000000"),
    "ms read as us": (lambda p: ["import", "table", _table(p, "u,i,t\n1,2,1700000000000\n"), "--user-col", "u",
                                 "--item-col", "i", "--time-col", "t", "--time-unit", "us"], "1970-01-20"),
    "no column": (lambda p: ["import", "table", _table(p, "u,i,t\n1,2,3\n"), "--user-col", "user", "--item-col",
                             "i", "--time-col", "t"], "no column 'user'; it has 'u', 'i', 't'"),
    "bad rating": (lambda p: ["import", "table", _table(p, "u,i,t,r\n1,2,1700000000,good\n"), "--user-col", "u",
                              "--item-col", "i", "--time-col", "t", "--rating-col", "r"], "'good'"),
    "extension": (lambda p: ["import", "table", _table(p, "x", "log.json"), "--user-col", "u", "--item-col", "i",
                             "--time-col", "t"], ".parquet"),
    "no such file": (lambda p: ["import", "table", str(p / "nope.csv"), "--user-col", "u", "--item-col", "i",
                                "--time-col", "t"], "no such file"),
    "nothing left": (lambda p: ["import", "table", _table(p, "u,i,t\n,2,1700000000\n"), "--user-col", "u",
                                "--item-col", "i", "--time-col", "t"], "no interactions left"),
    "broken u.data": (lambda p: ["import", "movielens", str(_ml100k_broken(p))], "u.data"),
}


def _ml100k_broken(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\t3\t4\n1\t2\n1\t2\t3\t4\t5\t6\n")
    return folder


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in FILES.values():
        (out / name).write_bytes(b"previous")
    make_args, message = BAD[case]
    code, stdout, stderr = run(*make_args(tmp_path), "--out", str(out))
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    assert "Traceback" not in stderr + stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())  # no temporary file left behind
    assert all((out / name).read_bytes() == b"previous" for name in FILES.values())


def test_the_time_window_is_the_streams_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events before STREAMREC_EVENT_TIME_FLOOR would be dead-lettered on replay: refused here too, unless
    the floor is moved."""
    args = ["import", "table", _table(tmp_path, "u,i,t\n1,2,1985-06-01T00:00:00Z\n"), "--user-col", "u",
            "--item-col", "i", "--time-col", "t", "--out", str(tmp_path / "out")]
    code, _, stderr = run(*args)
    assert code == 1 and "STREAMREC_EVENT_TIME_FLOOR" in stderr and "1985-06-01" in stderr
    monkeypatch.setenv("STREAMREC_EVENT_TIME_FLOOR", "1980-01-01T00:00:00Z")
    get_settings.cache_clear()
    assert run(*args)[0] == 0


def test_an_unwritable_out_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, _, stderr = run("import", "movielens", str(ml100k(tmp_path / "ml")), "--out", str(tmp_path / "file" / "x"))
    assert code == 1 and stderr.startswith("error: --out") and len(stderr.strip().splitlines()) == 1


def test_the_default_out_is_the_data_dir_and_stale_affinities_go(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "user_affinities.parquet").write_bytes(b"synthetic users' truth")
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(data))
    code, stdout, _ = run("import", "movielens", str(ml100k(tmp_path / "ml")))
    assert code == 0 and str(data / FILES["interactions"]) in stdout
    assert not (data / "user_affinities.parquet").exists()


# ---- the rest of the pipeline on an imported log -----------------------------------------------------
def test_train_runs_on_an_imported_log(tmp_path: Path) -> None:
    from models.cli import train

    rng = np.random.default_rng(0)
    rows = [(u, int(i), T0 + 60 * k, int(rng.integers(1, 6)))
            for u in range(30) for k, i in enumerate(rng.choice(40, 8, replace=False))]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user", "item", "ts", "stars"]).to_csv(path, index=False)
    imported(["import", "table", str(path), "--user-col", "user", "--item-col", "item", "--time-col", "ts",
              "--rating-col", "stars", "--positive-min", "2"], tmp_path / "data")
    result = CliRunner().invoke(train, ["--data-dir", str(tmp_path / "data"), "--epochs", "1", "--dim", "8",
                                        "--no-promote", "--no-plot", "--out", str(tmp_path / "ck")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "two-tower" in result.output and "popularity" in result.output and "oracle" not in result.output
    meta = json.loads((tmp_path / "ck" / "v1" / "meta.json").read_text())
    assert math.isfinite(meta["metrics"]["recall@10"]) and meta["data_window"]["n_interactions"] == 240
