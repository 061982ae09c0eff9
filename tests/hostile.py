"""Hypothesis strategies for hostile record fields, and the sizes of the worst records: the fuzzed events
(tests/stream_processors/test_reliability.py) and the fuzzed requests (tests/serving/test_reliability_requests.py)
draw from the same ones."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

DEEP = 10_000  # levels of nesting: 20 KB, under the size cap, over the parser's depth limit
OVERSIZED = 900_000  # ~900 KB: its DLQ copy, if kept whole, would be 2-5x larger still
DLQ_RECORD_MAX_BYTES = 20_000  # STREAMREC_DLQ_MAX_RAW_BYTES (16 KiB of raw text) plus the reason and fields

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
not_a_string = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | \
    st.lists(st.text(max_size=5), max_size=3) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
_too_long = st.builds(lambda c, n: c * n, st.sampled_from("xé😀"), st.integers(129, 2000))
bad_id = not_a_string | _too_long | st.just("") | \
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), st.sampled_from("\x00\n\t\x1f"), st.text(max_size=5))
naive_time = st.datetimes().map(lambda d: d.isoformat())

_offset = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60))
far_dated = st.sampled_from(["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00",
                             "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]) | \
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(1989, 12, 30), timezones=_offset
                 ).map(lambda d: d.isoformat()) | \
    st.datetimes(min_value=datetime(2100, 1, 1), max_value=datetime(9999, 12, 30), timezones=_offset
                 ).map(lambda d: d.isoformat())


def spread(records: list[Any], among: list[Any]) -> list[Any]:
    """``records`` placed evenly among ``among`` (hostile records mixed into traffic, not sent alone)."""
    out = list(among)
    for i, record in enumerate(records):
        out.insert((i + 1) * len(among) // (len(records) + 1), record)
    return out
