"""Any interaction log in a CSV/TSV (optionally compressed) or parquet file: its named columns, nothing else.

Id and type columns are read as text, so "007" stays "007"; the rules in :mod:`generation.logs` do the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .logs import ImporterError

__all__ = ["read_table"]

_CSV = (".csv", ".tsv", ".txt")
_COMPRESSED = ("", ".gz", ".bz2", ".zip", ".xz", ".zst")
_PARQUET = (".parquet", ".pq")


def _csv(path: Path, **options: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, encoding="utf-8", **options)
    except UnicodeDecodeError:
        return pd.read_csv(path, encoding="latin-1", **options)


def _unreadable(path: Path, exc: Exception) -> ImporterError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ImporterError(f"cannot read {path}: {first}")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET):
        return "parquet"
    if any(name.endswith(ext + c) for ext in _CSV for c in _COMPRESSED):
        return "tsv" if ".tsv" in name else "csv"
    raise ImporterError(f"{path}: not a table streamrec reads by its name; use .csv or .tsv (optionally .gz, "
                        ".bz2, .zip, .xz, .zst) or .parquet")


def read_table(path: Path, columns: Mapping[str, str]) -> pd.DataFrame:
    """The named columns of a CSV/TSV or parquet file, renamed to the keys of ``columns`` (user, item,
    time, type, rating); id and type columns are read as text so "007" stays "007"."""
    kind = _kind(path)
    if not path.is_file():
        raise ImporterError(f"{path}: no such file")
    wanted = list(dict.fromkeys(columns.values()))
    sep = "\t" if kind == "tsv" else ","
    try:
        have: Sequence[str] = (pq.read_schema(path).names if kind == "parquet"
                               else list(_csv(path, nrows=0, sep=sep).columns))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None
    missing = [c for c in wanted if c not in have]
    if missing:
        raise ImporterError(f"{path}: no column {', '.join(map(repr, missing))}; it has "
                            f"{', '.join(map(repr, list(have)[:30]))}{' …' if len(have) > 30 else ''}")
    text = {columns[k] for k in ("user", "item", "type") if k in columns}
    try:
        frame = (pd.read_parquet(path, columns=wanted) if kind == "parquet"
                 else _csv(path, sep=sep, usecols=wanted, dtype=dict.fromkeys(text, str)))
    except (OSError, ValueError, pa.ArrowException) as exc:  # pandas' ParserError is a ValueError
        raise _unreadable(path, exc) from None
    return pd.DataFrame({key: frame[col] for key, col in columns.items()}, copy=False)
