"""`streamrec bench`: the benchmark suite's command line (run as `python -m benchmarks.cli`; the product
CLI starts it from the source checkout, so the package never imports the benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from streamrec._exceptions import StreamrecError

err = Console(stderr=True)

BENCHMARKS = {
    "generate": ("bench_generate", "Generator time and peak memory at 1M interactions vs plain numpy."),
    "features": ("bench_features", "Feast push rows/s and online-read latency vs a raw redis-py pipeline."),
    "stream": ("bench_stream", "Worker events/s, freshness and RSS vs a raw aiokafka + redis baseline."),
    "train": ("bench_train", "Training time and Recall@10 vs popularity and the oracle."),
    "recommend": ("bench_recommend", "recommend() in process and over Kafka vs Feast read + forward and a bare echo."),
    "quality": ("bench_quality", "Two-tower vs popularity, ALS and EASE on any imported log (--data DIR), "
                "with bootstrap intervals, and the freshness lift."),
}


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
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
    from .suite import brokers_for, kafka_unavailable, select, suite

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
    # no help option of its own: `--help` (after `--` or not) reaches the benchmark's parser, which lists its options
    @click.command(name, help=f"{summary} (options: `streamrec bench {name} -- --help`)", add_help_option=False,
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


def main() -> None:
    """`python -m benchmarks.cli`: a StreamrecError is one line and exit 1, as everywhere in streamrec."""
    try:
        bench.main(prog_name="streamrec bench")
    except StreamrecError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
