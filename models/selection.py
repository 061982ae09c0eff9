"""How long to train, chosen from a validation curve that a few dozen requests cannot fool.

Every epoch is scored on the same validation requests, so two epochs can be compared request by
request (paired): the noise of the difference is far smaller than the noise of either figure.

The rule (:func:`choose_epoch`), on a per-request figure (the mean of NDCG@10 and NDCG@50: the second
sees ~5x more hits, so it is less noisy, the first is what the bench reports):

1. Smooth each request's curve over three neighbouring epochs (a single lucky epoch does not win).
2. Choose the epoch with the highest smoothed mean.

Training goes on while it can still find a better epoch (:func:`should_stop`): it stops only when the last
``patience`` epochs are all clearly worse than the best (more than one standard error of the paired
difference below it). An epoch within the noise of the best restarts the count: the curve has not turned
down yet. Patience must outlast a sag: with 5, ml-100k leave-last-out stopped at a first high (9
epochs, test NDCG@10 0.107) where its validation curve rises again to a best at 22 (0.112).

An earlier rule chose the *latest* epoch within one standard error of the best, against under-training by
an unsmoothed argmax over 15 requests. Studied on four logs (BENCHMARKS.md "How long to train, studied"),
it never tested better than the best smoothed epoch (worse on 7 of 8 splits, up to 0.012 NDCG@10): the
200-request floor and the smoothing already prevent the under-training, and on a long flat curve it walked
to late epochs that the test punished.

Below :data:`MIN_REQUESTS` validation requests nothing is chosen from them: training runs the documented
default schedule, :data:`DEFAULT_EPOCHS` epochs (the best fixed length on the logs we measured, see
BENCHMARKS.md), and the caller says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_REQUESTS", "DEFAULT_EPOCHS", "SELECTION_KS", "Choice", "selection_ks", "selection_figure",
           "choose_epoch", "earliest_choice", "should_stop", "choose_variant"]

MIN_REQUESTS = 200  # below this a NDCG@10 difference of 0.01 is inside the noise of one request's 0/1 hit
DEFAULT_EPOCHS = 10
SELECTION_KS = (10, 50)
SMOOTH = 1  # epochs either side


@dataclass(frozen=True)
class Choice:
    epoch: int  # 1-based
    reason: str


def selection_ks(n_catalogue: int) -> tuple[int, ...]:
    """:data:`SELECTION_KS`, capped at the catalogue's size (a toy catalogue has fewer than 50 items)."""
    return tuple(sorted({min(k, n_catalogue) for k in SELECTION_KS}))


def selection_figure(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The per-request figure selection reads: the mean of every NDCG@k in ``rows`` (per_row_metrics of
    :func:`selection_ks`: NDCG@10 and NDCG@50)."""
    return np.mean([np.asarray(v, np.float64) for k, v in rows.items() if k.startswith("ndcg@")], axis=0)


def _smoothed(curves: np.ndarray) -> np.ndarray:
    """(E, R) per-epoch, per-request figures -> the same, averaged over neighbouring epochs."""
    out = np.empty_like(curves)
    for e in range(len(curves)):
        out[e] = curves[max(0, e - SMOOTH): e + SMOOTH + 1].mean(axis=0)
    return out


def choose_epoch(curves: Sequence[np.ndarray], min_requests: int = MIN_REQUESTS) -> Choice:
    """``curves[e]`` = each validation request's figure after epoch e+1 (same requests, same order)."""
    if not len(curves):
        raise ValueError("no epochs to choose from")
    c = np.asarray(curves, np.float64)  # (E, R)
    if c.shape[1] < min_requests:
        return Choice(len(c), f"{c.shape[1]} validation requests < {min_requests}: no selection")
    return Choice(_best(_smoothed(c)) + 1, "best smoothed epoch")


def _best(smoothed: np.ndarray) -> int:
    """The epoch (0-based) with the highest smoothed mean."""
    return int(np.argmax(smoothed.mean(axis=1)))


def _last_competitive(c: np.ndarray) -> int:
    """The latest epoch (0-based) at or after the smoothed best whose paired difference to the best is within
    one standard error: while it is recent, the curve may still rise past the best."""
    s = _smoothed(c)
    best = _best(s)
    d = s[best + 1:] - s[best]  # (later epochs, R)
    se = d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]) if d.shape[1] > 1 else 0.0
    close = np.flatnonzero(d.mean(axis=1) >= -se)
    return best + 1 + int(close[-1]) if len(close) else best


def earliest_choice(curves: Sequence[np.ndarray]) -> int:
    """The earliest epoch (1-based) that can still be chosen however training goes on: the best among the
    epochs whose smoothing window is complete (a later epoch changes only the last ``SMOOTH`` of them).
    The final choice is at or after it: earlier weights can be freed."""
    c = np.asarray(curves, np.float64)
    done = len(c) - SMOOTH
    if done <= 0:
        return 1
    return _best(_smoothed(c)[:done]) + 1


def should_stop(curves: Sequence[np.ndarray], patience: int, min_requests: int = MIN_REQUESTS) -> bool:
    """Early stop: the last ``patience`` epochs are all clearly worse than the smoothed best (more than one
    standard error below it). An epoch within the noise of the best restarts the count: the curve has not
    turned down yet."""
    c = np.asarray(curves, np.float64)
    if len(c) <= patience or c.shape[1] < min_requests:
        return False
    return len(c) - 1 - _last_competitive(c) >= patience


def choose_variant(figures: Sequence[np.ndarray]) -> tuple[int, list[tuple[float, float]]]:
    """Which of several trained variants to keep, ``figures[v]`` = variant v's per-request figure on the same
    validation requests, variant 0 the default: the highest mean (as EASE's lambda is chosen). Returns its
    index and each variant's paired gain over the default with its standard error, so a report shows when
    the choice lay inside the noise (then either was as good, as far as validation can tell).

    Not "the default unless clearly beaten": on ml-100k that kept the path where dropping it tested better
    on both splits (temporal 0.173 vs 0.149, leave-last-out 0.107 vs 0.105), no log had a reason to
    prefer the default, and a tie costs nothing in expectation."""
    f = [np.asarray(x, np.float64) for x in figures]
    gains: list[tuple[float, float]] = []
    for x in f:
        d = x - f[0]
        gains.append((float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0))
    return int(np.argmax([g for g, _ in gains])), gains
