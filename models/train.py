"""Training the two-tower model, top to bottom: config -> data -> model -> optimisers -> epochs.

:func:`fit` is the epoch loop, which `streamrec train` (:mod:`models.compare`), the periodic trainer and
the quality study call on data they prepared. How examples and the time split are built lives in
:mod:`models.data`; the ranking protocol in :mod:`models.evaluation`, the baselines in :mod:`models.rankers`.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import Progress

from .data import (
    Encoded,
    Prepared,
    TrainError,
    WindowIndex,
    user_batch,
    window_batch,
    window_index,
)
from .evaluation import EvalSet, eval_set, evaluate, model_scorer
from .features import FeatureSchema
from .metrics import per_row_metrics
from .selection import (
    DEFAULT_EPOCHS,
    MIN_REQUESTS,
    choose_epoch,
    choose_variant,
    earliest_choice,
    selection_figure,
    selection_ks,
    should_stop,
)
from .towers import TowerConfig, TwoTower

__all__ = ["TrainConfig", "SEQUENCE_TRAINING", "RowAdam", "retain_freed_memory", "FitResult", "pick_device",
           "new_model", "grow_state", "fit", "PATH_GRID", "PATH_KEYS", "path_options", "path_grid", "Tuned",
           "fit_tuned"]


@dataclass(frozen=True)
class TrainConfig:
    # at most: with validation requests, models.selection chooses the length and stops early; a long cap
    # costs little (the curve flattens, patience stops it) where a short one under-trained on real logs
    epochs: int = 30
    patience: int = 8  # epochs in a row clearly worse than the best before training stops (5 stopped in a sag)
    # in-batch negatives: larger is harder, but 256 keeps ~60 steps/epoch at 20k; the pooled tower scored
    # worse at 1024 (ml-100k temporal 0.155 vs 0.173); the sequence tower wants 1024 at lr 2e-3
    # (SEQUENCE_TRAINING, best of 256/1e-3, 1024/2e-3, 1024/4e-3 on ml-100k)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    # novel: only a user's first touch of an item is a target. "all" adds the funnel repeats (cart
    # after view of the same item), which teach the towers to echo the history: -15% Recall@10
    targets: Literal["all", "novel"] = "novel"
    logq: bool = True
    device: str | None = None  # None: CUDA when available, else CPU


SEQUENCE_TRAINING = {"batch_size": 1024, "lr": 2e-3}


@dataclass
class FitResult:
    model: TwoTower
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights the model holds (the last one trained without selection)
    selection: str = ""  # why: models.selection's reason, or why nothing was chosen
    seconds: float = 0.0
    val_figure: np.ndarray | None = None  # each validation request's figure at the chosen epoch (selecting)
    path_tried: list[dict[str, Any]] = field(default_factory=list)  # fit_tuned: each PATH_GRID entry's run


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


class RowAdam(torch.optim.Optimizer):
    """:class:`torch.optim.SparseAdam`'s update (lazy Adam: a step moves only the rows its sparse gradient
    names, and only their moments decay) on the gradient's rows gathered into dense tensors, updated by torch's
    fused Adam kernel and scattered back: SparseAdam's sparse-tensor arithmetic (coalesce's sort, sparse_mask,
    sparse adds) was ~2 ms of a ~20 ms training step on ML-100k. Fused Adam divides by sqrt(v / bc2) + eps
    where SparseAdam divides by (sqrt(v) + eps) / sqrt(bc2), so it is given eps /
    sqrt(bc2): the same update to float rounding (tests/models/test_train.py)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise TrainError("RowAdam takes sparse gradients (nn.Embedding(sparse=True))")
                rows, grad = _summed_rows(p.grad)
                if len(rows) == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                tensors = (p, state["exp_avg"], state["exp_avg_sq"])
                param, exp_avg, exp_avg_sq = (t.index_select(0, rows) for t in tensors)
                torch._fused_adam_([param], [grad.contiguous()], [exp_avg], [exp_avg_sq], [], [state["step"]],
                                   lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                                   eps=group["eps"] / math.sqrt(1 - beta2**step), amsgrad=False, maximize=False)
                for t, rows_now in zip(tensors, (param, exp_avg, exp_avg_sq), strict=True):
                    t.index_copy_(0, rows, rows_now)


def _summed_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse row gradient (n, D) as its distinct rows, ascending, and each one's summed values (what
    ``coalesce`` gives), through a length-n mark instead of a sort."""
    idx, values = grad._indices()[0], grad._values()
    if grad.is_coalesced():
        return idx, values
    mark = torch.zeros(grad.size(0), dtype=torch.bool, device=idx.device)
    mark[idx] = True
    rows = mark.nonzero().squeeze(1)
    inv = torch.cumsum(mark, 0).sub_(1)[idx]
    return rows, values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inv, values)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def retain_freed_memory() -> bool:
    """Let glibc keep freed blocks below 32 MiB for reuse instead of handing them back to the kernel.

    A training step allocates and frees the same few MB-sized tensors (a batch's 256 x 50 x 64 history slots
    and their gradients) hundreds of times per epoch. glibc's default returns such blocks to the kernel
    (munmap, or trimming the heap's top), so the next step takes ~2,000 page faults to get them back:
    ~4 ms of system time per ~20 ms step on ML-100k (2 cores). Blocks of 32 MiB or more are still mapped and
    unmapped on their own, and the heap is still trimmed past 256 MiB free. Process-wide and once per
    process; a no-op where the C library is not glibc. Returns whether it took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def _optimizers(model: TwoTower, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """RowAdam (SparseAdam's update) for the sparse-gradient tables (ids, title hashes), AdamW for the rest."""
    sparse = [m.weight for m in model.modules() if getattr(m, "sparse", False)]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    # fused: one kernel over every dense tensor instead of a loop of small ops per tensor (2x faster here)
    return [RowAdam(sparse, lr=cfg.lr),
            torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)]


def _target_steps(model: TwoTower, p: Prepared, rows: torch.Tensor, cfg: TrainConfig, gen: torch.Generator,
                  log_q: torch.Tensor | None) -> Iterator[tuple[int, torch.Tensor]]:
    """One forward per training target (the pooled tower): (examples, loss) per batch."""
    perm = rows[torch.randperm(len(rows), generator=gen).to(rows.device)]
    for i in range(0, len(perm), cfg.batch_size):
        batch = perm[i:i + cfg.batch_size]
        yield len(batch), model(user_batch(p.enc, batch), p.enc.ev_item[batch], log_q)[1]


def _window_steps(model: TwoTower, p: Prepared, w: WindowIndex, cfg: TrainConfig, gen: torch.Generator,
                  log_q: torch.Tensor | None) -> Iterator[tuple[int, torch.Tensor]]:
    """Every target of a run of windows in one pass (the sequence tower): batches of ~``batch_size``
    targets, whole windows each, in a random order."""
    order = torch.randperm(len(w.start), generator=gen).numpy()
    counts = np.diff(w.ptr)[order]
    cuts = np.searchsorted(np.cumsum(counts), np.arange(cfg.batch_size, counts.sum(), cfg.batch_size))
    for sel in np.split(order, np.unique(cuts + 1)):
        if len(sel) == 0:
            continue
        b, targets = window_batch(p.enc, w, sel)
        yield len(targets), model.loss(model.window_users(b), p.enc.ev_item[targets], log_q)[1]


def fit(model: TwoTower, p: Prepared, cfg: TrainConfig, progress: Progress | None = None,
        val: EvalSet | None = None, label: str = "") -> FitResult:
    """Train on ``p.split.train`` for at most ``cfg.epochs`` epochs; after each, score the validation set
    (``val``, else one built from ``p.split.val``) and keep the epoch :mod:`models.selection` chooses.

    Without validation requests it trains exactly ``cfg.epochs``; with fewer than
    :data:`~models.selection.MIN_REQUESTS` it trains the default schedule (``DEFAULT_EPOCHS``, at most
    ``cfg.epochs``) and chooses nothing from them.
    """
    dev = p.enc.ev_item.device
    if dev.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = torch.as_tensor(p.split.train, dtype=torch.long, device=dev)
    # logQ correction: in-batch negatives are drawn as often as items are targets, so subtract
    # log(target frequency) from the logits or popular items are over-penalised
    counts = torch.bincount(p.enc.ev_item[rows], minlength=p.enc.schema.n_item_rows).double()
    log_q = torch.log((counts / counts.sum()).clamp(min=1e-12)).float() if cfg.logq else None
    opts = _optimizers(model, cfg)
    if val is None and len(p.split.val):
        val = eval_set(p.enc, p.split.val)
    selecting = val is not None and len(val.rows) >= MIN_REQUESTS
    epochs = cfg.epochs if selecting or val is None else min(cfg.epochs, DEFAULT_EPOCHS)
    result, t0 = FitResult(model), time.perf_counter()
    windows = window_index(p.enc, p.split.train, p.enc.schema.max_history) if model.sequential else None
    n_batches = max(1, -(-len(rows) // cfg.batch_size))
    ep_task = progress.add_task(f"epochs{label}", total=epochs) if progress else None
    b_task = progress.add_task(f"batches{label}", total=n_batches) if progress else None
    curves: list[np.ndarray] = []  # each epoch's per-request validation figure
    states: dict[int, dict[str, torch.Tensor]] = {}  # the epochs that may still be chosen
    # the batch order comes from ``gen`` alone, so a run is reproducible from cfg.seed
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=dev)
        if progress:
            progress.reset(b_task, total=n_batches)
        for batch_rows, loss in (_window_steps(model, p, windows, cfg, gen, log_q) if windows is not None
                                 else _target_steps(model, p, rows, cfg, gen, log_q)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.detach() * batch_rows
            if progress:
                progress.advance(b_task)
        entry = {"epoch": float(epoch), "loss": float(total) / max(1, len(rows))}
        if val is not None:
            ks = selection_ks(val.n_catalogue)
            _, top = evaluate(model_scorer(model, p.enc, val), val, ks)
            per_request, _ = per_row_metrics(top, val.targets, ks)
            entry |= {f"val_{m}": float(v.mean()) for m, v in per_request.items()}
            if selecting:
                curves.append(selection_figure(per_request))
                states[epoch] = copy.deepcopy(model.state_dict())
                first = earliest_choice(curves)
                states = {e: st for e, st in states.items() if e >= first}  # never chosen: freed
        result.history.append(entry)
        if progress:
            progress.update(ep_task, advance=1, description=f"epoch {epoch}{label} loss {entry['loss']:.3f}")
        if selecting and should_stop(curves, cfg.patience):
            break
    result.best_epoch = len(result.history)
    if selecting and curves:  # epochs=0: the untrained model, nothing to choose
        choice = choose_epoch(curves)
        result.best_epoch, result.selection = choice.epoch, choice.reason
        result.val_figure = curves[choice.epoch - 1]
        model.load_state_dict(states[choice.epoch])
    elif val is not None:
        result.selection = f"{len(val.rows)} validation requests < {MIN_REQUESTS}: default schedule, {epochs} epochs"
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


# The linear path's settings (TowerConfig.skip / skip_dropout), chosen on validation as EASE's lambda is
# (models.selection.choose_variant): which one wins depends on the log (issue 27, BENCHMARKS.md "The linear
# path"). With dropout on the path (the default; ml-latest-small leave-last-out keeps it); without its
# dropout (online-retail temporal: 0.100 against 0.093, EASE 0.102); without the path (ml-100k, and logs
# whose items are known by their content more than by their few events: the synthetic generator).
PATH_GRID: tuple[dict[str, float], ...] = ({}, {"skip_dropout": 0.0}, {"skip": 0.0})
PATH_KEYS = ("skip", "skip_dropout")


def path_options(skip: float | None, skip_dropout: float | None) -> dict[str, float]:
    """The TowerConfig path options a user set (``--skip``/``--skip-dropout``); an unset one is left out, so
    :func:`path_grid` still chooses it."""
    return {k: v for k, v in zip(PATH_KEYS, (skip, skip_dropout), strict=True) if v is not None}


def path_grid(options: dict[str, Any]) -> list[dict[str, float]]:
    """:data:`PATH_GRID`, or only ``options`` as given where they pin the path (``--skip``/``--skip-dropout``)."""
    return [{}] if any(k in options for k in PATH_KEYS) else [dict(v) for v in PATH_GRID]


def _path_name(variant: dict[str, float]) -> str:
    if not variant:
        return "linear path (default)"
    return "no linear path" if variant.get("skip") == 0 else ", ".join(f"{k} {v:g}" for k, v in variant.items())


@dataclass
class Tuned:
    model: TwoTower
    result: FitResult  # path_tried: each entry's epochs, seconds, validation figure, gain over the default
    # and its standard error; seconds: their sum
    options: dict[str, float]  # the PATH_GRID entry chosen ({} = the default)


def fit_tuned(p: Prepared, cfg: TrainConfig, options: dict[str, Any], progress: Progress | None = None,
              val: EvalSet | None = None) -> Tuned:
    """A new model trained by :func:`fit`, its linear path chosen on ``val``: each :func:`path_grid` entry is
    trained with its own epoch selection, and :func:`~models.selection.choose_variant` keeps the one with
    the highest mean validation figure at its chosen epoch.

    Below :data:`~models.selection.MIN_REQUESTS` validation requests (or without them, or with
    ``cfg.epochs`` 0) nothing is chosen: the default is trained alone, as :func:`fit` trains the default
    schedule there.
    """
    grid = path_grid(options)
    if val is None or len(val.rows) < MIN_REQUESTS or cfg.epochs < 1:  # nothing to choose (epochs 0: untrained)
        grid = grid[:1]
    runs: list[Tuned] = []
    for variant in grid:
        torch.manual_seed(cfg.seed)  # before the model exists: its initial weights are part of the run
        model = new_model(p.enc.schema, p.enc, **{**options, **variant})
        label = f" ({_path_name(variant)})" if len(grid) > 1 else ""
        runs.append(Tuned(model, fit(model, p, cfg, progress, val=val, label=label), variant))
    tried = [{**r.options, "epochs": r.result.best_epoch, "seconds": r.result.seconds,
              "val_figure": None if r.result.val_figure is None else float(r.result.val_figure.mean())}
             for r in runs]
    keep = 0
    if len(runs) > 1:  # every run selected its epoch on val (>= MIN_REQUESTS, epochs >= 1): each has a figure
        keep, gains = choose_variant([r.result.val_figure for r in runs])  # type: ignore[misc]
        for t, (gain, se) in zip(tried, gains, strict=True):
            t |= {"gain": gain, "se": se}
    chosen = runs[keep]
    chosen.result.path_tried = tried
    chosen.result.seconds = sum(t["seconds"] for t in tried)  # what choosing cost: every run, not the kept one
    if len(grid) > 1:
        figures = "; ".join(f"{_path_name({k: v for k, v in t.items() if k in PATH_KEYS})}: "
                            f"{t['val_figure']:.4f} at {t['epochs']} epochs"
                            + (f", {t['gain']:+.4f} ± {t['se']:.4f} over the default" if i else "")
                            for i, t in enumerate(tried))
        chosen.result.selection += f"; {_path_name(chosen.options)} chosen on validation ({figures})"
    return chosen
