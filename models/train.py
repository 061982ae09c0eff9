"""Training examples, the training loop and the evaluation protocol of the two-tower model.

Examples are built exactly as serving sees a user: for a target event at time t, the history is
the user's previous ≤H events with timestamp < t, newest first, any type (negative views too).
Split (per user, by time): the last "novel" positive event (first touch of an item) is the test
target, the one before it the validation target; training targets are the user's novel positive
events (or, with ``targets="all"``, every positive event) strictly before the validation (else test)
time. Evaluation ranks the whole catalogue with every item the user touched before the target
removed, for the model and every baseline alike.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from streamrec._exceptions import StreamrecError
from streamrec.schemas import HISTORY_LENGTH, INTERACTION_TYPES

from .features import POSITIVE_TYPES, FeatureSchema, string_ids
from .metrics import ranking_metrics
from .towers import TowerConfig, TwoTower, UserBatch

__all__ = ["TrainError", "TrainConfig", "RawData", "Events", "Split", "Encoded", "Prepared", "EvalSet",
           "FitResult", "load_data", "split_by_time", "encode", "prepare", "user_batch", "fit",
           "new_model", "grow_state", "eval_set", "evaluate", "model_scorer", "baseline_scorers",
           "pick_device", "history_positions", "Report", "train_and_evaluate"]

Scorer = Callable[[torch.Tensor], torch.Tensor]  # eval-set indices (b,) -> scores (b, n_catalogue)
_FILES = {"users": "recommendation_users.parquet", "items": "recommendation_items.parquet",
          "interactions": "recommendation_interactions.parquet"}
_EVENT_COLUMNS = ["interaction_id", "user_id", "item_id", "interaction_type", "timestamp"]


class TrainError(StreamrecError):
    """Training cannot run: missing or unusable data, bad options."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256  # in-batch negatives: larger is harder, but 256 keeps ~60 steps/epoch at 20k
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    # novel: only a user's first touch of an item is a target. "all" adds the funnel repeats (cart
    # after view of the same item), which teach the towers to echo the history: -15% Recall@10
    targets: Literal["all", "novel"] = "novel"
    logq: bool = True
    device: str | None = None  # None: CUDA when available, else CPU


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


def pick_device(name: str | None = None) -> torch.device:
    """``name``, or CUDA when available, else CPU; a device this machine lacks is a TrainError."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise TrainError(f"--device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device on this machine")
    return device


def new_model(schema: FeatureSchema, enc: Encoded | None = None, **options: Any) -> TwoTower:
    """A TwoTower sized for ``schema``; ``options`` are TowerConfig fields (dim, temperature, ...)."""
    model = TwoTower(TowerConfig(**schema.sizes(), **options))
    if enc is not None:
        model.to(enc.ev_item.device).item_tower.set_features(enc.items)
    return model


def grow_state(model: TwoTower, old: dict[str, torch.Tensor]) -> None:
    """Load ``old`` weights into ``model`` whose vocabularies may have grown (rows appended).

    Feature buffers are skipped (the caller sets them from the new catalogue); new rows keep their
    fresh initialisation, so a new item starts from its content features.
    """
    state = model.state_dict()
    for name, new in state.items():
        if name.split(".")[-1].startswith("f_"):
            continue
        if name not in old:
            raise TrainError(f"warm start: the previous model has no tensor {name!r}")
        prev = old[name].to(new.device)
        if prev.shape == new.shape:
            new.copy_(prev)
        elif prev.dim() == new.dim() and prev.shape[1:] == new.shape[1:] and prev.shape[0] <= new.shape[0]:
            new[: prev.shape[0]].copy_(prev)
        else:
            raise TrainError(f"warm start: {name} has shape {tuple(prev.shape)}, cannot grow to {tuple(new.shape)}"
                             " (was --dim changed?)")
    model.load_state_dict(state)


# ---- evaluation -------------------------------------------------------------------------------
@dataclass
class EvalSet:
    rows: torch.Tensor  # (E,) target event rows
    targets: np.ndarray  # (E, 1) catalogue columns (item row - 2)
    seen_ptr: np.ndarray  # (E + 1,) CSR over seen_cols
    seen_cols: torch.Tensor  # catalogue columns the user touched before each target
    n_catalogue: int


def eval_set(enc: Encoded, rows: np.ndarray) -> EvalSet:
    dev = enc.ev_item.device
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=dev)
    start, end = enc.user_start[rows_t].cpu().numpy(), enc.grp_start[rows_t].cpu().numpy()
    lens = end - start
    ptr = np.r_[0, np.cumsum(lens)]
    flat = np.arange(ptr[-1]) - np.repeat(ptr[:-1], lens) + np.repeat(start, lens)
    seen = enc.ev_item[torch.as_tensor(flat, dtype=torch.long, device=dev)] - 2
    targets = (enc.ev_item[rows_t] - 2).cpu().numpy().reshape(-1, 1)
    return EvalSet(rows_t, targets, ptr, seen, enc.schema.n_item_rows - 2)


@torch.inference_mode()
def evaluate(scorer: Scorer, es: EvalSet, ks: Sequence[int] = (10, 20), chunk: int = 1024
             ) -> tuple[dict[str, float], np.ndarray]:
    """Rank the catalogue for every eval target (seen items removed); metrics and top-max(ks)."""
    k = max(ks)
    tops = []
    for i0 in range(0, len(es.rows), chunk):
        i1 = min(i0 + chunk, len(es.rows))
        scores = scorer(torch.arange(i0, i1, device=es.rows.device)).clone()  # (b, n_catalogue)
        p0, p1 = es.seen_ptr[i0], es.seen_ptr[i1]
        r = torch.as_tensor(np.repeat(np.arange(i1 - i0), np.diff(es.seen_ptr[i0:i1 + 1])), device=scores.device)
        scores[r, es.seen_cols[p0:p1]] = float("-inf")
        tops.append(torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy())
    top = np.concatenate(tops) if tops else np.zeros((0, k), np.int64)
    return ranking_metrics(top, es.targets, ks, es.n_catalogue), top


@torch.inference_mode()
def model_scorer(model: TwoTower, enc: Encoded, es: EvalSet, columns: torch.Tensor | None = None,
                 history_rows: torch.Tensor | None = None) -> Scorer:
    """Scores of ``model`` (encoded by its own ``enc``). ``columns`` maps the eval catalogue to the
    model's item rows (-1 = unknown to it, never recommended); default: the same catalogue.
    ``history_rows`` (E,): the user's history is read as of these event rows instead of ``es.rows``
    (an older snapshot of the same users, for the freshness lift)."""
    model.eval()
    dev = enc.ev_item.device
    rows = columns if columns is not None else torch.arange(2, enc.schema.n_item_rows, device=dev)
    item = model.items(rows.clamp(min=0)) * (rows >= 0).unsqueeze(1)  # (C, D)
    unknown = rows < 0
    hist = es.rows if history_rows is None else history_rows

    @torch.inference_mode()
    def score(idx: torch.Tensor) -> torch.Tensor:
        s = model.users(user_batch(enc, hist[idx])) @ item.T  # (b, C)
        return s.masked_fill(unknown, float("-inf"))

    return score


def baseline_scorers(p: Prepared, es: EvalSet, seed: int = 0) -> dict[str, Scorer]:
    """random, popularity (training-target counts) and, with affinities, the generator's oracle."""
    dev = es.rows.device
    pop = torch.bincount(p.enc.ev_item[torch.as_tensor(p.split.train, device=dev)] - 2,
                         minlength=es.n_catalogue).double()
    gen = torch.Generator(device=dev).manual_seed(seed)
    out: dict[str, Scorer] = {
        "random": lambda idx: torch.rand((len(idx), es.n_catalogue), generator=gen, device=dev),
        "popularity": lambda idx: pop.expand(len(idx), -1),
    }
    if p.raw.affinities is not None:
        cats = list(p.enc.schema.top_categories)
        aff = p.raw.affinities.pivot_table(index="user_id", columns="category", values="affinity")
        aff = aff.reindex(index=p.events.user_ids, columns=cats).fillna(0.0).to_numpy()
        aff = torch.as_tensor(np.c_[np.zeros((len(aff), 2)), aff], device=dev)  # PAD/OOV columns
        top = p.enc.items["top"][2:]
        # ties within a category broken by popularity: pop/(max+1) < 1e-9 never beats an affinity gap
        tie = 1e-9 * pop / (pop.max() + 1)
        out["oracle"] = lambda idx: aff[p.enc.ev_user[es.rows[idx]]][:, top] + tie
    return out


# ---- training ---------------------------------------------------------------------------------
@dataclass
class FitResult:
    model: TwoTower
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _optimizers(model: TwoTower, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for the sparse-gradient tables (ids, title hashes), AdamW for the rest."""
    sparse = [m.weight for m in model.modules() if getattr(m, "sparse", False)]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    # fused: one kernel over every dense tensor instead of a loop of small ops per tensor (2x faster here)
    return [torch.optim.SparseAdam(sparse, lr=cfg.lr),
            torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)]


def fit(model: TwoTower, p: Prepared, cfg: TrainConfig, progress: Progress | None = None,
        val: EvalSet | None = None) -> FitResult:
    """Train on ``p.split.train``; after each epoch score the validation set (``val``, else one built
    from ``p.split.val``) and keep the best."""
    dev = p.enc.ev_item.device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = torch.as_tensor(p.split.train, dtype=torch.long, device=dev)
    counts = torch.bincount(p.enc.ev_item[rows], minlength=p.enc.schema.n_item_rows).double()
    log_q = torch.log((counts / counts.sum()).clamp(min=1e-12)).float() if cfg.logq else None
    opts = _optimizers(model, cfg)
    if val is None and len(p.split.val):
        val = eval_set(p.enc, p.split.val)
    result, best, t0 = FitResult(model), -1.0, time.perf_counter()
    n_batches = max(1, -(-len(rows) // cfg.batch_size))
    ep_task = progress.add_task("epochs", total=cfg.epochs) if progress else None
    b_task = progress.add_task("batches", total=n_batches) if progress else None
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = rows[torch.randperm(len(rows), generator=gen).to(dev)]
        total = torch.zeros((), device=dev)
        if progress:
            progress.reset(b_task, total=n_batches)
        for i in range(0, len(perm), cfg.batch_size):
            batch = perm[i:i + cfg.batch_size]
            _, loss = model(user_batch(p.enc, batch), p.enc.ev_item[batch], log_q)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.detach() * len(batch)
            if progress:
                progress.advance(b_task)
        entry = {"epoch": float(epoch), "loss": float(total) / max(1, len(rows))}
        if val is not None:
            metrics, _ = evaluate(model_scorer(model, p.enc, val), val, (10,))
            entry |= {"val_recall@10": metrics["recall@10"], "val_ndcg@10": metrics["ndcg@10"]}
            if metrics["recall@10"] > best:
                best, result.best_epoch, best_state = metrics["recall@10"], epoch, copy.deepcopy(model.state_dict())
        result.history.append(entry)
        if progress:
            progress.update(ep_task, advance=1, description=f"epoch {epoch} loss {entry['loss']:.3f}")
    if val is not None and result.best_epoch:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class Report:
    prepared: Prepared
    fit: FitResult
    test: dict[str, dict[str, float]]  # model and baselines -> metrics on the test targets


def train_and_evaluate(raw: RawData, cfg: TrainConfig, model_options: dict[str, Any] | None = None,
                       progress: Progress | None = None, baselines: bool = True) -> Report:
    """Split, train from scratch, and score the model and the baselines on the same test targets."""
    p = prepare(raw, None, cfg.targets, pick_device(cfg.device))
    torch.manual_seed(cfg.seed)  # before the model exists: its initial weights are part of the run
    model = new_model(p.enc.schema, p.enc, **(model_options or {}))
    result = fit(model, p, cfg, progress)
    es = eval_set(p.enc, p.split.test)
    test = {"two-tower": evaluate(model_scorer(model, p.enc, es), es)[0]}
    if baselines:
        test |= {name: evaluate(s, es)[0] for name, s in baseline_scorers(p, es, cfg.seed).items()}
    return Report(p, result, test)
