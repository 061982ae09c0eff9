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
    from streamrec import kafka_clients

    kafka_clients.require_reachable(settings)  # before the bar: a refusal is one line on its own
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


@click.command("request")
@click.option("--user", help="Ask for this user's recommendations and print them.")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True, help="How many items.")
@click.option("--context", help="Request context as JSON, e.g. '{\"device\": \"mobile\"}'.")
@click.option("--exclude", multiple=True, help="An item id not to recommend (repeatable).")
@click.option("--load", "load_n", type=click.IntRange(1), metavar="N", help="Send N requests for random users.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=100.0, show_default=True,
              help="Requests per second with --load.")
@click.option("--warmup-max-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="With --load: warm the broker and the service first, at the same rate, until the p99 of a "
                   "3-second window stops falling, for at most this long (0: no warm-up).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for answers.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")
def request(user: str | None, k: int, context: str | None, exclude: tuple[str, ...], load_n: int | None,
            rate: float, warmup_max_s: float, timeout: float, as_json: bool) -> None:
    """Publish recommendation requests and print the answers (or, with --load, latency percentiles).

    --load runs the load generator in a process of its own (librdkafka; its own CPU is reported), warms up
    first (--warmup-max-s), then sends N requests at --rate and reports the rate it actually sent."""
    import json
    import uuid

    from rich.table import Table

    from streamrec._exceptions import StreamrecError
    from streamrec.schemas import RecommendationRequest, decode

    from .requests import RequestClient, parse_context, run_load

    settings = get_settings()
    console = Console()
    if load_n:
        import pandas as pd

        path = settings.data_dir / "recommendation_users.parquet"
        if not path.exists():
            raise StreamrecError(f"no users at {path}: run `streamrec generate` first")
        users = list(pd.read_parquet(path, columns=["user_id"])["user_id"])
        with console.status(f"warming up, then sending {load_n} requests at {rate:g}/s…"):
            summary = run_load(settings, users, load_n, rate, k=k, timeout=timeout,
                               warmup_max_s=warmup_max_s).summary()
        if as_json:
            click.echo(json.dumps(summary))
            return
        table = Table(title=f"{summary['sent']} requests, sent at {summary['requests_per_s']:.0f}/s "
                            f"(asked {rate:g}/s)")
        for col in ("", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(col)
        for name in ("round_trip_ms", "server_latency_ms"):
            p = summary[name]
            table.add_row(name.replace("_ms", "").replace("_", " "),
                          *("-" if p[q] is None else f"{p[q]:.1f}" for q in ("p50", "p95", "p99")))
        console.print(table)
        click.echo(f"answered {summary['answered']}, missing {summary['missing']}, errors {summary['errors']} "
                   f"{summary['error_codes'] or ''}, fallbacks {summary['fallbacks'] or 'none'}")
        warm = ", ".join("-" if p is None else f"{p:.0f}" for p in summary["warmup_p99_ms"]) or "none"
        click.echo(f"sent at {summary['requests_per_s']:.1f} requests/s; load generator CPU "
                   f"{summary['cpu_cores']['load_generator']:.2f} cores; warm-up windows' p99 (ms): {warm}")
        if summary["missing"]:
            raise StreamrecError(f"{summary['missing']} requests got no answer within {timeout:.0f}s")
        return
    if not user:
        raise StreamrecError("give --user U (one request) or --load N (a load test)")
    body = {"request_id": f"cli-{uuid.uuid4().hex[:12]}", "user_id": user, "k": k,
            "context": parse_context(context), "exclude": list(exclude) or None}
    req = decode(RecommendationRequest, json.dumps({k: v for k, v in body.items() if v is not None}))
    client = RequestClient(settings)
    try:
        response, round_trip = client.ask(req, timeout)
    finally:
        client.close()
    if as_json:
        click.echo(response.model_dump_json(exclude_none=True))
        return
    if response.error:
        raise StreamrecError(f"{response.error.code}: {response.error.message}")
    table = Table(title=f"top {k} for {user}")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for i, item in enumerate(response.items, 1):
        table.add_row(str(i), item.item_id, f"{item.score:.4f}")
    console.print(table)
    age = "-" if response.feature_age_ms is None else f"{response.feature_age_ms:,.0f} ms"
    click.echo(f"model {response.model_version or '-'} | feature age {age} | server {response.latency_ms:.1f} ms, "
               f"round trip {round_trip:.1f} ms | fallback {response.fallback or 'none'} | "
               f"filtered {response.filtered or {}}")
