"""Run every benchmark (or some) and write BENCHMARKS.md:
``streamrec bench [--quick] [--only a,b] [--broker kafka|tansu|both] [--out F]``.

The benchmarks that use a broker (:data:`BROKER_BENCHMARKS`) run once per broker, each on a stack of its own
of that kind; the others run once. The recommender's in-process part touches no broker: it is measured in
the first broker's run only (``in_process=False`` for the later ones, which still fill the online store).

Each benchmark runs in a child process of its own (``python -m benchmarks.suite --child NAME``) so that its
peak RSS, torch thread settings and leftover threads are its own, and so that one that crashes or hangs is
reported as failed while the others still run. The child writes its result dict as JSON to a file; its
stdout and stderr go to a log, whose last line is the error when it dies without a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .report import Outcome, carried_outcomes, render

__all__ = ["NAMES", "BROKER_BENCHMARKS", "SIZES", "broker_label", "brokers_for", "default_brokers",
           "kafka_unavailable", "machine_info", "plan", "run_benchmark", "run_suite", "select", "suite"]

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("generate", "features", "stream", "train", "recommend")
BROKER_BENCHMARKS = ("stream", "recommend")  # the ones that move records through a broker
BROKER_CHOICES = ("kafka", "tansu", "both")

# keyword arguments of each module's run(). "full" keeps the sizes the goals are stated at and is meant to
# finish in about 15 minutes on a 2-core machine; "quick" is a smoke run of a few minutes.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "generate": {"n_interactions": 1_000_000},
        "features": {"rounds": 200},
        "stream": {"users": 100_000, "events": 300_000, "rates": [1000.0, 5000.0], "seconds": 20.0,
                   "scale_events": 60_000},
        "train": {"epochs": 10, "big": 1_000_000, "big_epochs": 1, "freshness_seconds": 120.0},
        "recommend": {"item_counts": [5000, 100_000], "rate": 500.0, "seconds": 10.0, "rounds": 3,
                      "in_process_rounds": 500, "sustained_rate": 1000.0, "sustained_seconds": 30.0},
    },
    "quick": {
        "generate": {"n_interactions": 100_000},
        "features": {"rounds": 50},
        "stream": {"users": 10_000, "events": 30_000, "rates": [1000.0, 5000.0], "seconds": 5.0,
                   "scale_events": 10_000},
        "train": {"epochs": 10, "big": 0, "freshness_seconds": 20.0},
        "recommend": {"item_counts": [5000], "rate": 200.0, "seconds": 5.0, "rounds": 2, "in_process_rounds": 200,
                      "sustained_rate": 500.0, "sustained_seconds": 5.0, "saturation": False},
    },
}
TIMEOUT_S = 30 * 60  # per benchmark: a hung one is stopped and reported, the rest still run
INTERRUPT_GRACE_S = 30  # after SIGINT, time for the child's finally blocks (stopping its own stack)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


# ---- brokers -----------------------------------------------------------------------------------
def broker_label(kind: str) -> str:
    """What the report calls a broker: "Apache Kafka 4.1.2" or "Tansu 0.6.0"."""
    if kind == "kafka":
        from streamrec.shell.apache_kafka import VERSION

        return f"Apache Kafka {VERSION}"
    from streamrec.shell.stack import tansu_version

    return f"Tansu {tansu_version()}"


def _kafka_cache() -> Path:
    """The jar folder the benchmarks' Kafka stacks share (the default stack's unless STREAMREC_KAFKA_CACHE)."""
    from ._harness import kafka_cache

    return kafka_cache()


def kafka_unavailable() -> str | None:
    """Why Apache Kafka cannot run here (no Java 17+, or neither Maven nor cached jars), or None when it can."""
    from streamrec._exceptions import StreamrecError
    from streamrec.shell.apache_kafka import VERSION, java_binary

    try:
        java_binary()
        cache = _kafka_cache()
    except StreamrecError as exc:
        return str(exc)
    if shutil.which("mvn") is None and not (cache / "libs" / ".complete").is_file():
        return (f"Apache Kafka {VERSION}'s jars are not in {cache / 'libs'} and fetching them needs Maven: install "
                f"it (e.g. `apt install maven`) or run --broker tansu")
    return None


def default_brokers() -> list[str]:
    """Both brokers where Apache Kafka can run (Java 17+, and Maven or its cached jars), else Tansu alone."""
    return ["kafka", "tansu"] if kafka_unavailable() is None else ["tansu"]


def brokers_for(choice: str | None) -> list[str]:
    """``--broker``'s value as the brokers to run on, in order; None = :func:`default_brokers`."""
    if choice is None:
        return default_brokers()
    if choice not in BROKER_CHOICES:
        raise ValueError(f"unknown broker {choice!r}; choose from {', '.join(BROKER_CHOICES)}")
    return ["kafka", "tansu"] if choice == "both" else [choice]


def plan(names: Sequence[str], mode: str, brokers: Sequence[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(benchmark, broker or None, params) in the order they run: broker benchmarks once per broker."""
    runs: list[tuple[str, str | None, dict[str, Any]]] = []
    for name in names:
        params = dict(SIZES[mode][name])
        if name not in BROKER_BENCHMARKS:
            runs.append((name, None, params))
            continue
        for i, kind in enumerate(brokers):
            if name == "recommend" and i > 0:  # in process: measured once, in the first broker's run
                params = {**params, "item_counts": list(params["item_counts"])[:1], "in_process": False}
            runs.append((name, kind, params))
    return runs


def _java_version() -> str:
    try:
        from streamrec.shell.apache_kafka import java_binary

        java = java_binary()
        text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except Exception:  # noqa: BLE001 - a line of the machine table, not worth failing the report for
        return "unknown"
    return text.splitlines()[0].strip() if text.strip() else "unknown"


def machine_info(brokers: Sequence[str] = ()) -> dict[str, str]:
    """What the figures were measured on, for the table at the top of the file."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "RAM": _ram_gib(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": _version("torch"),
        "feast": _version("feast"),
        "faust": _version("faust-streaming"),
    }
    if brokers:
        info["brokers"] = ", ".join(broker_label(k) + (" (1 node, KRaft combined mode)" if k == "kafka" else
                                                        " (memory storage)") for k in brokers)
    if "kafka" in brokers:
        info["Java"] = _java_version()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["git commit"] = _git_commit()
    return info


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first so the child's finally blocks stop what it started, then kill its process group."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own group (start_new_session), nothing else
        except ProcessLookupError:
            pass
        proc.wait()


def run_benchmark(name: str, params: dict[str, Any], workdir: Path, timeout: float = TIMEOUT_S,
                  tick: Any = None, broker: str | None = None) -> Outcome:
    """Run one benchmark in a child process (on ``broker``, tansu or kafka, for a broker benchmark);
    never raises for the benchmark's own failures."""
    stem = f"{name}-{broker}" if broker else name
    result_path, log_path = workdir / f"{stem}.json", workdir / f"{stem}.log"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.suite", "--child", name, "--params", json.dumps(params),
           "--result", str(result_path)]
    env = {**os.environ, "PYTHONPATH": path}
    label = None
    if broker:
        cmd += ["--broker", broker]
        label = broker_label(broker)
        # one node; the jars from the shared cache (resolved here, against the caller's folder)
        env.update(STREAMREC_BROKER=broker, STREAMREC_KAFKA_BROKERS="1")
        if broker == "kafka":
            env["STREAMREC_KAFKA_CACHE"] = str(_kafka_cache())
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                _stop(proc)
                return Outcome(name, params, time.monotonic() - t0, error=f"timed out after {timeout:.0f} s",
                               broker=label)
            if tick:
                tick(time.monotonic() - t0)
            time.sleep(0.5)
    except BaseException:  # Ctrl-C in the parent: the child has its own session and would not see it
        _stop(proc)
        raise
    seconds = time.monotonic() - t0
    log_text = log_path.read_text(errors="replace")
    try:
        payload = json.loads(result_path.read_text())
    except (OSError, ValueError):
        line = _last_line(log_text) or f"exited with code {proc.returncode} and no output"
        return Outcome(name, params, seconds, error=line, broker=label)
    if "error" in payload:
        return Outcome(name, params, seconds, error=payload["error"], broker=label)
    return Outcome(name, params, seconds, result=payload["result"], broker=label)


def run_suite(names: Sequence[str], mode: str = "full", console: Any = None,
              brokers: Sequence[str] = ("tansu",)) -> list[Outcome]:
    """Run ``names`` one after another with ``SIZES[mode]``, the broker benchmarks once on each of ``brokers``;
    progress on ``console`` (rich) when given."""
    outcomes = []
    runs = plan(names, mode, brokers)
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        for i, (name, broker, params) in enumerate(runs, 1):
            on = f" on {broker_label(broker)}" if broker else ""
            label = f"[{i}/{len(runs)}] {name}{on} ({', '.join(f'{k}={v}' for k, v in params.items())})"
            if console is None:
                outcomes.append(run_benchmark(name, params, Path(tmp), broker=broker))
                continue
            with console.status(label) as status:
                outcome = run_benchmark(name, params, Path(tmp), broker=broker,
                                        tick=lambda s, label=label, status=status: status.update(f"{label} {s:.0f} s"))
            mark = "[green]done[/]" if outcome.error is None else f"[bold red]failed[/]: {outcome.error}"
            console.print(f"{label} {mark} in {outcome.seconds:.0f} s", highlight=False, soft_wrap=True)
            outcomes.append(outcome)
    return outcomes


def write_report(outcomes: list[Outcome], out: Path, mode: str, command: str,
                 brokers: Sequence[str] = ()) -> None:
    """Render and write atomically, so an interrupted run never leaves half a file. Kept from the old file:
    the sections of the benchmarks this run did not run (an `--only` run updates its own and keeps the
    rest, marked with the run they come from), and the quality sections that `streamrec bench quality
    --report` wrote (they need data of their own)."""
    from .bench_quality import HEADING, sections

    old = out.read_text() if out.is_file() else ""
    ran = {o.name for o in outcomes}
    carried = carried_outcomes(old, ran) if mode == _mode_of(old) else []
    order = {name: i for i, name in enumerate(NAMES)}
    # in the suite's order; sorted() is stable, so one benchmark's brokers keep theirs
    everything = sorted([*outcomes, *carried], key=lambda o: order.get(o.name, len(order)))
    text = render(machine_info(brokers), everything, mode=mode, command=command)
    kept = sections(old) if old else []
    if kept:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n" + "\n".join(kept)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)


def _mode_of(report: str) -> str | None:
    """"full" or "quick": the sizes an earlier report was produced at (a quick run's figures are never
    carried into a full report, nor the other way round)."""
    for mode in ("full", "quick"):
        if f"({mode} sizes)" in report[:2000]:
            return mode
    return None


def select(only: str | None) -> list[str]:
    """The benchmarks named in ``--only a,b`` (all when None), in the suite's order; ValueError for a bad name."""
    if only is None:
        return list(NAMES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ValueError(f"unknown benchmark {', '.join(unknown) or repr(only)}; choose from {', '.join(NAMES)}")
    return [n for n in NAMES if n in names]


def suite(names: Sequence[str], quick: bool, out: Path, console: Any = None,
          brokers: Sequence[str] | None = None) -> list[str]:
    """`streamrec bench` without a subcommand: run ``names`` (the broker ones on each of ``brokers``, default
    :func:`default_brokers`), write ``out``; returns the names that failed ("stream on Tansu 0.6.0")."""
    mode = "quick" if quick else "full"
    brokers = list(brokers) if brokers is not None else default_brokers()
    uses_broker = any(n in BROKER_BENCHMARKS for n in names)
    outcomes = run_suite(names, mode, console, brokers)
    choice = "both" if sorted(brokers) == ["kafka", "tansu"] else ",".join(brokers)
    command = " ".join(["streamrec bench", *(["--quick"] if quick else []),
                        *([f"--only {','.join(names)}"] if list(names) != list(NAMES) else []),
                        *([f"--broker {choice}"] if uses_broker else [])])
    write_report(outcomes, out, mode, command, brokers if uses_broker else ())
    return [f"{o.name} on {o.broker}" if o.broker else o.name for o in outcomes if o.error is not None]


def _jsonable(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else str(x)  # numpy scalars, paths


def _child(name: str, params: dict[str, Any], result_path: Path, broker: str | None = None) -> int:
    import importlib

    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        extra = {"broker": broker} if broker else {}
        payload: dict[str, Any] = {"result": module.run(**params, **extra)}
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported in the file as this benchmark's failure
        traceback.print_exc()
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or ["(no message)"]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
        payload, code = {"error": f"{type(exc).__name__}: {message}"}, 1
    result_path.write_text(json.dumps(payload, default=_jsonable))
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="internal: one benchmark in a child process (see streamrec bench)")
    ap.add_argument("--child", choices=NAMES, required=True)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--broker", choices=["kafka", "tansu"], default=None)
    args = ap.parse_args(argv)
    return _child(args.child, json.loads(args.params), args.result, args.broker)


if __name__ == "__main__":
    sys.exit(main())
