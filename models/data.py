"""Training examples: the interaction log read, sorted by user and time, split and encoded.

Examples are built exactly as serving sees a user: for a target event at time t, the history is
the user's previous ≤H events with timestamp < t, newest first, any type (negative views too).
Split (per user, by time): the last "novel" positive event (first touch of an item) is the test
target, the one before it the validation target; training targets are the user's novel positive
events (or, with ``targets="all"``, every positive event) strictly before the validation (else test)
time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from streamrec._exceptions import StreamrecError
from streamrec.frames import string_ids
from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES

from .features import POSITIVE_TYPES, FeatureSchema
from .towers import UserBatch, Windows

__all__ = ["TrainError", "RawData", "Events", "Split", "Encoded", "Prepared", "load_data", "split_by_time",
           "encode", "prepare", "user_batch", "history_positions", "WindowIndex", "window_index", "window_batch"]

_FILES = {"users": "recommendation_users.parquet", "items": "recommendation_items.parquet",
          "interactions": "recommendation_interactions.parquet"}
_EVENT_COLUMNS = ["interaction_id", "user_id", "item_id", "interaction_type", "timestamp"]


class TrainError(StreamrecError):
    """Training cannot run: missing or unusable data, bad options."""


@dataclass
class RawData:
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    affinities: pd.DataFrame | None = None


def load_data(data_dir: Path, extra: pd.DataFrame | None = None) -> RawData:
    """Read the three parquet files (plus ``extra`` interactions, deduplicated by id).

    Any data the importer or the generator wrote is accepted: ids become strings, and the item and
    user columns the model reads are added as null where absent. An interaction type outside the five
    and a numeric timestamp (Unix time of an unknown unit) are errors that say what to do.
    """
    frames: dict[str, pd.DataFrame] = {}
    for key, name in _FILES.items():
        path = Path(data_dir) / name
        if not path.is_file():
            raise TrainError(f"no {name} in {data_dir}: run `streamrec generate` first (or pass --data-dir)")
        try:
            frames[key] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises a zoo of types for a bad file
            raise TrainError(f"cannot read {path}: {exc}") from exc
    inter = frames["interactions"]
    missing = set(_EVENT_COLUMNS) - set(inter.columns)
    if missing:
        raise TrainError(f"{_FILES['interactions']} lacks columns {sorted(missing)}")
    if pd.api.types.is_numeric_dtype(inter["timestamp"].dtype):
        raise TrainError(f"{_FILES['interactions']}: timestamp is a number ({inter['timestamp'].dtype}), not a "
                         "time: its unit is unknown; bring the log in with `streamrec import table FILE --user-col "
                         "... --item-col ... --time-col ... --time-unit s|ms|us|ns`")
    unknown = set(inter["interaction_type"].unique()) - set(INTERACTION_TYPES)
    if unknown:
        shown = ", ".join(sorted(map(repr, unknown))[:10]) + (" …" if len(unknown) > 10 else "")
        raise TrainError(f"{_FILES['interactions']}: interaction_type values {shown} are not among "
                         f"{', '.join(INTERACTION_TYPES)} (map them with `streamrec import table ... --type-map "
                         "raw=type`)")
    # what the model reads, null where the data has none (an imported log has no prices or regions)
    for key, columns in (("items", ("discounted_price", "rating", "rating_count", "top_category", "category",
                                    "product_name")),
                         ("users", ("age", "gender", "region", "preferred_categories"))):
        for column in columns:
            if column not in frames[key].columns:
                frames[key][column] = None
    for key in ("users", "items"):
        frames[key][f"{key[:-1]}_id"] = string_ids(frames[key][f"{key[:-1]}_id"])
    inter["user_id"], inter["item_id"] = string_ids(inter["user_id"]), string_ids(inter["item_id"])
    if extra is not None and len(extra):
        inter = pd.concat([inter[_EVENT_COLUMNS], extra[_EVENT_COLUMNS]], ignore_index=True)
        inter["timestamp"] = pd.to_datetime(inter["timestamp"], utc=True)
        # a replay of the base data carries the same ids; a looped replay ("E1~1") the same event at
        # the same (microsecond-rounded) time: neither is a new interaction
        ms = inter["timestamp"].dt.floor("ms")
        dup = inter.assign(_ms=ms).duplicated(["user_id", "item_id", "interaction_type", "_ms"])
        inter = inter[~dup].drop_duplicates("interaction_id", keep="first").reset_index(drop=True)
    aff_path = Path(data_dir) / "user_affinities.parquet"
    aff = pd.read_parquet(aff_path) if aff_path.is_file() else None
    return RawData(frames["users"], frames["items"], inter, aff)


def history_positions(grp_start: torch.Tensor, user_start: torch.Tensor, h: int) -> torch.Tensor:
    """Event rows of each target's history, newest first: (B,) -> (B, h), -1 where empty.

    ``grp_start`` is the first row holding the target's (user, timestamp): every earlier row of the
    same user is strictly older, so nothing at or after the target's time can enter its history.
    """
    pos = grp_start.unsqueeze(1) - 1 - torch.arange(h, device=grp_start.device)  # (B, h)
    return torch.where(pos >= user_start.unsqueeze(1), pos, torch.full_like(pos, -1))


@dataclass
class Events:
    """The interaction log sorted by (user, time), with the row boundaries histories need."""

    frame: pd.DataFrame
    user_ids: np.ndarray  # user code -> user_id
    user: np.ndarray  # (N,) user codes
    ts: np.ndarray  # (N,) int64 ns UTC
    grp_start: np.ndarray  # (N,) first row with the same (user, ts)
    user_start: np.ndarray  # (N,) first row of the user

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Events:
        ts = pd.to_datetime(df["timestamp"], utc=True).to_numpy(dtype="datetime64[ns]").view(np.int64)
        codes, uniques = pd.factorize(df["user_id"])
        order = np.lexsort((ts, codes))
        frame = df.iloc[order][_EVENT_COLUMNS].reset_index(drop=True)
        user, ts = codes[order].astype(np.int64), ts[order]
        rows = np.arange(len(frame))
        new_user = np.r_[True, user[1:] != user[:-1]]
        new_grp = new_user | np.r_[True, ts[1:] != ts[:-1]]
        return cls(frame, np.asarray(uniques, dtype=object), user, ts,
                   np.maximum.accumulate(np.where(new_grp, rows, 0)),
                   np.maximum.accumulate(np.where(new_user, rows, 0)))

    def history_rows(self, rows: np.ndarray, h: int = HISTORY_LENGTH) -> np.ndarray:
        return history_positions(torch.from_numpy(self.grp_start[rows]),
                                 torch.from_numpy(self.user_start[rows]), h).numpy()

    @property
    def positive(self) -> np.ndarray:
        return self.frame["interaction_type"].isin(POSITIVE_TYPES).to_numpy()


@dataclass
class Split:
    train: np.ndarray  # event rows used as training targets
    val: np.ndarray
    test: np.ndarray


def split_by_time(ev: Events, targets: str = "novel") -> Split:
    """Per user: last novel positive = test, the one before = validation, older positives = train."""
    novel = ev.positive & ~ev.frame.duplicated(["user_id", "item_id"]).to_numpy()
    nov_rows = np.flatnonzero(novel)
    nov_user = ev.user[nov_rows]
    from_end = pd.Series(nov_user).groupby(nov_user).cumcount(ascending=False).to_numpy()
    n_novel = np.bincount(nov_user, minlength=len(ev.user_ids))[nov_user]
    test = nov_rows[(from_end == 0) & (n_novel >= 2)]  # ≥1 earlier novel target left to learn from
    val = nov_rows[(from_end == 1) & (n_novel >= 3)]
    cutoff = np.full(len(ev.user_ids), np.iinfo(np.int64).max)
    cutoff[ev.user[test]] = ev.ts[test]
    cutoff[ev.user[val]] = ev.ts[val]
    keep = (ev.positive if targets == "all" else novel) & (ev.ts < cutoff[ev.user])
    return Split(np.flatnonzero(keep), val, test)


@dataclass
class Encoded:
    """Schema-dependent tensors over one Events log, on one device."""

    schema: FeatureSchema
    ev_item: torch.Tensor  # (N,) item rows
    ev_type: torch.Tensor  # (N,)
    ev_user: torch.Tensor  # (N,) user codes
    grp_start: torch.Tensor
    user_start: torch.Tensor
    profile: dict[str, torch.Tensor]  # by user code
    items: dict[str, torch.Tensor]  # item feature table by item row


def encode(ev: Events, schema: FeatureSchema, users: pd.DataFrame, items: pd.DataFrame,
           device: torch.device | str = "cpu") -> Encoded:
    by_id = users.drop_duplicates("user_id").set_index("user_id")
    cols = [c for c in ("age", "gender", "region", "preferred_categories") if c in by_id.columns]
    known = by_id.reindex(ev.user_ids)[cols]
    present = known.notna().any(axis=1).to_numpy() if cols else np.zeros(len(ev.user_ids), bool)
    records = known.to_dict("records") if cols else []
    # users the profile table does not know (seen only in the event log) encode as all-unknown
    profiles = [records[i] if present[i] else None for i in range(len(ev.user_ids))]
    t = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731 - local shorthand
    return Encoded(
        schema, t(schema.item_index(ev.frame["item_id"])), t(schema.type_index(ev.frame["interaction_type"])),
        t(ev.user), t(ev.grp_start), t(ev.user_start),
        {k: t(v) for k, v in schema.profile_table(profiles).items()},
        {k: t(v) for k, v in schema.item_table(items).items()})


def user_batch(enc: Encoded, rows: torch.Tensor) -> UserBatch:
    """The serving-shaped input for target events ``rows`` (B,)."""
    pos = history_positions(enc.grp_start[rows], enc.user_start[rows], enc.schema.max_history)  # (B, H)
    valid, pos0 = pos >= 0, pos.clamp(min=0)
    u, zero = enc.ev_user[rows], torch.zeros_like(pos)
    return UserBatch(enc.profile["age"][u], enc.profile["gender"][u], enc.profile["region"][u],
                     enc.profile["pref"][u], torch.where(valid, enc.ev_item[pos0], zero),
                     torch.where(valid, enc.ev_type[pos0], zero))


@dataclass
class Prepared:
    raw: RawData
    events: Events
    split: Split
    enc: Encoded


def prepare(raw: RawData, schema: FeatureSchema | None = None, targets: str = "novel",
            device: torch.device | str = "cpu") -> Prepared:
    """Sort, split and encode ``raw``; an existing schema is extended (warm start), else built."""
    if raw.interactions.empty:
        raise TrainError("no interactions to train on")
    ev = Events.from_frame(raw.interactions)
    schema = (schema.extend(raw.users, raw.items, ev.frame) if schema is not None
              else FeatureSchema.build(raw.users, raw.items, ev.frame))
    split = split_by_time(ev, targets)
    if len(split.train) == 0 or len(split.test) == 0:
        raise TrainError(f"too little data: {len(split.train)} training and {len(split.test)} test targets "
                         "(a test target needs a user with two first-time positive events)")
    return Prepared(raw, ev, split, encode(ev, schema, raw.users, raw.items, device))



@dataclass
class WindowIndex:
    """Training targets grouped by the window of ``h`` events (a user's events cut from their first one)
    that holds the newest event of their history: the sequence tower reads every target of a window in one
    pass. Targets without any history are left out (nothing to attend to)."""

    start: np.ndarray  # (W,) first event row of each window
    length: np.ndarray  # (W,) events in it (the user's last window may be short)
    ptr: np.ndarray  # (W + 1,) CSR over rows/pos
    rows: np.ndarray  # target event rows, window by window
    pos: np.ndarray  # position of each target's newest history event in its window
    h: int


def window_index(enc: Encoded, rows: np.ndarray, h: int) -> WindowIndex:
    us, gs = enc.user_start.cpu().numpy(), enc.grp_start.cpu().numpy()
    user = enc.ev_user.cpu().numpy()
    rows = np.asarray(rows, np.int64)
    rows = rows[gs[rows] > us[rows]]
    last = gs[rows] - 1  # the newest event strictly before the target's time
    start = us[rows] + (last - us[rows]) // h * h
    order = np.lexsort((rows, start))
    rows, last, start = rows[order], last[order], start[order]
    starts, first, counts = np.unique(start, return_index=True, return_counts=True)
    new_user = np.r_[True, user[1:] != user[:-1]]
    bounds = np.r_[np.flatnonzero(new_user), len(user)]
    user_end = bounds[np.searchsorted(bounds, starts, side="right")]
    return WindowIndex(starts, np.minimum(h, user_end - starts), np.r_[0, np.cumsum(counts)], rows,
                       last - start, h)


def window_batch(enc: Encoded, w: WindowIndex, sel: np.ndarray) -> tuple[Windows, torch.Tensor]:
    """Windows ``sel`` as model input, and their targets' event rows (T,)."""
    dev = enc.ev_item.device
    slots = np.arange(w.h)
    pos_rows = w.start[sel, None] + slots  # (W, L)
    valid = slots < w.length[sel, None]
    idx = torch.as_tensor(np.where(valid, pos_rows, 0), device=dev)
    keep = torch.as_tensor(valid, device=dev)
    items = torch.where(keep, enc.ev_item[idx], torch.zeros_like(idx))
    types = torch.where(keep, enc.ev_type[idx], torch.zeros_like(idx))
    lo, hi = w.ptr[sel], w.ptr[sel + 1]
    n = hi - lo
    flat = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(n.sum())
    tgt = torch.as_tensor(w.rows[flat], device=dev)
    u = enc.ev_user[tgt]
    none = torch.zeros((len(tgt), 1), dtype=torch.long, device=dev)
    profile = UserBatch(enc.profile["age"][u], enc.profile["gender"][u], enc.profile["region"][u],
                        enc.profile["pref"][u], none, none)
    win = torch.as_tensor(np.repeat(np.arange(len(sel)), n), device=dev)
    return Windows(items, types, win, torch.as_tensor(w.pos[flat], device=dev), profile), tgt
