"""MovieLens folders, as GroupLens ships them, into a :class:`~generation.logs.Source`.

Three layouts, told apart by their ratings file:
- ml-100k: ``u.data`` (tab: user item rating unix-seconds), ``u.item`` (``|``, Latin-1: id, title, release
  date "01-Jan-1995", video date, IMDb URL, 19 genre flags named in ``u.genre``), ``u.user`` (``|``: id,
  age, gender, occupation, zip);
- ml-1m (and ml-10m): ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat``
  (``MovieID::Title::Genres``, genres ``|``-separated), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip``);
  ml-1m's age is a band code that is already the band's lower bound (1 = under 18, 18, 25, 35, 45, 50, 56);
- ml-latest, ml-latest-small, ml-20m/25m/32m: ``ratings.csv`` (userId,movieId,rating,timestamp) and
  ``movies.csv`` (movieId,title,genres); no users file.
Only the ratings file is required; without the others items are named by id and users have no profile.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from streamrec.frames import string_ids
from streamrec.schemas import DEFAULT_WINDOW, TimeWindow

from .logs import ImporterError, Source, TypeRule, events, read_text

__all__ = ["LAYOUTS", "detect", "read_movielens"]

LAYOUTS = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-latest": "ratings.csv"}  # layout -> ratings file
_ALSO = {"ml-100k": "ml-100k", "ml-1m": "ml-1m, ml-10m", "ml-latest": "ml-latest, ml-latest-small, ml-20m/25m/32m"}
# ml-100k's README lists these; u.genre names them too and wins when present
_GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western")
_AGE_BANDS_1M = {1: 1, 18: 18, 25: 25, 35: 35, 45: 45, 50: 50, 56: 56}  # code -> lower bound (1: under 18)
_NO_GENRES = "(no genres listed)"


def detect(folder: Path) -> str:
    """The layout of ``folder``; anything else is one error naming what was looked for."""
    if not folder.is_dir():
        raise ImporterError(f"{folder}: not a folder (give the unpacked MovieLens folder, e.g. ml-100k/)")
    for layout, ratings in LAYOUTS.items():
        if (folder / ratings).is_file():
            return layout
    looked = ", ".join(f"{ratings} ({_ALSO[layout]})" for layout, ratings in LAYOUTS.items())
    raise ImporterError(f"{folder}: not a MovieLens folder: looked for {looked}")


def _frame(path: Path, sep: str, names: list[str] | None, what: str, text: bool = False,
           **options: object) -> pd.DataFrame:
    """A ratings file straight from disk (numbers only), or with ``text`` a small file decoded by
    :func:`read_text` (titles, genders)."""
    header = {"header": None, "names": names} if names is not None else {}
    try:
        if text:
            return pd.read_csv(io.StringIO(read_text(path)), sep=sep, **header, **options)
        return pd.read_csv(path, sep=sep, encoding="latin-1", **header, **options)
    except (OSError, ValueError) as exc:  # ParserError is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImporterError(f"{path}: not a MovieLens {what} file ({first})") from None


def _lines(path: Path) -> list[list[str]]:
    return [line.split("::") for line in read_text(path).splitlines() if line.strip()]


def _fields(path: Path, rows: list[list[str]], n: int) -> None:
    bad = next((r for r in rows if len(r) != n), None)
    if bad is not None:
        raise ImporterError(f"{path}: expected {n} '::'-separated fields a line, got {'::'.join(bad)[:80]!r}")


def _genres(text: object) -> list[str]:
    if not isinstance(text, str) or text.strip() in ("", _NO_GENRES):
        return []
    return [g for g in text.split("|") if g]


def _ratings_100k(folder: Path) -> pd.DataFrame:
    return _frame(folder / "u.data", "\t", ["user", "item", "rating", "time"], "ratings (u.data)")


def _catalogue_100k(folder: Path) -> pd.DataFrame | None:
    path = folder / "u.item"
    if not path.is_file():
        return None
    names = list(_GENRES_100K)
    if (folder / "u.genre").is_file():
        pairs = [line.split("|") for line in read_text(folder / "u.genre").splitlines() if line.strip()]
        names = [name for name, _ in sorted(((p[0], int(p[1])) for p in pairs if len(p) == 2 and p[1].isdigit()),
                                            key=lambda p: p[1])] or names
    raw = _frame(path, "|", ["item", "title", "release", "video", "url", *names], "items (u.item)", text=True,
                 dtype={"item": str, "title": str, "release": str})
    flags = raw[names].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0  # (n_items, n_genres)
    genre = np.array(names, dtype=object)
    return pd.DataFrame({
        "item_id": string_ids(raw["item"]), "title": raw["title"],
        "genres": [list(genre[row]) for row in flags],
        "release": pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce", utc=True),
    })


def _profiles_100k(folder: Path) -> pd.DataFrame | None:
    path = folder / "u.user"
    if not path.is_file():
        return None
    raw = _frame(path, "|", ["user", "age", "gender", "occupation", "zip"], "users (u.user)", text=True,
                 dtype={"user": str})
    return pd.DataFrame({"user_id": string_ids(raw["user"]), "age": pd.to_numeric(raw["age"], errors="coerce"),
                         "gender": raw["gender"]})


def _ratings_1m(folder: Path) -> pd.DataFrame:
    # "1::1193::5::978300760" split on ':' is 1,,1193,,5,,978300760: the C parser, not the slow python one
    raw = _frame(folder / "ratings.dat", ":", ["user", "_a", "item", "_b", "rating", "_c", "time"],
                 "ratings (ratings.dat)")
    return raw[["user", "item", "rating", "time"]]


def _catalogue_1m(folder: Path) -> pd.DataFrame | None:
    path = folder / "movies.dat"
    if not path.is_file():
        return None
    rows = [[r[0], "::".join(r[1:-1]), r[-1]] if len(r) >= 3 else r for r in _lines(path)]
    _fields(path, rows, 3)
    return pd.DataFrame({"item_id": string_ids(pd.Series([r[0].strip() for r in rows], dtype=object)),
                         "title": [r[1] for r in rows], "genres": [_genres(r[2]) for r in rows],
                         "release": pd.NaT})


def _profiles_1m(folder: Path) -> pd.DataFrame | None:
    path = folder / "users.dat"
    if not path.is_file():
        return None
    rows = _lines(path)
    _fields(path, rows, 5)
    codes = pd.to_numeric(pd.Series([r[2] for r in rows]), errors="coerce")
    return pd.DataFrame({"user_id": [r[0].strip() for r in rows], "age": codes.map(_AGE_BANDS_1M),
                         "gender": [r[1].strip() or None for r in rows]})


def _ratings_latest(folder: Path) -> pd.DataFrame:
    columns = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "time"}
    raw = _frame(folder / "ratings.csv", ",", None, "ratings (ratings.csv)", usecols=list(columns))
    return raw.rename(columns=columns)


def _catalogue_latest(folder: Path) -> pd.DataFrame | None:
    path = folder / "movies.csv"
    if not path.is_file():
        return None
    raw = _frame(path, ",", None, "movies (movies.csv)", text=True, dtype=str, usecols=["movieId", "title", "genres"])
    return pd.DataFrame({"item_id": string_ids(raw["movieId"]), "title": raw["title"],
                         "genres": [_genres(g) for g in raw["genres"]], "release": pd.NaT})


_READERS: dict[str, tuple[Callable[[Path], pd.DataFrame], Callable[[Path], pd.DataFrame | None],
                          Callable[[Path], pd.DataFrame | None]]] = {
    "ml-100k": (_ratings_100k, _catalogue_100k, _profiles_100k),
    "ml-1m": (_ratings_1m, _catalogue_1m, _profiles_1m),
    "ml-latest": (_ratings_latest, _catalogue_latest, lambda _: None),
}


def read_movielens(folder: Path, rule: TypeRule, window: TimeWindow = DEFAULT_WINDOW,
                   status: Callable[[str], None] = lambda _: None) -> tuple[str, Source]:
    """The layout and its events (times in Unix seconds, types by ``rule``), catalogue and profiles."""
    layout = detect(folder)
    ratings, catalogue, profiles = _READERS[layout]
    name = LAYOUTS[layout]
    status(f"reading {name}")
    raw = ratings(folder)
    labels = {"user": f"{name} user id", "item": f"{name} item id", "time": f"{name} timestamp",
              "rating": f"{name} rating"}
    ev, dropped, unit = events(raw, rule, labels, unit="s", window=window)
    status("reading the movies and users")
    return layout, Source(ev, dropped, unit, catalogue(folder), profiles(folder))
