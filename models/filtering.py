"""The four rule filters of the recommender, as small pure functions over candidates.

:class:`Candidates` holds item ids and aligned numpy columns: ``score``, ``top_category``, ``stock``,
``arrival_ns`` (UTC epoch nanoseconds) and ``discounted_price`` (numpy, not pandas: the whole request
has a 3 ms budget). Each filter returns a boolean mask of the candidates to KEEP; :func:`apply_filters`
runs them in order and counts what each removed (the response's ``filtered``). Rules come from one YAML
file (``models/filters.yaml`` or STREAMREC_FILTERS_CONFIG).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamrec._exceptions import StreamrecError

__all__ = ["Candidates", "FilterConfig", "FilterContext", "FilterConfigError", "load_filter_config", "availability",
           "demographic", "history", "contextual", "apply_filters", "FILTER_ORDER", "day_part"]

FILTER_ORDER = ("availability", "demographic", "history", "contextual")
COLUMNS = ("score", "top_category", "stock", "arrival_ns", "discounted_price")


@dataclass(frozen=True)
class Candidates:
    """Item ids (best first) and their columns, all aligned."""

    ids: np.ndarray
    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, keep: np.ndarray) -> Candidates:
        return Candidates(self.ids[keep], {k: v[keep] for k, v in self.columns.items()})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Candidates:
        """From a frame indexed by item_id with an aware ``arrival_date`` instead of ``arrival_ns``."""
        arrival = pd.to_datetime(frame["arrival_date"], utc=True)
        columns = {"arrival_ns": arrival.to_numpy(dtype="datetime64[ns]").view("int64")}
        columns |= {c: frame[c].to_numpy() for c in COLUMNS if c in frame.columns and c != "arrival_ns"}
        return cls(frame.index.to_numpy(dtype=object), columns)
DEFAULT_CONFIG = Path(__file__).with_name("filters.yaml")


class FilterConfigError(StreamrecError):
    """The filter rules file is missing, not YAML, or names a field that does not exist."""


@dataclass(frozen=True)
class Rule:
    """Exclude ``exclude_categories`` (and items above ``max_price``) when every condition given holds."""

    exclude_categories: frozenset[str] = frozenset()
    max_price: float | None = None
    age_min: int | None = None
    age_max: int | None = None
    genders: frozenset[str] | None = None
    hours: tuple[int, int] | None = None  # [start, end) in the request's local hour; may wrap midnight
    days: frozenset[str] | None = None  # "weekday", "weekend", or "mon".."sun"
    devices: frozenset[str] | None = None


@dataclass(frozen=True)
class FilterConfig:
    history_last_n: int = 20  # items seen in the user's last N events are not recommended again
    drop_purchased: bool = True
    demographic: tuple[Rule, ...] = ()
    contextual: tuple[Rule, ...] = ()
    enabled: tuple[str, ...] = FILTER_ORDER


@dataclass(frozen=True)
class FilterContext:
    """What the filters know about this request."""

    now: datetime
    age: int | None = None
    gender: str | None = None
    recent_item_ids: Sequence[str] = ()
    recent_interaction_types: Sequence[str] = ()
    purchased_item_ids: Sequence[str] = ()  # every item bought (bounded), older than the recent history too
    device: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)


_RULE_KEYS = {"exclude_categories", "max_price", "age_min", "age_max", "genders", "hours", "days", "devices"}
_DAYS = {"mon", "tue", "wed", "thu", "fri", "sat", "sun", "weekday", "weekend"}


def _rule(raw: Mapping[str, Any], where: str, categories: Iterable[str] | None, strict: bool = True) -> Rule:
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise FilterConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(_RULE_KEYS)}")
    cats = frozenset(raw.get("exclude_categories", ()))
    if categories is not None and not cats <= set(categories):
        if strict:
            raise FilterConfigError(f"{where}: categories not in the data: {sorted(cats - set(categories))}")
        cats &= set(categories)
    hours = raw.get("hours")
    if hours is not None and (len(hours) != 2 or not all(0 <= h <= 24 for h in hours)):
        raise FilterConfigError(f"{where}: hours must be [start, end) within 0..24, got {hours}")
    days = frozenset(raw["days"]) if "days" in raw else None
    if days is not None and not days <= _DAYS:
        raise FilterConfigError(f"{where}: days must be among {sorted(_DAYS)}, got {sorted(days - _DAYS)}")
    return Rule(exclude_categories=cats, max_price=raw.get("max_price"), age_min=raw.get("age_min"),
                age_max=raw.get("age_max"),
                genders=frozenset(raw["genders"]) if "genders" in raw else None,
                hours=tuple(hours) if hours is not None else None, days=days,
                devices=frozenset(raw["devices"]) if "devices" in raw else None)


def load_filter_config(path: Path | None = None, categories: Iterable[str] | None = None) -> FilterConfig:
    """Read the rules; ``categories`` (those in the data) lets a typo in a category fail loudly.

    The shipped rules name the generator's categories: on other data (an imported log) the ones the
    data lacks are left out of them, so those rules exclude nothing; a rules file of the user's own
    must name real categories.
    """
    import yaml

    chosen = path or os.environ.get("STREAMREC_FILTERS_CONFIG")
    path = Path(chosen or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FilterConfigError(f"cannot read filter rules {path}: {exc}") from None
    cats = list(categories) if categories is not None else None
    enabled = tuple(raw.get("enabled", FILTER_ORDER))
    if not set(enabled) <= set(FILTER_ORDER):
        raise FilterConfigError(f"{path}: enabled must be among {FILTER_ORDER}, got {enabled}")
    return FilterConfig(
        history_last_n=int(raw.get("history", {}).get("last_n", 20)),
        drop_purchased=bool(raw.get("history", {}).get("drop_purchased", True)),
        demographic=tuple(_rule(r, f"{path}: demographic[{i}]", cats, strict=bool(chosen))
                          for i, r in enumerate(raw.get("demographic", []))),
        contextual=tuple(_rule(r, f"{path}: contextual[{i}]", cats, strict=bool(chosen))
                         for i, r in enumerate(raw.get("contextual", []))),
        enabled=tuple(f for f in FILTER_ORDER if f in enabled),
    )


# ---- the filters --------------------------------------------------------------------------------
_NAT = np.iinfo(np.int64).min  # NaT as int64: an unknown arrival date counts as arrived


def _numbers(values: np.ndarray) -> np.ndarray:
    """float64, NaN where unknown (an imported catalogue has no stock or prices: None in the online store)."""
    values = np.asarray(values)
    if values.dtype.kind in "biuf":  # the usual case, and the cheap one
        return values.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan)


def availability(cands: Candidates, ctx: FilterContext) -> np.ndarray:
    """In stock, and available from a date that has come. Unknown stock or arrival: available."""
    arrival = cands["arrival_ns"]
    out_of_stock = _numbers(cands["stock"]) <= 0  # NaN compares False: unknown stock is not "none left"
    return ~out_of_stock & ((arrival == _NAT) | (arrival <= pd.Timestamp(ctx.now).value))


def _excluded(cands: Candidates, rules: Iterable[Rule]) -> np.ndarray:
    out = np.zeros(len(cands), dtype=bool)
    for rule in rules:
        if rule.exclude_categories:
            out |= np.isin(cands["top_category"], list(rule.exclude_categories))
        if rule.max_price is not None:
            out |= _numbers(cands["discounted_price"]) > rule.max_price  # an unknown price is never above
    return out


def _known(value: Any) -> Any:
    """None for a missing profile value, whichever way it is missing (None, NaN, pd.NA)."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else value


def demographic(cands: Candidates, ctx: FilterContext, rules: Sequence[Rule]) -> np.ndarray:
    """Drop the categories a rule excludes for the user's age band and gender; an unknown age or
    gender matches no rule that asks for one."""
    age, gender = _known(ctx.age), _known(ctx.gender)

    def applies(rule: Rule) -> bool:
        if rule.age_min is not None and (age is None or age < rule.age_min):
            return False
        if rule.age_max is not None and (age is None or age > rule.age_max):
            return False
        return rule.genders is None or gender in rule.genders

    return ~_excluded(cands, [r for r in rules if applies(r)])


def history(cands: Candidates, ctx: FilterContext, last_n: int, drop_purchased: bool = True) -> np.ndarray:
    """Drop items already purchased, seen in the last ``last_n`` events, or excluded by the request."""
    seen = set(ctx.recent_item_ids[:last_n]) | set(ctx.exclude)
    if drop_purchased:
        seen |= set(ctx.purchased_item_ids)
        seen |= {i for i, t in zip(ctx.recent_item_ids, ctx.recent_interaction_types, strict=False)
                 if t == "purchase"}
    return np.fromiter((i not in seen for i in cands.ids), dtype=bool, count=len(cands))


def day_part(now: datetime) -> tuple[int, str, str]:
    """(hour, 'mon'..'sun', 'weekday'|'weekend') of the request time."""
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    return now.hour, day, "weekend" if now.weekday() >= 5 else "weekday"


def contextual(cands: Candidates, ctx: FilterContext, rules: Sequence[Rule]) -> np.ndarray:
    """Time of day, weekday/weekend and device rules, from the request's context or the request time."""
    hour, day, kind = day_part(ctx.now)

    def applies(rule: Rule) -> bool:
        if rule.hours is not None:
            start, end = rule.hours
            inside = start <= hour < end if start <= end else (hour >= start or hour < end)
            if not inside:
                return False
        if rule.days is not None and not ({day, kind} & rule.days):
            return False
        return rule.devices is None or ctx.device in rule.devices

    return ~_excluded(cands, [r for r in rules if applies(r)])


def apply_filters(cands: Candidates, ctx: FilterContext, config: FilterConfig) -> tuple[Candidates, dict[str, int]]:
    """Run the enabled filters in order; returns the survivors (order kept) and removals per filter."""
    counts: dict[str, int] = {}
    for name in config.enabled:
        if name == "availability":
            keep = availability(cands, ctx)
        elif name == "demographic":
            keep = demographic(cands, ctx, config.demographic)
        elif name == "history":
            keep = history(cands, ctx, config.history_last_n, config.drop_purchased)
        else:
            keep = contextual(cands, ctx, config.contextual)
        counts[name] = int(len(keep) - keep.sum())
        cands = cands.take(keep)
    return cands, counts
