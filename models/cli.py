"""`streamrec train` and `streamrec trainer` (registered by streamrec/shell/cli.py).

Both raise StreamrecError subclasses for anything a user can fix; the main CLI prints them as one
line. Progress and tables go to stderr/stdout through rich.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamrec.plots import png

__all__ = ["train", "trainer"]

_METRICS = ("recall@10", "recall@20", "ndcg@10", "coverage@10")


def _settings(data_dir: Path | None, out: Path | None) -> Any:
    from streamrec.config import get_settings, load_settings

    overrides = {k: v for k, v in (("data_dir", data_dir), ("checkpoint_dir", out)) if v is not None}
    return load_settings(**overrides) if overrides else get_settings()


def _model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by both commands (training hyper-parameters and folders)."""
    options = [
        click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2, 65536),
                     help="Examples per step; the other rows of a batch are each example's negatives."),
        click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                     help="Learning rate (AdamW; SparseAdam for the id and title tables)."),
        click.option("--dim", default=64, show_default=True, type=click.IntRange(2, 1024),
                     help="Embedding dimension D (a warm start keeps the current model's)."),
        click.option("--user-tower", default="pooled", show_default=True, type=click.Choice(["pooled", "sequence"]),
                     help="User tower: attention pooling, or causal self-attention over the history (train it "
                          "with --batch-size 1024 --lr 2e-3); a warm start keeps the current model's."),
        click.option("--skip", default=None, type=click.FloatRange(0, 100),
                     help="Scale of the linear path beside each tower's MLP (id rows / the history's mean); "
                          "0 = none. Unset (with --skip-dropout unset): chosen on validation among the path "
                          "with dropout 0.2, without dropout, and none (models/train.py PATH_GRID). A warm "
                          "start keeps the current model's."),
        click.option("--skip-dropout", default=None, type=click.FloatRange(0, 1, max_open=True),
                     help="Dropout on that path in training (setting it pins the path: nothing is chosen)."),
        click.option("--last-events", default=0, show_default=True, type=click.IntRange(0, 50),
                     help="The pooled user tower also reads the mean of the newest N events as an input of its "
                          "own (0 = not): next-event quality on session-like logs, at some cost to long-horizon "
                          "picks (TowerConfig.last_events). A warm start keeps the current model's."),
        click.option("--temperature", default=0.05, show_default=True,
                     type=click.FloatRange(0, 10, min_open=True), help="Softmax temperature on cosine scores."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
                     help="Seed: same seed and data, same model."),
        click.option("--targets", default="novel", show_default=True, type=click.Choice(["all", "novel"]),
                     help="Training targets: every positive event, or only first touches of an item."),
        click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)."),
        click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="Folder of the parquet files (default: $STREAMREC_DATA_DIR)."),
        click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="Checkpoint folder (default: $STREAMREC_CHECKPOINT_DIR)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _model(dim: int, temperature: float, user_tower: str, skip: float | None, skip_dropout: float | None,
           last_events: int) -> dict[str, Any]:
    """TowerConfig options from the shared flags; an unset one keeps TowerConfig's default."""
    from .train import path_options

    return {"dim": dim, "temperature": temperature, "user_tower": user_tower, "last_events": last_events,
            **path_options(skip, skip_dropout)}


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _table(results: dict[str, dict[str, float]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for m in _METRICS:
        table.add_column(m, justify="right")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics.get(m, float('nan')):.4f}" for m in _METRICS))
    return table


def _plot(history: list[dict[str, float]], baselines: dict[str, dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    with png(path, panels=2, size=(10, 4)) as (ax1, ax2):
        ax1.plot(epochs, [h["loss"] for h in history], marker="o")
        ax1.set(title="training loss (sampled softmax)", xlabel="epoch", ylabel="loss")
        for key in ("val_recall@10", "val_ndcg@10"):
            if history and key in history[0]:
                ax2.plot(epochs, [h[key] for h in history], marker="o", label=key)
        for (name, metrics), color in zip(baselines.items(), ("gray", "green", "red"), strict=False):
            ax2.axhline(metrics["recall@10"], color=color, linestyle="--", linewidth=1,
                        label=f"{name} recall@10 (test)")  # test-set baselines, for scale
        ax2.set(title="validation metrics", xlabel="epoch")
        ax2.legend(fontsize=7)


@click.command("train")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1, 10_000),
              help="Passes over the data at most: the length is chosen on the validation users and training "
                   "stops early (models/selection.py); with fewer than 200 of them, 10 passes.")
@_model_options
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PNG of loss and metrics per epoch (default: <checkpoint>/training.png).")
@click.option("--no-plot", is_flag=True, help="Do not draw the PNG.")
@click.option("--no-promote", is_flag=True, help="Save the checkpoint but leave LATEST as it is.")
def train(epochs: int, batch_size: int, lr: float, dim: int, user_tower: str, skip: float | None,
          skip_dropout: float | None, last_events: int, temperature: float, seed: int, targets: str,
          device: str | None, data_dir: Path | None, out: Path | None, plot: Path | None, no_plot: bool,
          no_promote: bool) -> None:
    """Train the two-tower model on the generated data and compare it with baselines.

    Split by time per user (last novel positive event = test, the one before = validation),
    report Recall@10/20, NDCG@10 and catalogue coverage for the model and the random, popularity
    and oracle baselines, save v<N> under the checkpoint folder and promote it (LATEST).
    """
    from .checkpoints import promote, save_checkpoint
    from .compare import train_and_evaluate
    from .data import load_data
    from .features import popularity_ranking
    from .train import TrainConfig

    settings = _settings(data_dir, out)
    console, err = Console(), Console(stderr=True)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, targets=targets,  # type: ignore[arg-type]
                      device=device)
    raw = load_data(settings.data_dir)
    with _progress(err) as progress:
        report = train_and_evaluate(raw, cfg, _model(dim, temperature, user_tower, skip, skip_dropout, last_events),
                                    progress)
    p, fitted = report.prepared, report.fit
    table = _table(report.test, "two-tower vs baselines (test split)")
    table.caption = (f"{len(p.split.test):,} test users, {p.enc.schema.n_item_rows - 2:,} items, seen items "
                     f"excluded; {fitted.seconds:.1f}s training, epoch {fitted.best_epoch} of "
                     f"{len(fitted.history)} ({fitted.selection or 'no validation'})")
    console.print(table)
    ts = p.events.ts
    import pandas as pd

    window = {"start": pd.Timestamp(int(ts.min()), tz="UTC").isoformat(),
              "end": pd.Timestamp(int(ts.max()), tz="UTC").isoformat(), "n_interactions": len(ts),
              "n_train": len(p.split.train), "n_val": len(p.split.val), "n_test": len(p.split.test)}
    path = save_checkpoint(settings.checkpoint_dir, fitted.model.cpu(), p.enc.schema,
                           metrics=report.test["two-tower"], data_window=window,
                           train={**vars(cfg), "history": fitted.history, "best_epoch": fitted.best_epoch,
                                  "selection": fitted.selection, "path_tried": fitted.path_tried,
                                  "baselines": {k: v for k, v in report.test.items() if k != "two-tower"}},
                           popularity=popularity_ranking(p.raw.interactions))
    if not no_promote:
        promote(settings.checkpoint_dir, path.name)
    console.print(f"checkpoint {path}{'' if no_promote else ' (promoted: LATEST)'}", highlight=False)
    if not no_plot:
        target = plot or path / "training.png"
        _plot(fitted.history, {k: v for k, v in report.test.items() if k in ("popularity", "oracle")}, target)
        console.print(f"plot {target}", highlight=False)


@click.command("trainer")
@click.option("--every", default=None, metavar="DURATION",
              help="Retrain on a schedule: 30s, 10m, 1h (the first run after one interval).")
@click.option("--after-events", default=None, type=click.IntRange(1), help="Retrain after N new events.")
@click.option("--once", is_flag=True, help="Catch up with the topic, retrain once, exit (tests, demo).")
@click.option("--max-runs", default=None, type=click.IntRange(1), help="Stop after this many runs.")
@click.option("--tolerance", default=0.02, show_default=True, type=float,
              help="Promote when candidate Recall@10 >= current - tolerance (absolute; negative demands a gain).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1, 10_000), help="Passes per run.")
@click.option("--cold-start", is_flag=True, help="Train from scratch instead of from LATEST's weights.")
@click.option("--topic", default=None, help="Interactions topic (default: interactions).")
@click.option("--no-publish", is_flag=True, help="Do not announce promotions on model-updates.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch CPU threads (default: half the cores, at least 1): the stream workers keep the rest.")
@click.option("--nice", "niceness", default=10, show_default=True, type=click.IntRange(0, 19),
              help="Run at this lower CPU priority, so a retrain never delays the stream workers.")
@_model_options
def trainer(every: str | None, after_events: int | None, once: bool, max_runs: int | None, tolerance: float,
            epochs: int, cold_start: bool, topic: str | None, no_publish: bool, threads: int | None, niceness: int,
            batch_size: int, lr: float, dim: int, user_tower: str, skip: float | None, skip_dropout: float | None,
            last_events: int, temperature: float, seed: int, targets: str,
            device: str | None, data_dir: Path | None, out: Path | None) -> None:
    """Retrain periodically on the base data plus new events from Kafka; promote if not worse.

    New events on the interactions topic are appended to an offline parquet log in the data
    folder. Each run warm-starts from LATEST, evaluates the candidate and the current model on the
    newest hold-out, promotes the candidate only if its Recall@10 is at least the current one's
    minus --tolerance, and announces it on model-updates. A failed run leaves LATEST untouched.
    """
    from streamrec.topics import INTERACTIONS

    from .train import TrainConfig
    from .trainer import TrainerError, TrainerOptions, parse_duration, run_trainer, yield_cpu

    settings = _settings(data_dir, out)
    err = Console(stderr=True)
    opts = TrainerOptions(
        tolerance=tolerance, warm_start=not cold_start, topic=topic or INTERACTIONS, publish=not no_publish,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, targets=targets,  # type: ignore[arg-type]
                          device=device),
        model=_model(dim, temperature, user_tower, skip, skip_dropout, last_events))
    every_s = parse_duration(every) if every is not None else None
    if not once and every_s is None and after_events is None:
        raise TrainerError("say when to retrain: --every 10m, --after-events N, or --once")
    yield_cpu(threads, niceness)  # after the arguments are known good: a usage error changes nothing
    with err.status("trainer running (Ctrl-C stops it)…"):
        run_trainer(settings, opts, every_s=every_s, after_events=after_events, once=once, max_runs=max_runs,
                    report=lambda line: err.print(line, highlight=False, soft_wrap=True))
