"""The four rule filters of the recommender, as small pure functions over a whole batch of requests.

The recommender answers requests in micro-batches, so the filters are batch-native: a
:class:`CandidateBatch` holds B requests × M candidate slots as (B, M) numpy arrays (item keys, stock,
arrival, price, category codes), each filter returns the (B, M) mask of the candidates to KEEP, and
:func:`filter_batch` runs them in order and counts, per request, what each removed (the response's
``filtered``). Per-request work is only deciding which rules apply to whom. :class:`Candidates` (one
request's item ids and columns) and the one-request functions (:func:`availability`, ..., :func:`apply_filters`)
are the batch of one. Rules come from one YAML file (``serving/filters.yaml`` or STREAMREC_FILTERS_CONFIG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamrec._exceptions import StreamrecError

__all__ = ["Candidates", "CandidateBatch", "FilterConfig", "FilterContext", "FilterConfigError", "load_filter_config",
           "seen_items", "filter_batch", "rows_isin", "availability", "demographic", "history", "contextual",
           "apply_filters", "FILTER_ORDER", "day_part"]

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
HISTORY_LAST_N = 20  # the history filter's window when the rules do not set `history.last_n`


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
    history_last_n: int = HISTORY_LAST_N  # items seen in the user's last N events are not recommended again
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
    """Read the rules from ``path`` (None: the shipped serving/filters.yaml); ``categories`` (those in the
    data) lets a typo in a category fail loudly.

    The shipped rules name the generator's categories: on other data (an imported log) the ones the
    data lacks are left out of them, so those rules exclude nothing; a rules file of the user's own
    must name real categories.
    """
    import yaml

    chosen = path  # a rules file of the user's own (STREAMREC_FILTERS_CONFIG): its categories must exist
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
        history_last_n=int(raw.get("history", {}).get("last_n", HISTORY_LAST_N)),
        drop_purchased=bool(raw.get("history", {}).get("drop_purchased", True)),
        demographic=tuple(_rule(r, f"{path}: demographic[{i}]", cats, strict=bool(chosen))
                          for i, r in enumerate(raw.get("demographic", []))),
        contextual=tuple(_rule(r, f"{path}: contextual[{i}]", cats, strict=bool(chosen))
                         for i, r in enumerate(raw.get("contextual", []))),
        enabled=tuple(f for f in FILTER_ORDER if f in enabled),
    )


# ---- the filters: batch-native ------------------------------------------------------------------
_NAT = np.iinfo(np.int64).min  # NaT as int64: an unknown arrival date counts as arrived


@dataclass(frozen=True)
class CandidateBatch:
    """The candidates of B requests at once: M slots per request, every array (B, M) and aligned.

    ``keys`` name items by their row in an item table (-1: an empty slot, never kept), so the history
    filter compares integers; ``category`` holds codes into ``categories`` (-1: unknown).
    """

    keys: np.ndarray  # int64
    stock: np.ndarray  # float64, NaN where unknown
    arrival_ns: np.ndarray  # int64 UTC epoch ns, _NAT where unknown
    price: np.ndarray  # float64, NaN where unknown
    category: np.ndarray  # int64 codes
    categories: Mapping[str, int]


def seen_items(ctx: FilterContext, last_n: int, drop_purchased: bool = True) -> set[str]:
    """The items the history filter drops for this request: seen in its last ``last_n`` events, excluded
    by the request, and (``drop_purchased``) every purchase on record, recent or not."""
    seen = set(ctx.recent_item_ids[:last_n]) | set(ctx.exclude)
    if drop_purchased:
        seen |= set(ctx.purchased_item_ids)
        seen |= {i for i, t in zip(ctx.recent_item_ids, ctx.recent_interaction_types, strict=False)
                 if t == "purchase"}
    return seen


def availability_mask(batch: CandidateBatch, contexts: Sequence[FilterContext]) -> np.ndarray:
    """In stock, and available from a date that has come. Unknown stock or arrival: available."""
    now_ns = np.fromiter((_epoch_ns(c.now) for c in contexts), dtype=np.int64, count=len(contexts))
    out_of_stock = batch.stock <= 0  # NaN compares False: unknown stock is not "none left"
    return ~out_of_stock & ((batch.arrival_ns == _NAT) | (batch.arrival_ns <= now_ns[:, None]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_ns(when: datetime) -> int:
    """``pd.Timestamp(when).value`` (a naive time is UTC) without building a Timestamp per request."""
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND * 1000


def _known(value: Any) -> Any:
    """None for a missing profile value, whichever way it is missing (None, NaN, pd.NA)."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else value


def demographic_applies(rule: Rule, ctx: FilterContext) -> bool:
    """The rule is for the user's age band and gender; an unknown age or gender matches no rule that
    asks for one."""
    age, gender = _known(ctx.age), _known(ctx.gender)
    if rule.age_min is not None and (age is None or age < rule.age_min):
        return False
    if rule.age_max is not None and (age is None or age > rule.age_max):
        return False
    return rule.genders is None or gender in rule.genders


def day_part(now: datetime) -> tuple[int, str, str]:
    """(hour, 'mon'..'sun', 'weekday'|'weekend') of the request time."""
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    return now.hour, day, "weekend" if now.weekday() >= 5 else "weekday"


def contextual_applies(rule: Rule, ctx: FilterContext) -> bool:
    """Time of day, weekday/weekend and device, from the request's context or the request time."""
    hour, day, kind = day_part(ctx.now)
    if rule.hours is not None:
        start, end = rule.hours
        inside = start <= hour < end if start <= end else (hour >= start or hour < end)
        if not inside:
            return False
    if rule.days is not None and not ({day, kind} & rule.days):
        return False
    return rule.devices is None or ctx.device in rule.devices


def rules_mask(batch: CandidateBatch, contexts: Sequence[FilterContext], rules: Sequence[Rule],
               applies: Callable[[Rule, FilterContext], bool]) -> np.ndarray:
    """Drop what each rule excludes (its categories; items above its max price, an unknown price never
    is) from the requests it applies to."""
    out = np.zeros(batch.keys.shape, dtype=bool)
    for rule in rules:
        rows = np.fromiter((applies(rule, c) for c in contexts), dtype=bool, count=len(contexts))
        if not rows.any():
            continue
        excluded = np.zeros((int(rows.sum()), batch.keys.shape[1]), dtype=bool)
        codes = [batch.categories[c] for c in rule.exclude_categories if c in batch.categories]
        if codes:
            excluded |= np.isin(batch.category[rows], codes)
        if rule.max_price is not None:
            excluded |= batch.price[rows] > rule.max_price
        out[rows] |= excluded
    return ~out


def rows_isin(keys: np.ndarray, per_row: Sequence[np.ndarray]) -> np.ndarray:
    """(B, M) mask: ``keys[b, j]`` is one of ``per_row[b]`` (keys ≥ -1), in one vectorized lookup."""
    rows = keys.shape[0]
    lengths = np.fromiter((len(s) for s in per_row), dtype=np.int64, count=rows)
    if not lengths.any():
        return np.zeros(keys.shape, dtype=bool)
    wanted = np.concatenate([np.asarray(s, dtype=np.int64) for s in per_row])
    stride = int(max(keys.max(initial=0), wanted.max(initial=0))) + 2  # keys ≥ -1: +1 keeps rows apart
    offsets = np.arange(rows, dtype=np.int64) * stride
    table = np.sort(np.repeat(offsets, lengths) + wanted + 1)
    probe = offsets[:, None] + keys + 1
    # a binary search in the sorted table: np.isin's own dispatch cost ~40 µs a batch, a third of the filters
    return table[np.minimum(np.searchsorted(table, probe), len(table) - 1)] == probe


def history_mask(batch: CandidateBatch, seen_keys: Sequence[np.ndarray]) -> np.ndarray:
    """Drop each request's ``seen_keys`` (item keys, see :func:`seen_items`)."""
    return ~rows_isin(batch.keys, seen_keys)


def filter_batch(batch: CandidateBatch, contexts: Sequence[FilterContext], seen_keys: Sequence[np.ndarray],
                 config: FilterConfig, alive: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the enabled filters in order over every request at once. Returns the (B, M) mask of the
    survivors and, per filter, how many candidates it removed from each request (among those still
    alive when it ran). ``alive``: the slots to consider (default: every non-empty slot)."""
    keep = batch.keys >= 0 if alive is None else alive & (batch.keys >= 0)
    counts: dict[str, np.ndarray] = {}
    for name in config.enabled:
        if name == "availability":
            mask = availability_mask(batch, contexts)
        elif name == "demographic":
            mask = rules_mask(batch, contexts, config.demographic, demographic_applies)
        elif name == "history":
            mask = history_mask(batch, seen_keys)
        else:
            mask = rules_mask(batch, contexts, config.contextual, contextual_applies)
        counts[name] = (keep & ~mask).sum(axis=1)
        keep &= mask
    return keep, counts


# ---- one request's candidates: the batch of one ------------------------------------------------------------
def _numbers(values: np.ndarray) -> np.ndarray:
    """float64, NaN where unknown (an imported catalogue has no stock or prices: None in the online store)."""
    values = np.asarray(values)
    if values.dtype.kind in "biuf":  # the usual case, and the cheap one
        return values.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _one(cands: Candidates, seen: Iterable[str] = ()) -> tuple[CandidateBatch, list[np.ndarray]]:
    """``cands`` as a batch of one, and ``seen`` as its keys: item ids become codes, so a seen id drops
    every slot that holds it."""
    n = len(cands)
    codes, _ = pd.factorize(pd.Series([*cands.ids, *seen], dtype=object), use_na_sentinel=False)
    category, names = pd.factorize(pd.Series(cands["top_category"], dtype=object))  # unknown: -1
    batch = CandidateBatch(keys=codes[:n].astype(np.int64)[None], stock=_numbers(cands["stock"])[None],
                           arrival_ns=np.asarray(cands["arrival_ns"], dtype=np.int64)[None],
                           price=_numbers(cands["discounted_price"])[None], category=category.astype(np.int64)[None],
                           categories={c: i for i, c in enumerate(names)})
    return batch, [codes[n:].astype(np.int64)]


def availability(cands: Candidates, ctx: FilterContext) -> np.ndarray:
    """The mask of ``cands`` to keep (see :func:`availability_mask`)."""
    return availability_mask(_one(cands)[0], [ctx])[0]


def demographic(cands: Candidates, ctx: FilterContext, rules: Sequence[Rule]) -> np.ndarray:
    """The mask of ``cands`` to keep under the demographic ``rules`` (see :func:`demographic_applies`)."""
    return rules_mask(_one(cands)[0], [ctx], rules, demographic_applies)[0]


def history(cands: Candidates, ctx: FilterContext, last_n: int, drop_purchased: bool = True) -> np.ndarray:
    """The mask of ``cands`` to keep: none of :func:`seen_items`."""
    batch, seen = _one(cands, seen_items(ctx, last_n, drop_purchased))
    return history_mask(batch, seen)[0]


def contextual(cands: Candidates, ctx: FilterContext, rules: Sequence[Rule]) -> np.ndarray:
    """The mask of ``cands`` to keep under the contextual ``rules`` (see :func:`contextual_applies`)."""
    return rules_mask(_one(cands)[0], [ctx], rules, contextual_applies)[0]


def apply_filters(cands: Candidates, ctx: FilterContext, config: FilterConfig) -> tuple[Candidates, dict[str, int]]:
    """Run the enabled filters in order; returns the survivors (order kept) and removals per filter."""
    batch, seen = _one(cands, seen_items(ctx, config.history_last_n, config.drop_purchased))
    keep, counts = filter_batch(batch, [ctx], seen, config)
    return cands.take(keep[0]), {name: int(n[0]) for name, n in counts.items()}
