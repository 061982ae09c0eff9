"""The `streamrec` command line (also `python -m streamrec`).

Every command has ``--help``; a user mistake or an unreachable service is one ``error:`` line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ._exceptions import StreamrecError
from .config import Settings, get_settings, load_settings

__all__ = ["main", "cli"]

err = Console(stderr=True)
out = Console()

class _Group(click.Group):
    """Turns StreamrecError into one line and exit 1, Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamrecError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamrec")
def cli() -> None:
    """streamrec: an event-driven streaming recommender (Kafka → Faust → Feast/Redis → two-tower)."""


# ---- stack -----------------------------------------------------------------------------------
@cli.group()
def stack() -> None:
    """Run the embedded Kafka broker and Redis server on loopback (pids and logs in .stack/)."""


def _stack_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--brokers", type=click.IntRange(1, 5), default=None, metavar="N",
                           help="Apache Kafka nodes in one cluster (STREAMREC_KAFKA_BROKERS, default 1).")(command)
    return click.option("--broker", type=click.Choice(["tansu", "kafka"]), default=None,
                        help="Tansu (no Java) or Apache Kafka (Java 17+, Maven once) (STREAMREC_BROKER, "
                             "default tansu).")(command)


def _stack_settings(broker: str | None, brokers: int | None) -> Settings:
    """The settings with the command's flags over the environment."""
    overrides: dict[str, Any] = {}
    if broker is not None:
        overrides["broker"] = broker
    if brokers is not None:
        overrides["kafka_brokers"] = brokers
    if overrides.get("broker") == "tansu" and "kafka_brokers" not in overrides:
        overrides["kafka_brokers"] = 1  # --broker tansu wins over a STREAMREC_KAFKA_BROKERS meant for kafka
    return load_settings(**overrides) if overrides else get_settings()


@stack.command("up")
@_stack_options
def stack_up(broker: str | None, brokers: int | None) -> None:
    """Start what is not running, wait until it answers, create the topics. Idempotent."""
    from . import stack as _stack

    settings = _stack_settings(broker, brokers)
    with err.status("starting the embedded stack…"):
        statuses = _stack.up(settings)
    for s in statuses:
        out.print(s.line(), highlight=False, soft_wrap=True)


@stack.command("down")
@_stack_options
def stack_down(broker: str | None, brokers: int | None) -> None:
    """Stop what `stack up` started (and nothing else), whichever broker that was."""
    from . import stack as _stack

    stopped = _stack.down(_stack_settings(broker, brokers))
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop", highlight=False)


@stack.command("status")
@_stack_options
def stack_status(broker: str | None, brokers: int | None) -> None:
    """Tell what runs where. Exit code 0 when everything answers, 1 otherwise."""
    from . import stack as _stack

    statuses = _stack.status(_stack_settings(broker, brokers))
    for s in statuses:
        out.print(s.line(), highlight=False, soft_wrap=True)
    if not all(s.running for s in statuses):
        sys.exit(1)


# ---- data --------------------------------------------------------------------------------------
@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
             add_help_option=False)
@click.pass_context
def generate(ctx: click.Context) -> None:
    """Generate synthetic users, items and interactions (all flags: `streamrec generate --help`)."""
    from generation.dataset_gen_amazon import main as generate_main

    code = generate_main(list(ctx.args))
    if code:
        sys.exit(code)


@cli.command()
@click.option("--no-materialize", is_flag=True, help="Register only; leave the online store as it is.")
@click.option("--print-env", is_flag=True,
              help="Print the exports `feast` needs when run by hand in feature_repo/, then exit.")
def apply(no_materialize: bool, print_env: bool) -> None:
    """Register the Feast repository and load profiles and items into the online store (Redis)."""
    settings = get_settings()
    if print_env:
        import shlex

        # On request only, for `eval`: this is the one place the connection string is printed.
        out.print(f"export FEAST_REDIS_CONNECTION_STRING={shlex.quote(settings.feast_redis_connection_string())}",
                  highlight=False, soft_wrap=True)
        out.print(f"export STREAMREC_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}",
                  highlight=False, soft_wrap=True)
        return
    from .features import FeatureClient

    with err.status("loading Feast…"):
        client = FeatureClient(settings)
    with err.status("feast apply…"):
        views = client.apply()
    out.print(f"registered: {', '.join(views)} (registry {client.data_dir / 'registry.db'})", highlight=False)
    if not no_materialize:
        with err.status("materializing user_profile and item_features into Redis…"):
            client.materialize()
        out.print(f"materialized user_profile and item_features into {settings.redis_display()}",
                  highlight=False)
    client.close()


# ---- benchmarks -----------------------------------------------------------------------------------
BENCHMARKS = {
    "generate": ("bench_generate", "Generator time and peak memory at 1M interactions vs plain numpy."),
    "features": ("bench_features", "Feast push rows/s and online-read latency vs a raw redis-py pipeline."),
    "stream": ("bench_stream", "Worker events/s, freshness and RSS vs a raw aiokafka + redis baseline."),
    "train": ("bench_train", "Training time and Recall@10 vs popularity and the oracle."),
    "recommend": ("bench_recommend", "recommend() in process and over Kafka vs Feast read + forward and a bare echo."),
    "quality": ("bench_quality", "Two-tower vs popularity, ALS and EASE on any imported log (--data DIR), "
                "with bootstrap intervals, and the freshness lift."),
}


@cli.group(invoke_without_command=True)
@click.option("--only", metavar="A,B", help=f"Run only these ({','.join(BENCHMARKS)}); default: all.")
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of a few minutes, not figures to quote.")
@click.option("--broker", type=click.Choice(["kafka", "tansu", "both"]), default=None,
              help="The broker(s) stream and recommend run on, each beside its raw baseline on the same broker "
                   "[default: both where Java 17+ and Maven (or Kafka's cached jars) are present, else tansu].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("BENCHMARKS.md"),
              show_default=True, help="Where to write the report.")
@click.pass_context
def bench(ctx: click.Context, only: str | None, quick: bool, broker: str | None, out: Path) -> None:
    """Benchmarks, each beside a raw baseline from the same run and the ratio.

    With no subcommand: run them all (about 15 minutes on 2 cores on one broker, stream and recommend again
    for the second; --quick for a smoke run) and write BENCHMARKS.md with the machine, each figure, its
    baseline, the ratio and the goal. The benchmarks that use a broker (stream, recommend) run once per
    broker, each on a stack of its own.
    """
    if ctx.invoked_subcommand is not None:
        if only or quick or broker:
            raise click.UsageError(f"--only/--quick/--broker are for the whole suite; options of one benchmark go "
                                   f"after its name (streamrec bench {ctx.invoked_subcommand} -- --help)")
        return
    from benchmarks.suite import brokers_for, kafka_unavailable, select, suite

    try:
        names = select(only)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from exc
    brokers = brokers_for(broker)
    if broker is not None and "kafka" in brokers and (why := kafka_unavailable()):
        raise StreamrecError(why)
    if broker is None and brokers == ["tansu"]:
        err.print(f"Apache Kafka cannot run here ({kafka_unavailable()}): stream and recommend run on Tansu only",
                  highlight=False, soft_wrap=True)
    failed = suite(names, quick=quick, out=out, console=err, brokers=brokers)
    if failed:
        raise StreamrecError(f"{len(failed)} benchmark run(s) failed ({', '.join(failed)}); see {out}")
    click.echo(f"wrote {out}")


def _bench_command(name: str, module: str, summary: str) -> click.Command:
    @click.command(name, help=f"{summary} (options: `streamrec bench {name} -- --help`)",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def _run(ctx: click.Context) -> None:
        import importlib

        mod = importlib.import_module(f"benchmarks.{module}")
        sys.argv = [f"streamrec bench {name}", *ctx.args]
        mod.main()

    return _run


for _bname, (_module, _summary) in BENCHMARKS.items():
    bench.add_command(_bench_command(_bname, _module, _summary))


# ---- demo ----------------------------------------------------------------------------------------
@cli.command()
@click.option("--keep-stack", is_flag=True, help="Leave the stack running afterwards.")
@click.option("--users", type=click.IntRange(10, 1_000_000), default=1000, show_default=True,
              help="Synthetic users to generate.")
@click.option("--items", type=click.IntRange(50, 1_000_000), default=5000, show_default=True,
              help="Synthetic items to generate.")
@click.option("--events", type=click.IntRange(500, 10_000_000), default=20000, show_default=True,
              help="Interactions to generate and replay.")
@click.option("--requests", "n_requests", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="Recommendation requests to publish.")
def demo(keep_stack: bool, users: int, items: int, events: int, n_requests: int) -> None:
    """Run the whole system end to end on a stack of its own, print a summary, stop what it started.

    Exits non-zero unless every stage succeeded and every request was answered.
    """
    from .demo import DemoSize, run_demo

    run_demo(get_settings(), keep_stack=keep_stack, console=out,
             size=DemoSize(users=users, items=items, events=events, requests=n_requests))


def _register() -> None:
    """Commands that live with their stage."""
    from generation.generate_images import images
    from generation.importers import import_
    from models.cli import train, trainer
    from producers.cli import replay, request
    from stream_processors.cli import freshness, worker

    for command in (import_, worker, replay, freshness, images, request, train, trainer):
        cli.add_command(command)


_register()

def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="streamrec")
    except StreamrecError as exc:  # raised before a command ran, e.g. while reading settings
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
