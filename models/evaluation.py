"""The evaluation protocol, shared by the model and every ranker it is compared with (:mod:`models.rankers`).

Each target event is one request: the whole catalogue is ranked with every item the user touched
before the target removed, for the model and every baseline alike (see :mod:`models.data` for how
targets and histories are drawn). A :data:`Scorer` maps requests to catalogue scores; :func:`evaluate`
ranks and measures them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import Encoded, user_batch
from .metrics import ranking_metrics
from .towers import TwoTower, UserBatch

__all__ = ["Scorer", "EvalSet", "DAY_NS", "day_start_rows", "eval_set", "evaluate", "shuffled", "emptied",
           "model_scorer"]

Scorer = Callable[[torch.Tensor], torch.Tensor]  # eval-set indices (b,) -> scores (b, n_catalogue)


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


DAY_NS = 86_400 * 10**9


def day_start_rows(ts: np.ndarray, user_start: np.ndarray, rows: np.ndarray, snapshot_ns: int = DAY_NS
                   ) -> np.ndarray:
    """For each request row, the row its history would end at in a snapshot taken at the start of its
    (UTC) day: the user's first event at or after that instant (events sorted by user, then time)."""
    day_start = ts[rows] - ts[rows] % snapshot_ns
    out = np.empty(len(rows), np.int64)
    for i, (r, cut) in enumerate(zip(rows, day_start, strict=True)):
        start = user_start[r]
        out[i] = start + np.searchsorted(ts[start:r + 1], cut, side="left")
    return out


def shuffled(u: UserBatch, seed: int = 0) -> UserBatch:
    """``u`` with each user's history slots in a random order (the same events, order and recency lost)."""
    g = torch.Generator(device=u.hist_items.device).manual_seed(seed)
    keys = torch.rand(u.hist_items.shape, generator=g, device=u.hist_items.device)
    order = keys.masked_fill(u.hist_items == 0, 2.0).argsort(dim=1)  # real slots first, padding stays last
    return u._replace(hist_items=u.hist_items.gather(1, order), hist_types=u.hist_types.gather(1, order))


def emptied(u: UserBatch) -> UserBatch:
    """``u`` with no history at all: what the profile alone is worth."""
    return u._replace(hist_items=torch.zeros_like(u.hist_items), hist_types=torch.zeros_like(u.hist_types))


@torch.inference_mode()
def model_scorer(model: TwoTower, enc: Encoded, es: EvalSet, columns: torch.Tensor | None = None,
                 history_rows: torch.Tensor | None = None,
                 transform: Callable[[UserBatch], UserBatch] | None = None) -> Scorer:
    """Scores of ``model`` (encoded by its own ``enc``). ``columns`` maps the eval catalogue to the
    model's item rows (-1 = unknown to it, never recommended); default: the same catalogue.
    ``history_rows`` (E,): the user's history is read as of these event rows instead of ``es.rows``
    (an older snapshot of the same users, for the freshness lift). ``transform`` changes each batch's
    input before the model reads it (:func:`shuffled`, :func:`emptied`: the history controls)."""
    model.eval()
    dev = enc.ev_item.device
    rows = columns if columns is not None else torch.arange(2, enc.schema.n_item_rows, device=dev)
    item = model.items(rows.clamp(min=0)) * (rows >= 0).unsqueeze(1)  # (C, D)
    unknown = rows < 0
    hist = es.rows if history_rows is None else history_rows

    @torch.inference_mode()
    def score(idx: torch.Tensor) -> torch.Tensor:
        u = user_batch(enc, hist[idx])
        s = model.users(transform(u) if transform else u) @ item.T  # (b, C)
        return s.masked_fill(unknown, float("-inf"))

    return score
