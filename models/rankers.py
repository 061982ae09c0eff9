"""Every ranker the two-tower is compared with, and the two-tower itself, behind one interface.

`streamrec train`'s table (:mod:`models.compare`) and `bench quality` (:mod:`models.quality`) rank the
same kind of requests: a request is an event row, its history the user's events before that row's time.
A :class:`Ranker` learns from a :class:`Fold`'s training events (``fit``) and returns a scorer for the
requests of an :class:`~models.evaluation.EvalSet` (``scorer``), which :func:`models.evaluation.evaluate`
ranks with every item the user touched before removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from rich.progress import Progress

from .data import Encoded, Events, Prepared, RawData, Split, TrainError, encode
from .evaluation import EvalSet, Scorer, eval_set, model_scorer
from .features import FeatureSchema
from .towers import UserBatch
from .train import PATH_KEYS, TrainConfig, fit, fit_tuned, new_model

__all__ = ["Fold", "Context", "context", "Ranker", "Random", "Popularity", "Oracle", "EASE", "ALS",
           "TwoTowerRanker"]


@dataclass(frozen=True)
class Fold:
    """One cut: what rankers may learn from, and the requests they answer."""

    train: np.ndarray  # (N,) bool over event rows
    rows: np.ndarray  # (E,) request rows: history = the user's events before this row's time
    targets: np.ndarray  # (E, T) catalogue columns, -1 padded


@dataclass
class Context:
    """The log once sorted and encoded, shared by every ranker and fold."""

    raw: RawData
    ev: Events
    enc: Encoded
    col: np.ndarray  # (N,) catalogue column of each event
    positive: np.ndarray  # (N,) bool
    novel: np.ndarray  # (N,) bool: a positive event that is the user's first touch of the item

    @classmethod
    def of(cls, raw: RawData, ev: Events, enc: Encoded) -> Context:
        positive = ev.positive
        novel = positive & ~ev.frame.duplicated(["user_id", "item_id"]).to_numpy()
        return cls(raw, ev, enc, enc.ev_item.cpu().numpy() - 2, positive, novel)

    @property
    def n_items(self) -> int:
        return self.enc.schema.n_item_rows - 2

    def eval_set(self, fold: Fold) -> EvalSet:
        return replace(eval_set(self.enc, fold.rows), targets=fold.targets)

    def history(self, rows: np.ndarray, positive_only: bool = True) -> sp.csr_matrix:
        """(E, n_items) binary: the items of each request's history (its user's events before it)."""
        start, end = self.ev.user_start[rows], self.ev.grp_start[rows]
        lens = end - start
        flat = np.repeat(start - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        req = np.repeat(np.arange(len(rows)), lens)
        if positive_only:
            keep = self.positive[flat]
            flat, req = flat[keep], req[keep]
        m = sp.csr_matrix((np.ones(len(flat), np.float32), (req, self.col[flat])), shape=(len(rows), self.n_items))
        m.data[:] = 1.0  # duplicates summed: binary again
        return m

    def interactions(self, train: np.ndarray) -> sp.csr_matrix:
        """(n_users, n_items) binary positives among the ``train`` events."""
        keep = train & self.positive
        m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (self.ev.user[keep], self.col[keep])),
                          shape=(len(self.ev.user_ids), self.n_items))
        m.data[:] = 1.0
        return m


def context(raw: RawData, device: torch.device | str = "cpu", **schema_options: Any) -> Context:
    """Sort and encode ``raw`` once (schema over the whole catalogue and every logged item; ``schema_options``:
    FeatureSchema options such as ``max_history``)."""
    if raw.interactions.empty:
        raise TrainError("no interactions to evaluate")
    ev = Events.from_frame(raw.interactions)
    schema = FeatureSchema.build(raw.users, raw.items, ev.frame, **schema_options)
    return Context.of(raw, ev, encode(ev, schema, raw.users, raw.items, device))


class Ranker:
    """Fits on a fold's training events; scores requests from their history (rows) alone."""

    name = "ranker"
    params: dict[str, Any]

    def grid(self) -> list[dict[str, Any]]:
        return [{}]

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        raise NotImplementedError

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        raise NotImplementedError

    def final_params(self) -> dict[str, Any]:
        """What the tuning fold chose, for the refit on the whole training period."""
        return self.params


def _dense_scorer(score: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> Scorer:
    def run(idx: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(score(rows[idx.cpu().numpy()]), dtype=torch.float64)

    return run


class Random(Ranker):
    """Uniform scores from a seeded generator: the floor every other ranker must clear."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        self.params = params

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        dev = es.rows.device
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        return lambda idx: torch.rand((len(idx), es.n_catalogue), generator=gen, device=dev)


class Popularity(Ranker):
    """Items by how often they were wanted in the training events, the same list for everyone.

    ``per_user``: each user counts once per item (bench quality, whose training events are the whole log
    before the cut). Off, every positive training event counts: `streamrec train` learns from its training
    targets only, and with ``--targets all`` a funnel repeat is a target twice.
    """

    name = "popularity"

    def __init__(self, per_user: bool = True) -> None:
        self.per_user = per_user

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        self.params = params
        if self.per_user:
            self.counts = np.asarray(ctx.interactions(fold.train).sum(axis=0)).ravel().astype(np.float64)
        else:
            self.counts = np.bincount(ctx.col[fold.train & ctx.positive], minlength=ctx.n_items).astype(np.float64)

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        counts = torch.as_tensor(self.counts, device=es.rows.device)
        return lambda idx: counts.expand(len(idx), -1)


class Oracle(Ranker):
    """The generator's own user-category affinities (synthetic data only): a leaky ceiling, not a rival.

    Items of one category tie; popularity among the training events breaks the tie, scaled so it never
    beats an affinity gap.
    """

    name = "oracle"

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        if ctx.raw.affinities is None:
            raise TrainError("the oracle needs the generator's user_affinities.parquet")
        self.params = params
        rows = torch.as_tensor(np.flatnonzero(fold.train & ctx.positive), device=ctx.enc.ev_item.device)
        self.pop = torch.bincount(ctx.enc.ev_item[rows] - 2, minlength=ctx.n_items).double()  # (C,)

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        assert ctx.raw.affinities is not None
        dev, enc = es.rows.device, ctx.enc
        cats = list(enc.schema.top_categories)
        aff = ctx.raw.affinities.pivot_table(index="user_id", columns="category", values="affinity")
        aff = aff.reindex(index=ctx.ev.user_ids, columns=cats).fillna(0.0).to_numpy()
        aff = torch.as_tensor(np.c_[np.zeros((len(aff), 2)), aff], device=dev)  # PAD/OOV columns
        top = enc.items["top"][2:]
        # pop/(max+1) < 1e-9 never beats an affinity gap
        tie = 1e-9 * self.pop / (self.pop.max() + 1)
        return lambda idx: aff[enc.ev_user[es.rows[idx]]][:, top] + tie


class EASE(Ranker):
    """Steck's closed form, WWW 2019: B = I - P diagMat(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B) = 0.

    Tuning factorises the Gram matrix once, G = V diag(s) Vᵀ, so every λ costs a product with the
    validation requests' histories instead of an inversion: P = V diag(1/(s + λ)) Vᵀ, and a request's
    scores x B = x - (x P) / diag(P). The refit on the whole training period inverts once, as before.
    """

    name = "EASE"

    def __init__(self, lambdas: Sequence[float] = (3, 10, 30, 100, 200, 300, 500, 1000, 2000, 3000, 10000)) -> None:
        self.lambdas = tuple(lambdas)
        self._eig: tuple[Fold, np.ndarray, np.ndarray] | None = None

    def grid(self) -> list[dict[str, Any]]:
        return [{"lambda": float(lam)} for lam in self.lambdas]

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        self.params = params
        x = ctx.interactions(fold.train)
        if val is not None:  # tuning: one factorisation for the whole grid (float32 halves it; λ >= 3)
            if self._eig is None or self._eig[0] is not fold:
                s, v = np.linalg.eigh((x.T @ x).toarray().astype(np.float32))
                self._eig = (fold, s.astype(np.float64), v)
            self.b = None
            return
        self._eig = None
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += params["lambda"]
        p = np.linalg.inv(g)
        self.b = p / -np.diag(p)
        self.b[np.diag_indices_from(self.b)] = 0.0

    def _scores(self, hist: sp.csr_matrix) -> np.ndarray:
        if self.b is not None:
            return np.asarray(hist @ self.b)
        assert self._eig is not None
        _, s, v = self._eig
        inv = (1.0 / (s + self.params["lambda"])).astype(np.float32)  # (n,)
        diag_p = (v * v) @ inv  # (n,)
        xp = ((hist @ v) * inv) @ v.T  # (E, n)
        return hist.toarray() - xp / diag_p  # B's diagonal, 1 - P_jj / P_jj, is 0 by itself

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        rows = es.rows.cpu().numpy() if history_rows is None else history_rows
        return _dense_scorer(lambda r: self._scores(ctx.history(r)), rows)


class ALS(Ranker):
    """implicit's conjugate-gradient ALS (Hu, Koren, Volinsky 2008); a request's user vector is solved
    from its own history against the fitted item factors (fold-in), like every other ranker here."""

    name = "ALS"

    def __init__(self, factors: Sequence[int] = (32, 64, 128), alphas: Sequence[float] = (1.0, 10.0),
                 regularization: float = 0.05, iterations: int = 15, seed: int = 0) -> None:
        self.factors, self.alphas = tuple(factors), tuple(alphas)
        self.regularization, self.iterations, self.seed = regularization, iterations, seed

    def grid(self) -> list[dict[str, Any]]:
        return [{"factors": f, "alpha": a} for f in self.factors for a in self.alphas]

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.params = params
        with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not BLAS's, do the work
            model = AlternatingLeastSquares(factors=params["factors"], regularization=self.regularization,
                                            alpha=params["alpha"], iterations=self.iterations,
                                            random_state=self.seed)
            model.fit(ctx.interactions(fold.train), show_progress=False)
        self.items = np.asarray(model.item_factors, dtype=np.float64)  # (n_items, F)
        self.gram = self.items.T @ self.items

    def _users(self, hist: sp.csr_matrix) -> np.ndarray:
        """Minimise Σ c_ui (p_ui - u·y_i)² + reg |u|², c = 1 + alpha on the history, p = 1 there."""
        alpha, reg = self.params["alpha"], self.regularization
        out = np.zeros((hist.shape[0], self.items.shape[1]))
        eye = reg * np.eye(self.items.shape[1])
        for r in range(hist.shape[0]):
            idx = hist.indices[hist.indptr[r]:hist.indptr[r + 1]]
            if len(idx):
                y = self.items[idx]
                out[r] = np.linalg.solve(self.gram + alpha * y.T @ y + eye, (1 + alpha) * y.sum(axis=0))
        return out

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None) -> Scorer:
        rows = es.rows.cpu().numpy() if history_rows is None else history_rows
        return _dense_scorer(lambda r: self._users(ctx.history(r)) @ self.items.T, rows)


class TwoTowerRanker(Ranker):
    """The project's model, trained by :func:`models.train.fit` on the fold's first-time positives (every
    positive with ``targets="all"``); given validation requests, training chooses its epoch count (early
    stopping) and its linear path (:func:`models.train.fit_tuned`), and the refit trains those."""

    name = "two-tower"

    def __init__(self, cfg: TrainConfig | None = None, model: dict[str, Any] | None = None,
                 name: str = "two-tower", progress: Progress | None = None) -> None:
        self.cfg, self.model_options, self.name, self.progress = cfg or TrainConfig(), model or {}, name, progress

    def fit(self, ctx: Context, fold: Fold, params: dict[str, Any], val: EvalSet | None = None) -> None:
        self.params = dict(params)
        cfg = replace(self.cfg, epochs=params.get("epochs", self.cfg.epochs))
        train_rows = np.flatnonzero(fold.train & (ctx.novel if cfg.targets == "novel" else ctx.positive))
        if len(train_rows) == 0:
            raise TrainError("no training targets before the cut")
        p = Prepared(ctx.raw, ctx.ev, Split(train_rows, np.zeros(0, np.int64), fold.rows), ctx.enc)
        if val is not None:  # the epochs and the linear path, chosen on validation
            tuned = fit_tuned(p, cfg, self.model_options, self.progress, val=val)
            self.model, self.result = tuned.model, tuned.result
            self.params |= {"epochs": self.result.best_epoch, **tuned.options}
            self.selection = self.result.selection
            return
        path = {k: params[k] for k in PATH_KEYS if k in params}  # a refit: as chosen
        torch.manual_seed(cfg.seed)  # before the model exists: its initial weights are part of the run
        self.model = new_model(ctx.enc.schema, ctx.enc, **{**self.model_options, **path})
        self.result = fit(self.model, p, cfg, self.progress)

    def scorer(self, ctx: Context, es: EvalSet, history_rows: np.ndarray | None = None,
               transform: Callable[[UserBatch], UserBatch] | None = None) -> Scorer:
        hist = None if history_rows is None else torch.as_tensor(history_rows, device=es.rows.device)
        return model_scorer(self.model, ctx.enc, es, history_rows=hist, transform=transform)
