"""`streamrec import movielens|table` (registered by streamrec/shell/cli.py): real logs into the data folder.

The readers and rules live in :mod:`generation.logs` and :mod:`generation.movielens`; this module is the
command line around them, imported at every `streamrec` start, so pandas waits until a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

if TYPE_CHECKING:
    from .logs import Imported

__all__ = ["import_", "RULES"]

RULES = """\b
Rules:
  ids      become strings (7 -> "7"); rows with an empty user id, item id or time are dropped and counted.
  times    numbers are read in --time-unit (auto: by the column's median, < 1e11 seconds, < 1e14 ms,
           < 1e17 us, else ns), text as ISO 8601 or any date pandas reads (no zone = UTC). A time that
           cannot be read, or lies outside the window the stream accepts (STREAMREC_EVENT_TIME_FLOOR,
           default 1990-01-01, .. now + STREAMREC_MAX_FUTURE_SKEW_S), is an error naming the column
           and an example. Written as UTC.
  types    --type-col values (after --type-map raw=type,...) must be positive_view, negative_view,
           cart, purchase or rate. Else a rating >= --positive-min (default 4) is `rate` (positive), a
           lower one `negative_view` (history only, never a training target), a missing one
           `positive_view`; with neither column every row is `positive_view`. Ratings stay in `rating`.
  items    product_name = the title (MovieLens) or the id; top_category = the first genre, else
           "unknown"; category = the genres joined by "|", top first; prices, rating, rating_count,
           stock: empty (unknown: no filter removes the item for them); arrival_date = the release
           date when known, else empty; updated_at = the log's last time; text columns empty.
  users    those with events; age and gender from the data when it has them (ml-1m: the age band's
           code, which is its lower bound: 1 = under 18, 18, 25, 35, 45, 50, 56); region empty; no
           preferred categories; signup_date = the user's first event.
  files    the three parquet files in --out (default $STREAMREC_DATA_DIR) are replaced together
           (written under temporary names, then renamed); a user_affinities.parquet the generator
           left there is removed (it describes synthetic users).
"""

err = Console(stderr=True)
out = Console()


_HELP = """Bring a real interaction log into the data folder as users, items and interactions parquet.

The files have the generator's columns and types, so apply, train, replay and the recommender run on
them unchanged; columns the log lacks are filled as the rules below say.

\b
  streamrec import movielens ~/data/ml-1m
  streamrec import table events.csv --user-col uid --item-col sku --time-col ts --type-col kind
  streamrec train --epochs 5
"""


@click.group("import", help=f"{_HELP}\n{RULES}")
def import_() -> None:
    """Bring a real interaction log into the data folder (help: _HELP and RULES)."""


def _out_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--out", type=click.Path(path_type=Path, dir_okay=True), default=None,
                        help="Folder to write (default: $STREAMREC_DATA_DIR, else feature_repo/data).")(f)


def _positive_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--positive-min", type=float, default=4.0, show_default=True,
                        help="A rating at or above this is a positive `rate` event; below, `negative_view`.")(f)


def _settings(out_dir: Path | None) -> tuple[Path, Any]:
    """The folder to write and the time window events must lie in."""
    from streamrec.config import get_settings

    settings = get_settings()
    return (out_dir if out_dir is not None else settings.data_dir), settings.time_window()


@import_.command("movielens", epilog=RULES)
@click.argument("directory", type=click.Path(path_type=Path))
@_positive_option
@_out_option
def movielens(directory: Path, positive_min: float, out: Path | None) -> None:
    """Import an unpacked MovieLens folder: ml-100k (u.data), ml-1m/ml-10m (ratings.dat) or ml-latest,
    ml-latest-small, ml-20m/25m/32m (ratings.csv), told apart by the ratings file.

    Titles, genres, release dates (ml-100k) and age and gender (ml-100k, ml-1m) come from the movies and
    users files when present. Times are Unix seconds.
    """
    from .logs import TypeRule, assemble, write
    from .movielens import read_movielens

    target, window = _settings(out)
    with err.status("reading…") as status:
        layout, source = read_movielens(directory, TypeRule(positive_min=positive_min), window,
                                        lambda m: status.update(f"{m}…"))
        status.update("building users and items…")
        data = assemble(source)
        status.update(f"writing {target}…")
        paths = write(data, target)
    _summary(f"{layout} from {directory}", data, paths)


@import_.command("table", epilog=RULES)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--user-col", required=True, metavar="C", help="The column holding user ids.")
@click.option("--item-col", required=True, metavar="C", help="The column holding item ids.")
@click.option("--time-col", required=True, metavar="C", help="The column holding event times.")
@click.option("--type-col", metavar="C", help="A column of interaction types (see --type-map).")
@click.option("--rating-col", metavar="C", help="A column of ratings (types by --positive-min without --type-col).")
@click.option("--type-map", metavar="RAW=TYPE,...",
              help="Map the type column's values onto the five types, e.g. click=positive_view,buy=purchase.")
@click.option("--time-unit", type=click.Choice(["auto", "s", "ms", "us", "ns"]), default="auto", show_default=True,
              help="The unit of a numeric time column.")
@_positive_option
@_out_option
def table(file: Path, user_col: str, item_col: str, time_col: str, type_col: str | None, rating_col: str | None,
          type_map: str | None, time_unit: str, positive_min: float, out: Path | None) -> None:
    """Import an interaction log from a CSV/TSV (optionally compressed) or parquet FILE, by its extension.

    One row per event. Items and users are the ids the log mentions (no titles, categories or
    profiles: those columns are filled as below).
    """
    from .logs import ImporterError, Source, TypeRule, assemble, events, parse_type_map, write
    from .tables import read_table

    if type_map and not type_col:
        raise ImporterError("--type-map needs --type-col (the column whose values it maps)")
    rule = TypeRule(positive_min=positive_min, type_map=parse_type_map(type_map))
    columns = {"user": user_col, "item": item_col, "time": time_col}
    columns |= {k: v for k, v in (("type", type_col), ("rating", rating_col)) if v}
    target, window = _settings(out)
    with err.status(f"reading {file.name}…") as status:
        raw = read_table(file, columns)
        status.update(f"checking {len(raw):,} rows…")
        ev, dropped, unit = events(raw, rule, {k: f"column {v!r}" for k, v in columns.items()}, time_unit, window)
        del raw  # the file's columns: ids and types are compact categoricals from here on
        status.update("building users and items…")
        data = assemble(Source(ev, dropped, unit))
        status.update(f"writing {target}…")
        paths = write(data, target)
    _summary(str(file), data, paths)


def _summary(what: str, data: Imported, paths: dict[str, Path]) -> None:
    """One screen: rows, users, items, window, types, drops, files."""
    inter = data.interactions
    first, last = inter["timestamp"].iloc[0], inter["timestamp"].iloc[-1]
    read_as = {"text": "text dates", "datetime": "datetimes"}.get(data.time_unit, f"Unix {data.time_unit}")
    types = inter["interaction_type"].value_counts()
    types = types[types > 0]
    dropped = " · ".join(f"{reason} {n:,}" for reason, n in data.dropped.most_common()) or "none"
    rated = int(data.items["item_id"].isin(inter["item_id"]).sum())
    lines = [
        f"imported {what}",
        f"  interactions  {len(inter):>12,}  {first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S} UTC "
        f"(times read as {read_as})",
        f"  users         {len(data.users):>12,}"
        + (f"  ({data.profiles_without_events:,} profiles without events left out)"
           if data.profiles_without_events else ""),
        f"  items         {len(data.items):>12,}  ({rated:,} with events)",
        "  types         " + " · ".join(f"{t} {n:,}" for t, n in types.items()),
        f"  dropped rows  {dropped}",
    ]
    lines += [f"  {'wrote' if i == 0 else '':<14}{paths[k]}" for i, k in enumerate(("users", "items", "interactions"))]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
