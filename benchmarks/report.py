"""BENCHMARKS.md from the benchmarks' result dicts: pure functions, no I/O.

Each benchmark's ``run()`` dict becomes rows of measurement | streamrec | raw baseline | ratio | goal | met?.
The result dicts belong to the benchmark modules and may gain or lose keys, so every figure is read with
:func:`dig`, and a missing one renders as "—" instead of failing the report.

A benchmark that uses a broker (stream, recommend) runs once per broker: one :class:`Outcome` each, with
``broker`` naming it ("Apache Kafka 4.1.2", "Tansu 0.6.0"). Its section then has a broker column and the
brokers' rows of one measurement side by side, each beside the baseline measured on that broker in that
run. Rows that touch no broker (``Row.on_broker`` False: the recommender in process) appear once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "Outcome", "dig", "ratio", "rows_for", "render", "section", "carried_outcomes", "ROW_BUILDERS"]

DASH = "—"


@dataclass(frozen=True)
class Row:
    """One line of a benchmark's table; ``met`` is None when there is no goal or it cannot be judged here."""

    measurement: str
    value: float | None
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    met: bool | None = None
    why_na: str = ""  # shown instead of met? when a goal exists but does not apply at this size
    on_broker: bool = True  # False: the figure does not involve the broker (shown once in a per-broker section)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)


@dataclass(frozen=True)
class Outcome:
    """What one benchmark produced: its figures, or the one-line error it failed with."""

    name: str
    params: Mapping[str, Any]
    seconds: float | None = None
    result: Mapping[str, Any] | None = None
    error: str | None = None
    broker: str | None = None  # e.g. "Apache Kafka 4.1.2" for a benchmark run once per broker; None otherwise
    carried_from: str | None = None  # "2026-12-02 05:09 UTC, 5949dac": kept from an earlier report, not re-run


def dig(d: Any, *path: Any) -> Any:
    """``d[p0][p1]…`` or None when any step is missing; int keys also match their JSON string form."""
    for key in path:
        if not isinstance(d, Mapping):
            return None
        if key in d:
            d = d[key]
        elif str(key) in d:
            d = d[str(key)]
        else:
            return None
    return d


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def ratio(value: Any, baseline: Any) -> float | None:
    """streamrec ÷ baseline, or None when either is missing or the baseline is zero."""
    v, b = _num(value), _num(baseline)
    if v is None or b is None or b == 0:
        return None
    return v / b


def _at_most(x: Any, limit: float) -> bool | None:
    x = _num(x)
    return None if x is None else x <= limit


def _at_least(x: Any, limit: float) -> bool | None:
    x = _num(x)
    return None if x is None else x >= limit


def _both(*checks: bool | None) -> bool | None:
    if any(c is False for c in checks):
        return False
    return None if any(c is None for c in checks) else True


# ---- one builder per benchmark: result dict (+ the sizes it ran with) -> rows ---------------------------
# Goals are restated here from the issues (and the benchmark modules' constants) so that rendering never
# imports torch or Feast.
GENERATE_TIME_S, GENERATE_RSS_MB, GENERATE_AT = 10.0, 2048.0, 1_000_000
STREAM_EVENTS_PER_S, STREAM_RATIO, STREAM_RSS_MB, STREAM_USERS = 10_000.0, 0.5, 1024.0, 100_000
STREAM_FRESHNESS_GOALS = {1000.0: {"p50": 30.0, "p99": 100.0}, 5000.0: {"p99": 1000.0}}  # rate → ms (issue 14)
# issue 16 retired "≥ 2× popularity": the generator's own leaky ceiling is only ~1.4× popularity
TRAIN_TIME_S, TRAIN_EPOCHS, TRAIN_ORACLE, TRAIN_CEILING = 20.0, 10, 0.8, 0.95
MODEL_FRESHNESS_S = 300.0  # issue 27: an event reaches a served model within 5 minutes (bench_train)
RECOMMEND_P99_MS, RECOMMEND_ITEMS, KAFKA_RATE = 3.0, 5000, 500.0
ECHO_P99_MS, OVER_ECHO_P99_MS, GENERATOR_CORES = 15.0, 10.0, 0.15  # at KAFKA_RATE, on a warm broker
SUSTAINED_RATE, SUSTAINED_P99_MS, SWAP_P99_RATIO, SATURATION_RATIO = 1000.0, 50.0, 2.0, 0.7


def _generate(r: Mapping[str, Any], p: Mapping[str, Any]) -> list[Row]:
    n = dig(r, "n_interactions") or p.get("n_interactions")
    na = "" if n == GENERATE_AT else f"goal is at {GENERATE_AT:,} interactions"
    base = "numpy draw + DataFrame"
    total = dig(r, "total_s")
    return [
        Row("generate, s", dig(r, "generate_s"), dig(r, "baseline_s"), base),
        Row("generate + write parquet, s", total, goal=f"≤ {GENERATE_TIME_S:.0f} s",
            met=None if na else _at_most(total, GENERATE_TIME_S), why_na=na),
        Row("peak RSS, MB", dig(r, "peak_rss_mb"), dig(r, "baseline_peak_rss_mb"), base,
            goal=f"≤ {GENERATE_RSS_MB:,.0f} MB",
            met=None if na else _at_most(dig(r, "peak_rss_mb"), GENERATE_RSS_MB), why_na=na),
    ]


def _features(r: Mapping[str, Any], p: Mapping[str, Any]) -> list[Row]:
    rows = []
    for batch in (1, 1000):
        push = dig(r, "push", f"batch_{batch}")
        rows.append(Row(f"push, batches of {batch:,}, rows/s", dig(push, "feast_rows_per_s"),
                        dig(push, "raw_rows_per_s"), "redis-py pipeline"))
    for n in (1, 100):
        read = dig(r, "read", f"entities_{n}")
        for q in ("p50", "p99"):
            rows.append(Row(f"online read, {n} user{'s' * (n > 1)}, {q} ms", dig(read, "feast", f"{q}_ms"),
                            dig(read, "raw", f"{q}_ms"), "pipelined HGETALL"))
    # the same through Feast on a Redis Cluster (3 primaries, a replica each), beside one server: its cost
    cluster = dig(r, "cluster")
    if isinstance(cluster, Mapping):
        for batch in (1, 1000):
            rows.append(Row(f"Redis Cluster: push, batches of {batch:,}, rows/s",
                            dig(cluster, "push", f"batch_{batch}", "feast_rows_per_s"),
                            dig(r, "push", f"batch_{batch}", "feast_rows_per_s"), "Feast on one Redis server"))
        for n in (1, 100):
            for q in ("p50", "p99"):
                rows.append(Row(f"Redis Cluster: online read, {n} user{'s' * (n > 1)}, {q} ms",
                                dig(cluster, "read", f"entities_{n}", "feast", f"{q}_ms"),
                                dig(r, "read", f"entities_{n}", "feast", f"{q}_ms"), "Feast on one Redis server"))
    return rows


def _stream(r: Mapping[str, Any], p: Mapping[str, Any]) -> list[Row]:
    """Issue 14's figures. The absolute goals are judged on Apache Kafka (the suite's broker); on Tansu
    the ratio to its own raw drain is, and its freshness is reported beside Kafka's."""
    on_kafka = str(r.get("broker", "kafka")) == "kafka"
    not_kafka = "" if on_kafka else "goal is on Apache Kafka"
    m = dig(r, "max_rate")
    worker, base = dig(m, "worker_events_per_s"), dig(m, "baseline_events_per_s")
    users, events = dig(r, "users") or p.get("users"), dig(r, "events") or p.get("events")
    users_na = "" if users == STREAM_USERS else f"goal is at {STREAM_USERS:,} users"
    rss = dig(r, "worker_peak_rss_mb")
    n_txt = f"{events:,} events, {users:,} users" if isinstance(events, int) and isinstance(users, int) else "backlog"
    drain_goal = (f"≥ {STREAM_EVENTS_PER_S:,.0f}/s and ≥ {STREAM_RATIO}× baseline" if on_kafka
                  else f"≥ {STREAM_RATIO}× baseline")
    drain_met = _at_least(ratio(worker, base), STREAM_RATIO)
    if on_kafka:
        drain_met = _both(_at_least(worker, STREAM_EVENTS_PER_S), drain_met)
    rows = [Row(f"backlog drain ({n_txt}), events/s", worker, base, "aiokafka + redis-py", goal=drain_goal,
                met=drain_met)]
    steady = dig(r, "steady") or {}
    if "rate" in steady:  # a report from before the rates list: one steady phase
        steady = {f"{steady['rate']:g}": steady}
    for key, phase in steady.items():
        rate = _num(dig(phase, "rate")) or _num(key)
        txt = f"{rate:,.0f}" if rate is not None else key
        goals = STREAM_FRESHNESS_GOALS.get(rate, {})
        for q in ("p50", "p99"):
            value = dig(phase, f"freshness_{q}_ms")
            limit = goals.get(q)
            rows.append(Row(f"freshness {q} at {txt} events/s, ms", value,
                            goal="" if limit is None else f"≤ {limit:,.0f} ms",
                            met=None if limit is None or not_kafka else _at_most(value, limit),
                            why_na=not_kafka if limit is not None else ""))
        if dig(phase, "replayed_per_s") is not None:
            rows.append(Row(f"replay reached, at {txt} events/s asked, events/s", dig(phase, "replayed_per_s")))
    rows += [
        Row("freshness p99 while draining the backlog, ms", dig(m, "freshness_p99_ms")),
        Row("worker peak RSS, MB", rss, goal=f"≤ {STREAM_RSS_MB:,.0f} MB at {STREAM_USERS:,} users",
            met=None if users_na else _at_most(rss, STREAM_RSS_MB), why_na=users_na),
    ]
    sc = dig(r, "scaling")
    if sc:
        parts = dig(sc, "partitions")
        one, two = dig(sc, "one", "events_per_s"), dig(sc, "two", "events_per_s")
        rows += [
            Row(f"two workers vs one, {fmt(dig(sc, 'events'))} events on {fmt(parts)} partitions, events/s", two, one,
                "one worker"),
            Row("events per worker CPU-second, two workers vs one", dig(sc, "two", "events_per_cpu_s"),
                dig(sc, "one", "events_per_cpu_s"), "one worker"),
            Row("users differing from the ground truth after two workers", dig(sc, "two", "users_differing_from_truth"),
                goal="0", met=_at_most(dig(sc, "two", "users_differing_from_truth"), 0)),
        ]
        if dig(sc, "one_cluster"):  # the online store as a Redis Cluster (3 primaries), beside one server
            rows += [
                Row("one worker on a Redis Cluster (3 primaries) vs one Redis server, events/s",
                    dig(sc, "one_cluster", "events_per_s"), one, "one Redis server"),
                Row("users differing from the ground truth on the Redis Cluster",
                    dig(sc, "one_cluster", "users_differing_from_truth"), goal="0",
                    met=_at_most(dig(sc, "one_cluster", "users_differing_from_truth"), 0)),
            ]
    return rows


def _train(r: Mapping[str, Any], p: Mapping[str, Any]) -> list[Row]:
    s = dig(r, "seed")
    epochs = dig(s, "epochs") or p.get("epochs")
    na = "" if epochs == TRAIN_EPOCHS else f"goal is for {TRAIN_EPOCHS} epochs"
    tt = dig(s, "recall@10", "two-tower")
    runs = dig(s, "path_runs") or 1  # the linear path chosen on validation: one run per PATH_GRID entry
    paths = f" (at most, × {runs} linear paths)" if runs > 1 else ""
    rows = [
        Row(f"train 20k interactions × {epochs} epochs{paths}, s", dig(s, "train_s"), goal=f"≤ {TRAIN_TIME_S:.0f} s",
            met=None if na else _at_most(dig(s, "train_s"), TRAIN_TIME_S), why_na=na),
        Row("train, CPU seconds", dig(s, "cpu_s")),
        Row("Recall@10 vs popularity", tt, dig(s, "recall@10", "popularity"), "popularity"),
        Row("Recall@10 vs oracle", tt, dig(s, "recall@10", "oracle"), "oracle", goal=f"≥ {TRAIN_ORACLE:g}×",
            met=_at_least(ratio(tt, dig(s, "recall@10", "oracle")), TRAIN_ORACLE)),
        Row("Recall@10 vs leaky ceiling (peeks at answers)", tt, dig(s, "ceiling_recall@10"), "ceiling",
            goal=f"≥ {TRAIN_CEILING:g}×", met=_at_least(ratio(tt, dig(s, "ceiling_recall@10")), TRAIN_CEILING)),
    ]
    big = dig(r, "big")
    if isinstance(big, Mapping):
        n = _num(dig(big, "n_interactions"))
        rows.append(Row(f"seconds per epoch at {n:,.0f} interactions" if n else "seconds per epoch, big",
                        dig(big, "epoch_s")))
    mf = dig(r, "model_freshness")
    if isinstance(mf, Mapping):  # event → first served model trained on it, beside one trainer run
        run_s = dig(mf, "run_s", "p50")
        on = {"kafka": " on Apache Kafka", "tansu": " on Tansu"}.get(str(dig(mf, "broker")), "")
        rows += [
            Row(f"model freshness p50{on} (event → served model trained on it), s", dig(mf, "freshness_s", "p50"),
                run_s, "one trainer run, p50"),
            Row("model freshness p99, s", dig(mf, "freshness_s", "p99"), run_s, "one trainer run, p50",
                goal=f"≤ {MODEL_FRESHNESS_S:.0f} s", met=_at_most(dig(mf, "freshness_s", "p99"), MODEL_FRESHNESS_S)),
            Row("events never served by a trained model", dig(mf, "not_covered"), goal="0",
                met=_at_most(dig(mf, "not_covered"), 0)),
            Row("trainer CPU while retraining, cores", dig(mf, "cpu_cores", "trainer")),
        ]
    return rows


def _recommend(r: Mapping[str, Any], p: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    in_process = dig(r, "in_process")
    if p.get("in_process", True) is False:  # a later broker's run: the in-process part was measured once
        in_process = {}
    elif not isinstance(in_process, Mapping) or not in_process:  # show the expected rows, as dashes
        in_process = {n: None for n in p.get("item_counts", [RECOMMEND_ITEMS])}
    for key, f in in_process.items():
        n = int(key) if str(key).isdigit() else key
        label = f"{n:,} items" if isinstance(n, int) else str(n)
        base = "Feast read + tower forward"
        b50 = dig(f, "baseline_feast_read_plus_forward", "p50_ms")
        b99 = dig(f, "baseline_feast_read_plus_forward", "p99_ms")
        na = "" if n == RECOMMEND_ITEMS else f"goal is at {RECOMMEND_ITEMS:,} items"
        rec99 = dig(f, "recommend", "p99_ms")
        rows += [
            Row(f"recommend() p50, {label}, ms", dig(f, "recommend", "p50_ms"), on_broker=False),
            Row(f"recommend() p99, {label}, ms", rec99, goal=f"≤ {RECOMMEND_P99_MS:g} ms at {RECOMMEND_ITEMS:,}",
                met=None if na else _at_most(rec99, RECOMMEND_P99_MS), why_na=na, on_broker=False),
            Row(f"Feast read + recommend() p50, {label}, ms", dig(f, "feast_read_plus_recommend", "p50_ms"), b50, base,
                on_broker=False),
            Row(f"Feast read + recommend() p99, {label}, ms", dig(f, "feast_read_plus_recommend", "p99_ms"), b99, base,
                on_broker=False),
        ]
    k = dig(r, "kafka")
    if isinstance(k, Mapping) or "rate" in p:
        rows += _over_kafka(r, p, k)
    return rows


def _cpu(summary: Any) -> str:
    """The CPU (cores) of every process over a measured span, for a row's label."""
    cores = dig(summary, "cpu_cores")
    if not isinstance(cores, Mapping):
        return ""
    return "CPU cores: " + ", ".join(f"{name} {v:.2f}" for name, v in cores.items() if isinstance(v, (int, float)))


def _over_kafka(r: Mapping[str, Any], p: Mapping[str, Any], k: Any) -> list[Row]:
    """The recommender beside the bare echo on one warm broker: the median of interleaved rounds, the
    sustained rate, the hot swap and each service's saturation rate."""
    rate = _num(dig(k, "rate") or p.get("rate"))
    na = "" if rate == KAFKA_RATE else f"goal is at {KAFKA_RATE:,.0f} requests/s"
    at = f"{rate:,.0f} req/s" if rate is not None else "? req/s"
    echo = dig(r, "kafka_echo")
    base = "bare echo, same broker, same load"
    e50, e99 = dig(echo, "round_trip_ms", "p50"), dig(echo, "round_trip_ms", "p99")
    rt99 = dig(k, "round_trip_ms", "p99")
    errors, answered = dig(k, "errors"), ratio(dig(k, "answered"), dig(k, "sent"))
    over = None if rt99 is None or e99 is None else rt99 - e99
    rounds = dig(k, "rounds")
    each = f" (median of {rounds} rounds)" if rounds else ""
    gen = dig(k, "cpu_cores", "load_generator")
    rows = [
        Row(f"bare echo at {at}{each}: round trip p99, ms", e99, goal=f"≤ {ECHO_P99_MS:g} ms",
            met=None if na else _at_most(e99, ECHO_P99_MS), why_na=na),
        Row(f"recommender at {at}{each}: round trip p50, ms", dig(k, "round_trip_ms", "p50"), e50, base),
        Row(f"recommender at {at}{each}: round trip p99, ms", rt99, e99, base,
            goal=f"≤ echo + {OVER_ECHO_P99_MS:g} ms, all answered, 0 errors",
            met=None if na or over is None else over <= OVER_ECHO_P99_MS and answered == 1 and errors == 0,
            why_na=na),
        Row(f"recommender at {at}: server latency p99, ms", dig(k, "server_latency_ms", "p99")),
        Row("recommender: answered / sent", answered),
        Row("recommender: error answers", errors),
        Row(f"load generator at {at}: CPU, cores ({_cpu(k)})", gen, goal=f"≤ {GENERATOR_CORES:g}",
            met=None if na else _at_most(gen, GENERATOR_CORES), why_na=na),
        Row(f"bare echo at {at}: CPU, cores ({_cpu(echo)})", dig(echo, "cpu_cores", "echo")),
        Row(f"recommender at {at}: CPU, cores", dig(k, "cpu_cores", "recommender")),
    ]
    sustained, s_echo = dig(r, "kafka_sustained"), dig(r, "kafka_sustained_echo")
    if isinstance(sustained, Mapping):
        s_rate = _num(dig(sustained, "rate"))
        s_na = "" if s_rate == SUSTAINED_RATE else f"goal is at {SUSTAINED_RATE:,.0f} requests/s"
        s_at = f"{s_rate:,.0f} req/s for {dig(sustained, 'seconds') or 0:.0f} s"
        s99, expired = dig(sustained, "round_trip_ms", "p99"), dig(sustained, "expired")
        rows += [
            Row(f"recommender, sustained {s_at}: round trip p99, ms ({_cpu(sustained)})", s99,
                dig(s_echo, "round_trip_ms", "p99"), base,
                goal=f"≤ {SUSTAINED_P99_MS:g} ms, nothing expired, all answered",
                met=None if s_na or s99 is None else (s99 <= SUSTAINED_P99_MS and expired == 0
                                                      and dig(sustained, "missing") == 0), why_na=s_na),
            Row(f"recommender, sustained {s_at}: requests/s sent", dig(sustained, "requests_per_s")),
            Row(f"recommender, sustained {s_at}: expired answers", expired),
        ]
    swap = dig(r, "kafka_swap")
    if isinstance(swap, Mapping):  # a new version promoted halfway through the same load
        during, outside = dig(swap, "during", "p99_ms"), dig(swap, "outside", "p99_ms")
        swap_ratio, swap_errors = ratio(during, outside), dig(swap, "errors")
        rows += [
            Row(f"hot swap at {at}: round trip p99 during the swap, ms", during, outside,
                "outside the swap, same run", goal=f"≤ {SWAP_P99_RATIO:g}× outside, 0 errors",
                met=None if na or swap_ratio is None or swap_errors is None
                else swap_ratio <= SWAP_P99_RATIO and swap_errors == 0 and bool(dig(swap, "swapped")), why_na=na),
            Row("hot swap: seconds from promotion to serving", dig(swap, "swap_s")),
            Row("hot swap: error answers", swap_errors),
        ]
    sat = dig(r, "saturation")
    if isinstance(sat, Mapping):
        rec_rate, echo_rate = dig(sat, "recommender", "rate"), dig(sat, "echo", "rate")
        sat_ratio = dig(sat, "ratio")
        top = max((s.get("rate", 0) for s in dig(sat, "echo", "steps") or []), default=None)
        capped = echo_rate is not None and echo_rate == top
        # an echo that never failed gives a floor of its saturation, so the ratio is only a ceiling: under the
        # goal it is not met; over it, unknown
        met = None if sat_ratio is None or (capped and sat_ratio >= SATURATION_RATIO) else sat_ratio >= SATURATION_RATIO
        rows += [
            Row("saturation rate (p99 ≤ 100 ms, nothing expired), requests/s: recommender", rec_rate, echo_rate,
                "bare echo (the highest rate tried)" if capped else "bare echo", goal=f"≥ {SATURATION_RATIO:g}× echo",
                met=met, why_na="the echo never failed: its saturation is above the highest rate tried"
                if capped and met is None else ""),
        ]
    return rows


ROW_BUILDERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], list[Row]]] = {
    "generate": _generate, "features": _features, "stream": _stream, "train": _train, "recommend": _recommend,
}

TITLES = {
    "generate": "Synthetic data generator",
    "features": "Feature store (Feast on Redis)",
    "stream": "Stream worker",
    "train": "Two-tower training",
    "recommend": "Recommender",
}


def rows_for(name: str, result: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> list[Row]:
    """The table rows of benchmark ``name``; figures absent from ``result`` come out as None."""
    return ROW_BUILDERS[name](result, params or {})


# ---- markdown ---------------------------------------------------------------------------------------
def fmt(x: Any) -> str:
    """A figure with as many digits as it deserves; "—" when missing."""
    v = _num(x)
    if v is None:
        return DASH
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _met(row: Row) -> str:
    if not row.goal:
        return DASH
    if row.why_na:
        return f"n/a ({row.why_na})"
    return {True: "met", False: "**not met**", None: DASH}[row.met]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row], brokers: list[str] | None = None) -> str:
    """One markdown table: measurement | [broker |] streamrec | raw baseline | ratio | goal | met?.

    ``brokers``, one per row, adds the broker column (a per-broker section)."""
    cols = ["measurement", *(["broker"] if brokers is not None else []), "streamrec", "raw baseline", "ratio",
            "goal", "met?"]
    align = ["---", *(["---"] if brokers is not None else []), "---:", "---", "---:", "---", "---"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for i, row in enumerate(rows):
        baseline = DASH if _num(row.baseline) is None else f"{fmt(row.baseline)} ({row.baseline_label})"
        r = row.ratio
        cells = [row.measurement, *([brokers[i]] if brokers is not None else []), fmt(row.value), baseline,
                 DASH if r is None else f"{r:.2f}×", row.goal or DASH, _met(row)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _params(params: Mapping[str, Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ", ".join(one(x) for x in v)
        return fmt(v) if _num(v) is not None else str(v)

    return "; ".join(f"{k} = {one(v)}" for k, v in params.items()) or "module defaults"


NO_BROKER = "none (in process)"


def _labelled_rows(outcomes: list[Outcome]) -> list[tuple[str | None, Row]]:
    """The rows of one benchmark's successful outcomes, each with its broker label (None: run once, no broker).

    Per broker: the rows that touch no broker once (from the first run that has them), then each
    measurement's rows side by side, one per broker in the order they ran."""
    ok = [o for o in outcomes if o.error is None]
    if all(o.broker is None for o in outcomes):
        return [(None, row) for o in ok for row in rows_for(o.name, o.result or {}, o.params)]
    independent: list[tuple[str | None, Row]] = []
    groups: dict[str, list[tuple[str | None, Row]]] = {}
    for o in ok:
        rows = rows_for(o.name, o.result or {}, o.params)
        if not independent:
            independent = [(NO_BROKER, row) for row in rows if not row.on_broker]
        for row in rows:
            if row.on_broker:
                groups.setdefault(row.measurement, []).append((o.broker or DASH, row))
    return independent + [pair for group in groups.values() for pair in group]


def _sizes(outcomes: list[Outcome]) -> list[str]:
    def took(o: Outcome) -> str:
        return f"{o.seconds:,.0f} s" if o.seconds is not None else "?"

    first = outcomes[0]
    if len(outcomes) == 1:
        on = f" on {first.broker}" if first.broker else ""
        return [f"Sizes: {_params(first.params)}, took {took(first)}{on}." if first.seconds is not None
                else f"Sizes: {_params(first.params)}{on}."]
    if all(dict(o.params) == dict(first.params) for o in outcomes):
        times = ", ".join(f"{took(o)} on {o.broker or DASH}" for o in outcomes)
        return [f"Sizes: {_params(first.params)}; took {times}."]
    return [f"Sizes on {o.broker or DASH}: {_params(o.params)}; took {took(o)}." for o in outcomes]


def section(outcomes: Outcome | list[Outcome]) -> str:
    """A benchmark's heading, the sizes it ran with, and its table (or its errors): one outcome, or one per
    broker it ran on."""
    if isinstance(outcomes, Outcome):
        outcomes = [outcomes]
    name = outcomes[0].name
    title = TITLES.get(name, name)
    head = [f"## {title} (`streamrec bench {name}`)", ""]
    if all(o.broker is None for o in outcomes) and len(outcomes) > 1:  # not expected: one section each
        return "\n\n".join(section(o) for o in outcomes)
    lines = head + [" ".join(_sizes(outcomes)), ""]
    carried = sorted({o.carried_from for o in outcomes if o.carried_from})
    if carried:
        lines[-2:-1] = [f"Kept from the run of {'; '.join(carried)} (not re-run by this command). " + lines[-2]]
    per_broker = outcomes[0].broker is not None
    failures = [o for o in outcomes if o.error is not None]
    if len(failures) < len(outcomes):
        labelled = _labelled_rows(outcomes)
        if labelled:
            rows = [row for _, row in labelled]
            lines.append(table(rows, [b or DASH for b, _ in labelled] if per_broker else None))
        else:
            lines.append("No figures in the result (see the raw dicts below).")
        if failures:
            lines.append("")
    for o in failures:
        on = f" on {o.broker}" if o.broker else ""
        lines.append(f"**Failed{on}**: `{_cell(o.error or '')}`")
    return "\n".join(lines)


def _grouped(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """Outcomes by benchmark, in the order each benchmark first ran."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.name, []).append(o)
    return groups


def _summary(outcomes: list[Outcome]) -> str:
    met = not_met = na = 0
    for group in _grouped(outcomes).values():
        for _, row in _labelled_rows(group):
            if row.goal:
                if row.why_na or row.met is None:
                    na += 1
                elif row.met:
                    met += 1
                else:
                    not_met += 1
    failed = [f"{o.name} ({o.broker})" if o.broker else o.name for o in outcomes if o.error is not None]
    text = f"Goals: {met} met, {not_met} not met, {na} not judged at these sizes."
    if failed:
        text += f" Failed: {', '.join(failed)}."
    return text


def render(machine: Mapping[str, Any], outcomes: list[Outcome], mode: str = "full",
           command: str = "streamrec bench") -> str:
    """The whole BENCHMARKS.md: the machine, a one-line summary, one section per benchmark, raw figures."""
    lines = ["# Benchmarks", "",
             f"Produced by `{command}` ({mode} sizes). Every figure is beside a raw baseline measured in the "
             "same run where one exists; ratio = streamrec ÷ baseline (for rates higher is better, for times and "
             "memory lower is better). Wall times on a shared machine vary; treat them as of this run."]
    brokers = list(dict.fromkeys(o.broker for o in outcomes if o.broker))
    if brokers:
        lines[-1] += (f" The benchmarks that use a broker ran once on each of {', '.join(brokers)}: their rows "
                      "name the broker, and each figure's baseline was measured on that same broker in the same "
                      "run. Rows that touch no broker (the recommender in process) appear once.")
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {_cell(str(k))} | {_cell(str(v))} |" for k, v in machine.items()]
    lines += ["", _summary(outcomes), ""]
    for group in _grouped(outcomes).values():
        lines += [section(group), ""]
    raw: dict[str, Any] = {}
    for o in outcomes:
        value = o.result if o.error is None else {"error": o.error}
        if o.broker is None:
            raw[o.name] = value
        else:
            raw.setdefault(o.name, {})[o.broker] = value
    lines += ["<details><summary>Raw result dicts</summary>", "", "```json",
              json.dumps(raw, indent=1, sort_keys=True, default=str), "```", "", "</details>", ""]
    when = ", ".join(str(machine[k]) for k in ("date", "git commit") if k in machine)
    runs = [{"name": o.name, "params": o.params, "seconds": o.seconds, "result": o.result, "error": o.error,
             "broker": o.broker, "from": o.carried_from or when} for o in outcomes]
    # keys in their own order (not sorted): sizes and item counts read back as they ran
    lines += [f"{RUNS_MARK}{json.dumps(runs, default=str)} -->", ""]
    return "\n".join(lines)


RUNS_MARK = "<!-- streamrec bench outcomes: "  # every outcome of the report, for `--only` runs to keep


def carried_outcomes(text: str, rerun: Collection[str]) -> list[Outcome]:
    """The outcomes an earlier report (its ``text``) holds for benchmarks not in ``rerun``, marked as carried
    from that run; none from a report written before the outcomes were kept, or an unreadable one."""
    start = text.rfind(RUNS_MARK)
    if start < 0:
        return []
    end = text.find(" -->", start)
    try:
        runs = json.loads(text[start + len(RUNS_MARK):end if end >= 0 else None])
        return [Outcome(r["name"], r.get("params") or {}, r.get("seconds"), r.get("result"), r.get("error"),
                        r.get("broker"), carried_from=r.get("from") or "an earlier run")
                for r in runs if r["name"] not in rerun]
    except (ValueError, KeyError, TypeError):
        return []
