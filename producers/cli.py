"""`streamrec replay`: interactions (or item updates) onto Kafka with a progress bar."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.config import get_settings

__all__ = ["replay"]


@click.command("replay")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--rate", type=float, help="Events per second (default: as fast as possible).")
@click.option("--speedup", type=float, help="Replay the original gaps divided by X.")
@click.option("--loop", is_flag=True, help="Start over at the end (fresh event ids each round) until Ctrl-C.")
@click.option("--limit", type=int, help="Send at most N events (per round).")
@click.option("--start-at", type=int, default=0, show_default=True, help="Skip the first N events (time order).")
@click.option("--map", "mapping", multiple=True, metavar="OURS=THEIRS",
              help="Column mapping for other datasets, e.g. --map user_id=customer_id (repeatable).")
@click.option("--item-updates", type=int, metavar="N",
              help="Instead of interactions, send N item updates (stock/price) to item-updates.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --item-updates.")
def replay(path: Path | None, rate: float | None, speedup: float | None, loop: bool, limit: int | None,
           start_at: int, mapping: tuple[str, ...], item_updates: int | None, seed: int) -> None:
    """Replay an interactions parquet onto `interactions`, keyed by user_id (acks=all).

    PATH defaults to STREAMREC_DATA_DIR/recommendation_interactions.parquet.
    """
    from .replay import ReplayError, parse_column_map
    from .replay import replay as run_replay

    settings = get_settings()
    if limit is not None and limit <= 0:
        raise ReplayError("--limit must be greater than 0")
    if start_at < 0:
        raise ReplayError("--start-at must be 0 or more")
    console = Console(stderr=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>8.0f} ev/s"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("replay", total=None if loop else limit, rate=0.0)
        started = [0.0]

        def progress(sent: int, delivered: int) -> None:
            import time

            started[0] = started[0] or time.perf_counter()
            elapsed = max(time.perf_counter() - started[0], 1e-3)
            bar.update(task, completed=sent, rate=delivered / elapsed)

        if item_updates is not None:
            from .item_updates import send_updates

            items = path or settings.data_dir / "recommendation_items.parquet"
            stats = send_updates(settings, items, item_updates, rate=rate, seed=seed, progress=progress)
            what = "item updates"
        else:
            source = path or settings.data_dir / "recommendation_interactions.parquet"
            if not loop and limit is None and Path(source).exists():
                import pyarrow.parquet as pq

                bar.update(task, total=max(pq.ParquetFile(source).metadata.num_rows - start_at, 0))
            stats = run_replay(settings, source, rate=rate, speedup=speedup, loop=loop, limit=limit,
                               start_at=start_at, column_map=parse_column_map(list(mapping)),
                               progress=progress)
            what = "events"
    click.echo(f"{stats.delivered:,} {what} delivered, {stats.failed:,} failed, in {stats.seconds:.1f}s "
               f"({stats.rate:,.0f}/s)")
    if stats.failed:
        raise ReplayError(f"{stats.failed} sends failed, first: {stats.errors[0] if stats.errors else '?'}")
