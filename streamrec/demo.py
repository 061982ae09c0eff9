"""`streamrec demo`: every built stage, end to end, on a fresh machine.

Stages that later issues build are listed as such, so the demo never pretends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ._exceptions import StreamrecError
from .config import Settings

__all__ = ["Stage", "run_demo"]


@dataclass
class Stage:
    name: str
    run: Callable[[Settings, Console], str] | None  # returns a one-line result
    issue: int | None = None  # where an unbuilt stage is tracked


def _stack_up(settings: Settings, console: Console) -> str:
    from . import stack

    statuses = stack.up(settings)
    return "; ".join(f"{s.name} {s.address}" for s in statuses)


def _generate(settings: Settings, console: Console) -> str:
    from generation.dataset_gen_amazon import main as generate_main

    args = ["--n_users", "1000", "--n_items", "5000", "--n_interactions", "20000",
            "--out", str(settings.data_dir)]
    code = generate_main(args)
    if code:
        raise StreamrecError(f"the generator exited with code {code}")
    return f"1000 users, 5000 items, 20000 interactions in {settings.data_dir}"


def _apply(settings: Settings, console: Console) -> str:
    from .features import FeatureClient

    client = FeatureClient(settings)
    views = client.apply()
    client.materialize()
    sample = client.user_features("U000001")
    client.close()
    return f"{len(views)} views applied; U000001 reads back age {sample['age']}, {sample['region']}"


STAGES: list[Stage] = [
    Stage("start the embedded stack", _stack_up),
    Stage("generate synthetic data", _generate),
    Stage("apply the feature repository", _apply),
    Stage("train the two-tower model (v1)", None, issue=5),
    Stage("start the stream worker and recommender", None, issue=4),
    Stage("replay interactions / train v2 mid-stream", None, issue=4),
    Stage("publish recommendation requests", None, issue=6),
    Stage("freshness and latency summary", None, issue=8),
]


def run_demo(settings: Settings, keep_stack: bool = False, console: Console | None = None) -> None:
    """Run the stages in order; stop at the first failure; always stop the stack we started."""
    from . import stack

    console = console or Console()
    table = Table(title="streamrec demo")
    for column in ("stage", "result", "seconds"):
        table.add_column(column)
    try:
        for stage in STAGES:
            if stage.run is None:
                table.add_row(stage.name, f"[yellow]not built yet (issue #{stage.issue})[/]", "")
                continue
            console.rule(stage.name)
            started = time.perf_counter()
            result = stage.run(settings, console)
            table.add_row(stage.name, f"[green]{result}[/]", f"{time.perf_counter() - started:.1f}")
    finally:
        if not keep_stack:
            stack.down(settings)
        console.print(table)
