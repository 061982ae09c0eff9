"""Real interaction logs into the three frames the rest of streamrec reads (users, items, interactions).

A reader (:mod:`generation.tables` for any CSV or parquet log, :mod:`generation.movielens` for
MovieLens) turns files into raw columns; :func:`events` applies the rules below; :func:`assemble`
builds the generator's three frames, filling what the log lacks; :func:`write` replaces the files all
or none.

Rules (the `streamrec import` help and the README say the same):
- ids become strings (7 and 7.0 -> "7"); rows with an empty user id, item id or time are dropped and
  counted;
- numeric times are read in ``--time-unit`` (auto: by the magnitude of the column's median, < 1e11
  seconds, < 1e14 ms, < 1e17 us, else ns), text as ISO 8601 or any date pandas reads (naive = UTC);
  a time that cannot be read or lies outside the stream's window (STREAMREC_EVENT_TIME_FLOOR, default
  1990-01-01, .. now + STREAMREC_MAX_FUTURE_SKEW_S) is an error naming the column and an example;
- types: a type column's values (after ``--type-map``) must be among the five; else a rating >=
  ``positive_min`` is ``rate`` (positive) and a lower one ``negative_view`` (history, never a target),
  a row without a rating ``positive_view``; with neither column every row is ``positive_view``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamrec._exceptions import StreamrecError
from streamrec.frames import string_ids
from streamrec.schemas import DEFAULT_WINDOW, INTERACTION_TYPES, TimeWindow

__all__ = ["ImporterError", "TypeRule", "Source", "Imported", "FILES", "SCHEMAS", "parse_type_map", "parse_times",
           "events", "assemble", "write", "read_text"]

FILES = {"users": "recommendation_users.parquet", "items": "recommendation_items.parquet",
         "interactions": "recommendation_interactions.parquet"}
UNKNOWN_CATEGORY = "unknown"
_EARLIEST = pd.Timestamp("1970-01-02", tz="UTC")  # Feast materializes from here: nothing older would load
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_AUTO_LIMITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))  # median magnitude below the limit -> unit

_STR, _F64, _I64, _TS = pa.string(), pa.float64(), pa.int64(), pa.timestamp("ns", tz="UTC")
# The generator's parquet types, column for column: readers cannot tell an import from a generated set.
SCHEMAS = {
    "users": pa.schema([("user_id", _STR), ("user_name", _STR), ("signup_date", _TS), ("preferences", _STR),
                        ("age", _I64), ("gender", _STR), ("region", _STR),
                        ("preferred_categories", pa.list_(_STR))]),
    "items": pa.schema([("item_id", _STR), ("product_name", _STR), ("category", _STR), ("top_category", _STR),
                        ("discounted_price", _F64), ("actual_price", _F64), ("discount_percentage", _F64),
                        ("rating", _F64), ("rating_count", _I64), ("about_product", _STR), ("arrival_date", _TS),
                        ("stock", _I64), ("img_link", _STR), ("product_link", _STR), ("updated_at", _TS)]),
    "interactions": pa.schema([("interaction_id", _STR), ("user_id", _STR), ("item_id", _STR), ("timestamp", _TS),
                               ("interaction_type", _STR), ("review_title", _STR), ("review_content", _STR),
                               ("rating", _F64), ("quantity", _I64), ("device", _STR), ("session_id", _STR)]),
}


# how pandas reads each type back (integers may be null in an import: the nullable Int64)
_PANDAS = {_F64: "float64", _I64: "Int64", _TS: "datetime64[ns, UTC]"}


class ImporterError(StreamrecError):
    """A log that cannot be imported as it is; the message names the file, column and an example."""


@dataclass(frozen=True)
class TypeRule:
    """How rows get their interaction type (see the module docstring)."""

    positive_min: float = 4.0
    type_map: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Source:
    """What a reader found: clean events plus the catalogue and profiles the format carries."""

    events: pd.DataFrame  # user_id, item_id, timestamp (UTC), interaction_type, rating
    dropped: Counter[str]
    time_unit: str  # how the times were read: s, ms, us, ns, text or datetime
    catalogue: pd.DataFrame | None = None  # item_id, title, genres (list of str), release (UTC or NaT)
    profiles: pd.DataFrame | None = None  # user_id, age (Int64), gender


@dataclass
class Imported:
    """The three frames to write. Interactions hold ids and types as categoricals (millions of rows, a
    few thousand distinct values) and lack the columns :func:`write` numbers or leaves null."""

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    dropped: Counter[str]
    time_unit: str
    profiles_without_events: int = 0


def parse_type_map(text: str | None) -> dict[str, str]:
    """``raw=type,raw2=type2`` -> {raw: type}; every target must be one of the five types."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for pair in text.split(","):
        raw, sep, kind = (p.strip() for p in pair.partition("="))
        if not sep or not raw:
            raise ImporterError(f"--type-map: {pair.strip()!r} is not raw=type (e.g. --type-map click=positive_view,"
                                "buy=purchase)")
        if kind not in INTERACTION_TYPES:
            raise ImporterError(f"--type-map: {raw}={kind}: {kind!r} is not one of {', '.join(INTERACTION_TYPES)}")
        out[raw] = kind
    return out


def _bounds(window: TimeWindow) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The stream's window (so every imported event can be replayed), never before Feast's start."""
    return (max(pd.Timestamp(window.floor), _EARLIEST),
            pd.Timestamp(datetime.now(UTC) + timedelta(seconds=window.max_future_skew_s)))


def _out_of_range(label: str, bad: pd.Series, shown: pd.Series, how: str, window: TimeWindow) -> ImporterError:
    lo, hi = _bounds(window)
    return ImporterError(f"{label}: {len(bad):,} time(s) {how} outside {lo:%Y-%m-%d} .. {hi:%Y-%m-%d %H:%M} UTC "
                         f"(STREAMREC_EVENT_TIME_FLOOR .. now + STREAMREC_MAX_FUTURE_SKEW_S), e.g. "
                         f"{_shown(bad.iloc[0])} -> {shown.loc[bad.index[0]]}: check --time-unit")


def _shown(value: object) -> str:
    """A value as the user wrote it: text quoted, numbers bare (not np.int64(...))."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value) if isinstance(value, str) else str(value)


def _numeric_times(values: pd.Series, label: str, unit: str, window: TimeWindow) -> tuple[pd.Series, str]:
    numbers = values.astype(np.float64)
    if not np.isfinite(numbers).all():
        bad = values[~np.isfinite(numbers)]
        raise ImporterError(f"{label}: {len(bad):,} time(s) are not finite numbers, e.g. {_shown(bad.iloc[0])}")
    if unit == "auto":
        magnitude = float(np.median(np.abs(numbers))) if len(numbers) else 0.0
        unit = next((u for limit, u in _AUTO_LIMITS if magnitude < limit), "ns")
    lo, hi = _bounds(window)
    seconds = numbers / _PER_SECOND[unit]
    bad = (seconds < lo.timestamp()) | (seconds > hi.timestamp())  # checked in float: no int64 overflow
    if bad.any():
        years = 1970 + seconds / 31_556_952  # too far for a datetime: say which year it would be
        shown = years.map(lambda y: f"year {y:,.0f}")
        fits = bad & (seconds.abs() < 9e9)  # pandas' nanosecond range is about +-292 years around 1970
        shown[fits] = pd.to_datetime(values[fits], unit=unit, utc=True).astype(str)
        raise _out_of_range(label, values[bad], shown, f"read as {unit} lie", window)
    whole = pd.api.types.is_integer_dtype(values.dtype)
    if whole or bool((numbers % 1 == 0).all()):
        # whole numbers exactly, in int64: float arithmetic would round the nanoseconds
        ns = (values if whole else numbers).astype(np.int64) * (10**9 // _PER_SECOND[unit])
        return pd.Series(pd.DatetimeIndex(ns.to_numpy().view("M8[ns]")).tz_localize("UTC"), index=values.index), unit
    return pd.to_datetime(numbers, unit=unit, utc=True), unit


def _text_times(values: pd.Series, label: str) -> pd.Series:
    text = values.astype(str).str.strip()
    # pandas reads a naive ISO time that follows one with an offset in that offset: parse them apart
    zoned = text.str.contains(":", regex=False) & text.str.contains(r"(?:[Zz]|[+-]\d\d:?\d\d)$", regex=True)
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    for part in (zoned, ~zoned):
        if part.any():
            parsed[part] = pd.to_datetime(text[part], utc=True, format="ISO8601", errors="coerce")
    retry = parsed.isna()
    if retry.any():  # other spellings ("01/02/2024 10:00", "2 Jan 2024"): slower, value by value
        parsed[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
    bad = parsed.isna()
    if bad.any():
        raise ImporterError(f"{label}: {int(bad.sum()):,} time(s) are not dates or numbers, e.g. "
                            f"{_shown(values[bad].iloc[0])}")
    return parsed


def parse_times(values: pd.Series, label: str, unit: str = "auto", window: TimeWindow = DEFAULT_WINDOW
                ) -> tuple[pd.Series, str]:
    """Non-null ``values`` as ``datetime64[ns, UTC]`` and how they were read ("s".."ns", "datetime", "text");
    a time outside ``window`` is an error."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed, how = pd.to_datetime(values, utc=True), "datetime"
    elif pd.api.types.is_bool_dtype(values.dtype):
        raise ImporterError(f"{label}: holds true/false values, not times")
    elif pd.api.types.is_numeric_dtype(values.dtype):
        return _numeric_times(values, label, unit, window)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all() and len(values):  # numbers stored as text (a CSV column with quotes)
            return _numeric_times(numbers, label, unit, window)
        parsed, how = _text_times(values, label), "text"
    lo, hi = _bounds(window)
    bad = (parsed < lo) | (parsed > hi)
    if bad.any():
        raise _out_of_range(label, values[bad], parsed.astype(str), "lie", window)
    return parsed.astype("datetime64[ns, UTC]"), how


_WHAT = {"user": "user id", "item": "item id", "time": "time", "type": "type"}


def _blank(raw: pd.Series) -> pd.Series:
    """Null, or (in a text column) only spaces."""
    if not (pd.api.types.is_object_dtype(raw.dtype) or pd.api.types.is_string_dtype(raw.dtype)):
        return raw.isna()  # numbers and datetimes are never blank, and strip() is slow on millions
    return raw.isna() | raw.astype("string").str.strip().eq("").fillna(False).astype(bool)


def _codes(raw: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``raw`` factorized: codes (-1 where null) and the distinct values. Millions of rows repeat a few
    thousand ids: the work and the strings are per distinct value, not per row."""
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    return codes, pd.Index(uniques)


def _id_column(raw: pd.Series) -> pd.Categorical:
    """Ids as a categorical of strings (string_ids' rule), null where empty or blank."""
    codes, uniques = _codes(raw)
    names = string_ids(pd.Series(uniques, dtype=uniques.dtype))
    names = names.where(~_blank(names))
    name_codes, distinct = pd.factorize(names, use_na_sentinel=True)  # 7 and "7" are one id
    merged = np.where(codes >= 0, name_codes[np.maximum(codes, 0)] if len(name_codes) else -1, -1)
    return pd.Categorical.from_codes(merged, categories=pd.Index(distinct, dtype=object))


def _type_column(raw: pd.DataFrame, rule: TypeRule, label: Mapping[str, str]) -> pd.Categorical:
    """Interaction types as a categorical over the five (README rules)."""
    n = len(raw)
    if "type" in raw.columns:
        codes, uniques = _codes(raw["type"])
        text = pd.Series(uniques).astype(str).str.strip()
        mapped = text.map(rule.type_map).fillna(text) if rule.type_map else text
        known = mapped.isin(INTERACTION_TYPES).to_numpy()
        if not known.all():
            counts = pd.Series(np.bincount(codes, minlength=len(uniques)), index=mapped)[~known]
            counts = counts.groupby(level=0).sum().sort_values(ascending=False)
            shown = ", ".join(f"{v!r} ({c:,})" for v, c in counts.head(10).items())
            more = f" and {len(counts) - 10} more" if len(counts) > 10 else ""
            raise ImporterError(f"{label['type']}: unknown interaction type(s) {shown}{more}; allowed: "
                                f"{', '.join(INTERACTION_TYPES)}; map them with --type-map raw=type,...")
        index = np.array([INTERACTION_TYPES.index(t) for t in mapped], dtype=np.int8)
        return pd.Categorical.from_codes(index[codes], categories=INTERACTION_TYPES)
    kind = np.full(n, INTERACTION_TYPES.index("positive_view"), dtype=np.int8)
    if "rating" in raw.columns:
        rating = raw["rating"].to_numpy(dtype=np.float64)
        positive = rating >= rule.positive_min
        kind[positive] = INTERACTION_TYPES.index("rate")
        kind[~positive & ~np.isnan(rating)] = INTERACTION_TYPES.index("negative_view")
    return pd.Categorical.from_codes(kind, categories=INTERACTION_TYPES)


def events(raw: pd.DataFrame, rule: TypeRule, label: Mapping[str, str], unit: str = "auto",
           window: TimeWindow = DEFAULT_WINDOW) -> tuple[pd.DataFrame, Counter[str], str]:
    """Clean events from ``raw`` columns user, item, time and optionally type and rating.

    ``label`` names each column for error messages (a file's own column name or a MovieLens field).
    Returns the events, the rows dropped by reason and how the times were read.
    """
    dropped: Counter[str] = Counter()
    user, item = _id_column(raw["user"]), _id_column(raw["item"])
    empty = {"user": np.asarray(user.isna()), "item": np.asarray(item.isna()), "time": _blank(raw["time"]).to_numpy()}
    if "type" in raw.columns:
        empty["type"] = _blank(raw["type"]).to_numpy()
    gone = np.zeros(len(raw), dtype=bool)
    for key, mask in empty.items():  # a row is counted once, under its first empty field
        new = mask & ~gone
        if new.any():
            dropped[f"empty {_WHAT[key]}"] = int(new.sum())
        gone |= mask
    keep = ~gone
    if not keep.all():
        raw, user, item = raw[keep], user[keep], item[keep]
    if "rating" in raw.columns:
        rating = pd.to_numeric(raw["rating"], errors="coerce")
        bad = rating.isna() & raw["rating"].notna()
        if bad.any():
            raise ImporterError(f"{label['rating']}: {int(bad.sum()):,} rating(s) are not numbers, e.g. "
                                f"{_shown(raw['rating'][bad].iloc[0])}")
        raw = raw.assign(rating=rating.astype(np.float64))
    times, how = parse_times(raw["time"], label["time"], unit, window)
    out = pd.DataFrame({
        "user_id": user, "item_id": item, "timestamp": times.array,  # to_numpy() would box every time
        "interaction_type": _type_column(raw, rule, label),
        "rating": raw["rating"].to_numpy() if "rating" in raw.columns else np.nan,
    })
    return out, dropped, how


def _numbered(prefix: str, n: int) -> pa.Array:
    """E000001, E000002, ... like the generator's ids, built in Arrow: 25M Python strings would take GBs."""
    digits = pc.cast(pa.array(np.arange(1, n + 1)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(digits, width=max(6, len(str(n))), padding="0"), "")


def _items(ev: pd.DataFrame, catalogue: pd.DataFrame | None, updated_at: pd.Timestamp) -> pd.DataFrame:
    seen = list(pd.unique(ev["item_id"]))
    if catalogue is not None:
        catalogue = catalogue[catalogue["item_id"].notna()].drop_duplicates("item_id").set_index("item_id")
        ids = list(catalogue.index) + [i for i in seen if i not in catalogue.index]
        meta = catalogue.reindex(ids)
    else:
        ids, meta = list(seen), pd.DataFrame(index=seen, columns=["title", "genres", "release"])
    genres = [g if isinstance(g, (list, tuple)) and len(g) else [UNKNOWN_CATEGORY] for g in meta["genres"]]
    titles = [t if isinstance(t, str) and t.strip() else i for t, i in zip(meta["title"], ids, strict=True)]
    release = pd.to_datetime(meta["release"], utc=True).dt.floor("s").reset_index(drop=True)
    # prices, rating, rating_count and stock are unknown: absent here, null in the file (see _table)
    return pd.DataFrame({
        "item_id": ids, "product_name": titles,
        "category": ["|".join(g) for g in genres], "top_category": [g[0] for g in genres],
        "about_product": "", "arrival_date": release, "img_link": "", "product_link": "", "updated_at": updated_at,
    })


def _users(ev: pd.DataFrame, profiles: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    first = ev.groupby("user_id", sort=False, observed=True)["timestamp"].min().dt.floor("s")
    n, extra = len(first), 0
    age, gender = pd.Series(pd.NA, index=range(n), dtype="Int64"), pd.Series(None, index=range(n), dtype=object)
    if profiles is not None:
        known = profiles[profiles["user_id"].notna()].drop_duplicates("user_id").set_index("user_id")
        extra = int((~known.index.isin(first.index)).sum())
        known = known.reindex(first.index)
        age = pd.to_numeric(known["age"], errors="coerce").round().astype("Int64").reset_index(drop=True)
        gender = known["gender"].astype(object).where(known["gender"].notna(), None).reset_index(drop=True)
    return pd.DataFrame({
        "user_id": np.asarray(first.index, dtype=object), "user_name": "", "signup_date": first.reset_index(drop=True),
        "preferences": "", "age": age, "gender": gender, "preferred_categories": [[] for _ in range(n)],
    }), extra


def assemble(src: Source) -> Imported:
    """The three frames, with the generator's columns; what the log lacks is filled (README rules)."""
    if src.events.empty:
        lost = sum(src.dropped.values())
        raise ImporterError(f"no interactions left to import{f' ({lost:,} rows dropped)' if lost else ''}")
    ev = src.events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    # interaction_id, reviews, quantity, device and session: numbered and null when written (see write)
    interactions = ev.assign(rating=ev["rating"].astype(np.float64))
    users, extra = _users(ev, src.profiles)
    # the catalogue snapshot's time is the log's end: Feast's event time for item_features
    items = _items(ev, src.catalogue, ev["timestamp"].iloc[-1].floor("s"))
    return Imported(users, items, interactions, src.dropped, src.time_unit, extra)


def _table(frame: pd.DataFrame, key: str) -> pa.Table:
    """``frame`` in ``SCHEMAS[key]``: categoricals decoded, absent columns null (interaction_id numbered),
    with the pandas metadata the generator's files carry, so pandas reads both alike."""
    schema, n = SCHEMAS[key], len(frame)
    columns = []
    for f in schema:
        if f.name in frame.columns:
            columns.append(pa.array(frame[f.name], from_pandas=True).cast(f.type))
        else:
            columns.append(_numbered("E", n) if f.name == "interaction_id" else pa.nulls(n, f.type))
    empty = pd.DataFrame({f.name: pd.Series(dtype=_PANDAS.get(f.type, object)) for f in schema})
    metadata = pa.Schema.from_pandas(empty, preserve_index=False).metadata
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(metadata))


def write(data: Imported, out: Path) -> dict[str, Path]:
    """Write the three files next to their final names, then rename them: a failure leaves the old set."""
    out = Path(out)
    frames = {"users": data.users, "items": data.items, "interactions": data.interactions}
    temps: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for key, frame in frames.items():
            tmp = out / f".{FILES[key]}.import-tmp"
            temps.append(tmp)
            pq.write_table(_table(frame, key), tmp)
        for key, tmp in zip(frames, temps, strict=True):
            os.replace(tmp, out / FILES[key])
    except (OSError, pa.ArrowException) as exc:
        raise ImporterError(f"--out {out}: cannot write the files ({getattr(exc, 'strerror', None) or exc})") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    # the generator's truth about its own synthetic users: stale beside real data (train's "oracle")
    (out / "user_affinities.parquet").unlink(missing_ok=True)
    return {key: out / name for key, name in FILES.items()}


def read_text(path: Path) -> str:
    """A text file as UTF-8, else Latin-1 (MovieLens' older sets are Latin-1)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
