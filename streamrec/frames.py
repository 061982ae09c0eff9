"""Rules for tables of ids that every stage reading data files shares (the importers, training, serving)."""

from __future__ import annotations

import pandas as pd

__all__ = ["string_ids"]


def string_ids(values: pd.Series) -> pd.Series:
    """Ids as strings (object dtype), nulls as None: 7 and 7.0 both become "7" (a float column of ids is an
    integer column that had a null), so ids read from any file match ids typed by hand."""
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.isna() | (values % 1 == 0)
        if bool(whole.all()):
            values = values.astype("Int64")
    text = values.astype("string")
    return text.astype(object).where(text.notna(), None)
