"""`streamrec freshness`: the stream worker's live figures (its /freshness page), as a table, a watch or a plot."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from streamrec._exceptions import StreamrecError
from streamrec.config import get_settings
from streamrec.plots import png
from streamrec.stats import percentiles

__all__ = ["freshness"]


def _fetch(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL from settings
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StreamrecError(f"no stream worker answers at {url} (start one with `streamrec worker`): {exc}") \
            from None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _table(snap: dict[str, Any]) -> Table:
    table = Table(title="stream worker freshness")
    table.add_column("figure")
    table.add_column("value", justify="right")
    f = snap["freshness_ms"]
    for name in ("p50", "p95", "p99", "max"):
        table.add_row(f"freshness {name} (ms)", _ms(f[name]))
    table.add_row("events/s (10 s window)", f"{snap['events_per_s']:,.1f}")
    for key in ("events", "applied", "duplicates_skipped", "rows_pushed", "pushes", "push_retries", "dlq_total"):
        table.add_row(key.replace("_", " "), f"{snap[key]:,}")
    return table


def _feature_age(user: str) -> Table:
    from streamrec.features import FeatureClient

    client = FeatureClient(get_settings())
    try:
        row = client.user_features(user)
    finally:
        client.close()
    if row.get("pushed_at_ms") is None and all(row.get(k) is None for k in ("age", "gender", "region")):
        raise StreamrecError(f"user {user[:128]!r} is not in the feature store: no profile, no history pushed")
    table = Table(title=f"features of {user}")
    table.add_column("feature")
    table.add_column("value")
    if row.get("pushed_at_ms") is None:
        table.add_row("recent history", "none pushed yet")
    else:
        table.add_row("feature age (ms)", f"{time.time() * 1000 - row['pushed_at_ms']:,.0f}")
        table.add_row("last event at", str(row["last_event_at"]))
        recent = row["recent_item_ids"]
        table.add_row("recent items", ", ".join(recent[:5]) + (" …" if len(recent) > 5 else ""))
        counts = {k[6:]: row[k] for k in row if k.startswith("count_")}
        table.add_row("counts", ", ".join(f"{k} {v}" for k, v in counts.items()))
    table.add_row("profile", f"age {row.get('age')}, {row.get('gender')}, {row.get('region')}")
    return table


def plot_histogram(lags_ms: list[float], out: Path, title: str = "feature freshness") -> Path:
    """A PNG histogram of freshness samples with p50/p99 marked."""
    import numpy as np

    if not lags_ms:
        raise StreamrecError("no freshness samples yet: replay some events first")
    a = np.asarray(lags_ms)
    marks = percentiles(a, (50, 99))
    with png(out) as (ax,):
        ax.hist(a, bins=min(60, max(10, len(a) // 20)), color="#4C72B0")
        for (name, v), color in zip(marks.items(), ("#55A868", "#C44E52"), strict=True):
            ax.axvline(v, color=color, linestyle="--", label=f"{name} = {v:.1f} ms")
        ax.set_xlabel("online-store write time − Kafka record time (ms)")
        ax.set_ylabel("pushed rows")
        ax.set_title(f"{title} ({len(a):,} samples)")
        ax.legend()
    return out


@click.command("freshness")
@click.option("--url", help="The worker's web address (default http://127.0.0.1:STREAMREC_WORKER_PORT).")
@click.option("--user", help="Also show the age of this user's features in the online store.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a histogram PNG here.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON figures.")
def freshness(url: str | None, user: str | None, watch: bool, interval: float, plot: Path | None,
              as_json: bool) -> None:
    """Live freshness (p50/p95/p99/max), events/s and counters of the stream worker."""
    base = (url or f"http://127.0.0.1:{get_settings().worker_port}").rstrip("/")
    console = Console()
    if plot:
        snap = _fetch(f"{base}/freshness?samples=1")
        click.echo(f"wrote {plot_histogram(snap.get('lags_ms', []), plot)}")
        return
    while True:
        snap = _fetch(f"{base}/freshness")
        if as_json:
            click.echo(json.dumps(snap))
        else:
            if watch:
                console.clear()
            console.print(_table(snap))
            if user:
                console.print(_feature_age(user))
        if not watch:
            return
        time.sleep(interval)
