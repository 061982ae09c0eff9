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

from streamrec._exceptions import StreamrecError
from streamrec.config import Settings, configuration_table, get_settings, load_settings, with_configuration_table

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
    command = click.option("--secure/--no-secure", default=None,
                           help="Apache Kafka (implied) on SASL_SSL (SCRAM-SHA-512) and Redis on TLS with a "
                                "password, CA and secrets made into <stack dir>/secure/ (STREAMREC_SECURE); `up` "
                                "prints the exports clients need.")(command)
    command = click.option("--redis-nodes", type=click.IntRange(1, 8), default=None, metavar="N",
                           help="Redis Cluster primaries, each with a replica; 3 or more (STREAMREC_REDIS_NODES, "
                                "default 1: one server).")(command)
    command = click.option("--brokers", type=click.IntRange(1, 5), default=None, metavar="N",
                           help="Apache Kafka nodes in one cluster (STREAMREC_KAFKA_BROKERS, default 1).")(command)
    return click.option("--broker", type=click.Choice(["tansu", "kafka"]), default=None,
                        help="Tansu (no Java) or Apache Kafka (Java 17+, Maven once) (STREAMREC_BROKER, "
                             "default tansu).")(command)


def _stack_settings(broker: str | None, brokers: int | None, redis_nodes: int | None = None,
                    secure: bool | None = None) -> Settings:
    """The settings with the command's flags over the environment."""
    overrides: dict[str, Any] = {}
    if secure is not None:
        overrides["stack_secure"] = secure
    if redis_nodes is not None:
        overrides["redis_nodes"] = redis_nodes
    if broker is not None:
        overrides["broker"] = broker
    if brokers is not None:
        overrides["kafka_brokers"] = brokers
    if secure and broker is None:
        overrides["broker"] = "kafka"  # the secured stack is Apache Kafka's (Tansu has no SASL_SSL)
    if overrides.get("broker") == "tansu" and "kafka_brokers" not in overrides:
        overrides["kafka_brokers"] = 1  # --broker tansu wins over a STREAMREC_KAFKA_BROKERS meant for kafka
    return load_settings(**overrides) if overrides else get_settings()


@stack.command("up")
@_stack_options
def stack_up(broker: str | None, brokers: int | None, redis_nodes: int | None, secure: bool | None) -> None:
    """Start what is not running, wait until it answers, create the topics. Idempotent."""
    from . import stack as _stack

    settings = _stack_settings(broker, brokers, redis_nodes, secure)
    with err.status("starting the embedded stack…"):
        statuses = _stack.up(settings)
    for s in statuses:
        out.print(s.line(), highlight=False, soft_wrap=True)
    if settings.stack_secure:
        from . import secure as _secure

        out.print("clients of the secured stack need these variables (the passwords are read from their "
                  "files, never printed):", highlight=False, soft_wrap=True)
        for line in _secure.exports(settings):
            out.print(line, highlight=False, soft_wrap=True, markup=False)


@stack.command("down")
@_stack_options
def stack_down(broker: str | None, brokers: int | None, redis_nodes: int | None, secure: bool | None) -> None:
    """Stop what `stack up` started (and nothing else), whichever broker that was."""
    from . import stack as _stack

    stopped = _stack.down(_stack_settings(broker, brokers, redis_nodes, secure))
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop", highlight=False)


@stack.command("status")
@_stack_options
def stack_status(broker: str | None, brokers: int | None, redis_nodes: int | None, secure: bool | None) -> None:
    """Tell what runs where. Exit code 0 when everything answers, 1 otherwise."""
    from . import stack as _stack

    statuses = _stack.status(_stack_settings(broker, brokers, redis_nodes, secure))
    for s in statuses:
        out.print(s.line(), highlight=False, soft_wrap=True)
    if not all(s.running for s in statuses):
        sys.exit(1)


@stack.command("secure-files")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kafka-host", default="kafka-secure", show_default=True, help="The broker's host name (port 9092).")
@click.option("--redis-host", default="redis-secure", show_default=True, help="Redis' host name (port 6379).")
@click.option("--owner", default=None, metavar="UID:GID", help="Give the files to this user (the servers' in "
              "their containers: 1000:1000 in docker-compose.yml).")
@click.option("--rotate", is_flag=True, help="New CA, certificate and passwords even when FOLDER has them (then "
              "the Kafka node's storage must be made again: `docker compose down`).")
def stack_secure_files(folder: Path, kafka_host: str, redis_host: str, owner: str | None, rotate: bool) -> None:
    """Write a secured deployment's CA, certificate, passwords and server configs into FOLDER, for
    docker-compose's `secure` profile (the embedded `stack up --secure` makes its own)."""
    from . import secure as _secure

    ids = None
    if owner is not None:
        try:
            uid, gid = (int(x) for x in owner.split(":"))
        except ValueError as exc:
            raise StreamrecError(f"--owner: expected UID:GID, got {owner!r}") from exc
        ids = (uid, gid)
    found = _secure.container_files(folder, kafka_host, redis_host, ids, rotate)
    names = ", ".join(sorted(p.name for p in found.dir.iterdir()))
    out.print(f"wrote {names} into {found.dir}", highlight=False, soft_wrap=True)


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
    from streamrec.features import FeatureClient, require_redis

    require_redis(settings)  # before Feast's ~8 s of apply: a wrong REDIS_URL is one line at once
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


@cli.command("config")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Rewrite the table between this file's settings-table markers (README.md) instead.")
def config(readme: Path | None) -> None:
    """Print every environment variable streamrec reads, with its default and meaning, as a markdown table."""
    if readme is None:
        click.echo(configuration_table(), nl=False)
        return
    text = readme.read_text(encoding="utf-8")
    updated = with_configuration_table(text)
    readme.write_text(updated, encoding="utf-8")
    click.echo(f"{readme}: {'rewritten' if updated != text else 'already up to date'}")


# ---- benchmarks -----------------------------------------------------------------------------------
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks, each beside a raw baseline from the same run and the ratio (`streamrec bench --help`).

    They live in the source checkout's benchmarks/ (not installed with the package) and run there."""
    import os
    import subprocess

    if not (BENCHMARKS_DIR / "cli.py").is_file():
        raise StreamrecError(f"the benchmarks run from a source checkout: {BENCHMARKS_DIR} is not there")
    root = str(BENCHMARKS_DIR.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    # the checkout's benchmarks, run in the caller's folder (relative --out and --data paths are theirs)
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", *ctx.args], env=env, check=False)
    ctx.exit(done.returncode)


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
    from stream_processors.cli import freshness

    from .workers import worker

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
